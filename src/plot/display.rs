//! How results show themselves: tables (HTML) and figures in evcxr notebooks, `.plot()` on the
//! results that have a natural figure. Kept here, in the plotting layer, so that curvature,
//! attacks and landscapes know nothing of display.

use super::Figure;
use crate::attack::{AdversarialReport, AttackOutcome};
use crate::curvature::{Density, EigenResult, InputHessianSummary, TraceResult};
use crate::landscape::Curve1d;
use crate::Result;

/// Writes HTML for evcxr to show (Jupyter renders it as a table).
fn show_html(html: &str) {
    println!("EVCXR_BEGIN_CONTENT text/html\n{html}\nEVCXR_END_CONTENT");
}

/// An HTML table with a caption.
fn html_table(caption: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let th: String = head.iter().map(|h| format!("<th>{h}</th>")).collect();
    let body: String = rows
        .iter()
        .map(|r| {
            let td: String = r.iter().map(|c| format!("<td>{c}</td>")).collect();
            format!("<tr>{td}</tr>")
        })
        .collect();
    format!("<table><caption>{caption}</caption><tr>{th}</tr>{body}</table>")
}

impl EigenResult {
    /// A table of the eigenpairs: λ, relative residual, converged.
    pub fn evcxr_display(&self) {
        let rows: Vec<Vec<String>> = (0..self.eigenvalues.len())
            .map(|i| {
                vec![
                    format!("λ<sub>{}</sub>", i + 1),
                    format!("{:.6}", self.eigenvalues[i]),
                    format!("{:.1e}", self.residuals[i]),
                    if self.converged[i] { "yes" } else { "no" }.to_string(),
                ]
            })
            .collect();
        show_html(&html_table(
            &format!("top eigenvalues ({} HVPs)", self.hvps),
            &["", "eigenvalue", "rel. residual", "converged"],
            &rows,
        ));
    }
}

impl TraceResult {
    pub fn evcxr_display(&self) {
        show_html(&format!(
            "tr = {:.6} ± {:.2e} (standard error; {} probes, {} HVPs)",
            self.trace, self.std_error, self.probes, self.hvps
        ));
    }
}

impl Density {
    /// The density on a log axis (see [`super::density_figure`]).
    pub fn plot(&self) -> Result<Figure> {
        super::density_figure(self, "Hessian spectral density (SLQ)")
    }
    pub fn evcxr_display(&self) {
        match self.plot() {
            Ok(f) => f.evcxr_display(),
            Err(e) => eprintln!("density could not be plotted: {e}"),
        }
    }
}

impl InputHessianSummary {
    /// A table of the summary in evcxr.
    pub fn evcxr_display(&self) {
        let rows = vec![
            vec!["samples".into(), self.samples.to_string()],
            vec!["mean λ₁ˣ".into(), format!("{:.4e}", self.lambda1_x_mean)],
            vec!["max λ₁ˣ".into(), format!("{:.4e}", self.lambda1_x_max)],
            vec!["mean ‖∇ₓℓ‖".into(), format!("{:.4e}", self.grad_norm_mean)],
            vec!["max rank".into(), self.rank_max.to_string()],
            vec![
                "min eigenvalue".into(),
                format!("{:.2e}", self.min_eigenvalue_min),
            ],
        ];
        show_html(&html_table("input Hessians (Theorem 1)", &["", ""], &rows));
    }
}

impl AdversarialReport {
    /// Accuracy against ε (ε = 0: the clean accuracy), on [0, 1].
    pub fn plot(&self) -> Result<Figure> {
        let (mut x, mut y) = (vec![0.0], vec![self.clean_accuracy]);
        for e in self.per_eps.iter().filter(|e| e.eps > 0.0) {
            x.push(e.eps);
            y.push(e.accuracy);
        }
        super::accuracy_vs_eps_figure(
            &format!("{} accuracy ({} samples)", self.label, self.samples),
            vec![(self.label.clone(), x, y)],
        )
    }
    /// A table of accuracy and mean perturbation norms per ε.
    pub fn evcxr_display(&self) {
        let rows: Vec<Vec<String>> = std::iter::once(vec![
            "clean".into(),
            format!("{:.4}", self.clean_accuracy),
            "".into(),
            "".into(),
        ])
        .chain(self.per_eps.iter().map(|e| {
            vec![
                format!("{}", e.eps),
                format!("{:.4}", e.accuracy),
                format!("{:.4}", e.linf_mean),
                format!("{:.4}", e.l2_mean),
            ]
        }))
        .collect();
        show_html(&html_table(
            &format!("{} on {} samples", self.label, self.samples),
            &["ε", "accuracy", "mean ‖Δx‖∞", "mean ‖Δx‖₂"],
            &rows,
        ));
    }
}

impl AttackOutcome {
    /// Accuracy and perturbation size on the attacked batch.
    pub fn evcxr_display(&self) {
        show_html(&format!(
            "ε = {}: accuracy {:.4}, mean ‖Δx‖∞ {:.4}, mean ‖Δx‖₂ {:.4} ({} samples)",
            self.eps,
            self.accuracy,
            self.linf_mean,
            self.l2_mean,
            self.success.len()
        ));
    }
}

impl Curve1d {
    /// Loss against α (see [`crate::plot::landscape_figure`]).
    pub fn plot(&self) -> Result<Figure> {
        super::landscape_figure(self, "loss landscape", "α", false)
    }
    pub fn evcxr_display(&self) {
        match self.plot() {
            Ok(f) => f.evcxr_display(),
            Err(e) => eprintln!("landscape could not be plotted: {e}"),
        }
    }
}
