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

# Change 3: a backward pass restricted to the tensors whose gradients are wanted
# (`backward_wrt`), as PyTorch's `autograd.grad(outputs, inputs)`: upstream differentiates
# every path to every variable, so ∂/∂u of a graph that also reaches the weights (the Jv step
# of a Gauss–Newton product, an input gradient) paid for all the weight gradients too.
old_walk = """            let mut nodes = if node.is_variable() {
                // Do not call recursively on the "leaf" nodes.
                track_grad = true;"""
new_walk = """            let mut nodes = if node.is_variable() {
                // Do not call recursively on the "leaf" nodes.
                // hessian-lab patch: inside `backward_wrt`, only the requested variables.
                track_grad = wanted(node);"""
assert s.count(old_walk) == 1
s = s.replace(old_walk, new_walk, 1)
old_bw = """        let sorted_nodes = self.sorted_nodes();
        let mut grads = GradStore::new();"""
new_bw = """        let sorted_nodes = self.sorted_nodes();
        // hessian-lab patch: inside `backward_wrt`, the nodes whose gradients are needed.
        if WANTED.with(|w| w.borrow().is_some()) {
            let ids = sorted_nodes.iter().map(|t| t.id()).collect();
            NEEDED.with(|n| *n.borrow_mut() = Some(ids));
        }
        let mut grads = GradStore::new();"""
assert s.count(old_bw) == 1
s = s.replace(old_bw, new_bw, 1)
old_api = """    /// Return all the nodes that lead to this value"""
new_api = """    /// hessian-lab patch: [`Tensor::backward_with_graph`] restricted to the gradients of the
    /// variables `wrt` (PyTorch's `autograd.grad(self, wrt)`): every other variable is a
    /// constant, so nodes on no path to `wrt` are not differentiated. The gradients of `wrt`
    /// are those of a full backward pass; the store may lack those of other tensors. Custom
    /// ops learn what is needed from [`needs_grad`].
    pub fn backward_wrt(&self, keep_graph: bool, wrt: &[&Tensor]) -> Result<GradStore> {
        type Saved = (Option<HashSet<TensorId>>, Option<HashSet<TensorId>>);
        struct Restore(Saved);
        impl Drop for Restore {
            fn drop(&mut self) {
                WANTED.with(|w| *w.borrow_mut() = self.0 .0.take());
                NEEDED.with(|n| *n.borrow_mut() = self.0 .1.take());
            }
        }
        let ids = wrt.iter().map(|t| t.id()).collect();
        let _restore = Restore((
            WANTED.with(|w| w.borrow_mut().replace(ids)),
            NEEDED.with(|n| n.borrow_mut().take()),
        ));
        self.backward_with_graph(keep_graph)
    }

    /// Return all the nodes that lead to this value"""
assert s.count(old_api) == 1
s = s.replace(old_api, new_api, 1)
old_tl3 = """/// hessian-lab patch: marks this build"""
new_tl3 = """thread_local! {
    /// hessian-lab patch: inside `backward_wrt`, the ids of the variables asked for.
    static WANTED: std::cell::RefCell<Option<HashSet<TensorId>>> =
        const { std::cell::RefCell::new(None) };
    /// hessian-lab patch: inside `backward_wrt`, the ids of the nodes on a path from the loss
    /// to one of them (set once the graph is sorted).
    static NEEDED: std::cell::RefCell<Option<HashSet<TensorId>>> =
        const { std::cell::RefCell::new(None) };
}

/// hessian-lab patch: whether a variable counts as a leaf to differentiate (all of them,
/// except inside `backward_wrt`).
fn wanted(node: &Tensor) -> bool {
    WANTED.with(|w| w.borrow().as_ref().map_or(true, |s| s.contains(&node.id())))
}

/// hessian-lab patch: whether the backward pass running on this thread needs the gradient of
/// `t`. Inside `Tensor::backward_wrt`: whether `t` lies on a path from the loss to a requested
/// variable; otherwise whether `t` tracks gradients at all (upstream's rule). A custom op's
/// `bwd` can skip the gradient of an argument for which this is false.
pub fn needs_grad(t: &Tensor) -> bool {
    NEEDED.with(|n| match n.borrow().as_ref() {
        Some(s) => s.contains(&t.id()),
        None => t.track_op(),
    })
}

/// hessian-lab patch: marks this build"""
assert s.count(old_tl3) == 1
s = s.replace(old_tl3, new_tl3, 1)
s = s.replace('"hessian-lab candle-core 0.11.1 patch 2: accumulate, backward_with_graph"',
              '"hessian-lab candle-core 0.11.1 patch 3: accumulate, backward_with_graph, backward_wrt"')
old_use = "use std::collections::{hash_map::Entry, HashMap};"
assert s.count(old_use) == 1
s = s.replace(old_use, "use std::collections::{hash_map::Entry, HashMap, HashSet};", 1)
open(p, "w").write(s)

lib = os.path.join(dst, "src", "lib.rs")
l = open(lib).read()
old = "pub use custom_op::{"
assert l.count(old) == 1
l = l.replace(old, "pub use backprop::HESSIAN_LAB_PATCH;\n" + old, 1)
open(lib, "w").write(l)
print(f"patched {count} sites, backward_with_graph and backward_wrt in {p}")

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
