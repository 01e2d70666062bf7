"""Every rejected program raises its own FusileError subclass, quoting the line with a caret.

Golden messages: a change to any of them should be deliberate.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fusile
from fusile.dsl import errors as E
from fusile.dsl.errors import InternalError


def _args(kind: str) -> tuple:
    torch.manual_seed(0)
    return {
        "x": (torch.randn(3, 4),),
        "xw": (torch.randn(3, 4), torch.randn(5)),
        "mm": (torch.randn(3, 4), torch.randn(5, 6)),
        "mv": (torch.randn(3, 4), torch.randn(4)),
        "vf": (torch.randn(3), 2.0),
        "v": (torch.randn(3),),
    }[kind]


BAD = [
    ('syntax_missing_colon', 'def f(x)\n    return x\n', 'x', E.FusileSyntaxError,
     "invalid syntax: unexpected end of line (missing ':' at the end of the def line)\n --> prog.py:1:9\n  |\n1 | def f(x)\n  |         ^"),
    ('syntax_unbalanced', 'def f(x):\n    return (x + 1\n', 'x', E.FusileSyntaxError,
     'invalid syntax: unexpected end of input (unbalanced brackets)\n --> prog.py:2:18\n  |\n2 |     return (x + 1\n  |                  ^'),
    ('syntax_bad_char', 'def f(x):\n    return x $ 2\n', 'x', E.FusileSyntaxError,
     "invalid syntax: unexpected character '$'\n --> prog.py:2:14\n  |\n2 |     return x $ 2\n  |              ^"),
    ('syntax_missing_operand', 'def f(x):\n    return x *\n', 'x', E.FusileSyntaxError,
     'invalid syntax: unexpected end of line\n --> prog.py:2:15\n  |\n2 |     return x *\n  |               ^'),
    ('not_a_function', 'x = 1\n', 'x', E.FusileSyntaxError,
     "invalid syntax: unexpected 'x' (a fusile program is one function definition)\n --> prog.py:1:1\n  |\n1 | x = 1\n  | ^"),
    ('unknown_name', 'def f(x):\n    return x + y\n', 'x', E.UnknownNameError,
     "unknown name 'y' (parameters: x)\n --> prog.py:2:16\n  |\n2 |     return x + y\n  |                ^"),
    ('unknown_builtin', 'def f(x):\n    return expp(x)\n', 'x', E.UnknownNameError,
     "unknown function 'expp'; did you mean 'exp'?\n --> prog.py:2:12\n  |\n2 |     return expp(x)\n  |            ^^^^"),
    ('use_before_assign', 'def f(x):\n    y = z + x\n    z = x\n    return y\n', 'x', E.UnknownNameError,
     "name 'z' is used before it is assigned\n --> prog.py:2:9\n  |\n2 |     y = z + x\n  |         ^"),
    ('shape_mismatch', "def f(x: f32['M', 4], w: f32[5]):\n    return x + w\n", 'xw', E.ShapeMismatchError,
     'cannot broadcast shapes (M, 4) and (5,)\n --> prog.py:2:12\n  |\n2 |     return x + w\n  |            ^^^^^'),
    ('matmul_inner', 'def f(a, b):\n    return a @ b\n', 'mm', E.ShapeMismatchError,
     'b has size 5 along axis 0 but a has size 4 along axis 1; the program needs them equal\n --> prog.py:2:12\n  |\n2 |     return a @ b\n  |            ^^^^^'),
    ('matmul_rank', 'def f(a, b):\n    return a @ b\n', 'mv', E.RankError,
     'matmul needs operands of rank 2 or more, got rank 1\n --> prog.py:2:16\n  |\n2 |     return a @ b\n  |                ^'),
    ('reduce_axis_range', 'def f(x):\n    return sum(x, axis=2)\n', 'x', E.AxisError,
     'sum(): axis 2 is out of range for a tensor of rank 2\n --> prog.py:2:12\n  |\n2 |     return sum(x, axis=2)\n  |            ^^^^^^^^^^^^^^'),
    ('reduce_axis_nonconst', 'def f(x, y):\n    return sum(x, axis=y)\n', 'xw', E.AxisError,
     'sum(): axis must be an integer constant known when compiling\n --> prog.py:2:24\n  |\n2 |     return sum(x, axis=y)\n  |                        ^'),
    ('reduce_axis_repeat', 'def f(x):\n    return mean(x, axis=(1, -1))\n', 'x', E.AxisError,
     'mean(): axis -1 repeated\n --> prog.py:2:12\n  |\n2 |     return mean(x, axis=(1, -1))\n  |            ^^^^^^^^^^^^^^^^^^^^^'),
    ('reduce_scalar', 'def f(x):\n    return sum(1.0)\n', 'x', E.RankError,
     'sum() needs a tensor, got a scalar\n --> prog.py:2:16\n  |\n2 |     return sum(1.0)\n  |                ^^^'),
    ('where_not_bool', 'def f(x):\n    return where(x, x, 0.0)\n', 'x', E.DTypeError,
     'where() needs a bool condition, got f32; compare first, e.g. where(x > 0, x, 0)\n --> prog.py:2:18\n  |\n2 |     return where(x, x, 0.0)\n  |                  ^'),
    ('bitwise_float', 'def f(x):\n    return x & x\n', 'x', E.DTypeError,
     '& | ^ need bool or integer operands, got f32 and f32\n --> prog.py:2:12\n  |\n2 |     return x & x\n  |            ^^^^^'),
    ('bool_arith', 'def f(x):\n    m = x > 0\n    return m + m\n', 'x', E.DTypeError,
     'arithmetic (add) on bool values; use & | ~, or astype first\n --> prog.py:3:12\n  |\n3 |     return m + m\n  |            ^^^^^'),
    ('astype_bad', "def f(x):\n    return astype(x, 'f8')\n", 'x', E.DTypeError,
     "unknown dtype 'f8'; fusile knows bf16, f16, f32, f64, i32, i64, bool\n --> prog.py:2:22\n  |\n2 |     return astype(x, 'f8')\n  |                      ^^^^"),
    ('builtin_kw', 'def f(x):\n    return softmax(x, dims=-1)\n', 'x', E.BuiltinCallError,
     "softmax() got an unexpected keyword argument 'dims'; it takes (x, axis=-1)\n --> prog.py:2:28\n  |\n2 |     return softmax(x, dims=-1)\n  |                            ^^"),
    ('builtin_missing', 'def f(x):\n    return maximum(x)\n', 'x', E.BuiltinCallError,
     "maximum() is missing argument 'b'; it takes (a, b)\n --> prog.py:2:12\n  |\n2 |     return maximum(x)\n  |            ^^^^^^^^^^"),
    ('for_loop', 'def f(x):\n    for i in x:\n        x = x + i\n    return x\n', 'x', E.UnsupportedSyntaxError,
     'a for loop is not supported in fusile; write the math on whole tensors\n --> prog.py:2:5\n  |\n2 |     for i in x:\n  |     ^^^^^^^^^^^'),
    ('if_stmt', 'def f(x):\n    if x > 0:\n        x = -x\n    return x\n', 'x', E.UnsupportedSyntaxError,
     'an if statement is not supported in fusile; use where(cond, a, b) for a choice per element\n --> prog.py:2:5\n  |\n2 |     if x > 0:\n  |     ^^^^^^^^^'),
    ('while_loop', 'def f(x):\n    while x:\n        pass\n    return x\n', 'x', E.UnsupportedSyntaxError,
     'a while loop is not supported in fusile; write the math on whole tensors\n --> prog.py:2:5\n  |\n2 |     while x:\n  |     ^^^^^^^^'),
    ('attribute', 'def f(x):\n    return x.shape\n', 'x', E.UnsupportedSyntaxError,
     'x.shape is a tuple, which fusile has no value for: index it, x.shape[-1], or write x.size(-1)\n --> prog.py:2:12\n  |\n2 |     return x.shape\n  |            ^^^^^^^'),
    ('attribute_method', 'def f(x):\n    return x.add_(1.0)\n', 'x', E.UnsupportedSyntaxError,
     "in-place methods ('.add_(...)') are not supported: fusile values are immutable; write y = x.add(...)\n --> prog.py:2:12\n  |\n2 |     return x.add_(1.0)\n  |            ^^^^^^"),
    ('lambda', 'def f(x):\n    g = lambda y: y\n    return x\n', 'x', E.UnsupportedSyntaxError,
     'a lambda is not supported in fusile\n --> prog.py:2:9\n  |\n2 |     g = lambda y: y\n  |         ^^^^^^^^^^^'),
    ('star_args', 'def f(*xs):\n    return xs\n', 'x', E.UnsupportedSyntaxError,
     'a star parameter (*args, **kwargs, * or /) is not supported in fusile\n --> prog.py:1:7\n  |\n1 | def f(*xs):\n  |       ^^^'),
    ('star_call', 'def f(x):\n    return maximum(*x)\n', 'x', E.UnsupportedSyntaxError,
     'star-arguments (*args, **kwargs) in a call is not supported in fusile\n --> prog.py:2:20\n  |\n2 |     return maximum(*x)\n  |                    ^^'),
    ('ternary', 'def f(x):\n    return x if x else 0\n', 'x', E.UnsupportedSyntaxError,
     "the condition of 'a if c else b' must be a constant known when compiling (an int or bool parameter); to choose per element write where(c, a, b)\n --> prog.py:2:17\n  |\n2 |     return x if x else 0\n  |                 ^"),
    ('and_keyword', 'def f(x):\n    return (x > 0) and (x < 1)\n', 'x', E.UnsupportedSyntaxError,
     "'and' is not supported in fusile; use & on boolean tensors\n --> prog.py:2:12\n  |\n2 |     return (x > 0) and (x < 1)\n  |            ^^^^^^^^^^^^^^^^^^^"),
    ('subscript_assign', 'def f(x):\n    x[0] = 1.0\n    return x\n', 'x', E.UnsupportedSyntaxError,
     'assignment into a subscript (x[...] = ...) is not supported in fusile; tensors are immutable, use where()\n --> prog.py:2:5\n  |\n2 |     x[0] = 1.0\n  |     ^^^^'),
    ('shift', 'def f(x):\n    return astype(x, i32) << 2\n', 'x', E.UnsupportedSyntaxError,
     "operator '<<' is not supported in fusile\n --> prog.py:2:12\n  |\n2 |     return astype(x, i32) << 2\n  |            ^^^^^^^^^^^^^^^^^^^"),
    ('index_position', 'def f(x):\n    return x[5]\n', 'x', E.AxisError,
     'index 5 is out of range for an axis of size 3\n --> prog.py:2:14\n  |\n2 |     return x[5]\n  |              ^'),
    ('slice_negative_step', 'def f(x):\n    return x[::-1]\n', 'x', E.AxisError,
     "a slice's step must be a positive integer (torch refuses negative steps too)\n --> prog.py:2:14\n  |\n2 |     return x[::-1]\n  |              ^^^^"),
    ('slice_bound_runtime', 'def f(x, s: float):\n    return x[:s]\n', 'vf', E.UnsupportedSyntaxError,
     "a slice's stop must be a constant known when compiling: an int, an int parameter or a size such as size(x, -1) // 2\n --> prog.py:2:15\n  |\n2 |     return x[:s]\n  |               ^"),
    ('slice_of_reduction', 'def f(x):\n    return softmax(x, axis=-1)[:, :2]\n', 'x', E.UnsupportedSyntaxError,
     'slicing this value is not supported yet: fusile slices parameters, elementwise math, views, concats, and reductions along the axes they keep; slice the inputs of the reduction or matmul instead\n --> prog.py:2:12\n  |\n2 |     return softmax(x, axis=-1)[:, :2]\n  |            ^^^^^^^^^^^^^^^^^^^'),
    ('no_return', 'def f(x):\n    y = x\n', 'x', E.UnsupportedSyntaxError,
     'f() has no return statement; a fused function returns its results\n --> prog.py:1:1\n  |\n1 | def f(x):\n  | ^^^^^^^^^'),
    ('return_scalar', 'def f(x):\n    return 1.0\n', 'x', E.RankError,
     'a fused function returns tensors; this is a scalar (broadcast it against a tensor first)\n --> prog.py:2:12\n  |\n2 |     return 1.0\n  |            ^^^'),
    ('unknown_method', 'def f(x):\n    return x.frobnicate()\n', 'x', E.UnsupportedSyntaxError,
     "fusile has no method '.frobnicate()'; the methods it knows: abs, absolute, add, amax, amin, argmax, argmin, astype, bfloat16, bool, ceil, clamp, clamp_max, clamp_min, clip, cos, dim, div, divide, double, erf, exp, exp2, expand_as, expm1, float, floor, floor_divide, fmax, fmin, gelu, half, int, lerp, log, log10, log1p, log2, log_softmax, logsumexp, long, masked_fill, matmul, max, maximum, mean, min, minimum, mul, multiply, neg, norm, permute, pow, reciprocal, relu, remainder, rsqrt, sigmoid, sign, silu, sin, size, softmax, sqrt, square, std, sub, subtract, sum, swapaxes, swapdims, t, tanh, to, transpose, true_divide, type, unsqueeze, var, where\n --> prog.py:2:12\n  |\n2 |     return x.frobnicate()\n  |            ^^^^^^^^^^^^"),
    ('max_dim', 'def f(x):\n    return x.max(dim=-1)\n', 'x', E.UnsupportedSyntaxError,
     "torch's max(x, dim) returns (values, indices); take one: torch.max(x, dim).values or .indices (or x.amax(dim) and x.argmax(dim))\n --> prog.py:2:12\n  |\n2 |     return x.max(dim=-1)\n  |            ^^^^^^^^^^^^^"),
    ('dtype_value', 'def f(x):\n    return x * x.dtype\n', 'x', E.UnsupportedSyntaxError,
     'x.dtype is a dtype, not a value: use it in astype(y, x.dtype) or y.to(x.dtype)\n --> prog.py:2:16\n  |\n2 |     return x * x.dtype\n  |                ^^^^^^^'),
    ('size_tuple', 'def f(x):\n    return x * x.size()\n', 'x', E.UnsupportedSyntaxError,
     'x.size() is a tuple, which fusile has no value for; write x.size(axis) or x.shape[axis]\n --> prog.py:2:16\n  |\n2 |     return x * x.size()\n  |                ^^^^^^^^'),
    ('mod_zero', 'def f(x):\n    return astype(x, i32) % 0\n', 'x', E.ConstantError,
     'integer division by zero\n --> prog.py:2:12\n  |\n2 |     return astype(x, i32) % 0\n  |            ^^^^^^^^^^^^^^^^^^'),
    ('unpack_count', 'def f(x):\n    a, b = x\n    return a\n', 'x', E.ShapeMismatchError,
     'cannot unpack 1 value(s) into 2 name(s)\n --> prog.py:2:5\n  |\n2 |     a, b = x\n  |     ^^^^^^^^'),
    ('nested_def', 'def f(x):\n    def g(y):\n        return y\n    return x\n', 'x', E.UnsupportedSyntaxError,
     'a nested function definition is not supported in fusile; define it at module level with @fused and call it\n --> prog.py:2:5\n  |\n2 |     def g(y):\n  |     ^^^^^^^^^'),
    ('with_stmt', 'def f(x):\n    with x:\n        pass\n    return x\n', 'x', E.UnsupportedSyntaxError,
     'a with statement is not supported in fusile\n --> prog.py:2:5\n  |\n2 |     with x:\n  |     ^^^^^^^'),
    ('bare_expr', 'def f(x):\n    x + 1\n    return x\n', 'x', E.UnsupportedSyntaxError,
     'a bare expression has no effect; assign it to a name or return it\n --> prog.py:2:5\n  |\n2 |     x + 1\n  |     ^^^^^'),
    ('annotation_dtype', "def f(x: bf16['M']):\n    return x\n", 'x', E.SignatureError,
     "parameter 'x' is annotated bf16 but got a f32 tensor\n --> prog.py:1:7\n  |\n1 | def f(x: bf16['M']):\n  |       ^^^^^^^^^^^^"),
    ('annotation_rank', "def f(x: f32['M', 'N']):\n    return x\n", 'v', E.SignatureError,
     "parameter 'x' is annotated with rank 2 but got a tensor of shape (3,)\n --> prog.py:1:7\n  |\n1 | def f(x: f32['M', 'N']):\n  |       ^^^^^^^^^^^^^^^^"),
    ('neg_bool', 'def f(x):\n    return -(x > 0)\n', 'x', E.DTypeError,
     'negation of a bool value; use ~\n --> prog.py:2:12\n  |\n2 |     return -(x > 0)\n  |            ^^^^^^^^'),
    ('index_too_many', 'def f(x):\n    return x[:, :, None, :]\n', 'x', E.RankError,
     'too many indices for a tensor of rank 2\n --> prog.py:2:12\n  |\n2 |     return x[:, :, None, :]\n  |            ^^^^^^^^^^^^^^^^'),
    ('builtin_as_value', 'def f(x):\n    y = exp\n    return x\n', 'x', E.UnsupportedSyntaxError,
     "builtin 'exp' must be called: exp(x)\n --> prog.py:2:9\n  |\n2 |     y = exp\n  |         ^^^"),
    ('arange_nonconst', 'def f(x, n: float):\n    return arange(n)\n', 'vf', E.AxisError,
     'arange(): n must be an integer constant known when compiling\n --> prog.py:2:19\n  |\n2 |     return arange(n)\n  |                   ^'),
    ('int_div_zero', 'def f(x):\n    return x + 1 // 0\n', 'x', E.ConstantError,
     'integer division by zero\n --> prog.py:2:16\n  |\n2 |     return x + 1 // 0\n  |                ^^^^^^'),
    ('int_too_big', 'def f(x):\n    return x * 2 ** 70\n', 'x', E.ConstantError,
     'the integer 1180591620717411303424 does not fit int64\n --> prog.py:2:16\n  |\n2 |     return x * 2 ** 70\n  |                ^^^^^^^'),
    ('index_tuple_axis', 'def f(x):\n    return x + index(x, (0, 1))\n', 'x', E.AxisError,
     'index(): axis must be one integer constant, got (0, 1)\n --> prog.py:2:16\n  |\n2 |     return x + index(x, (0, 1))\n  |                ^^^^^^^^^^^^^^^^'),
    ('size_tuple_axis', 'def f(x):\n    return x * size(x, (0, 1))\n', 'x', E.AxisError,
     'size(): axis must be one integer constant, got (0, 1)\n --> prog.py:2:16\n  |\n2 |     return x * size(x, (0, 1))\n  |                ^^^^^^^^^^^^^^^'),
    ('bad_dedent', 'def f(x):\n        y = x\n    return y\n', 'x', E.FusileSyntaxError,
     'unindent does not match any outer indentation level\n --> prog.py:3:1\n  |\n3 |     return y\n  | ^^^^'),
    ('keyword_param', 'def f(x, class):\n    return x\n', 'x', E.FusileSyntaxError,
     "'class' is a Python keyword and cannot be used as a name\n --> prog.py:1:10\n  |\n1 | def f(x, class):\n  |          ^^^^^"),
    ('duplicate_param', 'def f(x, x):\n    return x\n', 'x', E.FusileSyntaxError,
     "duplicate parameter 'x'\n --> prog.py:1:10\n  |\n1 | def f(x, x):\n  |          ^"),
    ('vtab_char', 'def f(x):\n    y = x\x0b\n    return y\n', 'x', E.FusileSyntaxError,
     "invalid syntax: unexpected character '\\x0b'\n --> prog.py:2:10\n  |\n2 |     y = x\x0b\n  |          ^"),
    ('max_static_empty', "def f(x: f32['M', 0]):\n    return max(x, axis=-1)\n", 'x', E.AxisError,
     'max() over axis 1, which has size 0\n --> prog.py:2:12\n  |\n2 |     return max(x, axis=-1)\n  |            ^^^^^^^^^^^^^^^'),
]


@pytest.mark.parametrize("name,src,kind,cls,message", BAD, ids=[b[0] for b in BAD])
def test_bad_program(name: str, src: str, kind: str, cls: type, message: str) -> None:
    fn = fusile.from_source(src, filename="prog.py")
    with pytest.raises(cls) as info:
        fn(*_args(kind))
    assert str(info.value) == message
    assert isinstance(info.value, fusile.FusileError)
    assert "-->" in message and "^" in message, "every error quotes the user's line"


def test_error_points_into_the_users_file() -> None:
    from tests.dsl import bad_module

    with pytest.raises(E.UnknownNameError) as info:
        bad_module.uses_unknown(torch.randn(2, 2))
    text = str(info.value)
    assert "bad_module.py:" in text
    assert "return x * scale_unknown" in text


def test_internal_errors_are_wrapped_unless_debugging(monkeypatch: pytest.MonkeyPatch) -> None:
    from fusile import config
    from fusile.dsl import fused as fused_mod

    def boom() -> None:
        raise RuntimeError("boom")

    with pytest.raises(InternalError, match="internal error in fusile") as info:
        fused_mod._guard(boom)
    assert "please report it" in str(info.value) and "FUSILE_FRONTEND_DEBUG" in str(info.value)
    with config.override(frontend_debug=True), pytest.raises(RuntimeError):
        fused_mod._guard(boom)


def test_a_code_generator_bug_is_an_internal_error_with_the_fused_mlir(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer's internal error (not the user's fault) names itself so and saves the fused
    MLIR it failed on; user errors stay their own classes."""
    from fusile.backends.triton import generate

    def broken(*_: object) -> None:
        raise InternalError("a kernel writer found loops it cannot place")

    monkeypatch.setattr(generate, "generate", broken)

    @fusile.fused
    def double(x):
        return x * 2

    with pytest.raises(InternalError) as info:
        double.triton(torch.randn(3, 4), target="h100")
    text = str(info.value)
    assert "cannot place" in text and "please report it" in text
    path = text.split("failed on: ")[1].split()[0]
    assert "func.func" in Path(path).read_text()
    assert not issubclass(E.ShapeMismatchError, InternalError)


def test_calling_a_builtin_outside_fused_explains_itself() -> None:
    with pytest.raises(TypeError, match="call it inside an @fused function"):
        fusile.exp(torch.randn(2))


def test_from_source_quotes_its_own_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """A program from text quotes that text, even when a file of its name lies where
    linecache looks (it quoted the file's line), and explain shows its lines."""
    (tmp_path / "prog.py").write_text("a\nb\nthe wrong file\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = fusile.from_source("def f(x):\n    y = x * 2.0\n    return y + nope\n",
                            filename="prog.py")
    with pytest.raises(E.UnknownNameError) as got:
        fn(torch.randn(3))
    assert "3 |     return y + nope" in str(got.value) and "wrong" not in str(got.value)
    shown = fusile.from_source("def f(x):\n    y = x * 2.0\n    return y\n",
                               filename="<shown>").explain(torch.randn(3), target="h100")
    assert "y = x * 2.0" in str(shown)
