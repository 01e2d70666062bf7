"""Planted bugs: does the suite fail when the compiler is wrong?

Each plant is one small edit of the source that gives wrong numbers (or a wrong report). The
runner copies the tracked tree into a scratch directory, applies one plant, runs the CPU suite
there with a fresh kernel cache, stopping at the first failure, and reports which test caught
it, or that nothing did. A plant whose text is no longer in its file is reported as stale, so
the list cannot silently rot as the code moves.

    python -m tests.plants               # every plant, one at a time (about 1-3 min each)
    python -m tests.plants min_identity  # the named ones
    python -m tests.plants --list
    python -m tests.plants --pytest "-m gpu tests/backends/test_replay.py"  # e.g. on a GPU

The first thirteen are the ones issue 25 reported as uncaught; the rest were added after it
(six with concat, positions under a slice and the rope rewrite;
then five with decode attention and the fused cross-entropy reduction, two with the Hugging
Face integration, six with autodiff, two with mlir-cpu, four with its row blocks and exp,
one with the partition's deferred producers, three with rows+columns kernels, one with
mlir-cpu's results computed in place, one with float64 partials,
one with a row class added after a column sum, one with a sum that reads its init,
one with sliced reductions, two with row-reduced contractions,
two with one-pass log-sum-exps over long rows, one with argmax).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plant:
    name: str
    path: str
    old: str
    new: str
    what: str


PLANTS = [
    # ---- issue 25's list
    Plant("min_identity", "fusile/lowering/builtin_rules.py",
          '"min": ("minimumf", "minsi", pymath.inf)', '"min": ("minimumf", "minsi", 0.0)',
          "lowering: min's reduction identity 0 instead of +inf"),
    Plant("pow2_as_pow3", "fusile/lowering/to_mlir.py",
          "for _ in range(int(abs(p))):", "for _ in range(int(abs(p)) + (p == 2)):",
          "lowering: x ** 2 lowered as x ** 3"),
    Plant("ge_as_gt", "fusile/lowering/builtin_rules.py", '">=": "OGE"', '">=": "OGT"',
          "lowering: float >= lowered as >"),
    Plant("int_sum_int32", "fusile/dsl/builtins.py",
          "dtype = t.dtype if t.dtype.is_float else i64", "dtype = t.dtype",
          "types: an integer sum kept in int32"),
    Plant("split_partial_zero", "fusile/backends/triton/codegen_loops.py",
          'f"mask=mask_p & mask_s, other={ident})")', 'f"mask=mask_p & mask_s, other=0)")',
          "codegen: masked partials of a split column reduction filled with 0"),
    Plant("dot_k_tail", "fusile/backends/triton/codegen_tiled.py",
          "if not zero.get(src, False):", "if False:",
          "codegen: a contraction prologue's k tail not zeroed"),
    Plant("gpu_sum_as_max", "fusile/backends/triton/emitter.py",
          'return f"{fn}({tile}, axis=1, keep_dims=True)"',
          'return f"{fn.replace(\'sum\', \'max\')}({tile}, axis=1, keep_dims=True)"',
          "codegen (GPU only): tl.sum emitted as tl.max"),
    Plant("gpu_tanh_as_tan", "fusile/backends/triton/ops.py",
          'return f"libdevice.tanh({a[0]})"', 'return f"libdevice.tan({a[0]})"',
          "codegen (GPU only): libdevice.tanh emitted as tan"),
    Plant("geglu_tanh_bwd_sign", "fusile/stdlib/kernels.py",
          "return astype(dy * b * gelu_tanh_grad(a), a), astype(dy * gelu_tanh(a), b)",
          "return astype(-dy * b * gelu_tanh_grad(a), a), astype(dy * gelu_tanh(a), b)",
          "stdlib: geglu(approximate='tanh') backward with a flipped sign"),
    Plant("ce_smoothing_off_by_one", "fusile/stdlib/kernels.py",
          "- where(hit, 1.0 - smoothing, 0.0) - smoothing / size(z, -1)",
          "- where(hit, 1.0 - smoothing, 0.0) - smoothing / (size(z, -1) - 1)",
          "stdlib: linear cross-entropy's label smoothing spread over V - 1 classes"),
    Plant("explain_always_memory", "fusile/explain.py",
          '"memory" if t_mem >= t_flop else "compute"', '"memory"',
          "explain: the bound always 'memory'"),
    Plant("explain_intensity_inverted", "fusile/explain.py",
          "k.flops / max(1, nbytes), 1e6", "nbytes / max(1, k.flops), 1e6",
          "explain: arithmetic intensity inverted"),
    Plant("explain_unfused_doubled", "fusile/explain.py",
          "kernels, report.unfused_kernels, report.unfused_bytes,",
          "kernels, report.unfused_kernels, 2 * report.unfused_bytes,",
          "explain: unfused bytes doubled"),
    Plant("explain_peak_fp32", "fusile/explain.py",
          "peak = target.bf16_tflops if (k.dots and sixteen_bit) else target.fp32_tflops",
          "peak = target.fp32_tflops if (k.dots and sixteen_bit) else target.fp32_tflops",
          "explain: the peak always fp32"),
    # ---- added after it: looped reductions, attention masks, AOT, the replay, and more
    Plant("looped_acc_identity", "fusile/backends/triton/codegen_loops.py",
          'top.emit(f"{acc} = tl.full([BLOCK_P, BLOCK_R], {w.identity(op)}, "',
          'top.emit(f"{acc} = tl.full([BLOCK_P, BLOCK_R], 0, "',
          "codegen: a looped reduction's accumulator starts at 0, not its identity"),
    Plant("looped_skips_first_block", "fusile/backends/triton/codegen_loops.py",
          'with top.block("for r0 in range(0, R, BLOCK_R):") as loop:\n'
          '            w.r_index(loop, "r0 + ")\n            for gi in gens:',
          'with top.block("for r0 in range(BLOCK_R if R > BLOCK_R else 0, R, BLOCK_R):") '
          'as loop:\n            w.r_index(loop, "r0 + ")\n            for gi in gens:',
          "codegen: a looped reduction skips its first block when there are several"),
    Plant("store_unmasked", "fusile/backends/triton/emitter.py",
          'masked = f", mask={mask}" if mask else ""\n        offset = self.offset(',
          'masked = ""\n        offset = self.offset(',
          "codegen: stores without their mask (writes past the end of a ragged row)"),
    Plant("causal_strict", "fusile/stdlib/attention.py",
          "keep = ((j <= i) | (causal == 0)) & ((i - j < window) | (window <= 0)) & \\\n"
          "        ((j < n) | (ragged == 0))\n    s = astype(q @ k.T, f32) * scale",
          "keep = ((j < i) | (causal == 0)) & ((i - j < window) | (window <= 0)) & \\\n"
          "        ((j < n) | (ragged == 0))\n    s = astype(q @ k.T, f32) * scale",
          "stdlib attention forward: a causal row no longer sees its own key"),
    Plant("window_off_by_one", "fusile/stdlib/attention.py",
          "keep = ((j <= i) | (causal == 0)) & ((i - j < window) | (window <= 0)) & \\\n"
          "        ((j < n) | (ragged == 0))\n    delta",
          "keep = ((j <= i) | (causal == 0)) & ((i - j <= window) | (window <= 0)) & \\\n"
          "        ((j < n) | (ragged == 0))\n    delta",
          "stdlib attention backward: a sliding window one key too wide"),
    Plant("key_bound_drops_diagonal", "fusile/backends/triton/codegen_bounds.py",
          'one = 1 if pred == "sle" else 0', "one = 0",
          "codegen: the key-loop bound of j <= i + c drops the diagonal key"),
    Plant("negative_tile_start", "fusile/backends/triton/codegen_bounds.py",
          'e("hi = tl.maximum(hi, lo)")', "pass",
          "codegen: a loop bound left negative (Triton's // truncates: unmasked negative rows)"),
    Plant("aot_bf16_as_fp16", "fusile/backends/triton/aot_build.py",
          '_SIG = {"bf16": "*bf16"', '_SIG = {"bf16": "*fp16"',
          "AOT: bf16 pointers compiled as fp16"),
    Plant("aot_scalar_as_int", "fusile/backends/triton/aot_build.py",
          'scalars = {f"a{v}": scalar_dtypes.get(v, "fp32") for v in ks.scalars}',
          'scalars = {f"a{v}": scalar_dtypes.get(v, "i32") for v in ks.scalars}',
          "AOT: float scalar parameters compiled as i32"),
    Plant("replay_ignores_alignment", "fusile/backends/triton/replay.py",
          "a.data_ptr() & 15)", "a.data_ptr() & 0)",
          "replay: a layout key blind to 16-byte alignment"),
    Plant("replay_aliases_inputs", "fusile/backends/triton/replay.py",
          "return [args[x].clone() if kind == _INPUT", "return [args[x] if kind == _INPUT",
          "replay: a result that is an input returned as the input itself"),
    Plant("call_key_ignores_ints", "fusile/backends/dispatch.py",
          "(t, a) if t is int or t is bool", "(t,) if t is int or t is bool",
          "call path: a program specialised on an int constant reused for another value"),
    Plant("cache_key_ignores_broadcast", "fusile/dsl/signature.py",
          'key.append(("t", a.dtype, tuple(type(s) is int and s == 1 for s in a.shape)))',
          'key.append(("t", a.dtype, len(a.shape)))',
          "compile cache: a program for a broadcast (size-1) axis reused for a full one"),
    Plant("strides_reversed", "fusile/backends/triton/runtime.py",
          "for axis in axes]\n        sized = launch.sized",
          "for axis in reversed(axes)]\n        sized = launch.sized",
          "runtime: a tensor's strides passed in the wrong order"),
    Plant("promote_bf16_f32", "fusile/dsl/types.py",
          "return a if a.bits > b.bits else b", "return a if a.bits < b.bits else b",
          "types: promotion picks the narrower float (bf16 + f32 is bf16)"),
    Plant("var_correction_ignored", "fusile/lowering/builtin_rules.py",
          'corr = float(call.options.get("correction") or 0)', "corr = 0.0",
          "lowering: var's correction ignored"),
    Plant("rms_eps_outside", "fusile/stdlib/kernels.py",
          "rstd = rsqrt(mean(x * x, axis=-1, keepdims=True) + eps)",
          "rstd = rsqrt(mean(x * x, axis=-1, keepdims=True)) + eps",
          "stdlib: rms_norm's eps added outside the rsqrt"),
    # ---- concat and rope (issue 19)
    Plant("concat_index_piece", "fusile/dsl/push.py",
          'return push(ck, p, _with(ops, axis, ("index", op[1] - off)), at)',
          'return push(ck, p, _with(ops, axis, ("index", op[1] - off - (off > 0))), at)',
          "dsl: an index into a concat's later piece takes the element before it"),
    Plant("positions_slice_start", "fusile/dsl/push.py",
          "e.span, step)), ast.Num(e.span, start))", "e.span, step)), ast.Num(e.span, 0))",
          "dsl: a slice of index() positions forgets where the slice starts"),
    Plant("concat_mean_share", "fusile/dsl/concat.py",
          "ast.Num(e.span, (hi - lo) / size)", "ast.Num(e.span, 1 / (len(bounds) - 1))",
          "dsl: a mean across a seam weighs the pieces equally, not by their sizes"),
    Plant("join_copy_skipped", "fusile/backends/triton/joins.py",
          "                    piece.copy_(env[tid])\n", "",
          "runtime: a joined result's parameter piece is never copied into place"),
    Plant("replay_join_view", "fusile/backends/triton/replay.py",
          "else made[a[1]][a[2]])", "else made[a[1]])",
          "replay: a joined result's piece launched on the whole allocation, not its view"),
    Plant("rope_backward_sign", "fusile/stdlib/rope.py",
          "lo = x1 * c1 + x2 * s2 if backward", "lo = x1 * c1 - x2 * s2 if backward",
          "stdlib: rope's backward turns the first half the wrong way"),
    # ---- decode attention: split keys, cache lengths, the folded query heads
    Plant("decode_combine_weight", "fusile/backends/triton/codegen_decode.py",
          '"beta = tl.exp2(m_s - m_use)"', '"beta = tl.exp2(m_i - m_use)"',
          "codegen: the combine weighs each split's partials by the running max, not its own"),
    Plant("decode_chunk_overlap", "fusile/backends/triton/codegen_decode.py",
          'e("hi = tl.maximum(tl.minimum(hi, sid * S_CHUNK + S_CHUNK), lo)")',
          'e("hi = tl.maximum(tl.minimum(hi, sid * S_CHUNK + S_CHUNK + BLOCK_N), lo)")',
          "codegen: a split's chunk runs one key tile into the next split's"),
    Plant("ragged_bound_short", "fusile/backends/triton/codegen_bounds.py",
          "return 0, 0, [var]", "return 0, 0, [f\"{var} - 1\"]",
          "codegen: a per-sequence cache length bounds the key loop one key short"),
    Plant("fold_position", "fusile/stdlib/attention.py",
          "    i = n - 1 if fold else arange(size(q, -2))[:, None] + (n - size(q, -2))\n"
          "    j = arange(size(k, -2))[None, :]\n    keep = ((j <= i) | (causal == 0)) & "
          "((i - j < window) | (window <= 0)) & \\\n        ((j < n) | (ragged == 0))\n"
          "    s = astype(q @ k.T, f32) * scale",
          "    i = n - 2 if fold else arange(size(q, -2))[:, None] + (n - size(q, -2))\n"
          "    j = arange(size(k, -2))[None, :]\n    keep = ((j <= i) | (causal == 0)) & "
          "((i - j < window) | (window <= 0)) & \\\n        ((j < n) | (ragged == 0))\n"
          "    s = astype(q @ k.T, f32) * scale",
          "stdlib: decoding's folded query heads sit one position before the last"),
    Plant("ce_mean_count", "fusile/stdlib/kernels.py",
          "count = sum(astype(kept, i64))", "count = sum(astype(kept, i64)) + 1",
          "stdlib: cross-entropy's mean divides by one row too many"),
    Plant("hf_mlp_gate", "fusile/integrations/huggingface.py",
          "activations.swiglu(self.gate_proj(x), self.up_proj(x))",
          "activations.swiglu(self.up_proj(x), self.up_proj(x))",
          "integration: a patched MLP gates with the up projection"),
    Plant("hf_static_prefill_alignment", "fusile/integrations/huggingface.py",
          "    if causal and kv_len != q_len:", "    if causal and kv_len < q_len:",
          "integration: a static cache's prefill aligned bottom-right (its empty slots seen)"),
    # ---- autodiff (issue 20)
    Plant("grad_rsqrt_sign", "fusile/lowering/derivatives.py",
          'return _times(b, g, b.ew("mul", cube, b.const(-0.5)))',
          'return _times(b, g, b.ew("mul", cube, b.const(0.5)))',
          "autodiff: rsqrt's derivative with the wrong sign"),
    Plant("grad_mean_divisor", "fusile/lowering/derivatives.py",
          'return [b.ew("div", b.unreduce(g, n), b.count(n))]',
          'return [b.unreduce(g, n)]', "autodiff: mean's gradient not divided by the count"),
    Plant("grad_unbroadcast_axes", "fusile/lowering/autodiff.py",
          "if env.find(d) == 1 and env.find(e) != 1)", "if env.find(d) == 1 and False)",
          "autodiff: a broadcast operand's gradient not summed over its axes of 1"),
    Plant("grad_kept_in_bf16", "fusile/autograd.py",
          "    if s.op not in REDUCTIONS or s.type.dtype.bits >= 32:",
          "    if True:", "autograd: a 16-bit input's kept statistics stored in 16 bits"),
    Plant("grad_join_piece", "fusile/autograd.py", "piece = g[index]", "piece = g[..., :1]",
          "autograd: a returned concat's gradient not cut at its pieces"),
    Plant("grad_op_slice", "fusile/autograd.py", "out[j][index] += g", "out[j] += 0 * out[j]",
          "autograd: the compiled gradient of a sliced parameter dropped"),
    Plant("mlir_cpu_strides", "fusile/backends/mlir_cpu.py",
          "slot.strides[:] = a.stride()", "slot.strides[:] = a.contiguous().stride()",
          "mlir-cpu: an input's strides taken as contiguous"),
    Plant("mlir_cpu_double_free", "fusile/backends/mlir_cpu.py",
          "d.allocated != _GLOBAL and d.allocated not in freed:", "d.allocated != _GLOBAL:",
          "mlir-cpu: a buffer returned twice freed twice"),
    Plant("row_split_reduction", "fusile/lowering/row_blocks.py",
          'node.iterators[loops[0]] != "parallel")', "False)",
          "row blocks: a reduction over the rows split into blocks"),
    Plant("row_split_index", "fusile/lowering/row_blocks.py",
          'op.name == "linalg.index"', 'op.name == "linalg.nothing"',
          "row blocks: a block's own row numbers taken for the rows' index"),
    Plant("row_block_offset", "fusile/backends/mlir_cpu.py",
          "x.narrow(ax, a, n) if ax", "x.narrow(ax, 0, n) if ax",
          "mlir-cpu: every block reads the first rows"),
    Plant("partition_no_defer", "fusile/lowering/partition.py",
          "    deferred = _deferrable(graph, taken | grad_members | {\n"
          "        mi for f in reduced_dots.values() for mi in f.members})",
          "    deferred: set[int] = set()",
          "partition: cheap producers get kernels of their own that hold their readers back"),
    Plant("wide_heads_run_flash", "fusile/backends/triton/runtime.py",
          "        if self._held and too_wide(self._held, sizes, self._limit):\n"
          "            return self.plain()(args)",
          "        if False:\n            return self.plain()(args)",
          "runtime: head dims past the target's limit still run the flash kernels"),
    Plant("cpu_exp_ln2", "fusile/backends/cpu_math.py",
          "_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4", "_LN2_HI, _LN2_LO = 0.69314718, 0.0",
          "mlir-cpu: exp's range reduction with a one-part ln 2"),
    Plant("cpu_outs_shared_empty", "fusile/backends/cpu_outs.py",
          "if sum(o == empty for o in owners) == 1:", "if True:",
          "mlir-cpu: two results started from one empty both computed into the first's tensor"),
    Plant("columns_unmasked_rows", "fusile/backends/triton/codegen_columns.py",
          'fold_mask="mask")', 'fold_mask="mask_r")',
          "rows+columns: a column sum adds the padded rows of a row block"),
    Plant("columns_first_block_partial", "fusile/backends/triton/codegen_columns.py",
          "tl.where(blk > prog, prev", "tl.where(blk > prog + G, prev",
          "rows+columns (looped): a program's second row block overwrites its partials"),
    Plant("columns_one_partial_row", "fusile/backends/triton/codegen_columns.py",
          'head.emit(f"tl.store(part_ptr + ({j} * G + prog) * R',
          'head.emit(f"tl.store(part_ptr + ({j} * G) * R',
          "rows+columns: every program stores its column sums over the first one's"),
    Plant("f64_partials_in_f32", "fusile/backends/triton/codegen_variants.py",
          "return f64 if any(", "return f32 if any(",
          "split and rows+columns kernels: float64 sums' partials stored as float32"),
    Plant("columns_new_row_class", "fusile/lowering/groups.py",
          "if self.columns and not column and not", "if False and not",
          "rows+columns: a later generic over more rows joins; the column sums count its rows"),
    Plant("reduce_reads_init", "fusile/lowering/emit.py",
          "acc if reduces else constant(identity, elem)", "acc",
          "a sum over broadcast axes only reads its init: fused wider, it re-accumulates"),
    Plant("sliced_reduction_axes", "fusile/dsl/push.py",
          "[i for i in range(xt.rank) if i not in axes]", "list(range(xt.rank))",
          "a sliced reduction without keepdims cuts its input along the wrong axis"),
    Plant("dot_rows_no_rescale", "fusile/backends/triton/codegen_dot_rows.py",
          '{l_} * tl.exp({shift(m)} - r_new)) "',
          '{l_}) "',
          "dot-rows: the online sum keeps its old shift when the running max grows"),
    Plant("dot_rows_combine_unshifted", "fusile/backends/triton/codegen_dot_rows.py",
          'f"tl.exp({shift(m_s)} - r_new))")',
          'f"tl.exp({shift(m_s)} - 0.0))")',
          "dot-rows: the combine adds each split's sum without shifting it"),
    Plant("online_rows_no_rescale", "fusile/backends/triton/codegen_loops.py",
          "ol{s} * tl.exp({shift(f'om{s}')} - r_new)) \"",
          "ol{s}) \"",
          "looped rows: the online sum keeps its old shift when the running max grows"),
    Plant("online_rows_empty_sum_overflow", "fusile/backends/triton/codegen_loops.py",
          "tl.where(om{s} == -{INF}, 0.0, ol{s} * tl.exp({shift(f'om{s}')} - r_new)) \"",
          "(ol{s} * tl.exp({shift(f'om{s}')} - r_new)) \"",
          "looped rows: an empty sum times exp(0 - r) of a very negative r is 0 * inf"),
    Plant("argmax_ignores_nan", "fusile/dsl/indices.py",
          '    hit = at.op("or_", at.cmp("==", x, m), nan)',
          '    hit = at.cmp("==", x, m)',
          "argmax: a row holding NaN gives no index (torch gives the first NaN's)"),
]

_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def _tree_files() -> list[str]:
    """The tracked and untracked-but-not-ignored files; without git (a copied tree), every
    file under fusile/, tests/ and benchmarks/ plus the root's project files."""
    try:
        return subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                              check=True, capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        found = [str(p.relative_to(ROOT)) for d in ("fusile", "tests", "benchmarks")
                 for p in (ROOT / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        return found + [f for f in ("pyproject.toml", "README.md") if (ROOT / f).exists()]


def _scratch_copy(dest: Path, src_root: Path = ROOT) -> None:
    files = _tree_files() if src_root == ROOT else [
        str(p.relative_to(src_root)) for p in src_root.rglob("*") if p.is_file()]
    for f in files:
        src = src_root / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def run_plant(p: Plant, pytest_args: list[str], base: Path) -> tuple[str, str, float]:
    """(verdict, detail, seconds): caught (the first failing test), missed or stale. `base`:
    the tree as it was when the run started (edits made meanwhile do not leak in)."""
    with tempfile.TemporaryDirectory(prefix=f"plant-{p.name}-") as tmp:
        work = Path(tmp) / "tree"
        _scratch_copy(work, base)
        target = work / p.path
        text = target.read_text()
        if text.count(p.old) != 1:
            return "stale", f"{p.path}: the planted text occurs {text.count(p.old)} times", 0.0
        target.write_text(text.replace(p.old, p.new))
        path = os.pathsep.join(p for p in (str(work), os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONPATH=path, FUSILE_CACHE_DIR=str(Path(tmp) / "cache"),
                   PYTHONDONTWRITEBYTECODE="1")
        t0 = time.time()
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider",
               *pytest_args]
        res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        dt = time.time() - t0
        out = res.stdout + res.stderr
        if res.returncode == 0:
            return "MISSED", "every test passed", dt
        failed = _FAILED.findall(out)
        if not failed:
            tail = out.strip().splitlines()[-1:] or ["(no output)"]
            return "caught?", f"pytest exited {res.returncode}: {tail[0]}", dt
        return "caught", failed[0], dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="plants to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the plants and exit")
    ap.add_argument("--pytest", default="-n 2 tests",
                    help="arguments for pytest in the scratch tree (default: %(default)s)")
    a = ap.parse_args(argv)
    if a.list:
        for p in PLANTS:
            print(f"{p.name:28} {p.what}")
        return 0
    unknown = set(a.names) - {p.name for p in PLANTS}
    if unknown:
        ap.error(f"no plant named {', '.join(sorted(unknown))} (see --list)")
    chosen = [p for p in PLANTS if not a.names or p.name in a.names]
    missed = 0
    with tempfile.TemporaryDirectory(prefix="plants-base-") as base:
        _scratch_copy(Path(base))
        for i, p in enumerate(chosen, 1):
            verdict, detail, dt = run_plant(p, shlex.split(a.pytest), Path(base))
            missed += verdict != "caught"
            print(f"[{i}/{len(chosen)}] {verdict:7} {p.name:28} {dt:6.0f}s  {detail}",
                  flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
