//! Vectors in parameter space: one tensor per parameter, in the model's (name) order.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Elements per partial sum of [`host_dot`] (fixed, so results do not depend on threads).
const DOT_CHUNK: usize = 1 << 14;

/// Σ aᵢbᵢ in f64 over two contiguous CPU tensors of the same dtype (f32 or f64), or Σ aᵢ²
/// when `b` is `None`; `None` for anything else (the caller falls back to candle ops).
fn host_dot(a: &Tensor, b: Option<&Tensor>) -> Option<f64> {
    use candle_core::{CpuStorage, Storage};
    fn chunked<T: Copy + Into<f64> + Sync>(x: &[T], y: &[T]) -> f64 {
        let part = |(x, y): (&[T], &[T])| {
            // 4 independent sums: no single dependent chain of additions
            let mut acc = [0f64; 4];
            let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
            let (xr, yr) = (xc.remainder(), yc.remainder());
            for (u, v) in xc.zip(yc) {
                for j in 0..4 {
                    acc[j] += u[j].into() * v[j].into();
                }
            }
            let tail: f64 = xr.iter().zip(yr).map(|(&u, &v)| u.into() * v.into()).sum();
            (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
        };
        let parts: Vec<f64> = if x.len() > DOT_CHUNK {
            x.par_chunks(DOT_CHUNK)
                .zip(y.par_chunks(DOT_CHUNK))
                .map(part)
                .collect()
        } else {
            vec![part((x, y))]
        };
        parts.iter().sum()
    }
    if b.is_some_and(|b| b.id() == a.id()) {
        return host_dot(a, None);
    }
    let (sa, la) = a.storage_and_layout();
    let (a0, a1) = la.contiguous_offsets()?;
    let Some(b) = b else {
        // one lock: a read lock is not re-entrant
        return match &*sa {
            Storage::Cpu(CpuStorage::F32(x)) => Some(chunked(&x[a0..a1], &x[a0..a1])),
            Storage::Cpu(CpuStorage::F64(x)) => Some(chunked(&x[a0..a1], &x[a0..a1])),
            _ => None,
        };
    };
    if a.dims() != b.dims() {
        return None;
    }
    let (sb, lb) = b.storage_and_layout();
    let (b0, b1) = lb.contiguous_offsets()?;
    match (&*sa, &*sb) {
        (Storage::Cpu(CpuStorage::F32(x)), Storage::Cpu(CpuStorage::F32(y))) => {
            Some(chunked(&x[a0..a1], &y[b0..b1]))
        }
        (Storage::Cpu(CpuStorage::F64(x)), Storage::Cpu(CpuStorage::F64(y))) => {
            Some(chunked(&x[a0..a1], &y[b0..b1]))
        }
        _ => None,
    }
}

/// A vector in parameter space (or any list of tensors treated as one long vector).
/// All reductions are accumulated in f64.
#[derive(Clone, Debug)]
pub struct ParamVec(pub Vec<Tensor>);

impl ParamVec {
    pub fn tensors(&self) -> &[Tensor] {
        &self.0
    }
    pub fn into_tensors(self) -> Vec<Tensor> {
        self.0
    }
    /// Total number of scalars.
    pub fn len(&self) -> usize {
        self.0.iter().map(|t| t.elem_count()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn check(&self, o: &ParamVec) -> Result<()> {
        if self.0.len() != o.0.len() || self.0.iter().zip(&o.0).any(|(a, b)| a.dims() != b.dims()) {
            return Err(Error::Shape("parameter vectors of different shapes".into()));
        }
        Ok(())
    }
    /// Zeros shaped like `like`.
    pub fn zeros_like(like: &[Tensor]) -> Result<Self> {
        Ok(ParamVec(
            like.iter()
                .map(|t| t.zeros_like())
                .collect::<candle_core::Result<_>>()?,
        ))
    }
    /// Standard normal entries (seeded, ChaCha8; generated on the host for reproducibility
    /// across devices).
    pub fn randn_like(like: &[Tensor], seed: u64) -> Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal = rand_distr::StandardNormal;
        Self::from_fn(like, || rng.sample::<f64, _>(normal))
    }
    /// Rademacher (±1) entries (seeded).
    pub fn rademacher_like(like: &[Tensor], seed: u64) -> Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Self::from_fn(like, || if rng.random::<bool>() { 1.0 } else { -1.0 })
    }
    fn from_fn(like: &[Tensor], mut f: impl FnMut() -> f64) -> Result<Self> {
        let mut out = Vec::with_capacity(like.len());
        for t in like {
            let v: Vec<f64> = (0..t.elem_count()).map(|_| f()).collect();
            out.push(Tensor::from_vec(v, t.dims(), t.device())?.to_dtype(t.dtype())?);
        }
        Ok(ParamVec(out))
    }
    /// ⟨a, b⟩ = Σ aᵢbᵢ, accumulated in f64. One read of each vector, no temporaries (CPU;
    /// other devices use candle ops). Deterministic: fixed-size chunks summed in order,
    /// whatever the thread count.
    pub fn dot(&self, o: &ParamVec) -> Result<f64> {
        self.check(o)?;
        let mut s = 0.0;
        for (a, b) in self.0.iter().zip(&o.0) {
            s += match host_dot(a, Some(b)) {
                Some(d) => d,
                None => (a.to_dtype(DType::F64)? * b.to_dtype(DType::F64)?)?
                    .sum_all()?
                    .to_scalar::<f64>()?,
            };
        }
        Ok(s)
    }
    /// ‖a‖₂ (f64 accumulation, one read; see [`ParamVec::dot`]).
    pub fn norm(&self) -> Result<f64> {
        let mut s = 0.0;
        for a in &self.0 {
            s += match host_dot(a, None) {
                Some(d) => d,
                None => a
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?,
            };
        }
        Ok(s.sqrt())
    }
    /// α·a.
    pub fn scale(&self, alpha: f64) -> Result<ParamVec> {
        Ok(ParamVec(
            self.0
                .iter()
                .map(|t| t * alpha)
                .collect::<candle_core::Result<_>>()?,
        ))
    }
    /// a + α·b.
    pub fn axpy(&self, alpha: f64, b: &ParamVec) -> Result<ParamVec> {
        self.check(b)?;
        Ok(ParamVec(
            self.0
                .iter()
                .zip(&b.0)
                .map(|(x, y)| x + (y * alpha)?)
                .collect::<candle_core::Result<_>>()?,
        ))
    }
    /// a / (‖a‖ + 1e-6)·… exactly: a/‖a‖, or an error when ‖a‖ = 0 or is not finite.
    pub fn normalized(&self) -> Result<(ParamVec, f64)> {
        let n = self.norm()?;
        if !n.is_finite() {
            return Err(Error::NonFinite("vector norm".into()));
        }
        if n == 0.0 {
            return Err(Error::invalid("vector", "cannot normalise the zero vector"));
        }
        Ok((self.scale(1.0 / n)?, n))
    }
    /// Removes the components along orthonormal `basis` (classical Gram–Schmidt, applied twice
    /// for stability).
    pub fn orthogonalize(&self, basis: &[ParamVec]) -> Result<ParamVec> {
        let mut v = self.clone();
        for _ in 0..2 {
            for b in basis {
                let c = v.dot(b)?;
                v = v.axpy(-c, b)?;
            }
        }
        Ok(v)
    }
    /// Detached copies (no autograd history).
    pub fn detach(&self) -> ParamVec {
        ParamVec(self.0.iter().map(|t| t.detach()).collect())
    }
    /// All entries as one f64 vector (host).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(self.len());
        for t in &self.0 {
            out.extend(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?);
        }
        Ok(out)
    }
    /// One f64 `ndarray` array per parameter tensor, in the same shapes (e.g. an eigenvector
    /// per layer, for your own numerics).
    pub fn to_ndarray(&self) -> Result<Vec<ndarray::ArrayD<f64>>> {
        self.0.iter().map(crate::data::npy::to_ndarray).collect()
    }
    /// All entries as one flat f64 array (parameter order, each tensor row-major).
    pub fn to_flat_ndarray(&self) -> Result<ndarray::Array1<f64>> {
        Ok(ndarray::Array1::from_vec(self.to_f64_vec()?))
    }
    /// The inverse of [`ParamVec::to_f64_vec`]: shapes, dtype and device from `like`.
    pub fn from_f64_slice(v: &[f64], like: &[Tensor]) -> Result<ParamVec> {
        let n: usize = like.iter().map(|t| t.elem_count()).sum();
        if v.len() != n {
            return Err(Error::Shape(format!(
                "{} values for {n} parameters",
                v.len()
            )));
        }
        let mut out = Vec::with_capacity(like.len());
        let mut at = 0;
        for t in like {
            let k = t.elem_count();
            out.push(
                Tensor::from_slice(&v[at..at + k], t.dims(), &Device::Cpu)?
                    .to_dtype(t.dtype())?
                    .to_device(t.device())?,
            );
            at += k;
        }
        Ok(ParamVec(out))
    }
    /// Converts every tensor to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<ParamVec> {
        Ok(ParamVec(
            self.0
                .iter()
                .map(|t| t.to_dtype(dtype))
                .collect::<candle_core::Result<_>>()?,
        ))
    }
    /// Checks every entry is finite.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        let n = self.norm()?;
        if n.is_finite() {
            Ok(())
        } else {
            Err(Error::NonFinite(what.to_string()))
        }
    }
}
