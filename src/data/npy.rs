//! Your own data from NumPy `.npy` files (through `ndarray` and `ndarray-npy`), and tensors
//! back to `ndarray` arrays for your own numerics.
//!
//! ```python
//! np.save("x.npy", x.astype(np.float32))   # (N, C, H, W) images or (N, D) features
//! np.save("y.npy", y.astype(np.int64))     # (N,) labels in 0..C
//! ```
//!
//! Inputs are taken as they are (no scaling): attacks clip to the network's input box, [0, 1]
//! unless the network says otherwise.

use super::Split;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyError, ReadNpyExt};
use std::path::Path;

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| Error::io(path, e))
}

/// Reads an array of element type `T`; `Ok(None)` when the file holds another dtype.
fn read_as<T: ndarray_npy::ReadableElement>(path: &Path) -> Result<Option<ArrayD<T>>> {
    match ArrayD::<T>::read_npy(open(path)?) {
        Ok(a) => Ok(Some(a)),
        Err(ReadNpyError::WrongDescriptor(_)) => Ok(None),
        Err(e) => Err(Error::data(path, format!("not a readable .npy file: {e}"))),
    }
}

/// A standard-layout copy's values (C order, whatever the file's order).
fn values<T: Clone>(a: ArrayD<T>) -> Vec<T> {
    a.as_standard_layout().iter().cloned().collect()
}

/// Integer labels of any integer dtype, checked to be ≥ 0 and to fit u32.
fn read_labels(path: &Path) -> Result<Vec<u32>> {
    macro_rules! try_int {
        ($($t:ty),*) => {$(
            if let Some(a) = read_as::<$t>(path)? {
                if a.ndim() != 1 {
                    return Err(Error::data(path, format!("labels must be 1-D (N,), got shape {:?}", a.shape())));
                }
                return a
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        u32::try_from(v).map_err(|_| {
                            Error::invalid("labels", format!("{}: label {i} is {v}, not a class index ≥ 0", path.display()))
                        })
                    })
                    .collect();
            }
        )*};
    }
    try_int!(i64, i32, u8, u32, u64, i16, u16, i8);
    Err(Error::data(
        path,
        "labels must be integers (int8 … int64, uint8 … uint64); convert with y.astype(np.int64)",
    ))
}

/// Loads inputs `x` (float32 or float64, (N, C, H, W) or (N, D)) and labels `y` (integers,
/// (N,)) from `.npy` files as a [`Split`] named after the inputs' file. The number of classes is
/// `num_classes`, or max(y) + 1 when `None`. Errors name the file and what is wrong: dtype,
/// rank, sample count, a label out of range, a NaN or infinite input.
pub fn load_npy(
    x_path: impl AsRef<Path>,
    y_path: impl AsRef<Path>,
    num_classes: Option<usize>,
) -> Result<Split> {
    let (xp, yp) = (x_path.as_ref(), y_path.as_ref());
    let labels = read_labels(yp)?;
    let (shape, inputs): (Vec<usize>, super::FloatVec) = if let Some(a) = read_as::<f32>(xp)? {
        (a.shape().to_vec(), values(a).into())
    } else if let Some(a) = read_as::<f64>(xp)? {
        (a.shape().to_vec(), values(a).into())
    } else {
        return Err(Error::data(
            xp,
            "inputs must be float32 or float64; convert with x.astype(np.float32)",
        ));
    };
    if !(shape.len() == 2 || shape.len() == 4) {
        return Err(Error::data(
            xp,
            format!("inputs must be (N, C, H, W) or (N, D), got shape {shape:?}"),
        ));
    }
    if shape[0] != labels.len() {
        return Err(Error::Shape(format!(
            "{} has {} samples but {} has {} labels",
            xp.display(),
            shape[0],
            yp.display(),
            labels.len()
        )));
    }
    if labels.is_empty() {
        return Err(Error::Empty(format!("{} has no samples", xp.display())));
    }
    let seen = labels.iter().copied().max().unwrap_or(0) as usize + 1;
    let classes = num_classes.unwrap_or(seen.max(2));
    let name = xp
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "npy".into());
    Split::from_floats(&name, &shape[1..], classes, inputs, labels)
}

/// A tensor's values as an f64 `ndarray` array of the same shape (copied to the host).
pub fn to_ndarray(t: &Tensor) -> Result<ArrayD<f64>> {
    let v: Vec<f64> = t
        .to_device(&candle_core::Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    ArrayD::from_shape_vec(IxDyn(t.dims()), v).map_err(|e| Error::Shape(e.to_string()))
}
