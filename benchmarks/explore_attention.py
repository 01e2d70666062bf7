"""Exploration harness for the flash forward kernel: takes the kernel fusile generates for one
shape, applies source-level variants, sweeps tile configs (BMxBNxWARPSxSTAGES[xMAXNREG]), and
times each against SDPA's flash and cuDNN in the same run, with registers, spills and the error
of O and the LSE. A tool for finding what moves the numbers before changing the code generator;
not a test. Variants: base (as generated), plain (programs in batch order, as before the L2
grouping), group4m (groups for 4 MiB instead of 16), masked (head-dim masks kept, as before
EVEN_HEADS), ragged (the key-end masks kept, as before EVEN_N), staged (the kernel as generated
when the stages must stay separate loops). On a kernel of three top-level stage loops (the non-
causal kernel before session 7; the causal one as `staged`): tma (K and V of the whole-tile loop
through TMA descriptors), ws (Triton's automatic warp specialisation on that loop), tma_ws,
oneloop (the stages as one loop with a branch on the tile), oneloop_mask (one loop, the branch
only masks), even1 (one loop with the masked body: what the generator now emits without position
masks under EVEN_N), even1_noguard, vlate (V loaded after the softmax). Hand-written sketches of
the non-causal kernel (attention_sketches.py): hand, split2, lazy8, split2_lazy8, persist2,
persist2_flat, split2_persist1_flat, split2_persist2_flat.

    python -m benchmarks.explore_attention [--d 64] [--seq 4096] [--causal]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import sys
import tempfile

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

from benchmarks.attention_sketches import sketch
from fusile.backends.triton import runtime
from fusile.backends.triton.codegen_attn import AttnWriter
from fusile.backends.triton.generate import generate
from fusile.backends.triton.replay import Replay
from fusile.stdlib.attention import attention


def capture(q, k, v, causal):
    """The attention launch fusile makes for these inputs: (source, grid, consts, opts, args,
    program)."""
    got = []
    orig = runtime.TritonProgram.run_variant

    def spy(self, launch, variant, grid, consts, opts, device, args):
        if launch.ks.attn is not None:
            got.append((launch.ks.source, grid, dict(consts), dict(opts), args, self))
        return orig(self, launch, variant, grid, consts, opts, device, args)

    replay = Replay.__call__
    runtime.TritonProgram.run_variant = spy
    Replay.__call__ = lambda self, args, env: None  # the full launch path, through _run
    try:
        attention(q, k, v, causal=causal)
    finally:
        runtime.TritonProgram.run_variant = orig
        Replay.__call__ = replay
    return got[-1]


def staged_source(program):
    """The program's attention kernel as the generator writes it when the stages must stay
    separate loops (scores that load a tensor)."""
    keep = AttnWriter._scores_read_memory
    AttnWriter._scores_read_memory = lambda self, t: True
    try:
        _, kernels = generate(program.plan, "gpu", program.names, False)
    finally:
        AttnWriter._scores_read_memory = keep
    return next(ks.source for ks in kernels if ks.attn is not None)


def whole_loop(src):
    """(start, end) of the whole-tile loop's body in src."""
    a = src.index("# whole tiles: no masks")
    b = src.index("    for j0 in range(", a)
    return a, b


def v_tma(src):
    """K and V tiles of the whole-tile loop through TMA descriptors made per program from the
    same base, extent and strides as the pointer loads."""
    decl = ""
    a, b = whole_loop(src)
    body = src[a:b]
    for t, r, c in (("k", "kj", "kd"), ("v", "vj", "ve")):
        m = re.search(rf"(\w+) = tl\.load\(({t}_ptr[^,]*?) \+ {r} \* ({t}_s\d+) \+ "
                      rf"{c} \* {t}_s\d+, mask=[^)]*\)", body)
        if m is None:
            raise ValueError(f"no {t} load in the whole-tile loop")
        rows = re.search(rf"\b{r} < (\w+)", src).group(1)
        cols = re.search(rf"\b{c} < (\w+)", src).group(1)
        blk = "BLOCK_D" if t == "k" else "BLOCK_E"
        decl += (f"    {t}_desc = tl.make_tensor_descriptor({m.group(2)}, [{rows}, {cols}], "
                 f"[{m.group(3)}, 1], [BLOCK_N, {blk}])\n")
        body = body.replace(m.group(0), f"{m.group(1)} = {t}_desc.load([j0, 0])"
                            + (".T" if t == "k" else ""))
    src = src[:a] + body + src[b:]
    i = src.index("    lo = ")
    return src[:i] + decl + src[i:]


def v_ws(src):
    return src.replace("for j0 in range(mid_lo, mid_hi, BLOCK_N):",
                       "for j0 in tl.range(mid_lo, mid_hi, BLOCK_N, warp_specialize=True):")


def _stages(src):
    """src's lines, the lines of its three stage loops' heads, and the line after the last
    loop (ValueError for a kernel that is not three loops)."""
    lines = src.splitlines(keepends=True)
    heads = [i for i, ln in enumerate(lines) if ln.startswith("    for j0 in range(")]
    if len(heads) != 3:
        raise ValueError("not three stages")
    end = heads[2] + 1
    while end < len(lines) and lines[end].startswith("        "):
        end += 1
    return lines, heads, end


def v_oneloop(src):
    """The masked and whole stages as one loop, the softmax part under a branch on the tile,
    so the loads pipeline across the stage boundary (one fill per program instead of three)."""
    lines, heads, end = _stages(src)

    def parts(a, b):
        body = lines[a + 1:b]
        i = next(x for x, ln in enumerate(body) if ln.strip().startswith("mask_s = "))
        j = next(x for x, ln in enumerate(body) if ln.strip().startswith("alpha = "))
        return body[:i + 1], body[i + 1:j], body[j:]

    pre, soft_m, post = parts(heads[0], heads[1])
    _, soft_w, _ = parts(heads[1], heads[2])
    keep = [ln for ln in post if not ln.strip().startswith("acc = ")]
    loads = [ln for ln in keep if ln.strip().startswith(("vj", "mask_vj", "mask_v", "v_"))]
    stats = [ln for ln in keep if ln not in loads]
    acc = [ln for ln in post if ln.strip().startswith("acc = ")]
    out = ["    for j0 in range(lo, hi, BLOCK_N):  # every stage in one loop\n", *pre, *loads,
           "        if (j0 < mid_lo) | (j0 >= mid_hi):\n", *("    " + ln for ln in soft_m),
           "        else:\n", *("    " + ln for ln in soft_w), *stats, *acc]
    return "".join(lines[:heads[0]] + out + lines[end:])


def v_oneloop_mask(src):
    """As oneloop, but the branch only masks the scores (t = masked s, or s itself); the
    softmax after it is shared (assumes a positive scale: POS_SCALE)."""
    lines, heads, end = _stages(src)
    body = lines[heads[0] + 1:heads[1]]
    i = next(x for x, ln in enumerate(body) if ln.strip().startswith("mask_s = "))
    j = next(x for x, ln in enumerate(body) if ln.strip().startswith("if POS_SCALE"))
    k = next(x for x, ln in enumerate(body) if ln.strip().startswith("t = tl.where(mask_sj"))
    soft = body[k + 1:k + 4]  # the folded branch's m_new, m_use, p
    post = body[next(x for x, ln in enumerate(body) if ln.strip().startswith("alpha = ")):]
    loads = [ln for ln in post if ln.strip().startswith(("vj", "mask_vj", "mask_v", "v_"))]
    rest = [ln for ln in post if ln not in loads]
    out = ["    for j0 in range(lo, hi, BLOCK_N):  # every stage in one loop\n", *body[:i + 1],
           *loads, "        if (j0 < mid_lo) | (j0 >= mid_hi):\n", *body[j + 1:k + 1],
           "        else:\n", "            t = s\n", *(ln[4:] for ln in soft), *rest]
    return "".join(lines[:heads[0]] + out + lines[end:])


def v_even1(src):
    """The three stage loops as one loop over every tile with the masked stage's body: under
    EVEN_N and without position masks its masks fold away (the non-causal kernel as one
    plain loop)."""
    lines, heads, end = _stages(src)
    head = lines[heads[0]].replace("range(lo, mid_lo, BLOCK_N)", "range(lo, hi, BLOCK_N)")
    return "".join([*lines[:heads[0]], head, *lines[heads[0] + 1:heads[1]], *lines[end:]])


def v_vlate(src):
    """V's tile loaded after the softmax, just before its dot (as before the stages merged)."""
    out, held = [], []
    for ln in src.splitlines(keepends=True):
        if ln.strip().startswith(("vj = ", "mask_vj = ", "mask_v = ")) or \
                "= tl.load(v_ptr" in ln:
            held.append(ln)
            continue
        if ln.strip().startswith("acc = tl.dot(") and held:
            out += held
            held = []
        out.append(ln)
    return "".join(out)


def v_plain(src):
    """The program order before L2 grouping: each batch index's row blocks in turn, the last
    first."""
    a = src.index("    n_b = tl.num_programs(0)")
    b = src.index("\n", src.index("    pid_b = g0 + rr % gsz")) + 1
    return src[:a] + ("    pid_b = pid // tiles_m\n"
                      "    pid_m = tiles_m - 1 - pid % tiles_m\n") + src[b:]


def v_group(src, budget):
    """L2 grouping with another byte budget than the generator's."""
    return re.sub(r"tl\.minimum\(n_b, \d+ //", f"tl.minimum(n_b, {budget} //", src)


def sk(split: int = 1, occ: int = 0, flatten: bool = False, lazy: float = 0.0):
    """A hand-written sketch (attention_sketches), on a persistent grid of occ programs per
    SM when occ is set."""
    f = lambda s: sketch(s, split, occ > 0, flatten, lazy)  # noqa: E731
    f.occupancy = occ
    return f


VARIANTS = {"base": lambda s: s,
            "hand": sk(), "split2": sk(2), "lazy8": sk(lazy=8.0), "split2_lazy8": sk(2, lazy=8.0),
            "persist2": sk(1, 2), "persist2_flat": sk(1, 2, True),
            "split2_persist1_flat": sk(2, 1, True), "split2_persist2_flat": sk(2, 2, True),
            "plain": v_plain, "oneloop": v_oneloop,
            "oneloop_mask": v_oneloop_mask, "group4m": lambda s: v_group(s, 4 << 20),
            "masked": lambda s: s.replace("if EVEN_HEADS else", "if False else"),
            "ragged": lambda s: s.replace("if EVEN_N else", "if False else"),
            "staged": None, "vlate": v_vlate, "even1": v_even1,
            "even1_noguard": lambda s: re.sub(r"m_use = tl\.where\([^\n]*", "m_use = m_new",
                                              v_even1(s)),
            "tma": v_tma, "ws": v_ws, "tma_ws": lambda s: v_ws(v_tma(s))}
CONFIGS = [(64, 64, 4, 3), (64, 64, 4, 4), (64, 128, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3),
           (128, 128, 8, 2), (128, 128, 8, 3), (128, 128, 4, 2), (128, 64, 8, 4)]


def load(src, tag):
    path = f"{tempfile.gettempdir()}/fusile_explore_{tag}.py"
    with open(path, "w") as f:
        f.write("import triton\nimport triton.language as tl\n"
                "from triton.language.extra import libdevice\n\n" + src)
    spec = importlib.util.spec_from_file_location(f"fx_{tag}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.fusile_k0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--dump", help="write the captured kernel source here")
    p.add_argument("--configs", help="BMxBNxWARPSxSTAGES[xMAXNREG],... (default: a sweep)")
    a = p.parse_args()
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device="cuda",
                                                                 dtype=torch.int8))
    heads, batch = 2048 // a.d, max(1, 16384 // a.seq)
    q, k, v = (torch.randn(batch, heads, a.seq, a.d, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    flops = 4.0 * batch * heads * a.seq * a.seq * a.d / (2 if a.causal else 1)
    tf = lambda ms: flops / ms / 1e9  # noqa: E731
    ref = {}
    for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        with sdpa_kernel(be):
            f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=a.causal)  # noqa: E731
            ref[name] = f()
            print(f"{name:<8} {tf(do_bench(f, warmup=250, rep=100, return_mode='median')):6.0f} "
                  "TFLOP/s")
    f = lambda: attention(q, k, v, causal=a.causal)  # noqa: E731
    print(f"fusile   {tf(do_bench(f, warmup=250, rep=100, return_mode='median')):6.0f} TFLOP/s")
    src, grid, consts, opts, args, program = capture(q, k, v, a.causal)
    if a.dump:
        with open(a.dump, "w") as f:
            f.write(src)
    print("fusile picks", consts["BLOCK_M"], consts["BLOCK_N"], opts, file=sys.stderr)
    nb = grid[0] // math.ceil(a.seq / consts["BLOCK_M"])
    out = next(x for x in args if torch.is_tensor(x) and x.shape[-2:] == (a.seq, a.d)
               and x.data_ptr() not in (q.data_ptr(), k.data_ptr(), v.data_ptr()))
    want = ref["flash"].float()
    lse = next(x for x in args if torch.is_tensor(x) and x.dtype == torch.float32
               and x.shape[-1] == a.seq)
    s00 = (q[0, 0].double() @ k[0, 0].double().T) / math.sqrt(a.d)
    if a.causal:
        s00 = s00.masked_fill(torch.ones_like(s00, dtype=torch.bool).triu(1), -math.inf)
    want_lse = torch.logsumexp(s00, -1)
    rows = []
    for vname in a.variants.split(","):
        try:
            fn = load(staged_source(program) if vname == "staged" else VARIANTS[vname](src),
                      vname)
        except Exception as exc:
            print(f"{vname}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        configs = CONFIGS if not a.configs else \
            [tuple(int(x) for x in c.split("x")) for c in a.configs.split(",")]
        occ = getattr(VARIANTS.get(vname), "occupancy", None)
        for bm, bn, w, s, *r in configs:
            c = consts | {"BLOCK_M": bm, "BLOCK_N": bn} | ({} if occ is None else {"NB": nb})
            o = {"num_warps": w, "num_stages": s} | ({"maxnreg": r[0]} if r else {})
            g = (nb * math.ceil(a.seq / bm),)
            if occ:
                g = (min(g[0], occ * torch.cuda.get_device_properties(0).multi_processor_count),)
            try:
                out.fill_(float("nan"))
                lse.fill_(float("nan"))
                kern = fn[g](*args, **c, **o)
                err = float((out.view_as(want).float() - want).norm() / want.norm())
                got_lse = lse.reshape(batch, heads, a.seq)[0, 0].double()
                err = max(err, float((got_lse - want_lse).norm() / want_lse.norm()))
                ms = do_bench(lambda: fn[g](*args, **c, **o),  # noqa: B023
                              warmup=250, rep=100,
                              return_mode="median")
                rows.append((tf(ms), vname, bm, bn, w, s, kern.n_regs, kern.n_spills, err))
                print(f"{vname:<7} {bm:>3}x{bn:<3} w{w} s{s}{'' if not r else f' r{r[0]}'}"
                      f"  {tf(ms):6.0f} TFLOP/s  "
                      f"regs {kern.n_regs:3} spills {kern.n_spills:3}  err {err:.1e}", flush=True)
            except Exception as exc:
                print(f"{vname:<7} {bm:>3}x{bn:<3} w{w} s{s}  failed: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:120] if str(exc) else ''}", flush=True)
    rows.sort(reverse=True)
    print("best:")
    for r in rows[:6]:
        print(f"  {r[1]:<7} {r[2]}x{r[3]} w{r[4]} s{r[5]}: {r[0]:.0f} TFLOP/s (regs {r[6]}, "
              f"spills {r[7]}, err {r[8]:.1e})")


if __name__ == "__main__":
    main()
