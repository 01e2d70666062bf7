"""How standard-library ops meet PyTorch: custom ops for torch.compile, a cheap eager path,
autograd for both, and the argument checks every op shares."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fusile.dsl.errors import SignatureError
from fusile.dsl.torch_op import traced as _traced

Op = "fusile::"
OPS: dict[str, Any] = {}  # op name -> the registered op (its plain implementation: _fusile_raw)


def custom_op(name: str):
    """torch.library.custom_op, remembering the raw implementation: eager calls use it
    directly (torch.library's dispatch costs tens of microseconds a call, as much as a small
    kernel), torch.compile sees the registered op."""
    def wrap(fn):
        op = torch.library.custom_op(Op + name, mutates_args=())(fn)
        op._fusile_raw = fn  # type: ignore[attr-defined]
        OPS[name] = op
        return op

    return wrap


def call(op, *args):
    """Run a registered op: through torch.library while tracing, else its raw kernel."""
    if _traced(args):
        return op(*args)
    return op._fusile_raw(*args)


class _Eager(torch.autograd.Function):
    """Eager autograd over an op's raw forward, with the op's own setup and gradient."""

    @staticmethod
    def forward(ctx, op, *args):
        ctx.set_materialize_grads(False)  # unused statistics outputs get None, not zeros
        out = op._fusile_raw(*args)
        op._fusile_setup(ctx, args, out)
        ctx._fusile_grad = op._fusile_grad
        main = out[0] if isinstance(out, tuple) else out
        ctx._fusile_main = (main.shape, main.dtype, main.device)
        return out

    @staticmethod
    def backward(ctx, *grads):
        if grads[0] is None:  # the main output's gradient is needed even when it is zero
            shape, dtype, device = ctx._fusile_main
            grads = (torch.zeros(shape, dtype=dtype, device=device), *grads[1:])
        g = ctx._fusile_grad(ctx, *grads)
        return (None, *(g if isinstance(g, tuple) else (g,)))


def apply(op, *args):
    """Call an op with autograd: the registered op while compiling; an autograd.Function
    over the raw kernels in eager mode, or the raw kernel alone when nothing needs a grad."""
    if _traced(args):
        return op(*args)
    if _grad_enabled():
        for a in args:
            if isinstance(a, Tensor) and a.requires_grad:
                if _c_apply is not None and not _functorch_active():
                    return _c_apply(op, *args)
                return _Eager.apply(op, *args)
    return op._fusile_raw(*args)


_grad_enabled = torch.is_grad_enabled
# autograd.Function.apply is a Python wrapper (argument binding, functorch unwrapping) around
# the C++ apply; with no functorch transform active the wrapper adds only its own cost, a few
# microseconds a call, so eager calls go to the C++ apply directly where torch has it
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)
try:
    _c_apply = torch._C._FunctionBase.__dict__["apply"].__get__(None, _Eager)
except (AttributeError, KeyError, TypeError):  # another torch: the public path
    _c_apply = None


def autograd(op, grad, setup) -> None:
    """Register an op's gradient for both paths (torch.library and eager)."""
    op.register_autograd(grad, setup_context=setup)
    op._fusile_setup = setup
    op._fusile_grad = grad


def same_device(name: str, *tensors: Tensor | None) -> None:
    """Every argument that should be a tensor is one (or None where optional), all on one
    device, all floating point."""
    device = None
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise SignatureError(f"fusile.stdlib.{name}: expected a torch.Tensor, got "
                                 f"{type(t).__name__} ({t!r:.40})")
        if not t.dtype.is_floating_point:
            raise SignatureError(f"fusile.stdlib.{name}: expected floating-point tensors, got "
                                 f"{t.dtype}")
        if device is None:
            device = t.device
        elif t.device != device:
            devices = {u.device for u in tensors if isinstance(u, Tensor)}
            raise SignatureError(f"fusile.stdlib.{name}: tensors are on different devices "
                                 f"({', '.join(sorted(str(d) for d in devices))})")


def check_param(name: str, p: Tensor | None, x: Tensor, shape: tuple[int, ...], what: str) -> None:
    if p is None:
        return
    if tuple(p.shape) != shape:
        raise SignatureError(f"fusile.stdlib.{name}: {what} has shape {tuple(p.shape)}, "
                             f"expected normalized_shape {shape}")
    if p.dtype != x.dtype:
        raise SignatureError(f"fusile.stdlib.{name}: {what} is {p.dtype} but input is "
                             f"{x.dtype}; cast one of them")


def norm_shape(name: str, x: Tensor, normalized_shape: int | list[int] | tuple[int, ...],
               *params: Tensor | None) -> tuple[int, ...]:
    """normalized_shape as a tuple, checked against x; x and the params checked as tensors."""
    same_device(name, x, *params)
    shape = ((normalized_shape,) if isinstance(normalized_shape, int) else
             tuple(normalized_shape))
    if not shape or 0 in shape:
        raise SignatureError(f"fusile.stdlib.{name}: normalized_shape must name at least one "
                             f"dim, none of size 0, got {shape}")
    xs = x.shape
    if len(shape) > len(xs) or tuple(xs[len(xs) - len(shape):]) != shape:
        raise SignatureError(f"fusile.stdlib.{name}: input of shape {tuple(x.shape)} does not "
                             f"end with normalized_shape {shape}")
    return shape


def as_rows(x: Tensor, n: int) -> Tensor:
    """x as (rows, n): itself when it already is (a reshape costs a microsecond a call)."""
    return x if x.dim() == 2 and x.shape[1] == n else x.reshape(-1, n)


def as_vector(p: Tensor, n: int) -> Tensor:
    return p if p.dim() == 1 else p.reshape(n)


def like_input(y: Tensor, x: Tensor) -> Tensor:
    """A rows result in the input's shape."""
    return y if y.shape == x.shape else y.view(x.shape)


def default_eps(dtype: torch.dtype) -> float:
    eps = _EPS.get(dtype)
    if eps is None:
        eps = _EPS[dtype] = torch.finfo(dtype).eps
    return eps


_EPS: dict[torch.dtype, float] = {}


def stat_dtype(x: Tensor) -> torch.dtype:
    """The dtype statistics are kept in: float32, or float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def ones_for(x: Tensor, n: int) -> Tensor:
    return torch.ones(n, dtype=x.dtype, device=x.device)


