"""Writes notebooks/*.ipynb (evcxr Rust kernel) from the cell lists below.

The notebooks are committed; this script is how they are edited. Run from the repo root:
    python3 scripts/make_notebooks.py
Cells tagged "allow-stderr" may write to stderr (the CI runner fails on stderr otherwise).
"""
import json, os

DEP = ':dep hessian_lab = { package = "hessian-lab", path = "..", default-features = false, features = ["avx512"] }'
DEP_NOTE = """The next cell compiles hessian-lab for the notebook: about 4–5 minutes the first time on a
2-core CPU (nothing is shown meanwhile), seconds once evcxr has cached the build."""
USE = """use hessian_lab::prelude::*; // the Network trait, models, data, curvature, attacks, training, plots
let rt = Runtime::cpu_f32(); // device, dtype and CPU kernels; nothing else to set up"""


def md(s):
    return {"cell_type": "markdown", "metadata": {}, "source": s.strip("\n")}


def code(s, tags=None):
    meta = {"tags": tags} if tags else {}
    return {"cell_type": "code", "metadata": meta, "source": s.strip("\n"), "outputs": [], "execution_count": None}


def nb(cells):
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Rust", "language": "rust", "name": "rust"},
            "language_info": {"codemirror_mode": "rust", "file_extension": ".rs", "mimetype": "text/rust", "name": "Rust", "pygment_lexer": "rust", "version": ""},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


TRAIN_M1 = """let train_split = data::load(DatasetKind::Mnist, SplitKind::Train, "../data")?.first(10_000)?;
let test = data::load(DatasetKind::Mnist, SplitKind::Test, "../data")?.first(1_000)?;"""

notebooks = {}

notebooks["01_quickstart"] = [
    md("""# hessian-lab quick start
Load MNIST, train the paper's M1 briefly, compute one Hessian-vector product, the top Hessian
eigenvalues, run one attack, and plot. CPU, about a minute of compute (M1 trained for one epoch
on the first 10,000 training images; curvature on the first 320 test images)."""),
    md(DEP_NOTE),
    code(DEP),
    code(USE),
    md("""The crate runs on its own (vendored, patched) candle, re-exported as `hessian_lab::candle_core`
and `hessian_lab::candle_nn`; use those rather than a separate candle dependency. CI checks that
this cell prints the same build as the crate's source."""),
    code("""println!("candle build: {}", hessian_lab::autodiff::candle_build());"""),
    code(TRAIN_M1),
    code("""let model = Model::new(ModelKind::M1, &rt, 0)?;
train::fit(&model, &train_split, &FitOpts { epochs: 1, ..Default::default() })?;
let (loss, acc) = model.evaluate(&test, 500)?;
println!("M1 after one epoch on 10k images: test loss {loss:.4}, accuracy {acc:.4} ({} parameters)", model.num_params());"""),
    md("""## One Hessian-vector product
`hvp` is exact (double backward): H v with H = ∇²θ of the mean cross-entropy on the batch. Cost:
one forward and two backward passes."""),
    code("""let batch = test.first(320)?.to_batch(&rt)?;
let v = ParamVec::randn_like(&ParamSelection::all(&model).tensors(&model), 0)?;
let hv = curvature::hvp(&model, &batch, &v)?;
println!("vᵀHv / vᵀv = {:.5}", v.dot(&hv)? / v.dot(&v)?);"""),
    md("""## Your own loss, in a cell
Any closure over candle `Var`s gets an exact Hessian-vector product, with no setup: keeping the
gradient graph is an argument of each backward pass (`hessian_lab::autodiff`), not a property of
the thread. Least squares ½‖Xw − y‖² has the Hessian XᵀX, so Hv must equal XᵀXv."""),
    code("""// in braces: evcxr cannot keep a closure as a cell variable
{
    use hessian_lab::candle_core::{Tensor, Var, DType, Device};
    let xm = Tensor::randn(0f64, 1f64, (50, 4), &Device::Cpu)?;
    let y = Tensor::randn(0f64, 1f64, (50, 1), &Device::Cpu)?;
    let w = Var::zeros((4, 1), DType::F64, &Device::Cpu)?;
    let loss = || -> hessian_lab::Result<Tensor> { Ok((xm.matmul(w.as_tensor())?.sub(&y)?.sqr()?.sum_all()? * 0.5)?) };
    let v = Tensor::new(&[[1.0f64], [-2.0], [0.5], [3.0]], &Device::Cpu)?;
    let hv = curvature::hvp_closure(&[w.clone()], loss, &ParamVec(vec![v.clone()]))?;
    let exact = xm.t()?.matmul(&xm.matmul(&v)?)?;
    let err = (&hv.0[0] - &exact)?.abs()?.max_all()?.to_scalar::<f64>()?;
    println!("max |Hv − XᵀXv| = {err:.1e}");
    assert!(err < 1e-10);
}"""),
    md("""## Top eigenvalues, trace, density — λ₁^θ of the paper
`Hessian::new(&network, data)` is PyHessian's `hessian(model, criterion, data)`: three verbs,
each result a table or a plot in the notebook."""),
    code("""let h = Hessian::new(&model, batch.clone())?;
h.eigenvalues(2)?"""),
    code("""h.trace()?"""),
    code("""h.density()?"""),
    md("## One attack: FGSM at several ε"),
    code("""let fgsm = attack::accuracy_curve(&model, &test, AttackKind::Fgsm, &[0.05, 0.1, 0.15, 0.2])?;
fgsm"""),
    code("""fgsm.plot()?"""),
    md("## The loss along the top eigenvector"),
    code("""let top = h.eigenvalues(1)?;
landscape::along(&model, &top.eigenvectors[0], &landscape::linspace(-0.5, 0.5, 21)?, batch.clone())?"""),
]

notebooks["06_your_own_model"] = [
    md("""# Your own model
Every verb of hessian-lab takes `&dyn Network`. Here: a small CNN written with candle-nn in a
cell, trained briefly on Fashion-MNIST, then its top eigenvalues, trace, spectral density, FGSM
accuracy curve and 1-D landscape — one or two lines each; then a network trained by PyTorch,
loaded by spec from its `state_dict`. CPU, about a minute."""),
    md(DEP_NOTE),
    code(DEP),
    code(USE),
    md("""## A candle-nn CNN, wrapped in one line
`CandleNet` takes the `VarMap` and the forward pass (a `Module`, `ModuleT` or closure
`(x, train) → logits`). `with_seed` re-initialises it with PyTorch's defaults from a seed
(candle's own CPU initialisation cannot be seeded). Strided convolutions instead of pooling:
candle 0.11's pooling backward is not exact to second order, and `check_hvp` below is how to find
such things out."""),
    code("""use hessian_lab::candle_nn::{self, Conv2dConfig, Module, VarBuilder, VarMap};
let varmap = VarMap::new();
let net = {
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let stride2 = Conv2dConfig { stride: 2, padding: 2, ..Default::default() };
    let conv1 = candle_nn::conv2d(1, 8, 5, stride2, vb.pp("conv1"))?;
    let conv2 = candle_nn::conv2d(8, 16, 5, stride2, vb.pp("conv2"))?;
    let fc = candle_nn::linear(16 * 7 * 7, 10, vb.pp("fc"))?;
    CandleNet::from_fn(&varmap, 10, move |x, _train| {
        let h = conv2.forward(&conv1.forward(x)?.relu()?)?.relu()?;
        fc.forward(&h.flatten_from(1)?)
    })?
    .named("my-cnn")
    .with_input_shape(&[1, 28, 28])
    .with_piecewise_linear(true) // ReLU and linear maps only: Theorem 1 applies
    .with_seed(0)?
};
net"""),
    md("## Train it briefly on Fashion-MNIST"),
    code("""let train_split = data::load(DatasetKind::FashionMnist, SplitKind::Train, "../data")?.first(10_000)?;
let test = data::load(DatasetKind::FashionMnist, SplitKind::Test, "../data")?.first(1_000)?;
train::fit(&net, &train_split, &FitOpts { epochs: 2, ..Default::default() })?;
let (loss, acc) = net.evaluate(&test, 500)?;
println!("test loss {loss:.4}, accuracy {acc:.4}");"""),
    md("""## Is its second derivative exact?
`check_hvp` compares the gradient with finite differences of the loss and the exact Hv with
finite differences of the gradient, along a random direction. A difference quotient across a
ReLU kink is wrong, and in f32 the step cannot be made small enough to miss them all on many
samples: check on a few (or on an f64 copy of the network)."""),
    code("""curvature::check_hvp(&net, &test.first(8)?.to_batch(&rt)?, 0)?"""),
    code("""let batch = test.first(200)?.to_batch(&rt)?;"""),
    md("## Eigenvalues, trace, density"),
    code("""let h = Hessian::new(&net, batch.clone())?;
h.eigenvalues(3)?"""),
    code("""h.trace()?"""),
    code("""h.density()?"""),
    md("## FGSM accuracy curve and the loss along the top eigenvector"),
    code("""attack::accuracy_curve(&net, &test, AttackKind::Fgsm, &[0.02, 0.05, 0.1, 0.2])?.plot()?"""),
    code("""let top = h.eigenvalues(1)?;
landscape::along(&net, &top.eigenvectors[0], &landscape::linspace(-1.0, 1.0, 21)?, batch.clone())?"""),
    md("""## A PyTorch model, without Python
The `nn.Sequential` below was trained by PyTorch (`tests/fixtures/export_fashion_cnn.py`) and
saved with `safetensors.torch.save_file(model.state_dict(), …)`. Its spec is the module list as
PyTorch prints it; the tensors load under PyTorch's own names (`0.weight`, `1.running_mean`, …).
The CLI takes the same spec: `hessian-lab spectrum --arch "…" --weights … --dataset fashion-mnist`."""),
    code("""let spec = "Conv2d(1, 8, 5, padding=2), BatchNorm2d(8), ReLU, MaxPool2d(2), \
            Conv2d(8, 16, 5), ReLU, MaxPool2d(2), Flatten, Linear(400, 64), ReLU, Linear(64, 10)";
let torch_net = Sequential::load(spec, &[1, 28, 28], "../tests/fixtures/fashion_cnn_torch.safetensors", &rt)?
    .named("pytorch-cnn");
let (loss, acc) = torch_net.evaluate(&test, 500)?;
println!("PyTorch's network here: test loss {loss:.4}, accuracy {acc:.4} (PyTorch measured 0.8880)");"""),
    code("""Hessian::new(&torch_net, batch.clone())?.eigenvalues(3)?"""),
]

notebooks["02_theorem1_input_hessian"] = [
    md("""# Theorem 1: the input Hessian is PSD with rank ≤ C − 1
For a net that is piecewise linear in its input (ReLU, max-pool, BN in eval mode) with softmax
cross-entropy, ∇²ₓℓ = Jᵀ(diag p − ppᵀ)J with J = ∂logits/∂x (Lemma 3 / Theorem 1 of the paper).
We check it numerically: against the Hessian built column by column from input HVPs, its PSD-ness
and rank, and a tanh net where it fails. Small f64 models; seconds of CPU."""),
    md(DEP_NOTE),
    code(DEP),
    code(USE),
    code("""let rt64 = Runtime::cpu_f64();
fn dense_input_hessian(m: &Model, b: &data::Batch) -> hessian_lab::Result<hessian_lab::nalgebra::DMatrix<f64>> {
    let d: usize = b.x.dims()[1..].iter().product();
    let mut h = hessian_lab::nalgebra::DMatrix::zeros(d, d);
    for j in 0..d {
        let mut e = vec![0.0; d]; e[j] = 1.0;
        let v = hessian_lab::candle_core::Tensor::from_vec(e, b.x.dims(), b.x.device())?;
        let col: Vec<f64> = curvature::input_hvp(m, b, &v)?.flatten_all()?.to_vec1()?;
        for i in 0..d { h[(i, j)] = col[i]; }
    }
    Ok(h)
}
let shape = [1usize, 4, 4];
let relu = Model::from_config(ModelConfig::tiny(ModelKind::Mlp, shape, 5, 12), &rt64, 1)?;
let tanh = Model::from_config(ModelConfig::tiny(ModelKind::Mlp, shape, 5, 12).with_activation(Activation::Tanh), &rt64, 1)?;
let xs = hessian_lab::candle_core::Tensor::rand(0f64, 1f64, (8, 1, 4, 4), &rt64.device)?;
let ys = hessian_lab::candle_core::Tensor::new(&[0u32, 1, 2, 3, 4, 0, 1, 2], &rt64.device)?;
let b8 = data::Batch::new(xs, ys)?;"""),
    md("## ReLU net: closed form = HVP columns, PSD, rank ≤ C − 1 = 4"),
    code("""let ih = curvature::input_hessian(&relu, &b8)?;
for i in 0..8 {
    let bi = b8.narrow(i, 1)?;
    let h = dense_input_hessian(&relu, &bi)?;
    let th = ih.dense(i)?;
    let e = hessian_lab::nalgebra::SymmetricEigen::new(h.clone());
    println!("sample {i}: ‖H_hvp − JᵀAJ‖/‖H‖ = {:.1e}, min eig {:+.1e}, rank {} (Theorem 1: {}), λ₁^x = {:.4}",
        (&h - &th).norm() / h.norm(), e.eigenvalues.min(),
        e.eigenvalues.iter().filter(|&&l| l > 1e-9 * e.eigenvalues.max()).count(), ih.samples[i].rank, ih.samples[i].lambda1);
}"""),
    md("## tanh net: Theorem 1 does not apply, and the input Hessian is indefinite"),
    code("""let mut mins = vec![];
for i in 0..8 {
    let h = dense_input_hessian(&tanh, &b8.narrow(i, 1)?)?;
    let e = hessian_lab::nalgebra::SymmetricEigen::new(h);
    mins.push((e.eigenvalues.min(), e.eigenvalues.max()));
}
println!("(min, max) eigenvalue per sample: {:?}", mins);
println!("input_hessian refuses it: {}", curvature::input_hessian(&tanh, &b8).is_err());"""),
    md("## M1 on MNIST: the spectrum of per-sample input Hessians (untrained weights; rank ≤ 9)"),
    code("""let m1 = Model::new(ModelKind::M1, &rt, 0)?;
let test = data::load(DatasetKind::Mnist, SplitKind::Test, "../data")?.first(6)?;
let ihm = curvature::input_hessian(&m1, &test.to_batch(&rt)?)?;
let lines: Vec<Line> = ihm.samples.iter().enumerate().map(|(i, s)| Line::new(
    format!("sample {i} (rank {})", s.rank),
    (1..=s.eigenvalues.len()).map(|k| k as f64).collect(),
    s.eigenvalues.iter().map(|v| v.max(1e-16)).collect()).markers()).collect();
let fig = Figure::lines("M1 input-Hessian eigenvalues (all 784 − 10 others are 0)", "index", "eigenvalue", lines, true)?;
fig.evcxr_display();"""),
    code("""ihm.summary()"""),
]

notebooks["03_large_batch"] = [
    md("""# Large batch → sharper minima, less robust (a short Table 9)
M1 trained on the first 10,000 MNIST images for 3 epochs at batch 64 and batch 1024 (same LR,
no scaling), then λ₁^θ (Lanczos, first 320 test images), mean λ₁^x and ‖∇ₓJ‖ (Theorem 1, first
200 test images), FGSM accuracy, and the spectral density of both. CPU, a few minutes."""),
    md(DEP_NOTE),
    code(DEP),
    code(USE),
    code(TRAIN_M1),
    code("""// the same recipe at two batch sizes: lr 0.02, 3 epochs, no decay
fn opts(batch_size: usize) -> FitOpts { FitOpts { epochs: 3, batch_size, lr: 0.02, last_epoch_factor: 1.0, ..Default::default() } }
let (small, large) = (Model::new(ModelKind::M1, &rt, 0)?, Model::new(ModelKind::M1, &rt, 0)?);
train::fit(&small, &train_split, &opts(64))?;
train::fit(&large, &train_split, &opts(1024))?;"""),
    code("""let hb = test.first(320)?.to_batch(&rt)?;
let ib = test.first(200)?.to_batch(&rt)?;
let mut rows = vec![];
for (name, m) in [("B=64", &small), ("B=1024", &large)] {
    let (_, acc) = m.evaluate(&test, 500)?;
    let op = HessianOperator::new(m, DataSource::Batch(hb.clone()))?;
    let l1 = curvature::lanczos(&op, 1, &LanczosOpts::default())?.eigenvalues[0];
    let s = curvature::input_hessian(m, &ib)?.summary();
    let f = attack::adversarial_accuracy(m, &test, AttackKind::Fgsm, &[0.1, 0.2], &Default::default())?;
    println!("{name}: acc {acc:.4}  λ₁^θ {l1:.3}  λ₁^x {:.4}  ‖∇ₓJ‖ {:.4}  FGSM ε=0.1 {:.3}  ε=0.2 {:.3}",
        s.lambda1_x_mean, s.grad_norm_mean, f.per_eps[0].accuracy, f.per_eps[1].accuracy);
    rows.push((name, l1));
}"""),
    md("## Spectral density (SLQ, 60 Lanczos steps)"),
    code("""let slq = curvature::SlqOpts { iter: 60, grid: 2000, ..Default::default() };
let ds: Vec<curvature::Density> = [&small, &large].iter()
    .map(|m| curvature::density(&HessianOperator::new(*m, DataSource::Batch(hb.clone()))?, &slq))
    .collect::<hessian_lab::Result<_>>()?;
plot::densities_figure("M1: Hessian spectral density, small vs large batch",
    &[("B=64", &ds[0], plot::colors::TRAIN), ("B=1024", &ds[1], plot::colors::ROBUST)])?"""),
]

notebooks["04_attacks_and_robust_training"] = [
    md("""# The five attacks, and robust training
FGSM, FGSM-10, L2-GRAD, FHSM and L2-HESS (second-order attacks use the exact minimum-norm Newton
direction H⁺g of Theorem 1) on M1 trained for 1 epoch on 10,000 images; accuracy vs ε on the
first 300 test images; then FGSM robust training (half of each batch adversarial, ε = 0.1) and its
flatter minimum. CPU, a few minutes."""),
    md(DEP_NOTE),
    code(DEP),
    code(USE),
    code(TRAIN_M1),
    code("""let clean = Model::new(ModelKind::M1, &rt, 0)?;
train::fit(&clean, &train_split, &FitOpts { epochs: 1, ..Default::default() })?;
let t300 = test.first(300)?;
let eps_linf = vec![0.0, 0.05, 0.1, 0.15, 0.2];
let eps_l2 = vec![0.0, 1.0, 2.0, 3.0, 4.0];
// each attack keeps its colour in both panels; first-order solid, second-order dashed
let (mut linf, mut l2) = (vec![], vec![]);
for (i, (k, eps)) in [(AttackKind::Fgsm, &eps_linf), (AttackKind::Ifgsm { steps: 10 }, &eps_linf), (AttackKind::Fhsm(NewtonSolver::Exact), &eps_linf),
                      (AttackKind::L2Grad, &eps_l2), (AttackKind::L2Hess(NewtonSolver::Exact), &eps_l2)].into_iter().enumerate() {
    let r = attack::adversarial_accuracy(&clean, &t300, k, eps, &attack::SplitOpts::chunk(300))?;
    let line = Line::new(r.label.clone(), eps.clone(), r.per_eps.iter().map(|e| e.accuracy).collect()).markers().color(i);
    let line = if matches!(k, AttackKind::Fhsm(_) | AttackKind::L2Hess(_)) { line.dashed() } else { line };
    if i < 3 { linf.push(line) } else { l2.push(line) }
}"""),
    code("""let fig = Figure::panels(vec![
    Figure::lines("L∞ attacks (ε per pixel)", "ε", "accuracy", linf, false)?.y_range(0.0, 1.0),
    Figure::lines("L2 attacks (ε = ‖Δx‖₂)", "ε", "accuracy", l2, false)?.y_range(0.0, 1.0)], 2)?;
fig.evcxr_display();"""),
    md("## Clean, adversarial (FHSM, ε = 0.2) and the perturbation"),
    code("""// in braces: evcxr cannot keep a closure that borrows a cell variable
{
    let b8 = test.first(8)?.to_batch(&rt)?;
    let adv = attack::attack(&clean, &b8, AttackKind::Fhsm(NewtonSolver::Exact), &[0.2])?.remove(0);
    let delta = (&adv.x_adv - &b8.x)?;
    // each image captioned with the model's prediction (the label for the clean row)
    let pred = |x: &hessian_lab::candle_core::Tensor| -> hessian_lab::Result<Vec<String>> {
        let p: Vec<u32> = clean.forward(x)?.argmax(1)?.to_vec1()?;
        Ok(p.iter().map(|c| format!("pred {c}")).collect())
    };
    let labels: Vec<String> = b8.y.to_vec1::<u32>()?.iter().map(|c| format!("label {c}")).collect();
    let fig = plot::image_grid("FHSM ε = 0.2: clean, adversarial and Δx", vec![
        ("clean".into(), plot::Image::caption_all(plot::Image::from_batch(&b8.x)?, &labels)),
        ("adversarial".into(), plot::Image::caption_all(plot::Image::from_batch(&adv.x_adv)?, &pred(&adv.x_adv)?)),
        ("Δx".into(), plot::Image::from_perturbation(&delta)?)])?;
    fig.evcxr_display();
}"""),
    md("""## Robust training with FGSM (ε = 0.1)
More robust — and flatter? After this one short epoch on 10,000 images the λ₁^θ comparison can go
either way; on M1 trained for 2 epochs on all 60,000 images we measured λ₁^θ = 2.92 (clean) vs
1.68 (FGSM-robust) on the first 1,000 test images (the paper's "robust models are flatter")."""),
    code("""// robust training: half of each batch replaced by FGSM examples at ε = 0.1
let robust = Model::new(ModelKind::M1, &rt, 0)?;
let adv = Adversarial { attack: AttackKind::Fgsm, eps: 0.1, ratio: 0.5 };
train::fit(&robust, &train_split, &FitOpts { epochs: 1, adversarial: Some(adv), ..Default::default() })?;
let hb = test.first(320)?.to_batch(&rt)?;
for (name, m) in [("clean", &clean), ("robust", &robust)] {
    let (_, acc) = m.evaluate(&test, 500)?;
    let f = attack::adversarial_accuracy(m, &t300, AttackKind::Fgsm, &[0.1], &attack::SplitOpts::chunk(300))?.per_eps[0].accuracy;
    let op = HessianOperator::new(m, DataSource::Batch(hb.clone()))?;
    let l1 = curvature::lanczos(&op, 1, &LanczosOpts::default())?.eigenvalues[0];
    println!("{name:6}: clean accuracy {acc:.4}, FGSM(0.1) accuracy {f:.3}, λ₁^θ {l1:.3}");
}"""),
]

notebooks["05_landscapes"] = [
    md("""# Loss landscapes
1-D along the top Hessian eigenvector v₁ (batch / train / test), 2-D along v₁ and v₂, and the
segment from a clean to a robust model (BN statistics interpolated, λ₁ along the path). M1 trained
for 1 epoch on 10,000 images; curvature on 320 test images; losses on 1,000 train / test images.
CPU, a few minutes."""),
    md(DEP_NOTE),
    code(DEP),
    code(USE),
    md("""The crate runs on its own (vendored, patched) candle, re-exported as `hessian_lab::candle_core`
and `hessian_lab::candle_nn`; use those rather than a separate candle dependency. CI checks that
this cell prints the same build as the crate's source."""),
    code("""println!("candle build: {}", hessian_lab::autodiff::candle_build());"""),
    code(TRAIN_M1),
    code("""let model = Model::new(ModelKind::M1, &rt, 0)?;
train::fit(&model, &train_split, &FitOpts { epochs: 1, ..Default::default() })?;
let batch = DataSource::Batch(test.first(320)?.to_batch(&rt)?);
let tr = DataSource::Split { split: train_split.first(1000)?, chunk: 500 };
let te = DataSource::Split { split: test.clone(), chunk: 500 };
let (vals, vecs) = landscape::eigen_directions(&model, &batch, 2, &LanczosOpts::default())?;
println!("λ₁, λ₂ = {vals:?}");"""),
    code("""let alphas = landscape::linspace(-1.0, 1.0, 21)?;
let curve = landscape::landscape_1d(&model, &vecs[0], &alphas, &[("batch", &batch), ("train", &tr), ("test", &te)], None)?;
let fig = plot::landscape_figure(&curve, "M1: loss along v₁", "ε", false)?;
fig.evcxr_display();"""),
    code("""let grid = landscape::linspace(-1.0, 1.0, 11)?;
let surf = landscape::landscape_2d(&model, &landscape::Plane { d1: &vecs[0], d2: &vecs[1], alphas: &grid, betas: &grid }, &batch, None)?;
let fig = plot::surface_figure(&surf, "M1: loss on θ + α v₁ + β v₂")?;
fig.evcxr_display();"""),
    md("## From the clean model to an FGSM-robust one"),
    code("""// robust training: half of each batch replaced by FGSM examples at ε = 0.1
let robust = Model::new(ModelKind::M1, &rt, 0)?;
let adv = Adversarial { attack: AttackKind::Fgsm, eps: 0.1, ratio: 0.5 };
train::fit(&robust, &train_split, &FitOpts { epochs: 1, adversarial: Some(adv), ..Default::default() })?;
let lams = landscape::linspace(-0.5, 1.5, 9)?;
let c = landscape::interpolate(&model, &robust, &lams, &[("train", &tr), ("test", &te)],
                               Some((&batch, &LanczosOpts { max_iter: 40, tol: 1e-2, seed: 0 })), None)?;
// t, not λ, for the coefficient (λ₁ is the eigenvalue); log axes keep the [0, 1] part readable
let fig = plot::landscape_figure(&c, "(1−t)·clean + t·robust", "t", true)?;
fig.evcxr_display();"""),
]

os.makedirs("notebooks", exist_ok=True)
for name, cells in notebooks.items():
    for i, c in enumerate(cells):
        c["id"] = f"c{i:02d}"
    with open(f"notebooks/{name}.ipynb", "w") as f:
        json.dump(nb(cells), f, indent=1, ensure_ascii=False)
        f.write("\n")
print("wrote", len(notebooks), "notebooks")
