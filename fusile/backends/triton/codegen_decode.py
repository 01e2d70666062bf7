"""Flash-decoding: a flash kernel's key loop split across programs, then one combine.

When a flash kernel has few row blocks (decoding: one to a few query rows per head, small
batches), one program per row block leaves most of the GPU idle while each program streams
the whole cache. The split variant (codegen_attn.write_attn with part=True) gives program
(pid, sid) the keys [sid * S_CHUNK, (sid + 1) * S_CHUNK) of its row block, the loop stages
and key bounds clamped to that range (S_CHUNK is a multiple of BLOCK_N, so tiles stay
aligned), and stores its running max m (base 2), sum l and unnormalised accumulator acc.
The combine variant, one program per row block, merges the S partials as the online softmax
merges tiles (M = max m_s, L = sum l_s 2^(m_s - M), O = sum acc_s 2^(m_s - M) / L) and runs
the kernel's epilogue unchanged. The runtime picks S from the row blocks, the key length and
the target's SM count (kinds/flash.py's splits); S = 1 is the one-kernel flash path.

Partials live in one float32 buffer, per (program, split) and row of the block:
acc [P * S * BLOCK_M, BLOCK_E], then m [P * S * BLOCK_M], then l [P * S * BLOCK_M].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusile.backends.triton.codegen_tiled import row_program
from fusile.backends.triton.kernel_source import TensorArg
from fusile.backends.triton.scope import Scope

if TYPE_CHECKING:
    from fusile.backends.triton.codegen_attn import AttnWriter

PART_ARGS = ("part_ptr", "S", "S_CHUNK")


def chunk_stages(top: Scope, stages: list[tuple[str, str, bool]]) -> None:
    """Clamp the loop bounds loop_stages emitted to this program's chunk of keys. Whole tiles
    stay whole: [mid_lo, mid_hi) only shrinks."""
    e = top.emit
    e("sid = tl.program_id(1)  # this program's chunk of keys")
    e("lo = tl.maximum(lo, sid * S_CHUNK)")
    e("hi = tl.maximum(tl.minimum(hi, sid * S_CHUNK + S_CHUNK), lo)")
    if len(stages) > 1:
        e("mid_lo = tl.minimum(tl.maximum(mid_lo, lo), hi)")
        e("mid_hi = tl.maximum(tl.minimum(mid_hi, hi), mid_lo)")


def _offsets(top: Scope, split: str) -> None:
    e = top.emit
    e("n_prog = tl.num_programs(0)")
    e(f"base = (pid * S + {split}) * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]  # partial rows")
    e("base_m = n_prog * S * BLOCK_M * BLOCK_E")
    e("base_l = base_m + n_prog * S * BLOCK_M")


def store_partials(top: Scope) -> None:
    """Store this program's m_i, l_i and acc (every row of the block: the buffer has them)."""
    _offsets(top, "sid")
    e = top.emit
    e("tl.store(part_ptr + base * BLOCK_E + tl.arange(0, BLOCK_E)[None, :], acc)")
    e("tl.store(part_ptr + base_m + base, m_i)")
    e("tl.store(part_ptr + base_l + base, l_i)")


def write_combine(w: AttnWriter, name: str, tensors: list[TensorArg]) -> list[str]:
    """One program per row block: merge its S partials, then the flash kernel's epilogue."""
    top = Scope.function()
    e = top.emit
    row_program(w, top, w.cname[w.i])
    e("offs_m = row0 + tl.arange(0, BLOCK_M)")
    e("offs_e = tl.arange(0, BLOCK_E)")
    _offsets(top, "0")
    e("m_i = tl.full([BLOCK_M, 1], float(\"-inf\"), tl.float32)")
    e("l_i = tl.full([BLOCK_M, 1], 0.0, tl.float32)")
    e("acc = tl.full([BLOCK_M, BLOCK_E], 0.0, tl.float32)")
    e("for s in range(0, S):")
    for line in ("row = base + s * BLOCK_M",
                 "m_s = tl.load(part_ptr + base_m + row)",
                 "m_new = tl.maximum(m_i, m_s)",
                 "m_use = tl.where(m_new == float(\"-inf\"), 0.0, m_new)  # no keys so far",
                 "alpha = tl.exp2(m_i - m_use)",
                 "beta = tl.exp2(m_s - m_use)",
                 "l_i = l_i * alpha + tl.load(part_ptr + base_l + row) * beta",
                 "acc = acc * alpha + tl.load(part_ptr + row * BLOCK_E + offs_e[None, :]) * beta",
                 "m_i = m_new"):
        e("    " + line)
    w.epilogue(top)
    return w.header(name, tensors, False, PART_ARGS,
                    " (split keys: combine the partials, then the epilogue)") + top.lines
