#!/usr/bin/env python3
"""Re-creates vendor/candle-core and vendor/candle-nn from the registry copies of candle-core and
candle-nn 0.11.1 (see vendor/candle-core/PATCH.md). Usage: scripts/patch-candle.py [registry-crate-dir]"""
import glob, os, re, shutil, sys

src = sys.argv[1] if len(sys.argv) > 1 else glob.glob(
    os.path.expanduser("~/.cargo/registry/src/*/candle-core-0.11.1"))[0]
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
dst = os.path.join(root, "vendor", "candle-core")
note = open(os.path.join(dst, "PATCH.md")).read() if os.path.exists(os.path.join(dst, "PATCH.md")) else None
shutil.rmtree(dst, ignore_errors=True)
os.makedirs(dst)
for f in ["Cargo.toml", "Cargo.toml.orig", "LICENSE", "README.md"]:
    shutil.copy(os.path.join(src, f), dst)
for d in ["src", "benches", "examples"]:
    shutil.copytree(os.path.join(src, d), os.path.join(dst, d))
if note:
    open(os.path.join(dst, "PATCH.md"), "w").write(note)

p = os.path.join(dst, "src", "backprop.rs")
s = open(p).read()
pat = re.compile(r'let (\w+) = grads\.or_insert\(([^)]*)\)\?;\n(\s*)\*\1 = \1\.(add|sub)\(&(.+?)\)\?(;?)\n', re.S)
count = 0
def rep(m):
    global count
    name, arg, ws, op, expr, semi = m.groups()
    if "\n" in expr:
        return m.group(0)
    expr2 = expr.replace(f"{name}.dims()", f"{arg}.dims()")
    if name in re.findall(r"\w+", expr2):
        return m.group(0)
    if op == "sub":
        expr2 = f"({expr2}).neg()?"
    count += 1
    return f"grads.accumulate({arg}, &{expr2})?{semi}\n"
s = pat.sub(rep, s)
old = "    fn or_insert(&mut self, tensor: &Tensor) -> Result<&mut Tensor> {"
new = '''    /// hessian-lab patch: adds `grad` to the gradient stored for `tensor`, or stores `grad`
    /// itself when there is none yet. Upstream candle inserts a zero tensor and adds to it,
    /// which costs an allocation, a memset and an add per node and, with
    /// CANDLE_GRAD_DO_NOT_DETACH=1, keeps the zero tensor alive in the gradient's graph.
    /// In detached mode (the default) the stored gradient is detached: upstream only detached
    /// a gradient when it was taken out again, so each pending gradient kept the tensors it was
    /// computed from alive (another activation-sized buffer per pending gradient).
    fn accumulate(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        let keep_graph = CANDLE_GRAD_DO_NOT_DETACH.with(|b| *b);
        let store = |t: Tensor| if keep_graph { t } else { t.detach() };
        match self.0.entry(tensor.id()) {
            Entry::Occupied(mut entry) => {
                let sum = entry.get().add(grad)?;
                entry.insert(store(sum));
            }
            Entry::Vacant(entry) => {
                entry.insert(store(grad.clone()));
            }
        }
        Ok(())
    }

''' + old
assert old in s and count == 48, count
s = s.replace(old, new, 1)
open(p, "w").write(s)

# Change 2: whether a backward pass keeps its graph is an argument (`backward_with_graph`), not
# only the thread-local that CANDLE_GRAD_DO_NOT_DETACH sets at a thread's first backward.
s = open(p).read()
old_tl = "impl Tensor {\n    /// Return all the nodes"
new_tl = '''thread_local! {
    /// hessian-lab patch: set by `Tensor::backward_with_graph` for the duration of that call.
    static KEEP_GRAPH: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// hessian-lab patch: whether the backward pass running on this thread records the graph of
/// the gradients it computes: the argument of `backward_with_graph` inside that call,
/// otherwise upstream's per-thread CANDLE_GRAD_DO_NOT_DETACH.
fn keep_graph() -> bool {
    KEEP_GRAPH
        .with(|k| k.get())
        .unwrap_or_else(|| CANDLE_GRAD_DO_NOT_DETACH.with(|b| *b))
}

/// hessian-lab patch: marks this build of candle-core (hessian-lab checks that it runs on it).
pub const HESSIAN_LAB_PATCH: &str = "hessian-lab candle-core 0.11.1 patch 2: accumulate, backward_with_graph";

impl Tensor {
    /// hessian-lab patch: a backward pass whose gradients keep their graph (`keep_graph`, as
    /// PyTorch's `create_graph`) so they can be differentiated again, or do not, whatever the
    /// thread's CANDLE_GRAD_DO_NOT_DETACH says. Same values either way.
    pub fn backward_with_graph(&self, keep_graph: bool) -> Result<GradStore> {
        struct Restore(Option<bool>);
        impl Drop for Restore {
            fn drop(&mut self) {
                KEEP_GRAPH.with(|k| k.set(self.0));
            }
        }
        let _restore = Restore(KEEP_GRAPH.with(|k| k.replace(Some(keep_graph))));
        self.backward()
    }

    /// Return all the nodes'''
assert s.count(old_tl) == 1
s = s.replace(old_tl, new_tl, 1)
n = s.count("CANDLE_GRAD_DO_NOT_DETACH.with(|b| *b);")
assert n == 3, n
s = s.replace("CANDLE_GRAD_DO_NOT_DETACH.with(|b| *b);", "keep_graph();")
open(p, "w").write(s)
lib = os.path.join(dst, "src", "lib.rs")
l = open(lib).read()
old = "pub use custom_op::{"
assert l.count(old) == 1
l = l.replace(old, "pub use backprop::HESSIAN_LAB_PATCH;\n" + old, 1)
open(lib, "w").write(l)
print(f"patched {count} sites and backward_with_graph in {p}")

# candle-nn, unchanged except that it depends on the vendored candle-core by path, so that a
# crate or notebook depending on hessian-lab gets one candle-core (a [patch] section reaches
# only this workspace).
nn_src = glob.glob(os.path.join(os.path.dirname(src), "candle-nn-0.11.1"))[0]
nn_dst = os.path.join(root, "vendor", "candle-nn")
shutil.rmtree(nn_dst, ignore_errors=True)
os.makedirs(nn_dst)
for f in ["Cargo.toml", "Cargo.toml.orig", "README.md"]:
    shutil.copy(os.path.join(nn_src, f), nn_dst)
for d in ["src", "benches", "examples"]:
    shutil.copytree(os.path.join(nn_src, d), os.path.join(nn_dst, d))
c = open(os.path.join(nn_dst, "Cargo.toml")).read()
old = '[dependencies.candle]\nversion = "0.11.1"\npackage = "candle-core"\n'
assert c.count(old) == 1
c = c.replace(old, '[dependencies.candle]\nversion = "0.11.1"\npath = "../candle-core"\npackage = "candle-core"\n', 1)
open(os.path.join(nn_dst, "Cargo.toml"), "w").write(c)
print(f"vendored {nn_dst}")
