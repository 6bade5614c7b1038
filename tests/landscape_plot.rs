//! Landscapes against math; figures decode to the requested size.
mod common;

use common::*;
use hessian_lab::curvature::{self, DataSource, HessianOperator, LanczosOpts, ParamVec};
use hessian_lab::landscape::{self, *};
use hessian_lab::models::{Model, ModelConfig, ModelKind};
use hessian_lab::plot::{self, Figure, Image, Line, PNG_SCALE};

fn tiny() -> (Model, DataSource) {
    let rt = rt64();
    let m = Model::from_config(ModelConfig::tiny(ModelKind::Mlp, [1, 3, 3], 4, 6), &rt, 8).unwrap();
    let b = random_batch(20, [1, 3, 3], 4, 9, &rt);
    (m, DataSource::Batch(b))
}

#[test]
fn curve_at_zero_is_the_loss_and_its_curvature_is_lambda1() {
    let (m, src) = tiny();
    let (l0, a0) = evaluate_source(&m, &src).unwrap();
    let (vals, vecs) = eigen_directions(
        &m,
        &src,
        1,
        &LanczosOpts {
            max_iter: 80,
            tol: 1e-10,
            seed: 0,
        },
    )
    .unwrap();
    let h = 1e-3;
    let c = landscape_1d(&m, &vecs[0], &[-h, 0.0, h], &[("batch", &src)], None).unwrap();
    assert_eq!(c.series[0].loss[1], l0);
    assert_eq!(c.series[0].accuracy[1], a0);
    let second = (c.series[0].loss[0] - 2.0 * l0 + c.series[0].loss[2]) / (h * h);
    assert!(
        (second - vals[0]).abs() < 0.03 * vals[0],
        "second difference {second} vs λ₁ {}",
        vals[0]
    );
    // The model is restored.
    assert_eq!(evaluate_source(&m, &src).unwrap().0, l0);
}

#[test]
fn surface_at_origin_and_gradient_direction() {
    let (m, src) = tiny();
    let (l0, _) = evaluate_source(&m, &src).unwrap();
    let d1 = filter_normalized_direction(&m, 1).unwrap();
    let d2 = filter_normalized_direction(&m, 2).unwrap();
    let s = landscape_2d(
        &m,
        &hessian_lab::landscape::Plane {
            d1: &d1,
            d2: &d2,
            alphas: &[-0.5, 0.0, 0.5],
            betas: &[-0.5, 0.0, 0.5, 1.0],
        },
        &src,
        None,
    )
    .unwrap();
    assert_eq!(s.loss.len(), 4);
    assert_eq!(s.loss[1][1], l0);
    // Along the normalised gradient the loss rises at first order: L(h) − L(−h) ≈ 2h‖g‖.
    let g = gradient_direction(&m, &src).unwrap();
    let (_, grad) = HessianOperator::new(&m, src.clone())
        .unwrap()
        .loss_and_gradient()
        .unwrap();
    let c = landscape_1d(&m, &g, &[-1e-4, 1e-4], &[("b", &src)], None).unwrap();
    let slope = (c.series[0].loss[1] - c.series[0].loss[0]) / 2e-4;
    assert!((slope - grad.norm().unwrap()).abs() < 1e-4 * slope);
}

#[test]
fn filter_normalised_directions_have_the_promised_norms() {
    let rt = rt32();
    let m = Model::new(ModelKind::C1, &rt, 0).unwrap();
    let d = filter_normalized_direction(&m, 5).unwrap();
    for ((name, v), dt) in m.params().iter().zip(&d.0) {
        let t = v.as_tensor();
        if t.rank() <= 1 {
            assert!(
                to_vec(dt).iter().all(|&x| x == 0.0),
                "{name} should be ignored"
            );
            continue;
        }
        let n = t.dims()[0];
        let tv = to_vec(t);
        let dv = to_vec(dt);
        let k = tv.len() / n;
        for f in 0..n {
            let tn: f64 = tv[f * k..(f + 1) * k]
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt();
            let dn: f64 = dv[f * k..(f + 1) * k]
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt();
            assert!(
                (tn - dn).abs() < 1e-4 * tn,
                "{name} filter {f}: {dn} vs {tn}"
            );
        }
    }
    // Deterministic from the seed.
    let d2 = filter_normalized_direction(&m, 5).unwrap();
    assert_eq!(d.to_f64_vec().unwrap(), d2.to_f64_vec().unwrap());
}

#[test]
fn interpolation_reproduces_both_models_including_bn_statistics() {
    let rt = rt64();
    let a = Model::new(ModelKind::C1, &rt, 1).unwrap();
    let b = Model::new(ModelKind::C1, &rt, 2).unwrap();
    // Different running statistics in each model.
    a.forward_t(&random_batch(8, [3, 32, 32], 10, 3, &rt).x, true)
        .unwrap();
    b.forward_t(
        &(random_batch(8, [3, 32, 32], 10, 4, &rt).x * 0.5).unwrap(),
        true,
    )
    .unwrap();
    let src = DataSource::Batch(random_batch(6, [3, 32, 32], 10, 5, &rt));
    let (la, _) = evaluate_source(&a, &src).unwrap();
    let (lb, _) = evaluate_source(&b, &src).unwrap();
    let c = interpolate(
        &a,
        &b,
        &[0.0, 0.5, 1.0],
        &[("test", &src)],
        Some((
            &src,
            &LanczosOpts {
                max_iter: 20,
                tol: 1e-2,
                seed: 0,
            },
        )),
        None,
    )
    .unwrap();
    assert_eq!(c.series[0].loss[0], la);
    assert!((c.series[0].loss[2] - lb).abs() < 1e-12 * lb.abs());
    assert_eq!(c.lambda1.len(), 3);
    // Neither model changed.
    assert_eq!(evaluate_source(&a, &src).unwrap().0, la);
    assert_eq!(evaluate_source(&b, &src).unwrap().0, lb);
}

#[test]
fn parameters_are_restored_after_an_error() {
    let (m, src) = tiny();
    let before = m.param_values().unwrap();
    let d = filter_normalized_direction(&m, 0).unwrap();
    let bad = DataSource::Batch(random_batch(2, [1, 4, 4], 4, 0, &rt64()));
    assert!(landscape_1d(&m, &d, &[0.3, 0.6], &[("ok", &src), ("bad", &bad)], None).is_err());
    for (a, b) in before.iter().zip(m.param_values().unwrap()) {
        assert_eq!(to_vec(a), to_vec(&b));
    }
    let wrong = ParamVec(vec![before[0].clone()]);
    assert!(landscape_1d(&m, &wrong, &[0.1], &[("ok", &src)], None).is_err());
    assert!(parse_range("-1:1").is_err());
    assert_eq!(
        parse_range("-1:1:5").unwrap(),
        vec![-1.0, -0.5, 0.0, 0.5, 1.0]
    );
}

#[test]
fn figures_render_to_png_of_the_requested_size_and_svg() {
    let dir = std::env::temp_dir().join(format!("hl-plots-{}", std::process::id()));
    let lines = Figure::lines(
        "loss along v₁",
        "α",
        "loss",
        vec![
            Line::new("train", vec![0.0, 1.0, 2.0], vec![0.1, 0.01, 0.2]),
            Line::new("test", vec![0.0, 1.0, 2.0], vec![0.2, 0.05, 0.3]).markers(),
            Line::new("paper", vec![0.0, 2.0], vec![0.15, 0.25]).dashed(),
        ],
        true,
    )
    .unwrap()
    .with_size(500, 300);
    let z: Vec<Vec<f64>> = (0..9)
        .map(|j| {
            (0..11)
                .map(|i| ((i as f64 - 5.0).powi(2) + (j as f64 - 4.0).powi(2)) / 10.0)
                .collect()
        })
        .collect();
    let heat = Figure::heatmap(
        "surface",
        "α",
        "β",
        landscape::linspace(-1.0, 1.0, 11).unwrap(),
        landscape::linspace(-1.0, 1.0, 9).unwrap(),
        z,
        6,
    )
    .unwrap();
    let x = random_batch(3, [1, 28, 28], 10, 1, &rt32()).x;
    let grid = plot::image_grid(
        "samples",
        vec![
            ("clean".into(), Image::from_batch(&x).unwrap()),
            (
                "Δ".into(),
                Image::from_perturbation(&(x.clone() - 0.5).unwrap()).unwrap(),
            ),
        ],
    )
    .unwrap();
    let panel = Figure::panels(vec![lines.clone(), heat.clone()], 2).unwrap();
    for (name, f) in [
        ("lines", &lines),
        ("heat", &heat),
        ("grid", &grid),
        ("panel", &panel),
    ] {
        let p = dir.join(format!("{name}.png"));
        f.save(&p).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let reader = dec.read_info().unwrap();
        assert_eq!(
            (reader.info().width, reader.info().height),
            (f.width * PNG_SCALE, f.height * PNG_SCALE),
            "{name}: PNGs are drawn at {PNG_SCALE}× for high-DPI screens"
        );
        let svg = f.to_svg().unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
    }
    assert!(lines.save(dir.join("x.jpg")).is_err());
    // Density on a log axis.
    let op = curvature::DenseOperator::new(3, vec![2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0])
        .unwrap();
    let d = curvature::density(
        &op,
        &curvature::SlqOpts {
            iter: 3,
            grid: 300,
            ..Default::default()
        },
    )
    .unwrap();
    plot::density_figure(&d, "density")
        .unwrap()
        .save(dir.join("density.png"))
        .unwrap();
}

#[test]
fn a_caption_of_two_lines_is_drawn_as_two_rows_under_the_plot() {
    let f = Figure::lines(
        "t",
        "x",
        "y",
        vec![Line::new("a", vec![0.0, 1.0], vec![0.0, 1.0])],
        false,
    )
    .unwrap()
    .with_caption("first line of small print\nsecond line of small print");
    let svg = f.to_svg().unwrap();
    // each line its own <text> element, the second below the first
    let y_of = |needle: &str| -> f64 {
        let at = svg
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} not in the SVG"));
        let open = svg[..at].rfind("<text").unwrap();
        let tag = &svg[open..at];
        let y = tag.split(" y=\"").nth(1).unwrap();
        y[..y.find('"').unwrap()].parse().unwrap()
    };
    let (y1, y2) = (y_of("first line"), y_of("second line"));
    assert!(y2 > y1 + 5.0 && y2 < f.height as f64, "{y1} {y2}");
    assert!(!svg.contains("first line of small print\nsecond"));
}
