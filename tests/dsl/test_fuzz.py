"""Mutated sample programs (Csmith's habit): every outcome is a correct result or a
FusileError that quotes the user's line, never another exception and never an internal
error for a user's mistake. Bounded and derandomized: the same mutants on every run."""

from __future__ import annotations

import io
import random
import re
import tokenize

import numpy as np
import pytest

import fusile
from fusile import samples
from tests.numerics import rel_err

MUTANTS = 600  # in all, over every sample; each compiles in well under a second
VOCAB = ["x", "w", "h", "(", ")", ",", ":", "=", "+", "-", "*", "/", "//", "**", "@", "[", "]",
         "None", "...", "0", "1", "-1", "2.5", "1e3", "inf", "axis", "keepdims", "True",
         "sum", "mean", "max", "exp", "where", "softmax", "astype", "f32", "bf16", "return",
         "if", "lambda", "'s'", "x.T", "x[:, None]", "index", "size", "arange", "#"]
SPACES = ["\t", "\u00a0", "\u2003", "\x0c", "\x0b", "\u2028", "\r", "\r\n", "  ", "\ufeff"]


def _tokens(text: str) -> list[tokenize.TokenInfo]:
    try:
        return [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                if t.type not in (tokenize.ENDMARKER, tokenize.DEDENT)]
    except (tokenize.TokenError, IndentationError):
        return []


def _offset(text: str, line: int, col: int) -> int:
    lines = text.split("\n")
    return sum(len(s) + 1 for s in lines[:line - 1]) + col


def mutate(text: str, rng: random.Random) -> str:
    """One random edit: a token replaced, dropped or doubled; odd whitespace inserted; a
    line re-indented; a call given one argument more or less; an axis changed."""
    kind = rng.choice(["replace", "drop", "double", "space", "indent", "arity", "axis"])
    toks = [t for t in _tokens(text) if t.string.strip()]
    if kind in ("replace", "drop", "double") and toks:
        t = rng.choice(toks)
        a, b = _offset(text, *t.start), _offset(text, *t.end)
        new = {"replace": rng.choice(VOCAB), "drop": "", "double": t.string * 2}[kind]
        return text[:a] + new + text[b:]
    if kind == "space":
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(SPACES) + text[i:]
    if kind == "indent":
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        lines[i] = rng.choice(["", " ", "   ", "\t", "        "]) + lines[i].lstrip()
        return "\n".join(lines)
    if kind == "arity":
        calls = [m for m in re.finditer(r"\w+\(", text)]
        if calls:
            m = rng.choice(calls)
            if rng.random() < 0.5:
                return text[:m.end()] + "x, " + text[m.end():]
            close = text.find(")", m.end())
            comma = text.rfind(",", m.end(), close)
            if comma > 0:
                return text[:comma] + text[close:]
    axes = list(re.finditer(r"axis=-?\d+", text))
    if axes:
        m = rng.choice(axes)
        value = rng.choice(["-3", "-2", "2", "3", "(0, -1)", "(0, 0)", "None", "1.5", "x"])
        return text[:m.start()] + f"axis={value}" + text[m.end():]
    return text + rng.choice(SPACES)


def _samples() -> list[tuple[str, fusile.FusedFunction, tuple]]:
    cases = samples.cases(3, 8)
    return [(name, fn, args) for name, (fn, _ref, args) in sorted(cases.items())]


def _outcome(fn: fusile.FusedFunction, args: tuple) -> None:
    """Run fn; a result must match the float64 reference."""
    out = fn(*args)
    ref = fn.reference(*args)
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs, strict=True):
        r = np.asarray(r)
        assert tuple(o.shape) == r.shape
        if o.numel() and np.isfinite(r).all():
            assert rel_err(o, r) < 1e-3, "a mutant ran but disagrees with the reference"


@pytest.mark.parametrize("seed", range(4))
def test_mutated_samples_give_results_or_located_errors(seed: int) -> None:
    rng = random.Random(seed)
    cases = _samples()
    for i in range(MUTANTS // 4):
        name, fn, args = cases[i % len(cases)]
        text = fn.__fusile_source__.text
        for _ in range(rng.choice([1, 1, 2])):
            text = mutate(text, rng)
        mutant = fusile.from_source(text, globals_=fn.__fusile_globals__, filename="mut.py")
        try:
            _outcome(mutant, args)
        except fusile.FusileError as err:
            message = str(err)
            assert "internal error" not in message, f"{name}: internal error on\n{text}"
            assert "-->" in message and "^" in message, \
                f"{name}: {type(err).__name__} without a location: {message}\n{text}"
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"{name}: {type(exc).__name__}: {exc}\non the mutant\n{text}"
                                 ) from exc


def test_mutations_are_varied() -> None:
    """The mutator makes different programs (a fuzz test that mutates nothing proves nothing)."""
    rng = random.Random(0)
    text = samples.layer_norm.__fusile_source__.text
    made = {mutate(text, rng) for _ in range(50)}
    assert len(made) > 40 and text not in made


def test_a_float64_input_through_every_sample() -> None:
    for _name, fn, args in _samples():
        _outcome(fn, tuple(a.double() for a in args))
