"""torch spellings in @fused bodies: each function below is ordinary torch code, so the oracle
is the same function run by torch itself in float64 (through `__wrapped__`), sharing nothing
with fusile's lowering."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fusile
from fusile import fused
from fusile.dsl import errors as E
from tests.numerics import assert_close


@fused
def reductions(x):
    return (x.sum(dim=-1, keepdim=True) * x.mean(-1, keepdim=True) + torch.sum(x, -1, True)
            - x.amax(dim=-1, keepdim=True) + x.amin(-1, keepdim=True)
            + torch.amax(x, dim=0))


@fused
def unary(x):
    return (torch.exp(x) - x.exp() * 0.5 + F.softmax(x, dim=-1) + torch.log_softmax(x, -1)
            + x.sigmoid() + torch.tanh(x).abs() + x.abs().sqrt() + x.pow(2) + torch.pow(x, 3)
            + x.logsumexp(-1, keepdim=True) + torch.rsqrt(x * x + 1.0))


@fused
def extremes(x, y):
    return (torch.max(x) + x.max() - x.min() + torch.maximum(x, y) + torch.min(x, y)
            + x.maximum(y))


@fused
def variances(x):
    return (x.var(dim=-1, keepdim=True) + x.std(-1, unbiased=False, keepdim=True)
            + torch.var(x, dim=-1, correction=0, keepdim=True) + x.var(0))


@fused
def casts(x):
    return ((x.float() * 2.0).to(x.dtype) + x.to(torch.float32).to(torch.bfloat16).float()
            + x.double().type(torch.float32) + x.half().float())


@fused
def sizes(x):
    return x * x.shape[-1] + x.size(0) - x.size(dim=1) + x.ndim + x.dim() + x.shape[0] // 2


@fused
def clamps(x):
    return (torch.clamp(x, -0.5, 0.5) + x.clamp(min=0.1) + x.clip(max=0.2)
            + torch.clip(x, -1, 1) + x.clamp(-0.3, None))


@fused
def remainders(x):
    return x % 0.7 + torch.remainder(x, -0.3) + x.remainder(2.0) + x % (x.abs() + 0.5)


@fused
def activations(x):
    return (F.relu(x) + F.silu(x) + F.gelu(x) + F.gelu(x, approximate="tanh")
            + torch.square(x) + torch.sigmoid(x) + torch.nn.functional.relu(-x))


@fused
def views(x, w):
    return x.unsqueeze(-1) * x.unsqueeze(1) + w


@fused
def matmuls(a, b):
    return a.t() @ b + torch.matmul(a.t(), b) + a.T.matmul(b)


@fused
def choose(x, flip: bool = False):
    return -x if flip else x * 2.0


@fused
def wheres(x, y):
    return x.where(x > 0, y) + torch.where(x < y, x, y)


@fused
def arith(x, y):
    return x.add(y) - torch.sub(x, y) + x.mul(y).div(2.0) + torch.neg(x) + x.true_divide(3.0)


@fused
def shadowing(x, w):
    """Locals named like builtins, as torch code names them: each use means the local, and
    the methods of the same names still mean the builtins."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    max = x.amax(-1, keepdim=True)
    sum = torch.exp(x - max).sum(-1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + 1e-5) * w + torch.log(sum) + x.var(-1, keepdim=True)


@fused
def fills(x, y):
    """softplus (its threshold on both sides of large inputs) and the *_like fills."""
    return (F.softplus(x * 8.0) + F.softplus(x, beta=2.0, threshold=1.0)
            + torch.zeros_like(x) + torch.ones_like(y) * 2.0 + torch.full_like(x, 3.5))


@fused
def permutes(x, y):
    """transpose / swapaxes / permute views, of parameters and of math on them, and the
    attention-style scores of a transposed key."""
    s = x @ y.transpose(-2, -1)
    return (s.swapaxes(0, 1).sum(dim=-1) + torch.exp(x.permute(1, 0, 2)).sum(dim=-1)
            + (x.transpose(0, 2) * y.permute(2, 1, 0)).sum(dim=0)
            + torch.sigmoid(y.permute(1, 2, 0)).sum(dim=1))  # a 3-cycle: not its own inverse


@fused
def splits(x, w):
    """chunk / split / unbind unpacked into names: slices (and indices) of x and w."""
    a, b = x.chunk(2, dim=-1)
    q, k, v = torch.split(x, [2, 3, 5], dim=-1)
    r0, r1 = w.unbind(0)
    top, rest = x.split(3)
    return (a * torch.sigmoid(b) + q.sum(-1, keepdim=True) * k.mean(-1, keepdim=True)
            + v * (r0[:5] * r1[5:]) + top.sum(0)[:5] - rest.amax(0)[5:])


@fused
def norms(x, w, b):
    """The norm spellings, and the values of torch.max / min over a dim."""
    return (F.layer_norm(x, (x.shape[-1],), w, b, 1e-5) + F.rms_norm(x, [37], w, eps=1e-6)
            + F.normalize(x, dim=-1) + x.norm(dim=-1, keepdim=True)
            + torch.linalg.vector_norm(x, dim=-1, keepdim=True) + F.layer_norm(x, (37,))
            + torch.max(x, dim=-1, keepdim=True).values - x.min(0).values
            + torch.max(x, 0)[0] - x.min(-1, keepdim=True)[0])


@fused
def formulas(x, y):
    """Activations and small functions torch documents as formulas."""
    return (F.leaky_relu(x, 0.2) + F.elu(x) + F.relu6(x * 4.0) + F.hardtanh(x, -0.5, 0.5)
            + F.hardsigmoid(x * 3.0) + F.hardswish(x * 3.0) + F.mish(x)
            + x.masked_fill(y > 0.5, -1.0) + x.clamp_min(0.1) + torch.clamp_max(x, 0.2)
            + (x * x + 1.0).reciprocal() + torch.sign(y) + torch.lerp(x, y, 0.3)
            + torch.log10(x.abs() + 1.0) + F.leaky_relu(x, negative_slope=0.1, inplace=False))


@fused
def losses(x, y):
    """Losses written as torch code (cross_entropy's targets from y's signs and magnitudes)."""
    k = (y[:, 0].abs() * 3.0).long()
    t = torch.where(y[:, 1] > 1.0, -100, k)
    return (F.mse_loss(x, y) + F.l1_loss(x, y, reduction="sum") * 0.01
            + F.smooth_l1_loss(x * 2.0, y, beta=0.5)
            + F.binary_cross_entropy_with_logits(x * 8.0, torch.sigmoid(y))
            + F.cross_entropy(x, t) + F.cross_entropy(x, t, reduction="sum") * 0.1
            + F.cross_entropy(x, k, reduction="none", ignore_index=2).sum() * 0.01
            + F.mse_loss(x, y, reduction="none").mean())


@fused
def more_formulas(x, y):
    """Activations, softmin, cosine similarity and the Huber and KL losses, as torch's."""
    return (F.selu(x) + F.celu(x, alpha=0.5) + F.logsigmoid(x * 20.0) + F.softsign(x)
            + F.softmin(x, dim=-1) + F.cosine_similarity(x, y, dim=-1)[:, None]
            + torch.nn.functional.cosine_similarity(x, y * 0.0 + 1e-12, dim=1)[:, None]
            + F.huber_loss(x, y, delta=0.5) + F.huber_loss(x, y, reduction="none")
            + F.kl_div(F.log_softmax(x, -1), F.softmax(y, -1), reduction="batchmean")
            + F.kl_div(F.log_softmax(x, -1), F.log_softmax(y, -1), reduction="sum",
                       log_target=True)
            + F.kl_div(x, torch.relu(y), reduction="none"))


@fused
def class_losses(x, y):
    """Class weights, label smoothing and nll_loss, as torch defines them."""
    k = (y[:, 0].abs() * 3.0).long()
    t = torch.where(y[:, 1] > 1.0, -100, k)
    w = y[0].abs() + 0.5
    return (F.cross_entropy(x, t, w) + F.cross_entropy(x, t, label_smoothing=0.1)
            + F.cross_entropy(x, t, weight=w, label_smoothing=0.2, reduction="sum") * 0.1
            + F.cross_entropy(x, k, w, reduction="none", label_smoothing=0.05).sum() * 0.01
            + F.nll_loss(F.log_softmax(x, -1), t, w)
            + F.nll_loss(torch.log_softmax(x, dim=1), k, reduction="sum") * 0.01)


@fused
def linear_losses(h, w):
    """A loss of an expression: the rewrite takes its dtype from `h @ w.T`, not from a name."""
    t = (h[:, 0].abs() * 4.0).long().clamp(0, 10)
    return F.cross_entropy(h @ w.T, t) + F.mse_loss(h * 2.0, h.exp(), reduction="sum") * 0.01


CASES = {  # name: (function, shapes of its tensor arguments)
    "reductions": (reductions, [(5, 37)]),
    "unary": (unary, [(5, 37)]),
    "extremes": (extremes, [(5, 37), (5, 37)]),
    "variances": (variances, [(5, 37)]),
    "casts": (casts, [(5, 37)]),
    "sizes": (sizes, [(5, 37)]),
    "clamps": (clamps, [(5, 37)]),
    "remainders": (remainders, [(5, 37)]),
    "activations": (activations, [(5, 37)]),
    "views": (views, [(5, 37), (37,)]),
    "matmuls": (matmuls, [(37, 5), (37, 6)]),
    "wheres": (wheres, [(5, 37), (5, 37)]),
    "arith": (arith, [(5, 37), (5, 37)]),
    "shadowing": (shadowing, [(5, 37), (37,)]),
    "fills": (fills, [(5, 37), (5, 37)]),
    "permutes": (permutes, [(3, 5, 7), (3, 5, 7)]),
    "splits": (splits, [(5, 10), (2, 10)]),
    "norms": (norms, [(5, 37), (37,), (37,)]),
    "formulas": (formulas, [(5, 37), (5, 37)]),
    "losses": (losses, [(6, 37), (6, 37)]),
    "linear_losses": (linear_losses, [(6, 37), (11, 37)]),
    "class_losses": (class_losses, [(6, 37), (6, 37)]),
    "more_formulas": (more_formulas, [(6, 37), (6, 37)]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
def test_torch_spellings_match_torch(name: str, dtype: torch.dtype) -> None:
    fn, shapes = CASES[name]
    g = torch.Generator().manual_seed(hash(name) % 2**31)
    args = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    out = fn(*args)
    assert out.dtype == fn.__wrapped__(*args).dtype  # torch's promotion
    # casts rounds through bf16 on purpose, and the Triton interpreter rounds f32 -> bf16
    # toward zero (GPUs round to nearest even): agreement to bf16's tolerance is what it can do
    assert_close(out, fn.__wrapped__(*[a.double() for a in args]),
                 torch.bfloat16 if name == "casts" else out.dtype)


def test_integer_remainder_follows_the_divisor_sign() -> None:
    i = torch.randint(-50, 50, (7, 9), dtype=torch.int64)

    @fused
    def f(i):
        return i % 3 + i % -4 + torch.remainder(i, 7) * 100

    out = f(i)
    assert out.dtype == torch.int64 and torch.equal(out, f.__wrapped__(i))


def test_ternary_picks_a_branch_when_compiling() -> None:
    x = torch.randn(4, 9)
    assert torch.equal(choose(x), x * 2.0)
    assert torch.equal(choose(x, flip=True), -x)
    ops = {op.name for n in choose.compiled(x, flip=True).fused_graph.nodes
           for op in getattr(n, "body", [])}
    assert "arith.negf" in ops and "arith.mulf" not in ops  # only -x was lowered


def test_chained_comparison_is_elementwise_and() -> None:
    x = torch.randn(6, 33)

    @fused
    def f(x):
        return torch.where(-0.5 < x <= 0.5, x, 0.0)

    assert torch.equal(f(x), torch.where((x > -0.5) & (x <= 0.5), x, torch.zeros(())))


def test_float_of_a_constant_is_folded() -> None:
    """float("-inf") and float(2) as torch code writes them (a masked fill, say)."""
    x = torch.randn(6, 33)

    @fused
    def f(x):
        return torch.where(x > 0.5, x, float("-inf")) + float("1e-3") * float(2)

    assert torch.equal(f(x), torch.where(x > 0.5, x, float("-inf")) + 2e-3)


BAD = [
    ("float('minus one')", E.BuiltinCallError, "float('minus one') is not a number"),
    ("x.max(dim=-1)", E.UnsupportedSyntaxError, "returns (values, indices)"),
    ("x.frobnicate()", E.UnsupportedSyntaxError, "fusile has no method '.frobnicate()'"),
    ("torch.fmod(x, 2.0)", E.UnsupportedSyntaxError, "torch's fmod() has no fusile"),
    ("x.exp_()", E.UnsupportedSyntaxError, "in-place methods"),
    ("x.sum(dim=-1, axis=-1)", E.BuiltinCallError, "both dim= and axis="),
    ("x.std(unbiased=2)", E.BuiltinCallError, "unbiased= must be True or False"),
    ("x.unsqueeze(5)", E.BuiltinCallError, "dim must be an integer constant in [-3, 2]"),
    ("F.gelu(x, approximate='fast')", E.BuiltinCallError, "approximate must be 'none' or"),
]


@pytest.mark.parametrize("line,cls,text", BAD, ids=[b[0] for b in BAD])
def test_spellings_fusile_refuses_say_what_to_write(line: str, cls: type, text: str) -> None:
    src = f"def f(x):\n    return {line}\n"
    fn = fusile.from_source(src, globals_={"torch": torch, "F": F}, filename="prog.py")
    with pytest.raises(cls) as info:
        fn(torch.randn(3, 4))
    assert text in str(info.value) and "prog.py:2:" in str(info.value)


def test_a_renamed_local_does_not_meet_another_local() -> None:
    """`var` is renamed away from the builtin; the new name must not be a name the function
    already has (`var_` here)."""
    f = fusile.from_source("def f(x):\n    var_ = x + 1.0\n    var = x * 2.0\n"
                           "    return var_ + var + x.var(-1, keepdim=True)\n")
    x = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(f(x), (x + 1.0) + x * 2.0 + x.var(-1, keepdim=True))


def test_softplus_gradient_is_finite_past_the_threshold() -> None:
    """The overflow-free softplus: exp of a large input never reaches the derived backward
    (log(1 + exp(z)) would give inf * 0 = NaN in the branch where() drops)."""
    x = (torch.randn(4, 9, dtype=torch.float64) * 60).requires_grad_()
    y = torch.randn(4, 9, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fills(a, b), (x, y))
    fills(x, y).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ["permutes", "formulas", "splits", "norms", "losses",
                                  "linear_losses", "more_formulas"])
def test_gradients_match_torch(name: str) -> None:
    """Derived gradients of the new spellings against torch autograd of the same body in
    float64 (permutes: a view's gradient undoes any permutation, not only the last two axes)."""
    fn, shapes = CASES[name]
    xs = [torch.randn(s).requires_grad_() for s in shapes]
    out = fn(*xs)
    g = torch.randn(out.shape)
    got = torch.autograd.grad(out, xs, g)
    x64 = [t.detach().double().requires_grad_() for t in xs]
    want = torch.autograd.grad(fn.__wrapped__(*x64), x64, g.double())
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, torch.float32)


def test_class_weighted_and_smoothed_losses_gradient() -> None:
    """d/dx of the class-index losses (torch has no gradient for the weights: y is fixed)."""
    x, y = torch.randn(6, 37, requires_grad=True), torch.randn(6, 37)
    (got,) = torch.autograd.grad(class_losses(x, y), x)
    x64 = x.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(class_losses.__wrapped__(x64, y.double()), x64)
    assert_close(got, want, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", ["permutes", "splits", "shadowing", "fills", "norms",
                                  "formulas", "losses", "linear_losses", "class_losses",
                                  "more_formulas"])
def test_new_spellings_on_the_gpu(name: str, dtype: torch.dtype) -> None:
    from tests.numerics import check_torch_twin

    fn, shapes = CASES[name]
    check_torch_twin(fn, shapes, name, dtype, "cuda", calls=2)


@pytest.mark.parametrize("line,text", [
    ("a, b = x.chunk(3, dim=-1)", "x.chunk(3) gives 3 pieces here; unpack them into as many "
                                  "names (got 2)"),
    ("a = x.chunk(2)", "chunk() gives several tensors: unpack them into names"),
    ("a, b = x.split(k)", "split(): split_size must be an integer literal here"),
    ("a = x.chunk(2)[0]", "x.chunk() gives several tensors: unpack them into names"),
    ("a = F.rms_norm(x, (6,))", "rms_norm(): give eps="),
    ("a = x.norm(p=1)", "only the 2-norm is spelled in fusile"),
    ("a = F.cross_entropy(x, x, x, 1)", "cross_entropy() takes (input, target, *, weight="),
    ("a = F.mse_loss(x, x, reduction='avg')", "reduction must be 'mean', 'sum' or 'none'"),
])
def test_splits_fusile_refuses_say_why(line: str, text: str) -> None:
    f = fusile.from_source(f"def f(x, k: int = 2):\n    {line}\n    return a\n",
                           filename="prog.py", globals_={"torch": torch, "F": F})
    with pytest.raises(E.FusileError) as got:
        f(torch.randn(4, 6))
    assert text in str(got.value) and "prog.py:2" in str(got.value)


def test_sign_is_torchs_at_zero_and_nan() -> None:
    f = fusile.from_source("def f(x):\n    return sign(x)\n")
    x = torch.tensor([float("nan"), 0.0, 2.0, -3.0, float("-inf")])
    torch.testing.assert_close(f(x), torch.sign(x), equal_nan=True)
    n = torch.tensor([3, -2, 0])
    assert torch.equal(f(n), torch.sign(n))
