"""torch.profiler view of one stdlib forward+backward step (kernels, their GPU time, gaps)."""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

import fusile.stdlib as S


def main() -> None:
    m, n = 16384, 4096
    x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)

    def step() -> None:
        S.layer_norm(x, (n,), w, b).backward(g)
        x.grad = w.grad = b.grad = None

    for _ in range(20):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
    events = [e for e in prof.events() if e.device_type.name == "CUDA"]
    events.sort(key=lambda e: e.time_range.start)
    print("GPU timeline of the last step (start us, duration us, name):")
    t0 = events[-6].time_range.start if len(events) >= 6 else 0
    for e in events[-6:]:
        print(f"  {e.time_range.start - t0:9.1f} {e.time_range.elapsed_us():8.1f}  {e.name[:60]}")


if __name__ == "__main__":
    main()
