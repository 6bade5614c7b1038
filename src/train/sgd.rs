//! SGD with momentum and weight decay (PyTorch semantics) and learning-rate schedules.

use crate::{Error, Result};
use candle_core::{Tensor, Var};

/// SGD with momentum μ and L2 weight decay λ, PyTorch semantics:
/// d = g + λθ;  b ← μ b + d (b₀ = d);  θ ← θ − η b.
pub struct Sgd {
    vars: Vec<Var>,
    momentum: f64,
    weight_decay: f64,
    bufs: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(vars: Vec<Var>, momentum: f64, weight_decay: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&momentum) {
            return Err(Error::invalid(
                "momentum",
                format!("{momentum} not in [0, 1)"),
            ));
        }
        if !(weight_decay >= 0.0) || !weight_decay.is_finite() {
            return Err(Error::invalid(
                "weight decay",
                format!("{weight_decay} must be ≥ 0"),
            ));
        }
        let n = vars.len();
        Ok(Sgd {
            vars,
            momentum,
            weight_decay,
            bufs: vec![None; n],
        })
    }

    /// One step with learning rate `lr` and detached gradients `grads` (same order as vars).
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.vars.len() {
            return Err(Error::Shape(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.vars.len()
            )));
        }
        for ((v, g), buf) in self.vars.iter().zip(grads).zip(self.bufs.iter_mut()) {
            let theta = v.as_tensor().detach();
            let mut d = g.detach();
            if self.weight_decay > 0.0 {
                d = (d + (&theta * self.weight_decay)?)?;
            }
            if self.momentum > 0.0 {
                d = match buf.take() {
                    None => d,
                    Some(b) => ((b * self.momentum)? + d)?,
                };
                *buf = Some(d.clone());
            }
            v.set(&(theta - (d * lr)?)?)?;
        }
        Ok(())
    }
}

/// Learning-rate schedule: step decay, optionally with Goyal et al.'s linear scaling rule
/// (η = η_base · B / B_base) and gradual warm-up from η_base over the first epochs.
#[derive(Clone, Debug)]
pub struct LrSchedule {
    /// Base learning rate η_base.
    pub lr: f64,
    /// Epochs (0-based) at whose start the rate is multiplied by `gamma`.
    pub milestones: Vec<usize>,
    pub gamma: f64,
    /// `Some(B_base)`: linear scaling with reference batch B_base.
    pub scale_from_batch: Option<usize>,
    /// Warm-up length in epochs (only with linear scaling).
    pub warmup_epochs: f64,
}

impl LrSchedule {
    /// `lr`, multiplied by `gamma` for the last of `epochs` epochs (constant for one epoch):
    /// a newcomer's default, short runs end on a lower rate.
    pub fn last_epoch_decay(lr: f64, epochs: usize, gamma: f64) -> Self {
        LrSchedule {
            milestones: if epochs >= 2 {
                vec![epochs - 1]
            } else {
                vec![]
            },
            gamma,
            ..Self::constant(lr)
        }
    }
    pub fn constant(lr: f64) -> Self {
        LrSchedule {
            lr,
            milestones: vec![],
            gamma: 0.1,
            scale_from_batch: None,
            warmup_epochs: 0.0,
        }
    }
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0) || !self.lr.is_finite() {
            return Err(Error::invalid(
                "lr",
                format!("{} must be positive", self.lr),
            ));
        }
        if !(self.gamma > 0.0) || !self.gamma.is_finite() {
            return Err(Error::invalid("lr gamma", "must be positive"));
        }
        if self.scale_from_batch == Some(0) {
            return Err(Error::invalid("lr scaling base batch", "must be ≥ 1"));
        }
        if !(self.warmup_epochs >= 0.0) || !self.warmup_epochs.is_finite() {
            return Err(Error::invalid("warmup epochs", "must be ≥ 0"));
        }
        Ok(())
    }
    /// The peak rate for batch size `batch` (after warm-up, before decay).
    pub fn peak(&self, batch: usize) -> f64 {
        match self.scale_from_batch {
            Some(b0) => self.lr * batch as f64 / b0 as f64,
            None => self.lr,
        }
    }
    /// The rate at fractional epoch `t` (epoch + fraction of its iterations done).
    pub fn at(&self, t: f64, batch: usize) -> f64 {
        let peak = self.peak(batch);
        let base = if self.scale_from_batch.is_some() && t < self.warmup_epochs {
            self.lr + (peak - self.lr) * t / self.warmup_epochs
        } else {
            peak
        };
        let decays = self.milestones.iter().filter(|&&m| t >= m as f64).count();
        base * self.gamma.powi(decays as i32)
    }
}
