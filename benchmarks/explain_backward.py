"""Per-kernel times of the norm backward kernels (explain(measure=True)), bf16 16384x4096."""

from __future__ import annotations

import torch

from fusile.stdlib import kernels as K


def main() -> None:
    m, n = 16384, 4096
    dev, bf = "cuda", torch.bfloat16
    x, dy = torch.randn(m, n, device=dev, dtype=bf), torch.randn(m, n, device=dev, dtype=bf)
    w = torch.randn(n, device=dev, dtype=bf)
    mu, rstd = torch.randn(m, 1, device=dev), torch.rand(m, 1, device=dev) + 0.5
    print(K.layer_norm_bwd.explain(dy, x, w, mu, rstd, measure=True))
    print(K.rms_norm_bwd.explain(dy, x, w, rstd, measure=True))
    y = torch.randn(m, n, device=dev, dtype=bf)
    print(K.log_softmax_bwd.explain(dy, y, -1, measure=True))


if __name__ == "__main__":
    main()
