//! CIFAR-10 / CIFAR-100 binary record layouts.
//!
//! CIFAR-10: records of 1 label byte + 3072 pixel bytes (R plane, G plane, B plane, 32x32 each).
//! CIFAR-100: records of 1 coarse label byte + 1 fine label byte + 3072 pixel bytes; we use the
//! fine label (100 classes).

use crate::data::idx::read_maybe_gz;
use crate::{Error, Result};
use std::path::Path;

pub const PIXELS: usize = 3 * 32 * 32;

/// Parses one CIFAR binary file. `label_bytes` is 1 (CIFAR-10) or 2 (CIFAR-100, fine label last).
pub fn parse_records(
    path: &Path,
    label_bytes: usize,
    num_classes: usize,
) -> Result<(Vec<u8>, Vec<u32>)> {
    let bytes = read_maybe_gz(path)?;
    let rec = label_bytes + PIXELS;
    if bytes.is_empty() {
        return Err(Error::data(path, "empty file: no records"));
    }
    if bytes.len() % rec != 0 {
        return Err(Error::data(
            path,
            format!(
                "truncated: {} bytes is not a whole number of {rec}-byte records ({} full records + {} bytes)",
                bytes.len(),
                bytes.len() / rec,
                bytes.len() % rec
            ),
        ));
    }
    let n = bytes.len() / rec;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let l = r[label_bytes - 1];
        if l as usize >= num_classes {
            return Err(Error::data(
                path,
                format!("label out of range: record {i} has label {l}, expected < {num_classes}"),
            ));
        }
        labels.push(l as u32);
        images.extend_from_slice(&r[label_bytes..]);
    }
    Ok((images, labels))
}
