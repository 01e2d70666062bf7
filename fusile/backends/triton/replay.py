"""Replay a fused call's launches: the fast path of a repeated call on a GPU.

Everything a call decides (sizes, output shapes, configs, grids, the integer arguments and
the compiled kernels) is a function of its arguments' layout: shapes, strides, 16-byte
alignment and device; only the scalars that come from non-tensor arguments change from call
to call. So the first call with a layout that launches compiled kernels only (no tuning, no
JIT binding left) is recorded, and later calls with the same layout replay it: allocate the
tensors the call allocates, splice this call's tensors and scalars into the recorded argument
lists, launch. One decision depends on such a scalar, the sign of an attention scale
(POS_SCALE): a replay checks the signs of the scalars it passes and leaves the call to the
full path when one changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fusile import config
from fusile.backends.dispatch import dense_strides
from fusile.backends.triton.launch import current_stream, direct_launcher, hooks_active
from fusile.backends.triton.replay_code import straight_line

_INPUT, _SLOT, _SCALAR = 0, 1, 2


def layout_key(args: list[Any]) -> tuple:
    """What decides a call's launches, besides the scalars' values: per tensor its shape,
    strides, device and whether its address is 16-byte aligned (Triton specializes on it)."""
    return tuple((a.shape, a.stride(), a.get_device(), a.data_ptr() & 15)
                 if hasattr(a, "data_ptr") else type(a) for a in args)


class Recorder:
    """Collects one call's allocations and launches while the full path runs it; `replay`
    turns them into a Replay, or None when something was not understood (then the call is
    simply not replayed). `dynamic`: the env values that come from the call's non-tensor
    arguments (directly or through host arithmetic)."""

    def __init__(self, args: list[Any], dynamic: set[int]):
        self.inputs = {id(a): i for i, a in enumerate(args) if hasattr(a, "data_ptr")}
        self.dynamic = dynamic
        self.ok = True
        self.slots: list[tuple[tuple[int, ...] | None, Any]] = []
        self.slot_of: dict[int, int] = {}
        self.keep: list[Any] = []  # allocations stay alive, so their ids stay unique
        self.runs: list[tuple[Any, tuple[int, ...], list[Any], list[tuple[int, int, int]]]] = []
        self.used: set[int] = set()
        self.scalars: dict[int, int] = {}  # the launch in progress: arg position -> env id
        self.copies: list[tuple[int, int, int]] = []  # (view slot, _INPUT | _SLOT, index)

    def abandon(self) -> None:
        self.ok = False

    def alloc(self, t: Any) -> None:
        self.slot_of[id(t)] = len(self.slots)
        self.slots.append((tuple(t.shape), t.dtype))
        self.keep.append(t)

    def run(self, kernel: Any, grid: tuple[int, ...], args: tuple, consts: dict[str, Any]
            ) -> None:
        """One launch of a compiled kernel: args as launched, constexprs after them; the
        launch set `scalars` (which arguments are which env values) before."""
        scalars = self.scalars
        template: list[Any] = [*args, *consts.values()]
        fills = []
        for i, a in enumerate(args):
            if hasattr(a, "data_ptr"):
                if id(a) in self.inputs:
                    fills.append((i, _INPUT, self.inputs[id(a)]))
                elif id(a) in self.slot_of:
                    fills.append((i, _SLOT, self.slot_of[id(a)]))
                else:  # a tensor this call neither got nor made
                    self.ok = False
                    return
            elif scalars.get(i) in self.dynamic:
                fills.append((i, _SCALAR, scalars[i]))
                self.used.add(scalars[i])
            else:
                continue  # sizes, strides, constants: fixed by the layout
            template[i] = None
        self.runs.append((kernel, grid, template, fills))

    def view(self, t: Any, base: Any, index: tuple[slice, ...]) -> None:
        """t is base[index] (a piece of a joined result), made again from base's slot."""
        self.slot_of[id(t)] = len(self.slots)
        self.slots.append((None, (self.slot_of[id(base)], index)))
        self.keep.append(t)

    def copy(self, dst: Any, src: Any) -> None:
        """After the launches, src (an input or a tensor the call made) was copied into dst
        (a view of a tensor the call made)."""
        kind = _INPUT if id(src) in self.inputs else _SLOT if id(src) in self.slot_of else None
        if kind is None:
            self.ok = False
            return
        self.copies.append((self.slot_of[id(dst)], kind,
                            self.inputs[id(src)] if kind == _INPUT else self.slot_of[id(src)]))

    def replay(self, env: dict[int, Any], results: list[Any], device: Any,
               launch: Callable[..., None], scalars: Callable[[list[Any]], dict[int, Any]]
               ) -> Replay | None:
        """The recorded call, whose results are these tensors, as a Replay; `scalars` gives
        a later call's env values that come from its non-tensor arguments (the rest are
        fixed by the layout)."""
        outs = []
        for t in results:
            if id(t) in self.inputs:
                outs.append((_INPUT, self.inputs[id(t)]))
            elif id(t) in self.slot_of:
                outs.append((_SLOT, self.slot_of[id(t)]))
            else:
                return None
        if not self.ok:
            return None
        signs = tuple((k, env[k] > 0) for k in sorted(self.used))
        return Replay(self.slots, self.runs, outs, signs, device, launch,
                      scalars if self.used else None, self.copies)


class Replay:
    """A recorded call, launched again for new tensors and scalars of the same layout.
    `signs`: the dynamic scalars it passes and whether each was positive when recorded;
    `scalars` computes them for a call (None when it passes none).

    Compiled kernels are launched without the JIT (launch.direct_launcher: Triton 3.6's C
    launch with pointers as addresses, else the launcher object), with the current stream
    read once and no launch metadata while no launch hook is installed; `launch` is the
    general path (hooks, or an unfamiliar kernel)."""

    def __init__(self, slots: list[tuple[tuple[int, ...] | None, Any]], runs: list, outs: list,
                 signs: tuple[tuple[int, bool], ...], device: Any,
                 launch: Callable[..., None],
                 scalars: Callable[[list[Any]], dict[int, Any]] | None = None,
                 copies: list[tuple[int, int, int]] | None = None):
        self.runs, self.outs, self.signs = runs, outs, signs
        self.copies = copies or []
        # the arguments used as tensors (results, copies); the launches take any pointer
        self.tensor_args = {x for kind, x in outs if kind == _INPUT} | {
            x for _, kind, x in self.copies if kind == _INPUT}
        self.device, self.launch, self.scalars = device, launch, scalars
        self.alloc = [(shape, dense_strides(shape), dtype) if shape is not None else
                      (None, *dtype) for shape, dtype in slots]  # or (None, slot, index): a view
        self.plain = all(a[0] is not None for a in self.alloc)
        self.new = allocator(device)
        direct: list[Any] = [direct_launcher(kernel) for kernel, *_ in runs]
        # per launch: (launch function, its whole argument list less the stream (slot 3)
        # and the call's own values, where those go, whether pointers go as addresses)
        self.direct: list[Any] | None = None if None in direct or not runs else [
            (f, [*(*grid, 1, 1)[:3], None, *head, *template],
             [(i + 4 + len(head), kind, x) for i, kind, x in fills], addresses)
            for (f, head, addresses), (_, grid, template, fills) in zip(direct, runs,
                                                                       strict=True)]

        self.source = ""  # the generated replay's code, if any
        self.run: Callable[[list[Any]], list[Any] | None] = self._loop
        if self.direct is not None and config.get("fast_replay"):
            made = straight_line(self, self._loop)
            if made is not None:
                self.run, self.source = made

    def __call__(self, args: list[Any]) -> list[Any] | None:
        """The call's results, or None when a scalar's sign changed (run the full path)."""
        return self.run(args)

    def _loop(self, args: list[Any]) -> list[Any] | None:
        """__call__ by walking the recorded lists (replay_code.py says the same as code)."""
        env: dict[int, Any] = {}
        if self.scalars is not None:
            env = self.scalars(args)
            for k, pos in self.signs:
                if (env[k] > 0) != pos:
                    return None
        dev = self.device
        new = self.new
        if self.plain:
            made = [new(shape, stride, dtype) for shape, stride, dtype in self.alloc]
        else:
            made = []
            for a in self.alloc:
                made.append(new(*a) if a[0] is not None else made[a[1]][a[2]])
        if self.direct is not None and not hooks_active():
            stream = current_stream(dev.index)
            for f, template, fills, addresses in self.direct:
                a = template.copy()
                a[3] = stream
                if addresses:  # an input may be an address already (a sliced parameter)
                    for i, kind, x in fills:
                        if kind == _SLOT:
                            a[i] = made[x].data_ptr()
                        elif kind == _INPUT:
                            v = args[x]
                            a[i] = v if type(v) is int else v.data_ptr()
                        else:
                            a[i] = env[x]
                else:
                    for i, kind, x in fills:
                        a[i] = args[x] if kind == _INPUT else made[x] if kind == _SLOT else \
                            env[x]
                f(*a)
        else:
            for kernel, grid, template, fills in self.runs:
                a = template.copy()
                for i, kind, x in fills:
                    a[i] = args[x] if kind == _INPUT else made[x] if kind == _SLOT else env[x]
                self.launch(kernel, grid, dev, a)
        for d, kind, x in self.copies:  # pieces of joined results the kernels do not write
            made[d].copy_(args[x] if kind == _INPUT else made[x])
        return [args[x].clone() if kind == _INPUT else made[x] for kind, x in self.outs]


def allocator(device: Any) -> Callable[[tuple, tuple, Any], Any]:
    """(shape, strides, dtype) -> a new tensor on device, the cheapest way torch offers:
    with one CUDA GPU, the allocation Inductor's generated code uses (it allocates on the
    current device, so only where there is one; about 1 us where torch.empty takes 5);
    else torch.empty_strided (about 2 us)."""
    import torch

    if getattr(device, "type", None) == "cuda" and torch.cuda.device_count() == 1:
        fast = getattr(getattr(torch._C, "_dynamo", None), "guards", None)
        fast = getattr(fast, "_empty_strided_cuda", None)
        if fast is not None:
            return fast
    empty = torch.empty_strided

    def new(shape: tuple, strides: tuple, dtype: Any) -> Any:
        return empty(shape, strides, dtype=dtype, device=device)

    return new
