"""explain(measure=True) for the benchmark programs: each kernel's time and its achieved
fraction of the roofline (datasheet HBM bandwidth), bf16 16384x4096 and 4096x32768."""

from __future__ import annotations

import torch

from fusile import samples


def main() -> None:
    print(f"{'program':<14}{'size':<12}{'kernel':>7}{'kind':>12}{'measured us':>13}"
          f"{'roofline us':>13}{'of roofline':>13}{'of copy':>9}")
    copy_ratio = 2.96 / 3.35  # measured copy ceiling / datasheet bandwidth
    for m, n in ((16384, 4096), (4096, 32768)):
        for name, (fn, _ref, args) in samples.cases(m, n, torch.bfloat16, "cuda").items():
            ex = fn.explain(*args, measure=True)
            for k in ex.kernels:
                frac = k.achieved or 0.0
                print(f"{name:<14}{m}x{n:<7}{k.index:>7}{k.kind:>12}{k.measured_us:>13.1f}"
                      f"{k.roofline_us:>13.1f}{100 * frac:>12.0f}%{100 * frac / copy_ratio:>8.0f}%")


if __name__ == "__main__":
    main()
