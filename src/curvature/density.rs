//! Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019; PyHessian).

use super::eigen::{lanczos_run, tridiag_eigen};
use super::operator::CurvatureOperator;
use super::vector::ParamVec;
use crate::{Error, Result};
use serde::Serialize;

/// Options of [`density`] (PyHessian's defaults: 100 Lanczos steps, 1 run, σ² = 1e-5,
/// 10,000 grid points).
#[derive(Clone, Debug)]
pub struct SlqOpts {
    pub iter: usize,
    pub runs: usize,
    /// Gaussian kernel variance factor: σ² = sigma_sq · max(1, λmax − λmin).
    pub sigma_sq: f64,
    pub grid: usize,
    pub seed: u64,
}

impl SlqOpts {
    /// Checks the options alone (call it before a long computation that precedes the density).
    pub fn validate(&self) -> Result<()> {
        if self.iter == 0 || self.runs == 0 || self.grid < 2 || !(self.sigma_sq > 0.0) {
            return Err(Error::invalid(
                "SLQ options",
                "iter, runs ≥ 1, grid ≥ 2 and sigma_sq > 0 required",
            ));
        }
        Ok(())
    }
}

impl Default for SlqOpts {
    fn default() -> Self {
        SlqOpts {
            iter: 100,
            runs: 1,
            sigma_sq: 1e-5,
            grid: 10_000,
            seed: 0,
        }
    }
}

/// A smoothed spectral density on a grid (unit area), with the quadrature nodes and weights.
#[derive(Clone, Debug, Serialize)]
pub struct Density {
    pub grid: Vec<f64>,
    pub density: Vec<f64>,
    /// Ritz values of each run.
    pub nodes: Vec<Vec<f64>>,
    /// Quadrature weights (squared first components of T's eigenvectors) of each run; each
    /// run's weights sum to 1.
    pub weights: Vec<Vec<f64>>,
    pub sigma_sq: f64,
    pub hvps: usize,
}

impl Density {
    /// ∫ t^k φ(t) dt by the quadrature (exact in expectation for the true spectrum's moments
    /// (1/n) tr(Hᵏ) for k < 2·iter).
    pub fn moment(&self, k: i32) -> f64 {
        let r = self.nodes.len() as f64;
        self.nodes
            .iter()
            .zip(&self.weights)
            .map(|(n, w)| n.iter().zip(w).map(|(a, b)| b * a.powi(k)).sum::<f64>())
            .sum::<f64>()
            / r
    }
}

/// Stochastic Lanczos quadrature: `runs` Lanczos runs of `iter` steps (full
/// re-orthogonalisation) from Rademacher starts; nodes = Ritz values, weights = squared first
/// components; Gaussian smoothing with variance σ² = sigma_sq·max(1, λmax−λmin) on a grid that
/// extends 5σ past the extreme nodes; normalised to unit area.
///
/// Cost: runs × iter HVPs.
pub fn density(op: &dyn CurvatureOperator, opts: &SlqOpts) -> Result<Density> {
    opts.validate()?;
    let start = op.matvecs();
    let mut nodes = vec![];
    let mut weights = vec![];
    for r in 0..opts.runs {
        let v = ParamVec::rademacher_like(op.like(), opts.seed.wrapping_add(r as u64))?;
        let k = lanczos_run(op, &v, opts.iter, |_, _, _| false)?;
        let (vals, vecs) = tridiag_eigen(&k.alphas, &k.betas);
        let w: Vec<f64> = (0..vals.len()).map(|c| vecs[(0, c)].powi(2)).collect();
        nodes.push(vals);
        weights.push(w);
    }
    let lmin = nodes
        .iter()
        .flatten()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    let lmax = nodes
        .iter()
        .flatten()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    let sigma_sq = opts.sigma_sq * (lmax - lmin).max(1.0);
    let sigma = sigma_sq.sqrt();
    let (lo, hi) = (lmin - 5.0 * sigma - 0.01, lmax + 5.0 * sigma + 0.01);
    let step = (hi - lo) / (opts.grid - 1) as f64;
    let grid: Vec<f64> = (0..opts.grid).map(|i| lo + i as f64 * step).collect();
    let norm = 1.0 / (2.0 * std::f64::consts::PI * sigma_sq).sqrt();
    let mut dens = vec![0.0; opts.grid];
    for (ns, ws) in nodes.iter().zip(&weights) {
        for (&t, &w) in ns.iter().zip(ws) {
            for (g, d) in grid.iter().zip(dens.iter_mut()) {
                let e = (g - t) * (g - t) / (2.0 * sigma_sq);
                if e < 50.0 {
                    *d += w * norm * (-e).exp() / opts.runs as f64;
                }
            }
        }
    }
    let area: f64 = dens.iter().sum::<f64>() * step;
    if area > 0.0 {
        dens.iter_mut().for_each(|d| *d /= area);
    }
    if !area.is_finite() || nodes.iter().flatten().any(|x| !x.is_finite()) {
        return Err(Error::NonFinite("spectral density (SLQ nodes)".into()));
    }
    Ok(Density {
        grid,
        density: dens,
        nodes,
        weights,
        sigma_sq,
        hvps: op.matvecs() - start,
    })
}
