//! IDX files (MNIST, Fashion-MNIST), gzipped or raw.

use crate::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Reads a whole file, gunzipping it when it starts with the gzip magic (1f 8b).
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = crate::files::read_regular(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::data(path, "file not found")
        } else {
            Error::io(path, e)
        }
    })?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::data(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IDX3 image file (magic 0x00000803, u8): returns (count, rows, cols, pixels).
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    if bytes.len() < 16 {
        return Err(Error::data(
            path,
            format!("truncated header: {} bytes, need 16", bytes.len()),
        ));
    }
    let magic = be_u32(bytes, 0);
    if magic != 0x0803 {
        return Err(Error::data(
            path,
            format!("wrong magic 0x{magic:08x} for an IDX image file (expected 0x00000803)"),
        ));
    }
    let (n, r, c) = (
        be_u32(bytes, 4) as usize,
        be_u32(bytes, 8) as usize,
        be_u32(bytes, 12) as usize,
    );
    let need = n
        .checked_mul(r)
        .and_then(|x| x.checked_mul(c))
        .ok_or_else(|| Error::data(path, "header dimensions overflow"))?;
    let body = &bytes[16..];
    if body.len() < need {
        return Err(Error::data(
            path,
            format!(
                "truncated: header says {n} images of {r}x{c} ({need} bytes) but only {} bytes follow",
                body.len()
            ),
        ));
    }
    if body.len() > need {
        return Err(Error::data(
            path,
            format!(
                "count mismatch: header says {n} images of {r}x{c} ({need} bytes) but {} bytes follow",
                body.len()
            ),
        ));
    }
    Ok((n, r, c, body.to_vec()))
}

/// Parses an IDX1 label file (magic 0x00000801, u8), checking each label is < `num_classes`.
pub fn parse_labels(path: &Path, bytes: &[u8], num_classes: usize) -> Result<Vec<u32>> {
    if bytes.len() < 8 {
        return Err(Error::data(
            path,
            format!("truncated header: {} bytes, need 8", bytes.len()),
        ));
    }
    let magic = be_u32(bytes, 0);
    if magic != 0x0801 {
        return Err(Error::data(
            path,
            format!("wrong magic 0x{magic:08x} for an IDX label file (expected 0x00000801)"),
        ));
    }
    let n = be_u32(bytes, 4) as usize;
    let body = &bytes[8..];
    if body.len() != n {
        return Err(Error::data(
            path,
            format!(
                "{}: header says {n} labels but {} bytes follow",
                if body.len() < n {
                    "truncated"
                } else {
                    "count mismatch"
                },
                body.len()
            ),
        ));
    }
    if let Some((i, &l)) = body
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        return Err(Error::data(
            path,
            format!("label out of range: sample {i} has label {l}, expected < {num_classes}"),
        ));
    }
    Ok(body.iter().map(|&l| l as u32).collect())
}
