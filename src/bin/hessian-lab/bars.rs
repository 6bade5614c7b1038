//! The CLI's progress bars: `hessian_lab::progress::Progress` drawn with indicatif on stderr.

use hessian_lab::progress::{Progress, Reporter};
use std::sync::Mutex;

/// One bar at a time (a new task replaces a finished one).
#[derive(Default)]
pub struct Bars(Mutex<Option<indicatif::ProgressBar>>);

impl Bars {
    pub fn reporter() -> Reporter {
        Reporter::new(Bars::default())
    }
    fn with(&self, f: impl FnOnce(&indicatif::ProgressBar)) {
        if let Ok(g) = self.0.lock() {
            if let Some(b) = g.as_ref() {
                f(b);
            }
        }
    }
}

impl Progress for Bars {
    fn start(&self, label: &str, total: u64) {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(label.to_string());
        if let Ok(mut g) = self.0.lock() {
            if let Some(old) = g.replace(b) {
                old.finish_and_clear();
            }
        }
    }
    fn advance(&self, n: u64) {
        self.with(|b| b.inc(n));
    }
    fn message(&self, msg: &str) {
        self.with(|b| b.set_message(msg.to_string()));
    }
    fn log(&self, line: &str) {
        self.with(|b| b.println(line));
    }
    fn finish(&self) {
        if let Ok(mut g) = self.0.lock() {
            if let Some(b) = g.take() {
                b.finish_and_clear();
            }
        }
    }
}
