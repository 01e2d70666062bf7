"""User @fused functions under PyTorch's tracers (fusile/dsl/torch_op.py): torch.compile with
fullgraph=True and without, torch.export, and the op's fake implementation, against the same
math in plain torch; on CPU and (-m gpu) CUDA."""

from __future__ import annotations

import pytest
import torch

import fusile
from fusile import fused
from tests.numerics import assert_close

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@fused
def scale_shift(x, w, b):
    return x * w + b


@fused
def norm_and_stats(x, eps: float, dim: int = -1):
    rstd = rsqrt(mean(x * x, axis=dim, keepdims=True) + eps)
    return x * rstd, rstd


@fused(name="my_softcap")
def softcap(x, cap: float):
    return cap * tanh(x / cap)


def _torch_norm(x: torch.Tensor, eps: float, dim: int = -1):
    rstd = torch.rsqrt((x * x).mean(dim, keepdim=True) + eps)
    return x * rstd, rstd


def _step(x, w, b):
    """A graph with user functions between torch ops: kwargs, an int constant, two results."""
    h = scale_shift(x, w, b).relu()
    y, rstd = norm_and_stats(h, eps=1e-5, dim=-1)
    return softcap(y @ y.T, 3.0) + rstd


def _torch_step(x, w, b):
    h = (x * w + b).relu()
    y, rstd = _torch_norm(h, 1e-5)
    s = y @ y.T
    return 3.0 * torch.tanh(s / 3.0) + rstd


@pytest.mark.parametrize("fullgraph", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_user_functions_compile_without_graph_breaks(device: str, fullgraph: bool) -> None:
    torch._dynamo.reset()
    x, w, b = (torch.randn(*s, device=device) for s in [(6, 33), (33,), (33,)])
    compiled = torch.compile(_step, fullgraph=fullgraph)
    out = compiled(x, w, b)
    assert_close(out, _torch_step(x.double(), w.double(), b.double()), torch.float32, scale=8)
    again = compiled(x * 2, w, b)  # a second call reuses the compiled graph
    assert_close(again, _torch_step(2 * x.double(), w.double(), b.double()), torch.float32,
                 scale=8)
    explained = torch._dynamo.explain(_step)(x, w, b)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_traced_graph_holds_one_named_op_per_call() -> None:
    x, w, b = torch.randn(4, 8), torch.randn(8), torch.randn(8)

    class M(torch.nn.Module):
        def forward(self, x, w, b):
            return _step(x, w, b)

    ep = torch.export.export(M(), (x, w, b))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    ours = [t for t in targets if t.startswith("fusile_fn.")]
    assert len(ours) == 3, targets
    assert any(t.startswith("fusile_fn.my_softcap") for t in ours), ours
    assert any("scale_shift" in t for t in ours), ours
    assert_close(ep.module()(x, w, b), _torch_step(x.double(), w.double(), b.double()),
                 torch.float32, scale=8)


def test_fake_results_come_from_fusile_types() -> None:
    """Shapes and dtypes under FakeTensorMode (what AOTAutograd and export trace with),
    broadcasts and reductions included; nothing launches."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    f = fusile.from_source("def f(x, y):\n    return sum(x * y, axis=0), astype(x, y) + y\n")
    with FakeTensorMode():
        x = torch.empty(5, 7, dtype=torch.bfloat16)
        y = torch.empty(1, 7, dtype=torch.float32)
        s, z = f(x, y)
    assert (tuple(s.shape), s.dtype) == ((7,), torch.float32)
    assert (tuple(z.shape), z.dtype) == ((5, 7), torch.float32)


def test_results_never_alias_inputs_or_each_other() -> None:
    f = fusile.from_source("def f(x):\n    y = x * 2.0\n    return x, y, y\n")
    x = torch.randn(3, 4)
    a, b, c = f.torch_op([x], [], [], "0=t")
    assert a is not x and b is not c
    assert torch.equal(a, x) and torch.equal(b, c) and torch.equal(b, 2 * x)


@pytest.mark.parametrize("device", DEVICES)
def test_results_have_the_fakes_strides(device: str) -> None:
    """torch.library.opcheck (schema, fake tensors, AOT dispatch with static and dynamic
    shapes) on strided inputs: the fake says contiguous, so the op's results must be
    contiguous too, a returned input included (it was a copy with the input's strides: a
    compiled graph's stride assert fails)."""
    f = fusile.from_source("def f(x, y):\n    return x, y * 2.0, sum(x, axis=0)\n")
    x = torch.randn(8, 5, device=device).t()
    y = torch.randn(10, 8, device=device)[::2]
    torch.library.opcheck(f.torch_op, ([x, y], [], [], "0=t;1=t"))  # dynamic shapes included
    compiled = torch.compile(lambda a, b: f(a, b)[0] + 1.0, fullgraph=True)
    assert_close(compiled(x, y), x.double() + 1.0, torch.float32)


@fused
def halves(x):
    h = x.shape[-1] // 2
    return x[..., :h] * x[..., h:]


@pytest.mark.parametrize("device", DEVICES)
def test_sizes_that_change_between_compiled_calls(device: str) -> None:
    """After a second size torch.compile traces with dynamic (SymInt) sizes: the fake must
    take them (a dynamic size is never 1; a sliced axis is specialised on its size)."""
    torch._dynamo.reset()
    step = torch.compile(lambda x, w, b: scale_shift(x, w, b).relu() + halves(x).sum(),
                         fullgraph=True)
    for m, n in ((4, 8), (6, 10), (9, 12)):  # the sliced axis changes too
        x = torch.randn(m, n, device=device)
        w, b = (torch.randn(n, device=device) for _ in range(2))
        h = n // 2
        ref = (x.double() * w.double() + b.double()).relu() + (
            x.double()[:, :h] * x.double()[:, h:]).sum()
        assert_close(step(x, w, b), ref, torch.float32, scale=8)


@fused
def scaled_by(x, k: int, a: float):
    return x * k + a


def test_int_and_float_arguments_that_change_between_compiled_calls() -> None:
    """Dynamo traces an int or float argument that changed as a SymInt / SymFloat: the int
    reaches fusile as a value to compile for (a guard), the float as a runtime value."""
    torch._dynamo.reset()
    step = torch.compile(lambda x, k, a: scaled_by(x, k, a), fullgraph=True)
    x = torch.randn(4, 8)
    for k, a in ((2, 0.5), (3, 1.5), (4, -2.5)):
        assert_close(step(x, k, a), x.double() * k + a, torch.float32)


def test_compiled_backward_with_int_and_float_arguments() -> None:
    torch._dynamo.reset()
    x = torch.randn(4, 8, requires_grad=True)
    torch.compile(lambda x: scaled_by(x, 3, 0.5).sum(), fullgraph=True)(x).backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


def test_compiled_backward_through_a_user_function() -> None:
    torch._dynamo.reset()
    x = torch.randn(4, 8, requires_grad=True)
    w, b = torch.randn(8, requires_grad=True), torch.randn(8)
    torch.compile(lambda x: scale_shift(x, w, b).square().sum(), fullgraph=True)(x).backward()
    h = x.detach() * w.detach() + b
    assert_close(x.grad, 2 * h.double() * w.detach().double(), torch.float32)
    assert_close(w.grad, (2 * h.double() * x.detach().double()).sum(0), torch.float32)
    assert b.grad is None


def test_op_names_are_unique_and_overridable() -> None:
    a = fusile.from_source("def f(x):\n    return x + 1.0\n")
    b = fusile.from_source("def f(x):\n    return x + 2.0\n")
    assert a.torch_op.name() != b.torch_op.name()
    assert "my_softcap" in softcap.torch_op.name()
    x = torch.randn(3)
    assert torch.equal(a.torch_op([x], [], [], "0=t")[0], x + 1)
    assert torch.equal(b.torch_op([x], [], [], "0=t")[0], x + 2)


def test_a_dropped_function_takes_its_op_with_it() -> None:
    import gc

    f = fusile.from_source("def f(x):\n    return x * 3.0\n")
    name = f.torch_op.name().split("::")[1].split(".")[0]
    assert hasattr(torch.ops.fusile_fn, name)
    del f
    gc.collect()
    assert not hasattr(torch.ops.fusile_fn, name)
