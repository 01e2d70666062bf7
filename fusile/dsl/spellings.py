"""torch spellings beside fusile's own, so an @fused body can also run as plain torch code.

Each spelling is rewritten into the core form the checker already knows, and the checker
records the rewrite (`Typed.desugared`), so lowering sees one language:

  x.sum(dim=-1, keepdim=True)  -> sum(x, axis=-1, keepdims=True)   (and every method below)
  torch.exp(x), F.softmax(x, dim=-1) -> exp(x), softmax(x, axis=-1)
  x.float(), x.to(torch.bfloat16), x.to(y.dtype), x.type(t) -> astype(x, ...)
  x.shape[i], x.size(i)        -> size(x, i);  x.ndim, x.dim() -> the rank, a constant
  x.unsqueeze(d), x.t()        -> x[..., None, ...], x.T  (views, no copy)
  clamp / clip(x, min, max)    -> minimum(maximum(x, min), max)
  relu, silu, gelu, square     -> their formulas

torch semantics are kept where they differ from numpy's: `x.var()` / `torch.var` use
correction=1 (`var(x)`, the numpy spelling, keeps 0), and `x.max(dim)` (values and indices in
torch) is refused with the spelling that says what is meant.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fusile.dsl import ast, formulas, indices, losses, norms
from fusile.dsl.builtins import BUILTINS
from fusile.dsl.concat import const_axis
from fusile.dsl.errors import BuiltinCallError, Span, UnsupportedSyntaxError
from fusile.dsl.push import make_view
from fusile.dsl.rewrite import At
from fusile.dsl.rewrite import call as _call
from fusile.dsl.types import TensorType

if TYPE_CHECKING:
    from fusile.dsl.check import Checker

# names torch and fusile share, with the same meaning (a torch. / F. prefix or a method)
_SAME = {"exp", "exp2", "log", "log2", "sqrt", "rsqrt", "tanh", "erf", "sigmoid", "sin", "cos",
         "log1p", "expm1", "floor", "ceil", "abs", "maximum", "minimum", "where", "sum", "mean",
         "logsumexp", "softmax", "log_softmax", "matmul", "expand_as"}
_RENAMED = {"amax": "max", "amin": "min", "absolute": "abs", "fmax": "maximum",
            "fmin": "minimum"}
_CASTS = {"float": "f32", "half": "f16", "bfloat16": "bf16", "double": "f64", "int": "i32",
          "long": "i64", "bool": "bool"}
_ARITH = {"add": "add", "sub": "sub", "subtract": "sub", "mul": "mul", "multiply": "mul",
          "div": "div", "divide": "div", "true_divide": "div", "floor_divide": "floordiv"}
# torch functions that are no tensor methods (left out of the methods an error lists)
_NOT_METHODS = {"zeros_like", "ones_like", "full_like", "normalize", "layer_norm",
                "rms_norm", "vector_norm", "cosine_similarity",
                *(set(formulas.NAMES) - set(formulas.METHODS)), *losses.NAMES}
# functions fusile spells itself too (clamp(x, lo, hi) works without a prefix)
EXTRAS = ("clamp", "clip", "relu", "silu", "gelu", "square", "remainder", "std", "zeros_like",
          "ones_like", "full_like", "normalize", "layer_norm", "rms_norm", "norm",
          "cosine_similarity", *formulas.NAMES, *losses.NAMES)


def kwargs_alias(kwargs: dict[str, ast.Expr], params: set[str], span: Span
                 ) -> dict[str, ast.Expr]:
    """torch's `dim=` / `keepdim=` for fusile's `axis=` / `keepdims=`."""
    out = dict(kwargs)
    for torch_name, name in (("dim", "axis"), ("keepdim", "keepdims")):
        if torch_name in out and name in params:
            if name in out:
                raise BuiltinCallError(f"both {torch_name}= and {name}= given; they are the "
                                       "same argument", out[torch_name].span)
            out[name] = out.pop(torch_name)
    return out


def _no_args(span: Span, what: str, args: list[ast.Expr], kwargs: dict[str, ast.Expr]) -> None:
    if args or kwargs:
        raise BuiltinCallError(f"{what} takes no arguments", span)


def _one(span: Span, what: str, args: list[ast.Expr], kwargs: dict[str, ast.Expr],
         names: tuple[str, ...]) -> ast.Expr:
    """The single argument of `what`, given positionally or as one of `names`."""
    given = list(args) + [kwargs[n] for n in names if n in kwargs]
    extra = set(kwargs) - set(names)
    if len(given) != 1 or extra:
        raise BuiltinCallError(f"{what} takes one argument ({' or '.join(names)})", span)
    return given[0]


def _rank(ck: Checker, x: ast.Expr, what: str) -> int:
    t = ck.value(x)
    if not isinstance(t, TensorType):
        raise BuiltinCallError(f"{what} needs a tensor, got a scalar", x.span)
    return t.rank


def _var(span: Span, args: list[ast.Expr], kwargs: dict[str, ast.Expr]) -> ast.Call:
    """torch.var: correction 1 unless correction= or unbiased= says otherwise."""
    kw = dict(kwargs)
    if "unbiased" in kw:
        if "correction" in kw:
            raise BuiltinCallError("give unbiased= or correction=, not both", span)
        u = kw.pop("unbiased")
        if not isinstance(u, ast.Const) or not isinstance(u.value, bool):
            raise BuiltinCallError("unbiased= must be True or False", u.span)
        kw["correction"] = ast.Num(u.span, int(u.value))
    if len(args) > 2 and "correction" not in kw:  # torch.var(x, dim, unbiased)
        u = args.pop(2)
        kw["correction"] = ast.Num(u.span, int(bool(u.value))) if isinstance(u, ast.Const) else u
    kw.setdefault("correction", ast.Num(span, 1))
    return _call(span, "var", args, kw)


def _max_min(span: Span, name: str, args: list[ast.Expr], kwargs: dict[str, ast.Expr]
             ) -> ast.Call:
    """torch.max(x) is the max over all; torch.max(a, b) is maximum(a, b); torch.max(x, dim)
    is (values, indices), which fusile does not return: say what to write instead."""
    if len(args) == 2 and not kwargs and not isinstance(args[1], ast.Num):
        return _call(span, "maximum" if name == "max" else "minimum", args, {})
    if len(args) > 1 or kwargs:
        raise UnsupportedSyntaxError(
            f"torch's {name}(x, dim) returns (values, indices); take one: "
            f"torch.{name}(x, dim).values or .indices (or x.a{name}(dim) and "
            f"x.arg{name}(dim))", span)
    return _call(span, name, args, {})


def receiver(c: ast.Call) -> tuple[ast.Expr, list[ast.Expr]] | None:
    """The tensor a method-like call is about and its other positional arguments: x of
    `x.f(a)` or of `torch.f(x, a)`; None for `torch.f()` with no argument."""
    assert isinstance(c.func, ast.Attribute)
    args = list(c.args)
    if isinstance(c.func.value, ast.Name) and c.func.value.id == "torch":
        return (args[0], args[1:]) if args else None
    return c.func.value, args


def extreme_values(c: ast.Call, part: str, span: Span) -> ast.Expr | None:
    """`torch.max(x, dim).values` (or `[0]`) / `x.min(dim=d, keepdim=True).values`: the amax
    / amin; `.indices` (or `[1]`) says it is not spelled. None for any other call."""
    f = c.func
    if not isinstance(f, ast.Attribute) or f.attr not in ("max", "min"):
        return None
    got = receiver(c)
    if got is None:
        return None
    x, args = got
    kwargs = {k.name: k.value for k in c.kwargs}
    given = dict(zip(("dim", "keepdim"), args, strict=False)) | kwargs
    if "dim" not in given or len(args) > 2 or set(kwargs) - {"dim", "keepdim"}:
        return None
    if part == "indices":
        return indices.indices_of(span, f.attr, x, given["dim"], given.get("keepdim"))
    out = {"axis": given["dim"]}
    if "keepdim" in given:
        out["keepdims"] = given["keepdim"]
    return _call(span, f.attr, [x], out)


def _gelu(span: Span, x: ast.Expr, approximate: ast.Expr | None) -> ast.Expr:
    mode = approximate.value if isinstance(approximate, ast.Str) else (
        "none" if approximate is None else None)
    if mode not in ("none", "tanh"):
        raise BuiltinCallError("gelu(): approximate must be 'none' or 'tanh'",
                               approximate.span if approximate is not None else span)

    at = At(span)
    num, binop = at.num, at.op

    if mode == "tanh":
        inner = binop("mul", num(math.sqrt(2.0 / math.pi)),
                      binop("add", x, binop("mul", num(0.044715), binop("pow", x, num(3)))))
        core = at.f("tanh", inner)
    else:
        core = at.f("erf", binop("mul", x, num(1.0 / math.sqrt(2.0))))
    return binop("mul", binop("mul", num(0.5), x), binop("add", num(1.0), core))


def _like(span: Span, name: str, args: list[ast.Expr], kwargs: dict[str, ast.Expr]
          ) -> ast.Expr:
    """zeros_like / ones_like / full_like(x, fill_value): the value broadcast to x's shape, in
    x's dtype (or dtype=)."""
    kw = dict(kwargs)
    x = args[0] if args else kw.pop("input", None)
    fill: ast.Expr | None = ast.Num(span, 0.0 if name == "zeros_like" else 1.0)
    if name == "full_like":
        fill = args[1] if len(args) > 1 else kw.pop("fill_value", None)
    dtype = kw.pop("dtype", None)
    if x is None or fill is None or len(args) > (2 if name == "full_like" else 1) or kw:
        raise BuiltinCallError(f"{name}() takes (input{', fill_value' * (name == 'full_like')}"
                               f", dtype=None)", span)
    full = _call(span, "expand_as", [fill, x], {})
    return _call(span, "astype", [full, x if dtype is None else dtype], {})


def function(span: Span, name: str, args: list[ast.Expr], kwargs: dict[str, ast.Expr]
             ) -> ast.Expr | None:
    """The core form of torch function `name` called with these arguments (the receiver of a
    method first), or None when torch and fusile share no such function."""
    args = list(args)
    if name in _SAME:
        return _call(span, name, args, kwargs)
    if name in ("cat", "concat", "concatenate", "stack"):
        return _call(span, "stack" if name == "stack" else "concat", args, kwargs)
    if name in _RENAMED:
        return _call(span, _RENAMED[name], args, kwargs)
    if name in ("max", "min"):
        return _max_min(span, name, args, kwargs)
    if name == "var":
        return _var(span, args, kwargs)
    if name == "std":
        return _call(span, "sqrt", [_var(span, args, kwargs)], {})
    if name in ("clamp", "clip"):
        lo = args[1] if len(args) > 1 else kwargs.get("min")
        hi = args[2] if len(args) > 2 else kwargs.get("max")
        if len(args) > 3 or set(kwargs) - {"min", "max"} or not args:
            raise BuiltinCallError(f"{name}() takes (x, min=None, max=None)", span)
        if lo is None and hi is None:
            raise BuiltinCallError(f"{name}() needs min or max", span)
        out: ast.Expr = args[0]
        if lo is not None and not (isinstance(lo, ast.Const) and lo.value is None):
            out = _call(span, "maximum", [out, lo], {})
        if hi is not None and not (isinstance(hi, ast.Const) and hi.value is None):
            out = _call(span, "minimum", [out, hi], {})
        return out
    if name in ("relu", "silu", "square", "gelu"):
        x = _one(span, f"{name}()", args, {k: v for k, v in kwargs.items()
                                          if not (name == "gelu" and k == "approximate")},
                 ("input",))
        if name == "relu":
            return _call(span, "maximum", [x, ast.Num(span, 0)], {})
        if name == "silu":
            return ast.BinOp(span, "mul", x, _call(span, "sigmoid", [x], {}))
        if name == "square":
            return ast.BinOp(span, "mul", x, x)
        return _gelu(span, x, kwargs.get("approximate"))
    if name in ("zeros_like", "ones_like", "full_like"):
        return _like(span, name, args, kwargs)
    if name in ("norm", "vector_norm", "normalize", "layer_norm", "rms_norm",
                "cosine_similarity"):
        return norms.spelled(span, name, args, kwargs)
    if name in formulas.NAMES:
        return formulas.spelled(span, name, args, kwargs)
    if name in losses.NAMES:
        return losses.spelled(span, name, args, kwargs)
    if name == "remainder":
        if len(args) != 2 or kwargs:
            raise BuiltinCallError("remainder() takes (a, b)", span)
        return ast.BinOp(span, "mod", args[0], args[1])
    if name == "pow" or name in _ARITH:
        if len(args) != 2 or kwargs:
            raise BuiltinCallError(f"{name}() takes two operands (and no keywords)", span)
        return ast.BinOp(span, _ARITH.get(name, name), args[0], args[1])
    if name in ("neg", "negative"):
        return ast.UnaryOp(span, "neg", _one(span, f"{name}()", args, kwargs, ("input",)))
    return None


def _permuted(ck: Checker, span: Span, name: str, x: ast.Expr, args: list[ast.Expr],
              kwargs: dict[str, ast.Expr]) -> ast.Expr:
    """x.transpose(a, b) / swapaxes / swapdims / x.permute(*dims): a view (no copy)."""
    rank = _rank(ck, x, f".{name}()")
    if name == "permute":
        given = list(args[0].items) if len(args) == 1 and isinstance(
            args[0], ast.TupleExpr | ast.ListExpr) else list(args)
        if "dims" in kwargs and not given:
            d = kwargs.pop("dims")
            given = list(d.items) if isinstance(d, ast.TupleExpr | ast.ListExpr) else [d]
        dims = [const_axis(ck, d, rank, ".permute()") for d in given]
        if kwargs or sorted(dims) != list(range(rank)):
            raise BuiltinCallError(f".permute() takes each of the {rank} dims once", span)
    else:
        pair = list(args) + [kwargs.pop(k) for k in ("dim0", "dim1") if k in kwargs]
        if len(pair) != 2 or kwargs:
            raise BuiltinCallError(f".{name}() takes two dims", span)
        a, b = (const_axis(ck, d, rank, f".{name}()") for d in pair)
        dims = list(range(rank))
        dims[a], dims[b] = dims[b], dims[a]
    return make_view(ck, x, tuple(dims))


def method(ck: Checker, e: ast.Call) -> ast.Expr:
    """The core form of a method call `x.name(...)` on a tensor or scalar value."""
    assert isinstance(e.func, ast.Attribute)
    x, name, span = e.func.value, e.func.attr, e.span
    args = list(e.args)
    kwargs = {k.name: k.value for k in e.kwargs}
    if name.endswith("_") and not name.startswith("_"):
        raise UnsupportedSyntaxError(f"in-place methods ('.{name}(...)') are not supported: "
                                     f"fusile values are immutable; write y = x.{name[:-1]}(...)",
                                     e.func.span)
    if name in _CASTS:
        _no_args(span, f".{name}()", args, kwargs)
        return _call(span, "astype", [x, ast.Str(span, _CASTS[name])], {})
    if name in ("to", "type", "astype"):
        dtype = _one(span, f".{name}()", args, kwargs, ("dtype",))
        return _call(span, "astype", [x, dtype], {})
    if name == "size":
        if not args and not kwargs:
            raise UnsupportedSyntaxError("x.size() is a tuple, which fusile has no value for; "
                                         "write x.size(axis) or x.shape[axis]", span)
        return _call(span, "size", [x, _one(span, ".size()", args, kwargs, ("dim",))], {})
    if name in ("dim", "ndimension"):
        _no_args(span, f".{name}()", args, kwargs)
        return ast.Num(span, _rank(ck, x, f".{name}()"))
    if name == "unsqueeze":
        d = _one(span, ".unsqueeze()", args, kwargs, ("dim",))
        rank = _rank(ck, x, ".unsqueeze()")
        ck.value(d)
        axis = ck.t.consts.get(id(d))
        if not isinstance(axis, int) or isinstance(axis, bool) or not -rank - 1 <= axis <= rank:
            raise BuiltinCallError(f".unsqueeze(dim): dim must be an integer constant in "
                                   f"[{-rank - 1}, {rank}]", d.span)
        axis = axis % (rank + 1)
        items: list[ast.Expr] = [ast.Slice(span) for _ in range(axis)]
        return ast.Subscript(span, x, (*items, ast.Const(span, None), ast.EllipsisLit(span)))
    if name == "t":
        _no_args(span, ".t()", args, kwargs)
        return ast.Attribute(span, x, "T")
    if name in ("chunk", "split", "unbind"):  # unpacked into names: dsl/unpack.py
        raise UnsupportedSyntaxError(f"x.{name}() gives several tensors: unpack them into "
                                     f"names, as in a, b = x.{name}(...)", span)
    if name in ("transpose", "swapaxes", "swapdims", "permute"):
        return _permuted(ck, span, name, x, args, kwargs)
    if name == "where":  # torch: x.where(cond, other) is where(cond, x, other)
        if len(args) != 2 or kwargs:
            raise BuiltinCallError(".where() takes (condition, other)", span)
        return _call(span, "where", [args[0], x, args[1]], {})
    if name in indices.NAMES:
        return indices.spelled(span, name, [x, *args], kwargs, _rank(ck, x, f".{name}()"))
    out = function(span, name, [x, *args], kwargs)
    if out is None:
        methods = sorted({*_SAME, *_RENAMED, *_CASTS, *EXTRAS, *_ARITH, "max", "min", "var",
                          "pow", "neg", *indices.NAMES,
                          "to", "type", "astype", "size", "dim", "unsqueeze", "t", "transpose",
                          "swapaxes", "swapdims", "permute"} - _NOT_METHODS)
        raise UnsupportedSyntaxError(f"fusile has no method '.{name}()'; the methods it "
                                     f"knows: {', '.join(methods)}", e.func.span)
    return out


def torch_function(ck: Checker, e: ast.Call, name: str) -> ast.Expr:
    """The core form of `torch.name(...)` / `F.name(...)`."""
    kwargs = {k.name: k.value for k in e.kwargs}
    if name in indices.NAMES:
        args = list(e.args)
        rank = _rank(ck, args[0], f"{name}()") if args else None
        return indices.spelled(e.span, name, args, kwargs, rank)
    out = function(e.span, name, list(e.args), kwargs)
    if out is None:
        known = sorted({*_SAME, *_RENAMED, *EXTRAS, *_ARITH, "max", "min", "var", "pow",
                        "neg", "cat", "concat", "stack", *indices.NAMES})
        raise UnsupportedSyntaxError(f"torch's {name}() has no fusile counterpart; the torch "
                                     f"functions fusile knows: {', '.join(known)}", e.func.span)
    return out


def extra(e: ast.Call, name: str) -> ast.Expr:
    """A call of one of fusile's own spellings of a torch function (clamp, relu, ...)."""
    out = function(e.span, name, list(e.args), {k.name: k.value for k in e.kwargs})
    assert out is not None
    return out


assert not set(EXTRAS) & set(BUILTINS)
