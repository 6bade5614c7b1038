//! How long computations report progress. The library draws nothing itself: the CLI passes an
//! implementation that draws indicatif bars on stderr, notebooks and tests pass `None`.

use std::sync::Arc;

/// Receives the progress of a long computation (training, landscapes, adversarial accuracy,
/// an eigen solver's Hessian-vector products). Calls come from the computing thread, in order:
/// `start`, then any number of `advance`/`message`, then `finish`.
pub trait Progress: Send + Sync {
    /// A task named `label` of about `total` steps (it may take more).
    fn start(&self, label: &str, total: u64);
    /// `n` more steps done.
    fn advance(&self, n: u64);
    /// A short status line for the current task (e.g. the running training loss).
    fn message(&self, _msg: &str) {}
    /// A line worth keeping (e.g. one epoch's summary), printed above any bar.
    fn log(&self, _line: &str) {}
    /// The task is over (also on error).
    fn finish(&self);
}

/// A shareable [`Progress`] for configuration structs (clone it freely).
#[derive(Clone)]
pub struct Reporter(pub Arc<dyn Progress>);

impl Reporter {
    pub fn new(p: impl Progress + 'static) -> Self {
        Reporter(Arc::new(p))
    }
    pub fn as_dyn(&self) -> &dyn Progress {
        self.0.as_ref()
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter(..)")
    }
}

/// One running task: reports to `Progress` when there is one, nothing otherwise; finishes
/// when dropped, so an early return through `?` closes the bar too.
pub(crate) struct Task<'a>(Option<&'a dyn Progress>);

impl<'a> Task<'a> {
    pub(crate) fn start(p: Option<&'a dyn Progress>, label: &str, total: usize) -> Self {
        if let Some(p) = p {
            p.start(label, total as u64);
        }
        Task(p)
    }
    pub(crate) fn advance(&self, n: usize) {
        if let Some(p) = self.0 {
            p.advance(n as u64);
        }
    }
    pub(crate) fn message(&self, msg: impl FnOnce() -> String) {
        if let Some(p) = self.0 {
            p.message(&msg());
        }
    }
    pub(crate) fn log(&self, line: impl FnOnce() -> String) {
        if let Some(p) = self.0 {
            p.log(&line());
        }
    }
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            p.finish();
        }
    }
}
