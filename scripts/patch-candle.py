#!/usr/bin/env python3
"""Re-creates vendor/candle-core from the registry copy of candle-core 0.11.1 (see
vendor/candle-core/PATCH.md). Usage: scripts/patch-candle.py [registry-crate-dir]"""
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
print(f"patched {count} sites in {p}")
