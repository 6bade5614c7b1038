//! Rendering of figure specs onto any plotters backend (bitmap or SVG).

use super::{Figure, Image, Line, Scale, Spec, PNG_SCALE};
use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for style in [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ] {
            let _ = plotters::style::register_font("sans-serif", style, FONT);
        }
    });
}

fn perr<E: std::fmt::Debug>(e: E) -> Error {
    Error::Plot(format!("{e:?}"))
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

pub(super) fn draw_bitmap(fig: &Figure, buf: &mut [u8]) -> Result<()> {
    register_font();
    let size = (fig.width * PNG_SCALE, fig.height * PNG_SCALE);
    let root = BitMapBackend::with_buffer(buf, size).into_drawing_area();
    draw(fig, &root, PNG_SCALE as f64)?;
    root.present().map_err(perr)
}

pub(super) fn draw_svg(fig: &Figure) -> Result<String> {
    register_font();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (fig.width, fig.height)).into_drawing_area();
        draw(fig, &root, 1.0)?;
        root.present().map_err(perr)?;
    }
    Ok(s)
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 * hi.abs().max(1.0) {
        let d = hi.abs().max(1.0) * 0.05;
        return (lo - d, hi + d);
    }
    (lo, hi)
}

/// `v` with `sig` significant digits (contour labels).
fn fmt_sig(v: f64, sig: usize) -> String {
    if v == 0.0 || !v.is_finite() {
        return fmt_num(&v);
    }
    let mag = v.abs().log10().floor() as i32;
    let decimals = (sig as i32 - 1 - mag).max(0) as usize;
    fmt_num(&format!("{v:.decimals$}").parse::<f64>().unwrap_or(v))
}

/// Compact tick labels: 4 significant digits, scientific outside [1e-3, 1e4).
pub(crate) fn fmt_num(v: &f64) -> String {
    let a = v.abs();
    if a < 1e-12 {
        return "0".into(); // also rounding residue such as −5.6e-17 on a grid through 0
    }
    if !(1e-3..1e4).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{:.4}", v);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Sizes (fonts, margins, strokes) are in figure units times `k` (the PNG scale).
fn draw<DB: DrawingBackend>(fig: &Figure, area: &DrawingArea<DB, Shift>, k: f64) -> Result<()> {
    area.fill(&WHITE).map_err(perr)?;
    let area = match &fig.caption {
        Some(c) => {
            let (pw, ph) = area.dim_in_pixel();
            // one row of small print per line of the caption
            let lines: Vec<&str> = c.lines().collect();
            let rows = lines.len().max(1);
            let row_h = 14.0;
            let strip = px(k, 20.0 + row_h * (rows - 1) as f64) as u32;
            let (top, bottom) = area.split_vertically(ph.saturating_sub(strip));
            // a long line gets a smaller font rather than running off the figure (DejaVu
            // Sans averages ~0.56 em per character); all lines share the smallest
            let chars = lines
                .iter()
                .map(|l| l.chars().count())
                .max()
                .unwrap_or(1)
                .max(1) as f64;
            let size = (k * 11.0)
                .min((pw as f64 - k * 20.0) / (0.56 * chars))
                .max(k * 6.0);
            for (i, line) in lines.iter().enumerate() {
                bottom
                    .draw(&Text::new(
                        pretty(line),
                        (px(k, 10.0), px(k, 4.0 + row_h * i as f64)),
                        ("sans-serif", size)
                            .into_font()
                            .color(&RGBColor(90, 90, 90)),
                    ))
                    .map_err(perr)?;
            }
            top
        }
        None => area.clone(),
    };
    match &fig.spec {
        Spec::Lines {
            x_label,
            y_label,
            x_scale,
            y_scale,
            y_range,
            lines,
        } => draw_lines(
            &area,
            &fig.title,
            (x_label, y_label),
            (*x_scale, *y_scale),
            *y_range,
            lines,
            k,
        ),
        Spec::Heatmap {
            x_label,
            y_label,
            x,
            y,
            z,
            contours,
        } => draw_heatmap(&area, &fig.title, x_label, y_label, x, y, z, *contours, k),
        Spec::Images { rows } => draw_images(&area, &fig.title, rows, k),
        Spec::Matrix {
            cols,
            rows,
            z,
            z_label,
        } => draw_matrix(&area, &fig.title, cols, rows, z, z_label, k),
        Spec::Panels { cols, panels } => {
            let rows = panels.len().div_ceil(*cols);
            let cells = area.split_evenly((rows, (*cols).min(panels.len())));
            for (p, c) in panels.iter().zip(cells.iter()) {
                draw(p, c, k)?;
            }
            Ok(())
        }
    }
}

/// The legend as a column beside the plot (when it would cover a line inside).
fn draw_side_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lines: &[Line],
    k: f64,
) -> Result<()> {
    for (i, l) in lines.iter().enumerate() {
        let c = PALETTE[l.color.unwrap_or(i) % PALETTE.len()];
        let y = px(k, 60.0 + 22.0 * i as f64);
        let (x0, x1) = (px(k, 4.0), px(k, 22.0));
        let w = px(k, 2.0) as u32;
        if l.dashed {
            let mid = (x0 + x1) / 2;
            area.draw(&PathElement::new(
                vec![(x0, y), (mid - px(k, 2.0), y)],
                c.stroke_width(w),
            ))
            .map_err(perr)?;
            area.draw(&PathElement::new(
                vec![(mid + px(k, 2.0), y), (x1, y)],
                c.stroke_width(w),
            ))
            .map_err(perr)?;
        } else {
            area.draw(&PathElement::new(vec![(x0, y), (x1, y)], c.stroke_width(w)))
                .map_err(perr)?;
        }
        area.draw(&Text::new(
            pretty(&l.label),
            (px(k, 28.0), y - px(k, 7.0)),
            ("sans-serif", k * 12.0),
        ))
        .map_err(perr)?;
    }
    Ok(())
}

/// Caret notation as real superscripts: λ₁^θ → λ₁ᶿ, λ₁^x → λ₁ˣ (the glyphs are in the shipped
/// DejaVu Sans).
pub(crate) fn pretty(s: &str) -> String {
    s.replace("^θ", "ᶿ")
        .replace("^x", "ˣ")
        .replace("^{θ}", "ᶿ")
        .replace("^{x}", "ˣ")
}

/// Figure units to pixels.
fn px(k: f64, v: f64) -> i32 {
    (k * v).round() as i32
}

const SUPERSCRIPT: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];

/// 10ᵏ with a superscript exponent.
pub(crate) fn pow10_label(e: i32) -> String {
    let digits: String = e
        .unsigned_abs()
        .to_string()
        .chars()
        .filter_map(|c| c.to_digit(10).map(|d| SUPERSCRIPT[d as usize]))
        .collect();
    format!("10{}{digits}", if e < 0 { "⁻" } else { "" })
}

/// Log-axis labels: powers of ten as 10ᵏ, nothing in between (the ends are always decades).
fn log10_label(v: &f64) -> String {
    let e = v.log10().round();
    if v.is_finite() && *v > 0.0 && (v.log10() - e).abs() < 1e-6 {
        pow10_label(e as i32)
    } else {
        String::new()
    }
}

/// Log₂-axis labels (the axis carries log₂ x): 2ᵏ as a number at integer k.
fn log2_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", 2f64.powi(v.round() as i32))
    } else {
        String::new()
    }
}

/// Where the legend covers no line: the first corner (upper right, upper left, lower right,
/// lower left of the plot's normalised [0, 1]²) whose legend-sized box holds no point of the
/// densely sampled lines; `None` when every corner does (the legend then goes beside the plot).
fn legend_position(
    lines: &[Vec<(f64, f64)>],
    n_lines: usize,
    longest: usize,
) -> Option<SeriesLabelPosition> {
    let (bw, bh) = (
        (0.06 + 0.018 * longest as f64).min(0.6),
        (0.065 * n_lines as f64 + 0.03).min(0.7),
    );
    let mut pts = vec![];
    for l in lines {
        for w in l.windows(2) {
            for t in 0..=16 {
                let f = t as f64 / 16.0;
                pts.push((
                    w[0].0 + f * (w[1].0 - w[0].0),
                    w[0].1 + f * (w[1].1 - w[0].1),
                ));
            }
        }
        pts.extend(l.iter().copied());
    }
    let free = |x0: f64, y0: f64| {
        !pts.iter().any(|(x, y)| {
            *x >= x0 - 0.02 && *x <= x0 + bw + 0.02 && *y >= y0 - 0.02 && *y <= y0 + bh + 0.02
        })
    };
    [
        (SeriesLabelPosition::UpperRight, 1.0 - bw, 1.0 - bh),
        (SeriesLabelPosition::UpperLeft, 0.0, 1.0 - bh),
        (SeriesLabelPosition::LowerRight, 1.0 - bw, 0.0),
        (SeriesLabelPosition::LowerLeft, 0.0, 0.0),
    ]
    .into_iter()
    .find(|(_, x0, y0)| free(*x0, *y0))
    .map(|(p, _, _)| p)
}

fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    (xl, yl): (&str, &str),
    (x_scale, y_scale): (Scale, Scale),
    y_range: Option<(f64, f64)>,
    lines: &[Line],
    k: f64,
) -> Result<()> {
    let log_y = y_scale == Scale::Log10;
    let log2_x = x_scale == Scale::Log2;
    let tx = |x: f64| if log2_x { x.log2() } else { x };
    let keep = |y: f64| y.is_finite() && (!log_y || y > 0.0);
    // points in axis coordinates (log₂ x on a linear axis for batch sizes)
    let series: Vec<Vec<(f64, f64)>> = lines
        .iter()
        .map(|l| {
            l.x.iter()
                .zip(&l.y)
                .filter(|(x, y)| keep(**y) && tx(**x).is_finite())
                .map(|(x, y)| (tx(*x), *y))
                .collect()
        })
        .collect();
    let (mut x0, mut x1) = range(series.iter().flatten().map(|p| p.0));
    let (y0, y1) = match y_range {
        Some(r) => r,
        None => range(series.iter().flatten().map(|p| p.1)),
    };
    // a little room left and right, so that a spike at the end is not drawn on the frame
    let pad = if log2_x { 0.3 } else { (x1 - x0) * 0.03 };
    x0 -= pad;
    x1 += pad;
    let (y0, y1) = if log_y {
        // whole decades: both ends are labelled
        let lo = y0.max(y1 * 1e-15).max(f64::MIN_POSITIVE);
        let (e0, e1) = (
            lo.log10().floor(),
            y1.log10().ceil().max(lo.log10().floor() + 1.0),
        );
        // a hair outside the decades, so that both end labels are drawn
        (
            10f64.powi(e0 as i32) * (1.0 - 1e-9),
            10f64.powi(e1 as i32) * (1.0 + 1e-9),
        )
    } else if y_range.is_some() {
        (y0, y1)
    } else {
        let p = (y1 - y0) * 0.05;
        (y0 - p, y1 + p)
    };
    // normalised point positions, for the legend's corner
    let ny = |y: f64| {
        if log_y {
            (y.log10() - y0.log10()) / (y1.log10() - y0.log10())
        } else {
            (y - y0) / (y1 - y0)
        }
    };
    let norm: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|l| {
            l.iter()
                .map(|&(x, y)| ((x - x0) / (x1 - x0), ny(y)))
                .collect()
        })
        .collect();
    let longest = lines
        .iter()
        .map(|l| l.label.chars().count())
        .max()
        .unwrap_or(0);
    let show_legend = lines.len() > 1;
    let legend_at = legend_position(&norm, lines.len(), longest);
    // no free corner: the legend goes in a strip right of the plot
    let (area, strip) = if show_legend && legend_at.is_none() {
        let w = px(k, 30.0 + 7.0 * longest as f64) as u32;
        let (a, b) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(w));
        (a, Some(b))
    } else {
        (area.clone(), None)
    };
    let plot_px = area.dim_in_pixel().0 as f64;
    let mut b = ChartBuilder::on(&area);
    b.caption(pretty(title), ("sans-serif", k * 18.0))
        .margin(px(k, 12.0))
        .x_label_area_size(px(k, 40.0))
        .y_label_area_size(px(k, 62.0));
    let (xl, yl) = (pretty(xl), pretty(yl));
    macro_rules! body {
        ($chart:expr, $xfmt:expr, $yfmt:expr, $xn:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(&xl)
                .y_desc(&yl)
                .label_style(("sans-serif", k * 12.0))
                .axis_desc_style(("sans-serif", k * 14.0))
                .bold_line_style(RGBColor(225, 225, 225).stroke_width(px(k, 1.0) as u32))
                // no minor grid: a major grid is enough to read values off
                .light_line_style(TRANSPARENT)
                .x_max_light_lines(0)
                .y_max_light_lines(0)
                .x_labels($xn)
                .x_label_formatter($xfmt)
                .y_label_formatter($yfmt)
                .draw()
                .map_err(perr)?;
            for (i, (l, pts)) in lines.iter().zip(&series).enumerate() {
                let c = PALETTE[l.color.unwrap_or(i) % PALETTE.len()];
                // A dense zigzag (an SLQ density over a wide range) drawn thick gets miter
                // spikes far outside the frame at its sharp turns: thin lines have no joins.
                let dense = pts.len() as f64 > 0.25 * plot_px;
                let stroke = c.stroke_width(if dense { 1 } else { px(k, 2.0) as u32 });
                let drawn = if l.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(
                            pts.clone(),
                            px(k, 6.0) as u32,
                            px(k, 4.0) as u32,
                            stroke,
                        ))
                        .map_err(perr)?
                } else {
                    chart
                        .draw_series(LineSeries::new(pts.clone(), stroke))
                        .map_err(perr)?
                };
                let (dashed, w) = (l.dashed, px(k, 2.0) as u32);
                drawn.label(pretty(&l.label)).legend(move |(x, y)| {
                    let seg = if dashed { 8 } else { 18 };
                    PathElement::new(vec![(x, y), (x + seg, y)], c.stroke_width(w))
                });
                if l.markers {
                    let r = px(k, 3.0);
                    chart
                        .draw_series(pts.iter().map(|p| Circle::new(*p, r, c.filled())))
                        .map_err(perr)?;
                }
            }
            if let (true, Some(at)) = (show_legend, legend_at) {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.9))
                    .border_style(BLACK.mix(0.3))
                    .label_font(("sans-serif", k * 12.0))
                    .position(at)
                    .draw()
                    .map_err(perr)?;
            }
        }};
    }
    if let Some(strip) = &strip {
        draw_side_legend(strip, lines, k)?;
    }
    let xn = if log2_x {
        ((x1 - x0).round() as usize + 1).max(2)
    } else {
        8
    };
    let xfmt: &dyn Fn(&f64) -> String = if log2_x { &log2_label } else { &fmt_num };
    if log_y {
        body!(
            b.build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(perr)?,
            xfmt,
            &log10_label,
            xn
        );
    } else {
        body!(
            b.build_cartesian_2d(x0..x1, y0..y1).map_err(perr)?,
            xfmt,
            &fmt_num,
            xn
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    xl: &str,
    yl: &str,
    x: &[f64],
    y: &[f64],
    z: &[Vec<f64>],
    contours: usize,
    k: f64,
) -> Result<()> {
    let (x0, x1) = range(x.iter().copied());
    let (y0, y1) = range(y.iter().copied());
    let (z0, z1) = range(z.iter().flatten().copied());
    let bar_w = px(k, 110.0) as u32;
    let (main, bar) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(bar_w));
    let mut chart = ChartBuilder::on(&main)
        .caption(pretty(title), ("sans-serif", k * 18.0))
        .margin(px(k, 12.0))
        .x_label_area_size(px(k, 40.0))
        .y_label_area_size(px(k, 52.0))
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(perr)?;
    chart
        .configure_mesh()
        .x_desc(xl)
        .y_desc(yl)
        .disable_mesh()
        .x_label_formatter(&fmt_num)
        .y_label_formatter(&fmt_num)
        .label_style(("sans-serif", k * 12.0))
        .axis_desc_style(("sans-serif", k * 14.0))
        .draw()
        .map_err(perr)?;
    // Each grid cell drawn as 4×4 sub-cells coloured by bilinear interpolation of the four
    // surrounding grid values: a smooth map from a coarse grid (the values are the grid's).
    const SUB: usize = 4;
    let colour = |v: f64| {
        if v.is_finite() {
            ViridisRGB.get_color_normalized(v as f32, z0 as f32, z1 as f32)
        } else {
            RGBColor(255, 255, 255)
        }
    };
    let mut cells = vec![];
    for j in 0..y.len().saturating_sub(1) {
        for i in 0..x.len().saturating_sub(1) {
            let (za, zb, zc, zd) = (z[j][i], z[j][i + 1], z[j + 1][i], z[j + 1][i + 1]);
            for sj in 0..SUB {
                for si in 0..SUB {
                    let (u, w) = (
                        (si as f64 + 0.5) / SUB as f64,
                        (sj as f64 + 0.5) / SUB as f64,
                    );
                    let v = (1.0 - w) * ((1.0 - u) * za + u * zb) + w * ((1.0 - u) * zc + u * zd);
                    let xa = x[i] + (x[i + 1] - x[i]) * si as f64 / SUB as f64;
                    let xb = x[i] + (x[i + 1] - x[i]) * (si + 1) as f64 / SUB as f64;
                    let ya = y[j] + (y[j + 1] - y[j]) * sj as f64 / SUB as f64;
                    let yb = y[j] + (y[j + 1] - y[j]) * (sj + 1) as f64 / SUB as f64;
                    cells.push(Rectangle::new([(xa, ya), (xb, yb)], colour(v).filled()));
                }
            }
        }
    }
    chart.draw_series(cells).map_err(perr)?;
    // Contours at quantiles of z (loss surfaces are steep at the rim and flat in the basin:
    // evenly spaced levels would all crowd the rim), each labelled with its level where it is
    // farthest from the labels already placed.
    let mut placed: Vec<(f64, f64)> = vec![];
    let (sx, sy) = ((x1 - x0).max(1e-300), (y1 - y0).max(1e-300));
    for level in quantile_levels(z, contours) {
        let segs = marching_squares(x, y, z, level);
        if segs.is_empty() {
            continue;
        }
        let dist = |p: (f64, f64)| {
            placed
                .iter()
                .map(|q| ((p.0 - q.0) / sx).hypot((p.1 - q.1) / sy))
                .fold(f64::INFINITY, f64::min)
        };
        // inside the frame with room for the text, as far as possible from other labels
        let at = segs
            .iter()
            .map(|s| s.0)
            .filter(|p| p.0 < x1 - 0.12 * sx && p.1 < y1 - 0.05 * sy && p.1 > y0 + 0.03 * sy)
            .max_by(|a, b| dist(*a).total_cmp(&dist(*b)))
            .unwrap_or(segs[0].0);
        placed.push(at);
        chart
            .draw_series(segs.into_iter().map(|s| {
                PathElement::new(
                    vec![s.0, s.1],
                    WHITE.mix(0.85).stroke_width(px(k, 1.0) as u32),
                )
            }))
            .map_err(perr)?;
        chart
            .draw_series(std::iter::once(Text::new(
                fmt_sig(level, 3),
                at,
                ("sans-serif", k * 10.0).into_font().color(&WHITE),
            )))
            .map_err(perr)?;
    }
    // Colour bar with its title, labels inside the figure.
    let mut cb = ChartBuilder::on(&bar)
        .margin_top(px(k, 40.0))
        .margin_bottom(px(k, 52.0))
        .margin_right(px(k, 6.0))
        .y_label_area_size(px(k, 60.0))
        .caption(z_title(title), ("sans-serif", k * 12.0))
        .build_cartesian_2d(0.0..1.0, z0..z1)
        .map_err(perr)?;
    cb.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_label_formatter(&fmt_num)
        .label_style(("sans-serif", k * 11.0))
        .draw()
        .map_err(perr)?;
    let steps = 64;
    cb.draw_series((0..steps).map(|i| {
        let a = z0 + (z1 - z0) * i as f64 / steps as f64;
        let b = z0 + (z1 - z0) * (i + 1) as f64 / steps as f64;
        Rectangle::new(
            [(0.0, a), (1.0, b)],
            ViridisRGB
                .get_color_normalized(a as f32, z0 as f32, z1 as f32)
                .filled(),
        )
    }))
    .map_err(perr)?;
    Ok(())
}

/// The colour bar's title: what the map shows ("loss" unless the title says otherwise).
fn z_title(title: &str) -> &'static str {
    if title.contains("accuracy") {
        "accuracy"
    } else {
        "loss"
    }
}

/// `n` contour levels at the quantiles (k/(n+1)) of the finite z values.
pub(crate) fn quantile_levels(z: &[Vec<f64>], n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = z
        .iter()
        .flatten()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    if v.len() < 2 || n == 0 {
        return vec![];
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mut out: Vec<f64> = (1..=n)
        .map(|i| v[((v.len() - 1) as f64 * i as f64 / (n + 1) as f64).round() as usize])
        .collect();
    out.dedup();
    out
}

/// A labelled matrix of values on [0, 1]: viridis cells with the value in each, row names on
/// the left, column names on top, a titled colour bar on the right.
fn draw_matrix<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    cols: &[String],
    rows: &[String],
    z: &[Vec<f64>],
    z_label: &str,
    k: f64,
) -> Result<()> {
    // a top margin: `titled` puts the text's top on the area's edge (ascenders were clipped)
    let area = area
        .margin(px(k, 8.0), 0, 0, 0)
        .titled(&pretty(title), ("sans-serif", k * 16.0))
        .map_err(perr)?;
    let (cw, ch) = (px(k, 95.0), px(k, 44.0));
    let (left, top) = (px(k, 130.0), px(k, 34.0));
    for (j, c) in cols.iter().enumerate() {
        area.draw(&Text::new(
            c.clone(),
            (left + j as i32 * cw + px(k, 8.0), top - px(k, 22.0)),
            ("sans-serif", k * 12.0),
        ))
        .map_err(perr)?;
    }
    for (i, (r, row)) in rows.iter().zip(z).enumerate() {
        let y = top + i as i32 * ch;
        area.draw(&Text::new(
            r.clone(),
            (px(k, 6.0), y + ch / 2 - px(k, 7.0)),
            ("sans-serif", k * 12.0),
        ))
        .map_err(perr)?;
        for (j, &v) in row.iter().enumerate() {
            let x = left + j as i32 * cw;
            let c = ViridisRGB.get_color_normalized(v.clamp(0.0, 1.0) as f32, 0.0, 1.0);
            area.draw(&Rectangle::new(
                [(x, y), (x + cw - 2, y + ch - 2)],
                c.filled(),
            ))
            .map_err(perr)?;
            // dark text on the light (yellow-green) end of viridis, white on the dark end
            let txt = if v > 0.6 { BLACK } else { WHITE };
            area.draw(&Text::new(
                format!("{:.1}", 100.0 * v),
                (x + cw / 2 - px(k, 14.0), y + ch / 2 - px(k, 7.0)),
                ("sans-serif", k * 13.0).into_font().color(&txt),
            ))
            .map_err(perr)?;
        }
    }
    // colour bar: 0 … 100 %
    let bx = left + cols.len() as i32 * cw + px(k, 20.0);
    let bh = rows.len() as i32 * ch;
    area.draw(&Text::new(
        format!("{z_label} (%)"),
        (bx - px(k, 6.0), top - px(k, 22.0)),
        ("sans-serif", k * 11.0),
    ))
    .map_err(perr)?;
    let steps = 48;
    for s in 0..steps {
        let (a, b) = (s as f64 / steps as f64, (s + 1) as f64 / steps as f64);
        let y1 = top + bh - (a * bh as f64) as i32;
        let y0 = top + bh - (b * bh as f64) as i32;
        let c = ViridisRGB.get_color_normalized(a as f32, 0.0, 1.0);
        area.draw(&Rectangle::new(
            [(bx, y0), (bx + px(k, 14.0), y1)],
            c.filled(),
        ))
        .map_err(perr)?;
    }
    for t in [0.0, 0.5, 1.0] {
        area.draw(&Text::new(
            format!("{}", (100.0 * t) as i32),
            (
                bx + px(k, 18.0),
                top + bh - (t * bh as f64) as i32 - px(k, 6.0),
            ),
            ("sans-serif", k * 11.0),
        ))
        .map_err(perr)?;
    }
    Ok(())
}

type Seg = ((f64, f64), (f64, f64));

/// Iso-line segments of z = level on the grid (x: columns, y: rows).
pub(crate) fn marching_squares(x: &[f64], y: &[f64], z: &[Vec<f64>], level: f64) -> Vec<Seg> {
    let mut out = vec![];
    let lerp = |a: f64, b: f64, za: f64, zb: f64| a + (b - a) * (level - za) / (zb - za);
    for j in 0..y.len().saturating_sub(1) {
        for i in 0..x.len().saturating_sub(1) {
            let (z00, z10, z11, z01) = (z[j][i], z[j][i + 1], z[j + 1][i + 1], z[j + 1][i]);
            if ![z00, z10, z11, z01].iter().all(|v| v.is_finite()) {
                continue;
            }
            let mut pts = vec![];
            // edges: bottom (00-10), right (10-11), top (01-11), left (00-01)
            if (z00 < level) != (z10 < level) {
                pts.push((lerp(x[i], x[i + 1], z00, z10), y[j]));
            }
            if (z10 < level) != (z11 < level) {
                pts.push((x[i + 1], lerp(y[j], y[j + 1], z10, z11)));
            }
            if (z01 < level) != (z11 < level) {
                pts.push((lerp(x[i], x[i + 1], z01, z11), y[j + 1]));
            }
            if (z00 < level) != (z01 < level) {
                pts.push((x[i], lerp(y[j], y[j + 1], z00, z01)));
            }
            if pts.len() == 2 {
                out.push((pts[0], pts[1]));
            } else if pts.len() == 4 {
                out.push((pts[0], pts[1]));
                out.push((pts[2], pts[3]));
            }
        }
    }
    out
}

fn draw_images<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    rows: &[(String, Vec<Image>)],
    k: f64,
) -> Result<()> {
    let area = area
        .titled(&pretty(title), ("sans-serif", k * 16.0))
        .map_err(perr)?;
    let cell = px(k, 72.0);
    let captioned = rows
        .iter()
        .flat_map(|(_, r)| r)
        .any(|i| i.caption.is_some());
    let row_h = cell + if captioned { px(k, 16.0) } else { 0 };
    for (r, (label, imgs)) in rows.iter().enumerate() {
        let y = px(k, 8.0) + r as i32 * row_h;
        area.draw(&Text::new(
            pretty(label),
            (px(k, 4.0), y + cell / 2 - px(k, 6.0)),
            ("sans-serif", k * 12.0),
        ))
        .map_err(perr)?;
        for (c, img) in imgs.iter().enumerate() {
            let x0 = px(k, 106.0) + c as i32 * cell;
            let s = ((cell - px(k, 6.0)) as f64 / img.height.max(img.width) as f64).max(1.0);
            let hw = img.height * img.width;
            for i in 0..img.height {
                for j in 0..img.width {
                    let px = |ch: usize| {
                        (img.data[ch * hw + i * img.width + j].clamp(0.0, 1.0) * 255.0) as u8
                    };
                    let col = if img.channels == 3 {
                        RGBColor(px(0), px(1), px(2))
                    } else {
                        RGBColor(px(0), px(0), px(0))
                    };
                    let (xa, ya) = (x0 + (j as f64 * s) as i32, y + (i as f64 * s) as i32);
                    let (xb, yb) = (
                        x0 + ((j + 1) as f64 * s) as i32,
                        y + ((i + 1) as f64 * s) as i32,
                    );
                    area.draw(&Rectangle::new([(xa, ya), (xb, yb)], col.filled()))
                        .map_err(perr)?;
                }
            }
            if let Some(cap) = &img.caption {
                area.draw(&Text::new(
                    cap.clone(),
                    (x0 + px(k, 2.0), y + cell - px(k, 4.0)),
                    ("sans-serif", k * 11.0),
                ))
                .map_err(perr)?;
            }
        }
        // a perturbation row: its grey scale, black = −max|Δ|, grey = 0, white = +max|Δ|
        if let Some(m) = imgs.iter().find_map(|i| i.scale) {
            let bx = px(k, 106.0) + imgs.len() as i32 * cell + px(k, 10.0);
            let (y0, h) = (y + px(k, 4.0), cell - px(k, 12.0));
            let steps = 32;
            for t in 0..steps {
                let v = (255.0 * (1.0 - t as f64 / (steps - 1) as f64)) as u8;
                let ya = y0 + h * t / steps;
                let yb = y0 + h * (t + 1) / steps;
                area.draw(&Rectangle::new(
                    [(bx, ya), (bx + px(k, 10.0), yb)],
                    RGBColor(v, v, v).filled(),
                ))
                .map_err(perr)?;
            }
            for (label, dy) in [
                (format!("+{}", fmt_sig(m, 2)), 0),
                ("0".into(), h / 2),
                (format!("−{}", fmt_sig(m, 2)), h),
            ] {
                area.draw(&Text::new(
                    label,
                    (bx + px(k, 14.0), y0 + dy - px(k, 6.0)),
                    ("sans-serif", k * 10.0),
                ))
                .map_err(perr)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_labels_are_powers_of_ten_only() {
        assert_eq!(pow10_label(-4), "10⁻⁴");
        assert_eq!(pow10_label(12), "10¹²");
        assert_eq!(log10_label(&1e-3), "10⁻³");
        assert_eq!(log10_label(&0.2), "");
        assert_eq!(log2_label(&6.0), "64");
        assert_eq!(log2_label(&6.5), "");
        assert_eq!(pretty("λ₁^θ and λ₁^x"), "λ₁ᶿ and λ₁ˣ");
    }

    #[test]
    fn contour_levels_are_quantiles() {
        let z: Vec<Vec<f64>> = (0..10)
            .map(|i| (0..10).map(|j| (i * 10 + j) as f64).collect())
            .collect();
        assert_eq!(quantile_levels(&z, 3), vec![25.0, 50.0, 74.0]);
        // a steep rim: quantiles stay in the basin where evenly spaced levels would not
        let rim: Vec<Vec<f64>> = (0..10)
            .map(|i| {
                (0..10)
                    .map(|j| if i == 9 { 1e3 } else { (i + j) as f64 })
                    .collect()
            })
            .collect();
        assert!(quantile_levels(&rim, 5).iter().all(|&l| l < 20.0));
    }

    #[test]
    fn legend_goes_to_a_free_corner_or_beside_the_plot() {
        // a line along the bottom: the upper right is free
        let low = vec![vec![(0.0, 0.1), (1.0, 0.2)]];
        assert!(matches!(
            legend_position(&low, 2, 8),
            Some(SeriesLabelPosition::UpperRight)
        ));
        // a rising line: upper left is free
        let rising = vec![vec![(0.0, 0.0), (1.0, 1.0)]];
        assert!(matches!(
            legend_position(&rising, 2, 8),
            Some(SeriesLabelPosition::UpperLeft)
        ));
        // lines through every corner: none is free
        let x = vec![vec![(0.0, 0.0), (1.0, 1.0)], vec![(0.0, 1.0), (1.0, 0.0)]];
        assert!(legend_position(&x, 2, 8).is_none());
    }
}
