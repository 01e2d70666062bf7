"""The constexpr names are declared once per kind (constexprs.py): the writer lists them in
the kernel's header and the kind's launch (kinds/) fills them in. Every launch on the
interpreter passes exactly the kernel's constexpr parameters, and its other arguments fill the
rest, for every kind and variant (rows held whole and looped, split columns, rows with column
partials, dots, flash attention and flash-decoding's split and combine, the flash
backward)."""

from __future__ import annotations

import inspect

import torch

import fusile.samples as S
import fusile.stdlib as SL
from fusile import config
from fusile.backends.triton import runtime


def test_every_launch_passes_exactly_its_kernels_constexprs(monkeypatch) -> None:
    seen: dict[tuple[str, str], int] = {}
    run = runtime.TritonProgram.run_variant

    def spy(self, launch, variant, grid, consts, opts, device, args):
        fn = launch.fn[variant]
        params = inspect.signature(getattr(fn, "fn", fn)).parameters.values()
        const = {p.name for p in params if "constexpr" in str(p.annotation)}
        assert set(consts) == const, (launch.ks.kind, variant, sorted(consts), sorted(const))
        assert len(args) + len(consts) == len(params), (launch.ks.kind, variant)
        seen[(launch.ks.kind, variant)] = seen.get((launch.ks.kind, variant), 0) + 1
        return run(self, launch, variant, grid, consts, opts, device, args)

    monkeypatch.setattr(runtime.TritonProgram, "run_variant", spy)
    torch.manual_seed(0)
    with config.override(target="cpu"):
        x, w = torch.randn(6, 40, requires_grad=True), torch.randn(40, requires_grad=True)
        SL.rms_norm(x, 40, w).sum().backward()  # rows, and rows with column partials
        with config.override(max_row_block=16):
            SL.rms_norm(x, 40, w).sum().backward()  # looped variants
        S.colsum_scale(torch.randn(3000, 4))  # a long column sum: split and combine
        S.linear_bias(torch.randn(5, 8), torch.randn(8, 6), torch.randn(6))  # a dot
        q, k = torch.randn(1, 2, 9, 16, requires_grad=True), torch.randn(1, 2, 9, 16)
        SL.attention(q, k, k, causal=True).sum().backward()  # flash forward and backward
        q1, k1 = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 300, 16)
        with config.override(attn_splits=3):
            SL.attention(q1, k1, k1)  # flash-decoding: split and combine
    kinds = {kind for kind, _ in seen}
    variants = {variant for _, variant in seen}
    assert {"reduction", "rows+columns", "contraction", "attention", "attention-grad"} <= kinds
    assert {"main", "looped", "split", "combine"} <= variants


def test_names_and_values_agree_field_by_field() -> None:
    """names() (the signature) and values() (the launch) list the same parameters in the same
    order: numbered fields one per value, an optional one only when given."""
    from fusile.backends.triton.constexprs import (
        AttnConstexprs,
        DotConstexprs,
        GradConstexprs,
        RowConstexprs,
    )

    cases = [(RowConstexprs(4, 128, False), {}),
             (DotConstexprs(64, 64, 32, 8, True, False), {}),
             (AttnConstexprs(64, 32, 64, 128, False, True, False), {}),
             (AttnConstexprs(64, 32, 64, 64, True, True, False, True), {"pos_scale": True}),
             (GradConstexprs(64, 32, (64, 16, 32), False, True, True), {"block_h": 3})]
    for c, shape in cases:
        assert tuple(c.values()) == type(c).names(**shape), c
    assert GradConstexprs.names(block_h=2)[2:4] == ("BLOCK_H0", "BLOCK_H1")
    assert "POS_SCALE" not in AttnConstexprs.names()
