"""`fn.explain(...)`: the first-principles numbers of a fused function on a target.

For each kernel: the lines it fuses, HBM bytes read and written, FLOPs (counted on the fused
IR, so recomputation shows), arithmetic intensity, and the roofline time on the target
(bytes / bandwidth vs FLOPs / peak; the larger bounds the kernel). Totals compare with the
unfused program, every linalg op its own kernel. With measure=True on a GPU each kernel is
timed and its achieved fraction of the roofline reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fusile.backends.targets import Target
from fusile.lowering.report import PlanReport, fmt_bytes


@dataclass
class KernelExplain:
    index: int
    kind: str
    lines: list[tuple[str, str]]
    read_bytes: int
    write_bytes: int
    flops: int
    intensity: float  # FLOPs per HBM byte
    roofline_us: float
    bound: str  # "memory" | "compute"
    measured_us: float | None = None

    @property
    def bytes(self) -> int:
        return self.read_bytes + self.write_bytes

    @property
    def achieved(self) -> float | None:
        """Fraction of the roofline reached (roofline time / measured time)."""
        return None if not self.measured_us else self.roofline_us / self.measured_us


@dataclass
class Explanation:
    function: str
    target: Target
    kernels: list[KernelExplain]
    unfused_kernels: int
    unfused_bytes: int
    program_flops: int  # the math as written (unfused IR)
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(k.bytes for k in self.kernels)

    @property
    def flops(self) -> int:
        return sum(k.flops for k in self.kernels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "function": self.function, "target": self.target.name,
            "kernels": [asdict(k) | {"bytes": k.bytes, "achieved": k.achieved}
                        for k in self.kernels],
            "bytes": self.bytes, "flops": self.flops, "program_flops": self.program_flops,
            "unfused_kernels": self.unfused_kernels, "unfused_bytes": self.unfused_bytes,
            "bytes_saved": self.unfused_bytes - self.bytes,
            "launches_saved": self.unfused_kernels - len(self.kernels),
        }

    def __str__(self) -> str:
        t = self.target
        out = [f"{self.function} on {t.name} ({t.hbm_tb_s:.3g} TB/s, {t.fp32_tflops:.3g} fp32 / "
               f"{t.bf16_tflops:.3g} bf16 TFLOP/s)"]
        head = (f"{'kernel':<8}{'kind':<12}{'read':>10}{'write':>10}{'FLOPs':>10}"
                f"{'FLOP/B':>8}{'roofline':>11}  bound")
        if any(k.measured_us for k in self.kernels):
            head += f"{'measured':>11}{'of roof':>9}"
        out.append(head)
        for k in self.kernels:
            row = (f"{k.index:<8}{k.kind:<12}{fmt_bytes(k.read_bytes):>10}"
                   f"{fmt_bytes(k.write_bytes):>10}"
                   f"{_flops(k.flops):>10}{k.intensity:>8.2f}{k.roofline_us:>9.1f}us  "
                   f"{k.bound:<7}")
            if k.measured_us:
                row += f"{k.measured_us:>9.1f}us{100 * (k.achieved or 0):>8.0f}%"
            out.append(row)
            for where, text in k.lines:
                out.append(f"        {where:<22} {text}")
        saved = self.unfused_bytes - self.bytes
        out.append(
            f"total: {len(self.kernels)} kernel(s), {fmt_bytes(self.bytes)} HBM, "
            f"{_flops(self.flops)} FLOPs (program: {_flops(self.program_flops)}); unfused: "
            f"{self.unfused_kernels} kernels, {fmt_bytes(self.unfused_bytes)}: saves "
            f"{fmt_bytes(saved)} ({100 * saved / max(1, self.unfused_bytes):.0f}%) and "
            f"{self.unfused_kernels - len(self.kernels)} launches")
        out += self.notes
        return "\n".join(out)


def _flops(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if n < 1000 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def build(function: str, report: PlanReport, target: Target, sixteen_bit: bool,
          measured_ms: list[float | None] | None = None,
          joined: list[list[int]] | None = None) -> Explanation:
    kernels = []
    for i, k in enumerate(report.kernels):
        ms = None if measured_ms is None else measured_ms[i]
        nbytes = sum(k.reads.values()) + sum(k.writes.values())
        # tile dots (contractions, attention) on 16-bit operands run on tensor cores
        peak = target.bf16_tflops if (k.dots and sixteen_bit) else target.fp32_tflops
        t_mem = nbytes / (target.hbm_tb_s * 1e12) if target.hbm_tb_s else 0.0
        t_flop = k.flops / (peak * 1e12) if peak else 0.0
        kernels.append(KernelExplain(
            k.index, k.kind, k.lines, sum(k.reads.values()), sum(k.writes.values()), k.flops,
            k.flops / max(1, nbytes), 1e6 * max(t_mem, t_flop),
            "memory" if t_mem >= t_flop else "compute",
            None if ms is None else ms * 1e3))
    notes = [f"(kernels {', '.join(map(str, group))} run as one launch: independent "
             f"pointwise kernels, FUSILE_HORIZONTAL)" for group in joined or []]
    if measured_ms is not None and None in measured_ms:
        notes.append("(kernels without a measured time ran in the launch of the kernel "
                     "before them: independent pointwise kernels share one, timed together)")
    if measured_ms is None and target.backend == "mlir-cpu":
        notes.append("(roofline from this CPU's copy and fp32 matmul rates, measured through "
                     "torch; mlir-cpu runs the whole program as one call, blocks of rows on "
                     "the threads where it can)")
    elif measured_ms is None:
        notes.append("(roofline from datasheet numbers; measure=True on a GPU times each "
                     "kernel)")
    return Explanation(function, target, kernels, report.unfused_kernels, report.unfused_bytes,
                       int(report.extra.get("unfused_flops", 0)), notes)
