"""Standard library ops against torch: forward and gradients (f32, bf16, odd sizes) on the
Triton interpreter and on mlir-cpu, float64 gradcheck on the reference path,
torch.compile(fullgraph=True), argument errors; and on a GPU the same, plus CUDA graph
capture."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import fusile
import fusile.stdlib as S
from fusile import config
from tests.numerics import assert_close, rel_err
from tests.stdlib.test_rope import rope_reference

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def _cases(device: str, dtype: torch.dtype, m: int = 7, n: int = 129) -> dict:
    """name -> (fusile fn, torch fn, input makers); inputs are fresh random tensors."""
    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device).to(dtype)

    def labels() -> torch.Tensor:
        t = torch.randint(0, n, (m,), device=device)
        t[1] = -100
        return t

    cs = (torch.randn(m, n - 1, device=device), torch.randn(m, n - 1, device=device))
    hf = (torch.randn(2, m, n - 1, device=device), torch.randn(2, m, n - 1, device=device))
    return {
        "softmax": (lambda x: S.softmax(x, -1), lambda x: torch.softmax(x, -1), [r(m, n)]),
        "softmax_dim0": (lambda x: S.softmax(x, 0), lambda x: torch.softmax(x, 0), [r(m, n)]),
        "log_softmax": (lambda x: S.log_softmax(x), lambda x: torch.log_softmax(x, -1),
                        [r(m, n)]),
        "layer_norm": (lambda x, w, b: S.layer_norm(x, (n,), w, b),
                       lambda x, w, b: F.layer_norm(x, (n,), w, b), [r(3, m, n), r(n), r(n)]),
        "layer_norm_noaffine": (lambda x: S.layer_norm(x, (n,)),
                                lambda x: F.layer_norm(x, (n,)), [r(m, n)]),
        "rms_norm": (lambda x, w: S.rms_norm(x, [n], w, 1e-6),
                     lambda x, w: F.rms_norm(x, [n], w, 1e-6), [r(m, n), r(n)]),
        # a large eps, comparable to mean(x * x): where eps goes (inside the rsqrt, with
        # the mean) shows, which 1e-6 hides under the tolerance
        "rms_norm_big_eps": (lambda x, w: S.rms_norm(x, [n], w, 0.5),
                             lambda x, w: F.rms_norm(x, [n], w, 0.5), [r(m, n), r(n)]),
        "layer_norm_big_eps": (lambda x, w, b: S.layer_norm(x, (n,), w, b, 0.5),
                               lambda x, w, b: F.layer_norm(x, (n,), w, b, 0.5),
                               [r(m, n), r(n), r(n)]),
        "add_rms_norm": (lambda x, res, w: S.add_rms_norm(x, res, n, w, 1e-6),
                         lambda x, res, w: (F.rms_norm(x + res, [n], w, 1e-6), x + res),
                         [r(m, n), r(m, n), r(n)]),
        "add_layer_norm": (lambda x, res, w, b: S.add_layer_norm(x, res, n, w, b),
                           lambda x, res, w, b: (F.layer_norm(x + res, [n], w, b), x + res),
                           [r(m, n), r(m, n), r(n), r(n)]),
        "gelu": (lambda x: S.gelu(x), lambda x: F.gelu(x), [r(m, n)]),
        "gelu_tanh": (lambda x: S.gelu(x, approximate="tanh"),
                      lambda x: F.gelu(x, approximate="tanh"), [r(m, n)]),
        "silu": (lambda x: S.silu(x), lambda x: F.silu(x), [r(m, n)]),
        "swiglu": (lambda a, b: S.swiglu(a, b), lambda a, b: F.silu(a) * b, [r(m, n), r(m, n)]),
        "geglu": (lambda a, b: S.geglu(a, b), lambda a, b: F.gelu(a) * b, [r(m, n), r(m, n)]),
        "geglu_tanh": (lambda a, b: S.geglu(a, b, approximate="tanh"),
                       lambda a, b: F.gelu(a, approximate="tanh") * b, [r(m, n), r(m, n)]),
        "rope": (lambda x: S.rope(x, cs[0].to(x.dtype), cs[1].to(x.dtype)),
                 lambda x: x * cs[0].to(x.dtype) + _rotate_half(x) * cs[1].to(x.dtype),
                 [r(2, 3, m, n - 1)]),
        "rope_qk": (lambda q, k: S.apply_rotary_pos_emb(q, k, hf[0].to(q.dtype),
                                                        hf[1].to(q.dtype)),
                    lambda q, k: (rope_reference(q, hf[0].to(q.dtype), hf[1].to(q.dtype)),
                                  rope_reference(k, hf[0].to(q.dtype), hf[1].to(q.dtype))),
                    [r(2, 3, m, n - 1), r(2, 1, m, n - 1)]),
        "rope_gptj_partial": (
            lambda x: S.rope(x, cs[0][:, :32].to(x.dtype), cs[1][:, :32].to(x.dtype), True),
            lambda x: rope_reference(x, cs[0][:, :32].to(x.dtype), cs[1][:, :32].to(x.dtype),
                                     True), [r(2, 3, m, n - 1)]),
        "cross_entropy": (lambda x, t: S.cross_entropy(x, t),
                          lambda x, t: F.cross_entropy(x, t), [r(m, n), labels()]),
        "cross_entropy_smooth_sum": (
            lambda x, t: S.cross_entropy(x, t, reduction="sum", label_smoothing=0.1),
            lambda x, t: F.cross_entropy(x, t, reduction="sum", label_smoothing=0.1),
            [r(m, n), labels()]),
        "cross_entropy_smooth_mean": (
            lambda x, t: S.cross_entropy(x, t, label_smoothing=0.3),
            lambda x, t: F.cross_entropy(x, t, label_smoothing=0.3), [r(m, n), labels()]),
        "cross_entropy_none": (lambda x, t: S.cross_entropy(x, t, reduction="none"),
                               lambda x, t: F.cross_entropy(x, t, reduction="none"),
                               [r(m, n), labels()]),
    }


NAMES = list(_cases("cpu", torch.float32))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


def _forward_backward(fn, inputs):
    leaves = [i.detach().clone().requires_grad_(i.dtype.is_floating_point) for i in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator(device=outs[0].device).manual_seed(1)
    loss = sum((o.float() * torch.randn(o.shape, generator=g, device=o.device)).sum()
               for o in outs)
    loss.backward()
    return outs, [leaf.grad for leaf in leaves if leaf.requires_grad]


def _compare(name: str, device: str, dtype: torch.dtype) -> None:
    fn, ref, inputs = _cases(device, dtype)[name]
    outs, grads = _forward_backward(fn, inputs)
    # reference: torch in float64 on the same (rounded) inputs
    ref_inputs = [i.double() if i.dtype.is_floating_point else i for i in inputs]
    r_outs, r_grads = _forward_backward(ref, ref_inputs)
    for o, r in zip(outs, r_outs, strict=True):
        assert o.dtype == dtype and o.shape == r.shape
        assert rel_err(o, r) <= TOL[dtype], f"{name} forward: {rel_err(o, r):.3g}"
    for g, r in zip(grads, r_grads, strict=True):
        assert g.dtype == dtype and g.shape == r.shape
        assert rel_err(g, r) <= TOL[dtype] * 2, f"{name} gradient: {rel_err(g, r):.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_matches_torch_on_cpu(name: str, dtype: torch.dtype) -> None:
    _compare(name, "cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_matches_torch_on_mlir_cpu(name: str, dtype: torch.dtype) -> None:
    """The default for CPU tensors, forward and backward; row-separable kernels in blocks of
    one row on two threads (as a large call runs)."""
    from tests.backends.test_mlir_cpu import one_row_blocks

    with config.override(target="mlir-cpu", cpu_threads=2), one_row_blocks():
        _compare(name, "cpu", dtype)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64_reference(name: str) -> None:
    with config.override(target="reference"):
        fn, _ref, inputs = _cases("cpu", torch.float64, m=3, n=5)[name]
        leaves = tuple(i.detach().requires_grad_(i.dtype.is_floating_point) for i in inputs)
        assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


class _Block(torch.nn.Module):
    """add_rms_norm -> Linear -> swiglu -> Linear -> rope -> log_softmax -> cross_entropy,
    through fusile's ops (fused=True) or torch's own (fused=False), with the same weights."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = torch.nn.Parameter(torch.randn(d))
        self.up = torch.nn.Linear(d, 2 * d)
        self.down = torch.nn.Linear(d, d)
        self.register_buffer("cos", torch.randn(4, d))
        self.register_buffer("sin", torch.randn(4, d))

    def forward(self, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor, fused: bool = True
                ) -> torch.Tensor:
        d = x.shape[-1]
        if fused:
            h, r2 = S.add_rms_norm(x, r, d, self.norm)
        else:
            r2 = x + r
            h = F.rms_norm(r2, (d,), self.norm, torch.finfo(x.dtype).eps)
        a, b = self.up(h).chunk(2, dim=-1)
        y = self.down(S.swiglu(a, b) if fused else F.silu(a) * b) + r2
        if fused:
            y = S.rope(y, self.cos, self.sin)
            return S.cross_entropy(S.log_softmax(y, -1), t)
        half = torch.cat([-y[..., d // 2:], y[..., :d // 2]], dim=-1)
        y = y * self.cos + half * self.sin
        return F.cross_entropy(F.log_softmax(y, -1), t)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_compile_fullgraph(device: str) -> None:
    """Forward and backward under torch.compile against the same block in plain torch (eager):
    the backward is traced on fake tensors, which must reach the ops' fake implementations,
    never fusile's launch path; loss and every parameter's gradient must match torch's."""
    torch._dynamo.reset()
    block = _Block(16).to(device)
    compiled = torch.compile(block, fullgraph=True)
    x, r = torch.randn(4, 16, device=device), torch.randn(4, 16, device=device)
    t = torch.randint(0, 16, (4,), device=device)
    loss = compiled(x, r, t)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in block.named_parameters()}
    ref = _Block(16).to(device)
    ref.load_state_dict(block.state_dict())
    ref = ref.double()
    loss_ref = ref(x.double(), r.double(), t, fused=False)
    loss_ref.backward()
    assert_close(loss, loss_ref.detach(), torch.float32, scale=4)
    for n, p in ref.named_parameters():
        assert_close(ours[n], p.grad, torch.float32, scale=16)


@pytest.mark.parametrize("call,message", [
    (lambda: S.rms_norm(torch.randn(3, 8), 8, torch.randn(4)), "weight has shape (4,)"),
    (lambda: S.rms_norm(torch.randn(3, 8), 16), "does not end with normalized_shape"),
    (lambda: S.layer_norm(torch.randn(3, 8), 8, torch.randn(8, dtype=torch.float64)),
     "weight is torch.float64"),
    (lambda: S.softmax(torch.randint(0, 3, (3, 4))), "floating-point"),
    (lambda: S.cross_entropy(torch.randn(3, 4), torch.randn(3)), "class indices"),
    (lambda: S.cross_entropy(torch.randn(3, 4), torch.zeros(2, dtype=torch.long)),
     "expected logits (N, C)"),
    (lambda: S.swiglu(torch.randn(3, 4), torch.randn(3, 5)), "same shape"),
    (lambda: S.gelu(torch.randn(3), approximate="fast"), "approximate must be"),
    (lambda: S.rope(torch.randn(2, 4, 7), torch.randn(4, 7), torch.randn(4, 7)), "even"),
    (lambda: S.rope(torch.randn(2, 4, 8), torch.randn(5, 8), torch.randn(5, 8)),
     "cos and sin must be"),
    (lambda: S.cross_entropy(torch.randn(3, 4), torch.tensor([0, 4, 1])),
     "a target is outside [0, 4) and is not ignore_index (-100): 4"),
    (lambda: S.cross_entropy(torch.randn(3, 4), torch.tensor([0, -1, 1]), ignore_index=-100),
     "outside [0, 4)"),
    (lambda: S.cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 1]), label_smoothing=1.5),
     "label_smoothing must be in [0, 1]"),
    (lambda: S.cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 1]),
                             label_smoothing=float("nan")), "label_smoothing must be in [0, 1]"),
    (lambda: S.layer_norm(torch.randn(3, 8), ()), "normalized_shape must name at least one"),
    (lambda: S.rms_norm(torch.randn(3, 0), (0,)), "none of size 0"),
    (lambda: S.attention(*[torch.randn(1, 2, 8, 4)] * 3, window=2.5), "window must be a posi"),
    (lambda: S.attention(*[torch.randn(1, 2, 8, 4)] * 3, softcap=float("nan")),
     "softcap must be positive"),
    (lambda: S.geglu(torch.randn(3, 4), torch.randn(3, 4), approximate="bad"),
     "approximate must be"),
    (lambda: S.rms_norm(3.0, 8), "expected a torch.Tensor, got float"),
    (lambda: S.softmax([1.0, 2.0]), "expected a torch.Tensor, got list"),
    (lambda: S.swiglu(torch.randn(3, 4), 2.0), "expected a torch.Tensor, got float"),
])
def test_bad_arguments(call, message: str) -> None:
    with pytest.raises(fusile.FusileError, match=re.escape(message)):
        call()


def test_float64_inputs_like_torch() -> None:
    x, w = torch.randn(5, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    t = torch.randint(0, 8, (5,))
    for out, ref in ((S.layer_norm(x, 8, w, w), F.layer_norm(x, (8,), w, w)),
                     (S.rms_norm(x, 8, w), F.rms_norm(x, (8,), w)),
                     (S.cross_entropy(x, t), F.cross_entropy(x, t)),
                     (S.softmax(x, -1), torch.softmax(x, -1))):
        assert out.dtype == torch.float64
        assert rel_err(out, ref) < 1e-10


def test_cross_entropy_ignores_ignore_index_and_can_skip_the_check() -> None:
    logits, target = torch.randn(3, 4), torch.tensor([0, -100, 3])
    torch.testing.assert_close(S.cross_entropy(logits, target),
                               F.cross_entropy(logits, target))
    S.cross_entropy(logits, torch.tensor([0, 9, 3]), check_targets=False)  # no error


def test_cross_entropy_backward_reads_the_saved_lse_and_count() -> None:
    """The op's backward is derived from its forward (fusile.autograd.op_gradients) and reads
    the forward's log-sum-exp and count instead of recomputing them (one pass over the
    logits): an lse one higher scales the softmax term by 1/e, a doubled count halves the
    mean's gradient. A backward that recomputed them would not move."""
    from fusile.stdlib import kernels as K
    from fusile.stdlib.cross_entropy import _cross_entropy_bwd

    logits, target = torch.randn(5, 7, dtype=torch.float64), torch.tensor([0, 3, 6, 1, 2])
    _, lse, count, _ = K.cross_entropy_fwd(logits, target, -100, 0.0, 2)
    dloss = torch.tensor(1.0, dtype=torch.float64)
    g = _cross_entropy_bwd(dloss, logits, target, lse, count, -100, 0.0, 2)
    onehot = F.one_hot(target, 7).double() / 5
    torch.testing.assert_close(g, (torch.softmax(logits, -1) / 5 - onehot))
    shifted = _cross_entropy_bwd(dloss, logits, target, lse + 1, count, -100, 0.0, 2)
    torch.testing.assert_close(shifted + onehot, (g + onehot) / torch.e)
    doubled = _cross_entropy_bwd(dloss, logits, target, lse, count * 2, -100, 0.0, 2)
    torch.testing.assert_close(doubled, g / 2)


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_matches_torch_on_cuda(name: str, dtype: torch.dtype) -> None:
    _compare(name, "cuda", dtype)


@pytest.mark.gpu
def test_wrong_device_is_an_error() -> None:
    with pytest.raises(fusile.FusileError, match="different devices"):
        S.rms_norm(torch.randn(3, 8, device="cuda"), 8, torch.randn(8))


@pytest.mark.gpu
def test_cuda_graph_capture_of_a_step_with_every_op() -> None:
    d, m = 256, 64
    dev = "cuda"
    w = torch.randn(d, device=dev, requires_grad=True)
    x, r = torch.randn(m, d, device=dev), torch.randn(m, d, device=dev)
    t = torch.randint(0, d, (m,), device=dev)
    cos, sin = torch.randn(m, d, device=dev), torch.randn(m, d, device=dev)

    def step() -> torch.Tensor:
        h, r2 = S.add_rms_norm(x, r, d, w)
        h = S.layer_norm(h, d, w, w) + S.rms_norm(r2, d, w)
        h = S.swiglu(h, S.gelu(h)) + S.geglu(h, S.silu(h)) + S.gelu(h, "tanh")
        h = S.softmax(h, -1) + S.log_softmax(h, -1) + S.rope(h, cos, sin)
        h, _ = S.add_layer_norm(h, r2, d, w, w)
        loss = S.cross_entropy(h, t, label_smoothing=0.1)
        loss.backward()
        return loss

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm up: compile every kernel outside the capture
            w.grad = None
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    w.grad = None
    with torch.cuda.graph(graph):
        loss = step()
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    w2 = w.detach().clone().requires_grad_()
    eager = _eager_step(x, r, t, w2, d, cos, sin)
    assert torch.allclose(loss, eager, rtol=1e-4, atol=1e-4)


def _eager_step(x, r, t, w, d, cos, sin):
    h, r2 = S.add_rms_norm(x, r, d, w)
    h = S.layer_norm(h, d, w, w) + S.rms_norm(r2, d, w)
    h = S.swiglu(h, S.gelu(h)) + S.geglu(h, S.silu(h)) + S.gelu(h, "tanh")
    h = S.softmax(h, -1) + S.log_softmax(h, -1) + S.rope(h, cos, sin)
    h, _ = S.add_layer_norm(h, r2, d, w, w)
    return S.cross_entropy(h, t, label_smoothing=0.1)


@pytest.mark.parametrize("name", ["layer_norm_bwd", "rms_norm_bwd", "add_layer_norm_bwd",
                                  "add_rms_norm_bwd"])
def test_norm_backward_plans_are_one_pass_over_dy_and_x(name: str) -> None:
    """dx per row and the weight (and bias) column sums in one rows+columns kernel that reads
    dy and x once: as two kernels (dx, then dw/db over every row) they were read twice; a
    column kernel that also wrote a full-size intermediate (the layer norm's xhat in float32)
    moved ~60% more again."""
    from fusile.stdlib import kernels as K

    m, n = 64, 256
    dy, x = torch.randn(m, n).bfloat16(), torch.randn(m, n).bfloat16()
    w, rstd = torch.randn(n).bfloat16(), torch.rand(m, 1) + 0.5
    args = [dy, x, w, torch.randn(m, 1), rstd] if "layer" in name else [dy, x, w, rstd]
    if name.startswith("add_"):
        args.insert(1, torch.randn(m, n).bfloat16())  # dh, the residual branch's gradient
    plan = getattr(K, name).plan(*args)
    assert [k.kind for k in plan.kernels] == ["rows+columns"]
    full = m * n * 2  # one bf16 tensor of x's shape
    reads = 3 if name.startswith("add_") else 2
    assert plan.bytes <= (reads + 1) * full + 4 * 1024  # dy, x (dh) read once, dx written


def test_column_sums_join_a_row_kernel_only_over_rows() -> None:
    """A sum along a tensor's contiguous axis (a row sum of another shape, a vector's total)
    next to a column reduction stays out of a rows+columns kernel: the column reduction keeps
    its split path."""
    import fusile

    fn = fusile.from_source("def f(x, w):\n"
                            "    return sum(x * w, axis=0), sum(x, axis=1), sum(w)\n")
    x, w = torch.randn(300, 50), torch.randn(50)
    assert "rows+columns" not in [k.kind for k in fn.plan(x, w).kernels]
    softmax_then_columns = fusile.from_source(
        "def g(x):\n    return sum(softmax(x, axis=-1), axis=0)\n")
    assert [k.kind for k in softmax_then_columns.plan(x).kernels] == ["rows+columns"]
