//! Rendering of figure specs onto any plotters backend (bitmap or SVG).

use super::{Figure, Image, Line, Spec};
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
    let root = BitMapBackend::with_buffer(buf, (fig.width, fig.height)).into_drawing_area();
    draw(fig, &root)?;
    root.present().map_err(perr)
}

pub(super) fn draw_svg(fig: &Figure) -> Result<String> {
    register_font();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (fig.width, fig.height)).into_drawing_area();
        draw(fig, &root)?;
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

fn draw<DB: DrawingBackend>(fig: &Figure, area: &DrawingArea<DB, Shift>) -> Result<()> {
    area.fill(&WHITE).map_err(perr)?;
    match &fig.spec {
        Spec::Lines {
            x_label,
            y_label,
            log_y,
            lines,
        } => draw_lines(area, &fig.title, x_label, y_label, *log_y, lines),
        Spec::Heatmap {
            x_label,
            y_label,
            x,
            y,
            z,
            contours,
        } => draw_heatmap(area, &fig.title, x_label, y_label, x, y, z, *contours),
        Spec::Images { rows } => draw_images(area, &fig.title, rows),
        Spec::Panels { cols, panels } => {
            let rows = panels.len().div_ceil(*cols);
            let cells = area.split_evenly((rows, (*cols).min(panels.len())));
            for (p, c) in panels.iter().zip(cells.iter()) {
                draw(p, c)?;
            }
            Ok(())
        }
    }
}

fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    xl: &str,
    yl: &str,
    log_y: bool,
    lines: &[Line],
) -> Result<()> {
    let (x0, x1) = range(lines.iter().flat_map(|l| l.x.iter().copied()));
    let ys = lines
        .iter()
        .flat_map(|l| l.y.iter().copied())
        .filter(|v| !log_y || *v > 0.0);
    let (y0, y1) = range(ys);
    let mut b = ChartBuilder::on(area);
    b.caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(38)
        .y_label_area_size(62);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(xl)
                .y_desc(yl)
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 14))
                .light_line_style(RGBColor(235, 235, 235))
                // plotters' log axis packs its light lines into a grey band: draw none there
                .y_max_light_lines(if log_y { 0 } else { 10 })
                .x_label_formatter(&fmt_num)
                .y_label_formatter(&fmt_num)
                .draw()
                .map_err(perr)?;
            for (i, l) in lines.iter().enumerate() {
                let c = PALETTE[i % PALETTE.len()];
                let pts: Vec<(f64, f64)> =
                    l.x.iter()
                        .zip(&l.y)
                        .filter(|(_, y)| y.is_finite() && (!log_y || **y > 0.0))
                        .map(|(a, b)| (*a, *b))
                        .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(perr)?
                    .label(l.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
                if l.markers {
                    chart
                        .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
                        .map_err(perr)?;
                }
            }
            if lines.len() > 1 || !lines[0].label.is_empty() {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .label_font(("sans-serif", 12))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()
                    .map_err(perr)?;
            }
        }};
    }
    if log_y {
        let y0 = y0.max(y1 * 1e-12).max(f64::MIN_POSITIVE);
        body!(b
            .build_cartesian_2d(x0..x1, (y0..y1 * 1.2).log_scale())
            .map_err(perr)?);
    } else {
        let pad = (y1 - y0) * 0.05;
        body!(b
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(perr)?);
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
) -> Result<()> {
    let (x0, x1) = range(x.iter().copied());
    let (y0, y1) = range(y.iter().copied());
    let (z0, z1) = range(z.iter().flatten().copied());
    let (main, bar) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(84));
    let mut chart = ChartBuilder::on(&main)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(38)
        .y_label_area_size(52)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(perr)?;
    chart
        .configure_mesh()
        .x_desc(xl)
        .y_desc(yl)
        .disable_mesh()
        .x_label_formatter(&fmt_num)
        .y_label_formatter(&fmt_num)
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(perr)?;
    // Cells centred on grid points.
    let half = |v: &[f64], i: usize| -> (f64, f64) {
        let lo = if i == 0 {
            v[0]
        } else {
            0.5 * (v[i - 1] + v[i])
        };
        let hi = if i + 1 == v.len() {
            v[i]
        } else {
            0.5 * (v[i] + v[i + 1])
        };
        (lo, hi)
    };
    let mut cells = vec![];
    for (j, row) in z.iter().enumerate() {
        for (i, &val) in row.iter().enumerate() {
            let (xa, xb) = half(x, i);
            let (ya, yb) = half(y, j);
            let c = if val.is_finite() {
                ViridisRGB.get_color_normalized(val as f32, z0 as f32, z1 as f32)
            } else {
                RGBColor(255, 255, 255)
            };
            cells.push(Rectangle::new([(xa, ya), (xb, yb)], c.filled()));
        }
    }
    chart.draw_series(cells).map_err(perr)?;
    // Contours by marching squares.
    for k in 1..=contours {
        let level = z0 + (z1 - z0) * k as f64 / (contours + 1) as f64;
        let segs = marching_squares(x, y, z, level);
        chart
            .draw_series(
                segs.into_iter()
                    .map(|s| PathElement::new(vec![s.0, s.1], WHITE.mix(0.8).stroke_width(1))),
            )
            .map_err(perr)?;
    }
    // Colour bar.
    let mut cb = ChartBuilder::on(&bar)
        .margin_top(40)
        .margin_bottom(50)
        .margin_right(8)
        .y_label_area_size(58)
        .build_cartesian_2d(0.0..1.0, z0..z1)
        .map_err(perr)?;
    cb.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_label_formatter(&fmt_num)
        .label_style(("sans-serif", 11))
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
) -> Result<()> {
    let area = area.titled(title, ("sans-serif", 16)).map_err(perr)?;
    let cell = 72i32;
    for (r, (label, imgs)) in rows.iter().enumerate() {
        let y = 8 + r as i32 * cell;
        area.draw(&Text::new(
            label.clone(),
            (4, y + cell / 2 - 6),
            ("sans-serif", 12),
        ))
        .map_err(perr)?;
        for (c, img) in imgs.iter().enumerate() {
            let x0 = 106 + c as i32 * cell;
            let s = ((cell - 6) as f64 / img.height.max(img.width) as f64).max(1.0);
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
        }
    }
    Ok(())
}
