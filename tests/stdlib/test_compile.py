"""The stdlib inside the training step people run: every op under torch.compile(fullgraph=True)
forward and backward; a small model (Linear -> add_rms_norm -> attention -> swiglu ->
cross_entropy) compiled with no graph break; its training step captured in a CUDA graph,
eager and under mode="reduce-overhead". The oracle is torch's own math in float64."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import fusile.stdlib as S
from fusile import fused
from tests.numerics import assert_close
from tests.stdlib.test_attention import reference as attention_reference
from tests.stdlib.test_ops import _cases

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# one case per op on the CPU (each compile costs seconds there); every case on a GPU
PER_OP = ["softmax", "log_softmax", "layer_norm", "rms_norm", "add_rms_norm", "add_layer_norm",
          "gelu", "gelu_tanh", "silu", "swiglu", "geglu", "rope", "cross_entropy"]
ALL = list(_cases("cpu", torch.float32))


def _grads(fn, inputs: list[torch.Tensor], seed: int = 1):
    leaves = [i.detach().clone().requires_grad_(i.dtype.is_floating_point) for i in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator(device=outs[0].device).manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=g, device=o.device,
                                         dtype=torch.float64)).sum() for o in outs)
    loss.backward()
    return outs, [leaf.grad for leaf in leaves if leaf.requires_grad]


def _check_compiled(name: str, device: str) -> None:
    torch._dynamo.reset()
    fn, ref, inputs = _cases(device, torch.float32)[name]
    compiled = torch.compile(fn, fullgraph=True)
    outs, grads = _grads(compiled, inputs)
    ref_in = [i.double() if i.dtype.is_floating_point else i for i in inputs]
    r_outs, r_grads = _grads(ref, ref_in)
    for o, r in zip(outs, r_outs, strict=True):
        assert o.dtype == torch.float32
        assert_close(o, r, torch.float32, scale=4)
    for g, r in zip(grads, r_grads, strict=True):
        assert_close(g, r, torch.float32, scale=16)


@pytest.mark.parametrize("name", PER_OP)
def test_every_op_compiles_forward_and_backward_on_cpu(name: str) -> None:
    _check_compiled(name, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL)
def test_every_op_compiles_forward_and_backward_on_cuda(name: str) -> None:
    _check_compiled(name, "cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_attention_compiles_forward_and_backward(device: str) -> None:
    torch._dynamo.reset()
    q = torch.randn(2, 4, 33, 16, device=device)
    k, v = (torch.randn(2, 2, 33, 16, device=device) for _ in range(2))

    def fn(q, k, v):
        return S.attention(q, k, v, causal=True)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outs, grads = _grads(torch.compile(fn, fullgraph=True), [q, k, v])
    # nothing of fusile's host code makes Dynamo warn (it traced through an lru_cache)
    assert not [w for w in seen if "lru_cache" in str(w.message)], [str(w.message) for w in seen]
    r_outs, r_grads = _grads(lambda q, k, v: attention_reference(q, k, v, causal=True),
                             [q.double(), k.double(), v.double()])
    assert_close(outs[0], r_outs[0], torch.float32, scale=4)
    for g, r in zip(grads, r_grads, strict=True):
        assert_close(g, r, torch.float32, scale=16)


@fused
def squash(x, a: float):
    """A user function inside the model: its backward is derived (fusile/autograd.py)."""
    return a * tanh(x / a) * rsqrt(mean(x * x, axis=-1, keepdims=True) + 1.0)


class TinyLM(torch.nn.Module):
    """Linear -> a user function -> add_rms_norm -> causal attention -> swiglu MLP ->
    cross_entropy, through fusile's ops (fused=True) or torch's (fused=False) with the same
    weights."""

    def __init__(self, d: int = 64, heads: int = 4, vocab: int = 97):
        super().__init__()
        self.heads = heads
        self.inp = torch.nn.Linear(d, d)
        self.norm = torch.nn.Parameter(1 + 0.1 * torch.randn(d))
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.up = torch.nn.Linear(d, 4 * d, bias=False)
        self.down = torch.nn.Linear(2 * d, d, bias=False)
        self.head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, x: torch.Tensor, target: torch.Tensor, fused: bool = True) -> torch.Tensor:
        b, s, d = x.shape
        h = self.inp(x)
        h = squash(h, 3.0) if fused else 3.0 * torch.tanh(h / 3.0) * torch.rsqrt(
            (h * h).mean(-1, keepdim=True) + 1.0)
        if fused:
            h, res = S.add_rms_norm(h, x, d, self.norm)
        else:
            res = h + x
            h = F.rms_norm(res, (d,), self.norm, torch.finfo(h.dtype).eps)
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2)
                   for t in self.qkv(h).chunk(3, dim=-1))
        a = S.attention(q, k, v, causal=True) if fused else attention_reference(
            q, k, v, causal=True)
        h = res + a.transpose(1, 2).reshape(b, s, d)
        gate, up = self.up(h).chunk(2, dim=-1)
        h = h + self.down(S.swiglu(gate, up) if fused else F.silu(gate) * up)
        logits = self.head(h).view(b * s, -1)
        if fused:
            return S.cross_entropy(logits, target.view(-1))
        return F.cross_entropy(logits, target.view(-1))


def _model(device: str) -> tuple[TinyLM, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyLM().to(device)
    x = torch.randn(2, 24, 64, device=device)
    t = torch.randint(0, 97, (2, 24), device=device)
    return model, x, t


def _torch_grads(model: TinyLM, x: torch.Tensor, t: torch.Tensor):
    ref = TinyLM().to(x.device)
    ref.load_state_dict(model.state_dict())
    ref = ref.double()
    loss = ref(x.double(), t, fused=False)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in ref.named_parameters()}


@pytest.mark.parametrize("device", DEVICES)
def test_a_small_model_compiles_whole(device: str) -> None:
    model, x, t = _model(device)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x, t)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    torch._dynamo.reset()
    loss = torch.compile(model, fullgraph=True)(x, t)
    loss.backward()
    ref_loss, ref_grads = _torch_grads(model, x, t)
    assert_close(loss, ref_loss, torch.float32, scale=4)
    for n, p in model.named_parameters():
        assert_close(p.grad, ref_grads[n], torch.float32, scale=16)


def _captured_step(model: TinyLM, x: torch.Tensor, t: torch.Tensor, step_fn):
    """Warm up on a side stream, capture one forward+backward, replay it on new inputs."""
    params = list(model.parameters())

    def step():
        loss = step_fn(x, t)
        grads = torch.autograd.grad(loss, params)
        return loss, grads

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # compile every kernel outside the capture
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, grads = step()
    x.copy_(torch.randn_like(x))
    t.copy_(torch.randint_like(t, 0, 97))
    graph.replay()
    torch.cuda.synchronize()
    return loss, dict(zip([n for n, _ in model.named_parameters()], grads, strict=True))


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_small_models_training_step_replays_as_a_cuda_graph(compiled: bool) -> None:
    model, x, t = _model("cuda")
    torch._dynamo.reset()
    fn = torch.compile(model, fullgraph=True) if compiled else model
    loss, grads = _captured_step(model, x, t, fn)
    ref_loss, ref_grads = _torch_grads(model, x, t)  # on the replayed (new) inputs
    assert_close(loss, ref_loss, torch.float32, scale=4)
    for n, g in grads.items():
        assert_close(g, ref_grads[n], torch.float32, scale=16)


@pytest.mark.gpu
def test_reduce_overhead_mode_runs_the_model() -> None:
    """torch.compile(mode="reduce-overhead") captures CUDA graphs itself (cudagraph trees):
    fusile's ops must be capturable there too; later steps on new inputs stay right."""
    model, x, t = _model("cuda")
    torch._dynamo.reset()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for step in range(4):
        torch.compiler.cudagraph_mark_step_begin()
        x = torch.randn_like(x)
        for p in model.parameters():
            p.grad = None
        loss = compiled(x, t)
        loss.backward()
        if step == 3:
            ref_loss, ref_grads = _torch_grads(model, x, t)
            assert_close(loss, ref_loss, torch.float32, scale=4)
            for n, p in model.named_parameters():
                assert_close(p.grad, ref_grads[n], torch.float32, scale=16)
    assert math.isfinite(loss.item())


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as a view with a stride of 2 along its last axis."""
    if not t.dtype.is_floating_point:
        return t
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    big[..., ::2] = t
    return big[..., ::2]


def test_fake_implementations_match_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.library.opcheck on every registered stdlib op (forward and backward), with the
    arguments each received running every case on strided inputs: the fake must give the
    kernel's shapes, dtypes and strides (an `empty_like` fake kept a transposed q's strides
    where the kernel writes a contiguous dq, and compiled graphs then failed their stride
    asserts), the schema and autograd registration must hold."""
    from fusile.stdlib.registry import OPS

    seen: dict[str, tuple] = {}
    for name, op in OPS.items():
        def record(*args, _raw=op._fusile_raw, _name=name):
            seen.setdefault(_name, args)
            return _raw(*args)

        monkeypatch.setattr(op, "_fusile_raw", record)
    for fn, _ref, inputs in _cases("cpu", torch.float32, m=3, n=9).values():
        _grads(fn, [_strided(t) for t in inputs])
    q = torch.randn(1, 5, 2, 8).transpose(1, 2)  # (batch, heads, seq, d) as a view
    k, v = (torch.randn(1, 5, 1, 8).transpose(1, 2) for _ in range(2))
    _grads(lambda q, k, v: S.attention(q, k, v, causal=True), [q, k, v])
    h, w, b = torch.randn(8, 6).T, torch.randn(13, 8), torch.randn(13)  # h strided
    t = torch.randint(0, 13, (6,))
    for reduction in ("none", "mean"):  # 'none': the backward op; 'mean': in the forward
        _grads(lambda h, w, b, r=reduction: S.linear_cross_entropy(h, w, t, b, reduction=r),
               [h, w, b])
    assert set(seen) == set(OPS), f"no case reached {sorted(set(OPS) - set(seen))}"
    monkeypatch.undo()
    for name, args in seen.items():
        if name.endswith("_backward"):  # no double backward: its saved tensors as constants
            args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(OPS[name], args)
