"""The steady-state call of a fused function: from a key over the call's arguments straight
to the launches that an earlier call with the same key made.

Everything a call decides (its compiled signature, the size checks, the views of sliced
parameters, output shapes, configs, grids and compiled kernels) is a function of its
arguments' dtypes, shapes, strides, 16-byte alignment and device (the CPU or a GPU's
index), of the ints' and bools' values (constants), of grad mode and of the knobs that pick
the program. So after a first call, a later one with the same key skips binding, checking
and lookup: it builds its runtime arguments and hands them to the recorded launches
(triton/replay.py), or to the program where there are none (the interpreter, or a call that
could not be recorded).
"""

from __future__ import annotations

from typing import Any

from fusile import config

# the knobs a call's launches depend on (the target and the schedule's), read on every call
_knobs = config.reader("target", "tf32", *config.SCHEDULE_KNOBS)


def call_key(args: tuple, check_grad: bool) -> tuple:
    """What decides everything but the values of a positional call: per tensor its dtype,
    shape, strides, alignment, device and requires_grad; an int's or bool's value; a
    float's type; anything else by identity (describe_arg rejects it, so it never hits)."""
    # scalars are told by their type first: hasattr on an int raises and catches inside
    # (about a microsecond, more than the whole key of a tensor)
    key = tuple(float if (t := type(a)) is float else (t, a) if t is int or t is bool else
                (a.dtype, a.shape, a.stride(), a.data_ptr() & 15, a.get_device(),
                 a.requires_grad) if hasattr(a, "data_ptr") else
                (t, id(a)) for a in args)
    return key, check_grad and _grad_enabled(), _knobs()



def dense_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides torch.empty(shape) gives: what fusile's outputs (and fakes) have."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _grad_enabled() -> bool:
    global _grad_enabled
    import torch

    _grad_enabled = torch.is_grad_enabled  # bound on first use: fusile does not import torch
    return _grad_enabled()


class FastCall:
    """The recorded path of one call key, made from the first call's positional `args` and
    their bound `values`. It keeps the defaults of parameters the call left out (never the
    call's tensors) and the positions of ints given for float parameters (binding made them
    floats: so must every later call). `program`: the launchable program, which runs
    anything the replay declines (a scalar of the other sign)."""

    __slots__ = ("compiled", "defaults", "direct", "floats", "program", "replay", "tries",
                 "views")

    def __init__(self, compiled: Any, program: Any, args: tuple, values: list[Any]):
        self.compiled, self.program = compiled, program
        self.defaults = [None] * len(args) + values[len(args):]
        self.floats = [i for i, a in enumerate(args)
                       if type(a) is int and type(values[i]) is float]
        self.direct = not compiled.derived and compiled.runtime_params == list(
            range(len(values)))  # the runtime arguments are the call's values as they are
        self.replay: Any = None
        self.tries = 0
        self.views: list[tuple[int, int, Any]] | None = None  # sliced parameters, replayed

    def __call__(self, args: tuple) -> Any:
        defaults = self.defaults
        if self.floats:
            args = tuple(float(a) if i in self.floats else a for i, a in enumerate(args))
        if self.direct and len(args) == len(defaults):
            runtime = list(args)
        else:
            values = [*args, *defaults[len(args):]]
            views = self.views
            if views is not None:  # a sliced parameter's view is its address (below)
                runtime = [values[i] for i in self.compiled.runtime_params]
                runtime += [values[p].data_ptr() + off if index is None else values[p][index]
                            for p, off, index in views]
            else:
                runtime = self.compiled.runtime_args(values)
        replay = self.replay
        if replay is None and self.tries < 4:  # the first calls compile (the JIT) or tune:
            self.tries += 1  # a later one was recorded
            found = getattr(self.program, "replay_for", _none)(runtime)
            if found is not None and self.compiled.derived:
                self.views = self._views(values, runtime, found.tensor_args)
            # its run function itself (Replay.__call__ forwards to it: one frame less)
            replay = self.replay = getattr(found, "run", found)
        if replay is not None:
            outs = replay(runtime)
            if outs is not None:
                return outs[0] if len(outs) == 1 else tuple(outs)
            if self.views is not None:  # declined: the full path takes views, not addresses
                runtime = self.compiled.runtime_args(values)
        outs = self.program(runtime)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _views(self, values: list[Any], runtime: list[Any], tensors: set[int]
               ) -> list[tuple[int, int, Any]]:
        """How a replayed call passes each sliced parameter: (parameter, byte offset, None),
        as the parameter's address plus the offset (Triton's launcher takes an int for a
        pointer: a torch view costs about 2 us to make), or (parameter, 0, index), a view,
        where the replay needs a tensor (a result or a copy made from it). The offset is
        fixed by the layout the call key holds."""
        first = len(self.compiled.runtime_params)
        out = []
        for k, (p, index) in enumerate(self.compiled.derived):
            view = runtime[first + k]
            out.append((p, 0, index) if first + k in tensors else
                       (p, view.data_ptr() - values[p].data_ptr(), None))
        return out


def _none(_: Any) -> None:
    return None
