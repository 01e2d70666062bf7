"""Block sizes, warps and stages for a kernel on a target, from its row and column counts.

Rules, not search: a row that fits one block is read once and kept in registers; a longer row
is processed in chunks (the looped variant). Each thread should issue 16-byte loads and hold a
bounded number of elements; AMD's wave64 gets half the warps for the same threads.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusile import config
from fusile.backends.targets import Target


@dataclass(frozen=True)
class Config:
    block_p: int
    block_r: int
    num_warps: int
    num_stages: int
    looped: bool


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _warps(elems: int, target: Target, per_thread: int) -> int:
    """Enough warps that each thread holds about `per_thread` elements of the tile."""
    threads = max(1, elems // per_thread)
    return max(1, min(target.max_warps, pow2(threads) // target.warp_size or 1))


def reduction(p_total: int, r_total: int, target: Target, elem_bytes: int,
              r_contiguous: bool = True, columns: bool = False) -> Config:
    """Rows of r_total elements reduced, p_total rows. `columns`: a rows+columns kernel,
    whose float32 column sums take registers next to the row's: a row of it is held whole up
    to 8192 elements (at 32768 the registers spilled: 2.8x torch.compile's time on an H100),
    longer ones loop over chunks of 8 rows x 1024. A chunk of one row (as other looped row
    kernels take) read and wrote its program's partials once per row: at 4096x32768 on an
    H100 8x1024 took an rms_norm step from 0.995 to 0.838 ms and a layer_norm step from 1.496
    to 1.203 ms (benchmarks/sweep_columns.py)."""
    max_row = config.get("max_row_block") or (32768 if target.backend != "interpreter" else 8192)
    if columns:
        max_row = min(max_row, 8192)
    vec = max(1, 16 // elem_bytes)  # elements per 16-byte access
    if not r_contiguous:  # column reductions: the rows (P) are the contiguous axis
        block_p = min(pow2(p_total), 64)
        budget = 8192
        block_r = min(pow2(r_total), max(1, budget // block_p))
        looped = block_r < r_total
        return Config(block_p, block_r, _warps(block_p * block_r, target, 16), 1, looped)
    if pow2(r_total) <= max_row:
        block_r = pow2(r_total)
        block_p = max(1, min(pow2(p_total), 2048 // block_r))
        # keep ~16-32 elements per thread: registers hold the whole row; a rows+columns
        # kernel's column sums take as many again, so it keeps 4-8 (16 warps at 4096: 121
        # registers and half the programs resident at 8)
        per_thread = (8 if block_r >= 4096 else 4) if columns else \
            (2 * vec if block_r >= 4096 else vec)
        warps = _warps(block_p * block_r, target, per_thread)
        return Config(block_p, block_r, warps, 1, False)
    if columns:  # 8 rows a chunk: each chunk's column sums reach the partials once per 8 rows
        block_r = min(max_row, 1024)
        return Config(8, block_r, _warps(8 * block_r, target, 32), 1, True)
    block_r = min(max_row, 4096)
    return Config(1, block_r, _warps(block_r, target, vec), 1, True)


def pointwise(p_total: int, c_total: int, target: Target, elem_bytes: int) -> Config:
    """Tiles of up to 4096 elements, two 16-byte accesses per thread. Rows whose length is
    not a multiple of 16 elements cannot be read 16 bytes at a time: Triton knows an int
    argument's divisibility only as "by 16", so neither the row stride nor the mask of the
    row's end is known to line up with a vector. Each element is then a load with its own
    address and predicate, so a thread takes 4 (16 of them needed 80 registers and spilled
    at 2 x 13 x 31 halves on sm_90; a single row of 1000 halves spilled predicates)."""
    vec = max(1, 16 // elem_bytes)
    block_c = min(pow2(c_total), 1024)
    block_p = max(1, min(pow2(p_total), 4096 // block_c))
    per_thread = 2 * vec if c_total % 16 == 0 else 4
    return Config(block_p, block_c, _warps(block_p * block_c, target, per_thread), 1, False)


@dataclass(frozen=True)
class Split:
    """A column reduction cut into `splits` ranges of `chunk` rows, reduced in parallel."""

    partial: Config
    combine: Config
    splits: int
    chunk: int


def split(p_total: int, r_total: int, target: Target) -> Split:
    """Enough row ranges that the grid covers the machine ~4 times over; each program streams
    BLOCK_P contiguous columns (128 bytes of bf16) for its rows, 64 rows at a time."""
    block_p = min(pow2(p_total), 64)
    block_r = min(pow2(r_total), 64)
    p_blocks = _cdiv(p_total, block_p)
    want = 4 * max(1, target.compute_units)
    splits = min(max(1, _cdiv(want, p_blocks)), _cdiv(r_total, block_r), 256)
    chunk = _cdiv(_cdiv(r_total, splits), block_r) * block_r  # a whole number of blocks
    splits = _cdiv(r_total, chunk)
    partial = Config(block_p, block_r, _warps(block_p * block_r, target, 16), 1, True)
    combine = Config(block_p, pow2(splits), _warps(block_p * pow2(splits), target, 16), 1,
                     False)
    return Split(partial, combine, splits, chunk)


def row_programs(blocks: int, r_total: int, parts: int, target: Target, cfg: Config) -> int:
    """Programs of a persistent rows+columns kernel (codegen_columns.py): as many as fit on
    the machine at once (1024 threads per SM/CU at up to 64 registers each: 32 warps of 32,
    16 of 64), so each keeps its column sums in registers over many row blocks and the
    partials the combine reads (programs x row length x float32 per sum) stay small next to
    the rows. The looped variant adds its partials in place: at most 64 MiB of them."""
    fit = max(1, min(8, (1024 // target.warp_size) // cfg.num_warps))
    if cfg.looped:  # 2 per SM measured as fast as 1 at 4096x32768 (more: not measured)
        fit = min(fit, 2)
    per_unit = config.get("row_programs") or fit
    g = per_unit * max(1, target.compute_units)
    if cfg.looped:
        g = min(g, max(1, (64 << 20) // (4 * max(1, parts) * max(1, r_total))))
    return min(blocks, max(1, g))  # no rows: no programs, and the combine sums none


def columns_combine(r_total: int, programs: int, target: Target) -> Config:
    """The combine of a rows+columns kernel: BLOCK_R columns per program, enough programs to
    fill the machine once, BLOCK_P partial rows summed at a time."""
    units = max(1, target.compute_units)
    block_r = max(32, min(256, pow2(_cdiv(r_total, units))))
    block_p = min(64, pow2(programs))
    return Config(block_p, block_r, _warps(block_p * block_r, target, 16), 1, False)
