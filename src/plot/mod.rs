//! Figures with plotters: line plots (log-y allowed), heat map + contours for 2-D surfaces,
//! spectral density, eigenvalue-vs-epoch, accuracy-vs-ε, image grids, and multi-panel figures.
//!
//! A [`Figure`] is an owned value (no borrows, so it lives across evcxr cells). It shows itself
//! inline in evcxr notebooks ([`Figure::evcxr_display`]: a PNG) and saves to PNG or SVG. Text
//! uses the DejaVu Sans font committed in `assets/fonts` (no system fonts needed). PNGs are
//! written with the best compression and adaptive filtering.

mod display;
mod render;

use crate::curvature::Density;
use crate::landscape::{Curve1d, Surface2d};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use std::path::Path;

/// One labelled line.
#[derive(Clone, Debug)]
pub struct Line {
    pub label: String,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Draw markers at the points.
    pub markers: bool,
    /// Dashed (reference values, e.g. the paper's).
    pub dashed: bool,
    /// Palette index; `None`: the line's position. Use [`colors`] so that the same quantity has
    /// the same colour in every figure.
    pub color: Option<usize>,
}

impl Line {
    /// A solid line without markers, coloured by its position.
    pub fn new(label: impl Into<String>, x: Vec<f64>, y: Vec<f64>) -> Line {
        Line {
            label: label.into(),
            x,
            y,
            markers: false,
            dashed: false,
            color: None,
        }
    }
    /// With markers at the points.
    pub fn markers(mut self) -> Line {
        self.markers = true;
        self
    }
    /// Dashed.
    pub fn dashed(mut self) -> Line {
        self.dashed = true;
        self
    }
    /// In palette colour `c` (see [`colors`]).
    pub fn color(mut self, c: usize) -> Line {
        self.color = Some(c);
        self
    }
}

/// Palette indices with one meaning across all figures.
pub mod colors {
    /// Training data; clean (standard) training.
    pub const TRAIN: usize = 0;
    /// Test data.
    pub const TEST: usize = 1;
    /// A batch (the data a Hessian was computed on).
    pub const BATCH: usize = 2;
    /// Robust (adversarial) training.
    pub const ROBUST: usize = 3;
    /// The paper's values (drawn dashed).
    pub const PAPER: usize = 7;
}

/// How an axis maps values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scale {
    #[default]
    Linear,
    /// Logarithmic, ends on powers of ten, labelled 10ᵏ.
    Log10,
    /// Logarithmic base 2, ticks at powers of two (batch sizes).
    Log2,
}

/// Pixels per figure unit in PNGs: 2, for high-DPI screens (SVGs are resolution-free).
pub const PNG_SCALE: u32 = 2;

/// A grayscale/RGB image in [0, 1], (C, H, W) with C ∈ {1, 3}, with an optional caption
/// drawn under it (e.g. the predicted class).
#[derive(Clone, Debug)]
pub struct Image {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
    pub caption: Option<String>,
    /// For a perturbation shown by [`Image::from_perturbation`]: the max |Δ| that the ends of
    /// the grey scale stand for (the grid draws a scale bar for its row).
    pub scale: Option<f64>,
}

#[derive(Clone, Debug)]
pub(crate) enum Spec {
    Lines {
        x_label: String,
        y_label: String,
        x_scale: Scale,
        y_scale: Scale,
        /// Fixed y range (accuracies: [0, 1]).
        y_range: Option<(f64, f64)>,
        lines: Vec<Line>,
    },
    Heatmap {
        x_label: String,
        y_label: String,
        x: Vec<f64>,
        y: Vec<f64>,
        z: Vec<Vec<f64>>,
        contours: usize,
    },
    Images {
        rows: Vec<(String, Vec<Image>)>,
    },
    Matrix {
        cols: Vec<String>,
        rows: Vec<String>,
        z: Vec<Vec<f64>>,
        z_label: String,
    },
    Panels {
        cols: usize,
        panels: Vec<Figure>,
    },
}

/// A figure: what to draw, its size and title. Rendered on demand.
#[derive(Clone, Debug)]
pub struct Figure {
    pub title: String,
    /// Size in figure units (PNG pixels ÷ [`PNG_SCALE`]).
    pub width: u32,
    pub height: u32,
    /// Small print under the plot, a row per line: the settings it was computed with.
    pub caption: Option<String>,
    pub(crate) spec: Spec,
}

fn check_len(x: &[f64], y: &[f64], what: &str) -> Result<()> {
    if x.len() != y.len() || x.is_empty() {
        return Err(Error::Shape(format!(
            "{what}: {} x values for {} y values",
            x.len(),
            y.len()
        )));
    }
    Ok(())
}

impl Figure {
    /// Line plot of labelled series (`log_y`: logarithmic y axis; non-positive values are
    /// dropped there).
    pub fn lines(
        title: &str,
        x_label: &str,
        y_label: &str,
        lines: Vec<Line>,
        log_y: bool,
    ) -> Result<Figure> {
        if lines.is_empty() {
            return Err(Error::invalid("lines", "need at least one series"));
        }
        for l in &lines {
            check_len(&l.x, &l.y, &l.label)?;
        }
        Ok(Figure {
            title: title.into(),
            width: 640,
            height: 420,
            caption: None,
            spec: Spec::Lines {
                x_label: x_label.into(),
                y_label: y_label.into(),
                x_scale: Scale::Linear,
                y_scale: if log_y { Scale::Log10 } else { Scale::Linear },
                y_range: None,
                lines,
            },
        })
    }

    /// Heat map of z[row = y][col = x] with `contours` iso-lines (marching squares).
    pub fn heatmap(
        title: &str,
        x_label: &str,
        y_label: &str,
        x: Vec<f64>,
        y: Vec<f64>,
        z: Vec<Vec<f64>>,
        contours: usize,
    ) -> Result<Figure> {
        if z.len() != y.len() || z.iter().any(|r| r.len() != x.len()) || x.len() < 2 || y.len() < 2
        {
            return Err(Error::Shape(
                "heat map: z must be |y| rows of |x| ≥ 2 values".into(),
            ));
        }
        Ok(Figure {
            title: title.into(),
            width: 600,
            height: 480,
            caption: None,
            spec: Spec::Heatmap {
                x_label: x_label.into(),
                y_label: y_label.into(),
                x,
                y,
                z,
                contours,
            },
        })
    }

    /// A labelled matrix (e.g. accuracy of each model under each attack): one coloured cell per
    /// value on [0, 1] with the value written in it, row and column names, a titled colour bar.
    pub fn matrix(
        title: &str,
        cols: &[String],
        rows: &[String],
        z: Vec<Vec<f64>>,
        z_label: &str,
    ) -> Result<Figure> {
        if z.len() != rows.len() || z.iter().any(|r| r.len() != cols.len()) || z.is_empty() {
            return Err(Error::Shape(format!(
                "matrix: {} rows of {} values expected",
                rows.len(),
                cols.len()
            )));
        }
        Ok(Figure {
            title: title.into(),
            width: 140 + 95 * cols.len() as u32 + 90,
            height: 110 + 44 * rows.len() as u32,
            caption: None,
            spec: Spec::Matrix {
                cols: cols.to_vec(),
                rows: rows.to_vec(),
                z,
                z_label: z_label.into(),
            },
        })
    }

    /// Several figures side by side in a grid of `cols` columns (one output per notebook cell).
    pub fn panels(panels: Vec<Figure>, cols: usize) -> Result<Figure> {
        if panels.is_empty() || cols == 0 {
            return Err(Error::invalid("panels", "need ≥ 1 panel and ≥ 1 column"));
        }
        let rows = panels.len().div_ceil(cols);
        let w = panels.iter().map(|p| p.width).max().unwrap_or(400);
        let h = panels.iter().map(|p| p.height).max().unwrap_or(300);
        Ok(Figure {
            title: String::new(),
            width: w * cols.min(panels.len()) as u32,
            height: h * rows as u32,
            caption: None,
            spec: Spec::Panels { cols, panels },
        })
    }

    /// Sets the size in pixels.
    pub fn with_size(mut self, width: u32, height: u32) -> Figure {
        self.width = width.max(64);
        self.height = height.max(64);
        self
    }

    /// A logarithmic x axis, base 2, ticks at powers of two (batch sizes).
    pub fn log2_x(mut self) -> Figure {
        if let Spec::Lines { x_scale, .. } = &mut self.spec {
            *x_scale = Scale::Log2;
        }
        self
    }
    /// A fixed y range (e.g. accuracies on [0, 1]).
    pub fn y_range(mut self, lo: f64, hi: f64) -> Figure {
        if let Spec::Lines { y_range, .. } = &mut self.spec {
            *y_range = Some((lo, hi));
        }
        self
    }
    /// Small print under the plot (data, samples, epochs, seed): a row per line (`\n`), in a
    /// font small enough for the longest line to fit the width.
    pub fn with_caption(mut self, caption: impl Into<String>) -> Figure {
        self.caption = Some(caption.into());
        self
    }

    /// PNG bytes at [`PNG_SCALE`]× the figure's size (RGB, best compression, adaptive filter).
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let (pw, ph) = (self.width * PNG_SCALE, self.height * PNG_SCALE);
        let (w, h) = (pw as usize, ph as usize);
        let mut buf = vec![255u8; w * h * 3];
        render::draw_bitmap(self, &mut buf)?;
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, pw, ph);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Best);
            enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
            let mut wr = enc.write_header().map_err(|e| Error::Plot(e.to_string()))?;
            wr.write_image_data(&buf)
                .map_err(|e| Error::Plot(e.to_string()))?;
        }
        Ok(out)
    }

    /// SVG text.
    pub fn to_svg(&self) -> Result<String> {
        render::draw_svg(self)
    }

    /// Saves as PNG or SVG, chosen by the extension (`.png` / `.svg`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let bytes = match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
        {
            Some(e) if e == "png" => self.to_png()?,
            Some(e) if e == "svg" => self.to_svg()?.into_bytes(),
            _ => {
                return Err(Error::invalid(
                    "path",
                    format!("{}: use a .png or .svg extension", path.display()),
                ))
            }
        };
        crate::files::write_atomic(path, &bytes)
    }

    /// Shows the figure inline in an evcxr (Jupyter) notebook as a PNG.
    pub fn evcxr_display(&self) {
        use base64::Engine;
        match self.to_png() {
            Ok(png) => println!(
                "EVCXR_BEGIN_CONTENT image/png\n{}\nEVCXR_END_CONTENT",
                base64::engine::general_purpose::STANDARD.encode(png)
            ),
            Err(e) => eprintln!("figure could not be rendered: {e}"),
        }
    }
}

/// Loss (and accuracy, dashed right panel) along a 1-D landscape curve, one line per source.
pub fn landscape_figure(
    curve: &Curve1d,
    title: &str,
    x_label: &str,
    log_y: bool,
) -> Result<Figure> {
    let lines = curve
        .series
        .iter()
        .map(|s| {
            let l = Line::new(s.label.clone(), curve.alphas.clone(), s.loss.clone());
            // train, test and batch keep their colours in every figure
            match s.label.split_whitespace().next() {
                Some("train") => l.color(colors::TRAIN),
                Some("test") => l.color(colors::TEST),
                Some("batch") => l.color(colors::BATCH),
                _ => l,
            }
        })
        .collect();
    let loss = Figure::lines(title, x_label, "loss", lines, log_y)?;
    if curve.lambda1.is_empty() {
        return Ok(loss);
    }
    let l1 = Figure::lines(
        "λ₁ᶿ along the path",
        x_label,
        "λ₁ᶿ",
        vec![Line::new("λ₁ᶿ", curve.alphas.clone(), curve.lambda1.clone()).markers()],
        log_y,
    )?;
    Figure::panels(vec![loss, l1], 2)
}

/// Heat map + contours of a 2-D loss surface.
pub fn surface_figure(s: &Surface2d, title: &str) -> Result<Figure> {
    Figure::heatmap(
        title,
        "α (d₁)",
        "β (d₂)",
        s.alphas.clone(),
        s.betas.clone(),
        s.loss.clone(),
        10,
    )
}

/// Spectral density on a log-y axis (density + 1e-7, as PyHessian plots it).
pub fn density_figure(d: &Density, title: &str) -> Result<Figure> {
    let y = d.density.iter().map(|v| v + 1e-7).collect();
    Figure::lines(
        title,
        "eigenvalue",
        "density",
        vec![Line::new("SLQ", d.grid.clone(), y)],
        true,
    )
}

/// Several spectral densities overlaid on one axis (log y, density + 1e-7), e.g. small vs large
/// batch or clean vs robust, each in the given palette colour.
pub fn densities_figure(title: &str, ds: &[(&str, &Density, usize)]) -> Result<Figure> {
    Figure::lines(
        title,
        "eigenvalue",
        "density",
        ds.iter()
            .map(|(label, d, c)| {
                Line::new(
                    *label,
                    d.grid.clone(),
                    d.density.iter().map(|v| v + 1e-7).collect(),
                )
                .color(*c)
            })
            .collect(),
        true,
    )
}

/// Accuracy vs ε for several attacks (or models), on [0, 1].
pub fn accuracy_vs_eps_figure(
    title: &str,
    series: Vec<(String, Vec<f64>, Vec<f64>)>,
) -> Result<Figure> {
    Ok(Figure::lines(
        title,
        "ε",
        "accuracy",
        series
            .into_iter()
            .map(|(label, x, y)| Line::new(label, x, y).markers())
            .collect(),
        false,
    )?
    .y_range(0.0, 1.0))
}

/// A quantity per epoch (e.g. λ₁^θ) for several runs, log-y optional.
pub fn per_epoch_figure(
    title: &str,
    y_label: &str,
    series: Vec<(String, Vec<f64>)>,
    log_y: bool,
) -> Result<Figure> {
    Figure::lines(
        title,
        "epoch",
        y_label,
        series
            .into_iter()
            .map(|(label, y)| {
                Line::new(label, (1..=y.len()).map(|e| e as f64).collect(), y).markers()
            })
            .collect(),
        log_y,
    )
}

impl Image {
    /// The images of a (N, C, H, W) tensor in [0, 1] (clamped).
    pub fn from_batch(t: &Tensor) -> Result<Vec<Image>> {
        let (n, c, h, w) = t.dims4()?;
        if c != 1 && c != 3 {
            return Err(Error::Shape(format!(
                "images need 1 or 3 channels, got {c}"
            )));
        }
        let v: Vec<f32> = t
            .to_dtype(DType::F32)?
            .clamp(0f32, 1f32)?
            .flatten_all()?
            .to_vec1()?;
        let d = c * h * w;
        Ok((0..n)
            .map(|i| Image {
                channels: c,
                height: h,
                width: w,
                data: v[i * d..(i + 1) * d].to_vec(),
                caption: None,
                scale: None,
            })
            .collect())
    }
    /// The same image with a caption under it.
    pub fn captioned(mut self, caption: impl Into<String>) -> Image {
        self.caption = Some(caption.into());
        self
    }
    /// Captions for a row of images, in order (e.g. "pred 7" per sample).
    pub fn caption_all(images: Vec<Image>, captions: &[String]) -> Vec<Image> {
        images
            .into_iter()
            .zip(captions)
            .map(|(i, c)| i.captioned(c.clone()))
            .collect()
    }
    /// A perturbation Δ mapped to [0, 1] for display: 0.5 + Δ/(2·max|Δ|) (gray = no change).
    pub fn from_perturbation(t: &Tensor) -> Result<Vec<Image>> {
        let m = t
            .abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            .max(1e-12);
        let mut imgs = Self::from_batch(&t.affine(0.5 / m, 0.5)?)?;
        for i in &mut imgs {
            i.scale = Some(m);
        }
        Ok(imgs)
    }
}

/// A grid of images: one labelled row per entry (e.g. clean / adversarial / perturbation).
pub fn image_grid(title: &str, rows: Vec<(String, Vec<Image>)>) -> Result<Figure> {
    if rows.is_empty() || rows.iter().any(|(_, r)| r.is_empty()) {
        return Err(Error::invalid("image grid", "need non-empty rows"));
    }
    let cols = rows.iter().map(|(_, r)| r.len()).max().unwrap_or(1);
    let cell = 72u32;
    let captioned = rows
        .iter()
        .flat_map(|(_, r)| r)
        .any(|i| i.caption.is_some());
    let row_h = cell + if captioned { 16 } else { 0 };
    let bar = rows.iter().flat_map(|(_, r)| r).any(|i| i.scale.is_some());
    Ok(Figure {
        title: title.into(),
        width: 110 + cell * cols as u32 + if bar { 90 } else { 0 },
        height: 40 + row_h * rows.len() as u32,
        caption: None,
        spec: Spec::Images { rows },
    })
}
