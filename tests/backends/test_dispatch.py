"""The steady-state call path (fusile/backends/dispatch.py, host.CallScalars): a call that
repeats an earlier call's key skips binding and checking; everything that decides the
launches must be in the key, and the values (tensors, floats) must come from this call.
Checked against torch in float64."""

from __future__ import annotations

import types

import pytest
import torch

from fusile import config, fused
from fusile.backends.triton.host import CallScalars, host_env
from fusile.dsl.types import f32, i64
from fusile.lowering.graph import Op
from tests.numerics import assert_close


@fused
def scaled(x, a: float, eps: float = 0.25):
    return x * (a * size(x, -1)) + eps


def _scaled(x: torch.Tensor, a: float, eps: float = 0.25) -> torch.Tensor:
    x = x.double()
    return x * (a * x.shape[-1]) + eps


def test_repeated_calls_take_this_calls_values() -> None:
    x = torch.randn(4, 8)
    for a in (2.0, -3.0, 0.5):
        assert_close(scaled(x, a), _scaled(x, a), torch.float32)
    assert len(scaled._fast) == 1  # one key: floats are values, not part of it
    assert_close(scaled(x, 2), _scaled(x, 2.0), torch.float32)  # an int for a float
    y = torch.randn(4, 8)
    assert_close(scaled(y, 0.5, 1.5), _scaled(y, 0.5, 1.5), torch.float32)


def test_layouts_and_dtypes_are_part_of_the_key() -> None:
    wide = torch.randn(4, 16)
    for x in (wide[:, ::2], wide[:, 1::2], wide[:, :8], torch.randn(8, 4).t(),
              torch.randn(4, 8, dtype=torch.float64)):
        assert_close(scaled(x, 1.5), _scaled(x, 1.5), x.dtype)


def test_a_cached_signature_still_takes_the_grad_path_for_inputs_that_need_grad() -> None:
    x = torch.randn(4, 8)
    scaled(x, 1.0)
    scaled(x, 1.0)
    xg = x.clone().requires_grad_()
    out = scaled(xg, 1.0)
    assert out.grad_fn is not None
    out.backward(torch.ones_like(out))
    assert torch.equal(xg.grad, torch.full_like(x, 8.0))  # a * size(x, -1)
    with torch.no_grad():
        assert_close(scaled(x.clone().requires_grad_(), 1.0), _scaled(x, 1.0), torch.float32)


def test_the_target_knob_is_read_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(4, 8)
    scaled(x, 1.0)
    before = len(scaled._fast)
    with config.override(target="reference"):
        assert_close(scaled(x, 1.0), _scaled(x, 1.0), torch.float32)
    monkeypatch.setenv("FUSILE_TARGET", "reference")
    assert_close(scaled(x, 1.0), _scaled(x, 1.0), torch.float32)
    assert len(scaled._fast) == before  # the reference has no program: nothing cached for it


@fused
def row_sums(x):
    return sum(x * 2.0, axis=-1)


def test_a_schedule_knob_set_between_calls_takes_effect(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """max_row_block after a first call: the program cached the first call's config (and a
    GPU its launches) for these sizes, so the knob was silently ignored."""
    from fusile.backends.triton import runtime

    variants: list[str] = []
    run = runtime.TritonProgram.run_variant

    def spy(self: object, launch: object, variant: str, *a: object) -> None:
        variants.append(variant)
        run(self, launch, variant, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime.TritonProgram, "run_variant", spy)
    x = torch.randn(3, 100)
    for block, want in [(0, "main"), (32, "looped"), (0, "main"), (64, "looped")]:
        with config.override(max_row_block=block):
            assert_close(row_sums(x), x.double().sum(-1) * 2.0, torch.float32)
        assert variants.pop() == want, block


def test_a_replay_recomputes_exactly_the_scalars_of_its_floats() -> None:
    """CallScalars keeps the layout's values from the recorded call and recomputes the host
    arithmetic that depends on a float argument: here t = a * float(dim 1 of x) + 1.0 and
    u = dim 0 * 2 (a size: kept), as the full host path computes them."""
    ops = [Op("arith.constant", [10], [], i64, {"value": 1}),
           Op("tensor.dim", [11], [0, 10], i64),
           Op("arith.sitofp", [12], [11], f32),
           Op("arith.mulf", [13], [1, 12], f32),
           Op("arith.constant", [14], [], f32, {"value": 1.0}),
           Op("arith.addf", [15], [13, 14], f32),
           Op("arith.constant", [16], [], i64, {"value": 0}),
           Op("tensor.dim", [17], [0, 16], i64),
           Op("arith.addi", [18], [17, 17], i64)]
    graph = types.SimpleNamespace(args=[0, 1])
    x = torch.randn(3, 5)
    first = [x, 2.0]
    scalars = CallScalars(graph, ops, first, host_env(graph, ops, first))
    assert scalars.ok and [op.results[0] for op in scalars.ops] == [13, 15]
    later = [torch.randn(3, 5), -0.5]
    got, full = scalars(later), host_env(graph, ops, later)
    assert got[13] == full[13] == -2.5 and got[15] == full[15] == -1.5
    assert 18 not in got  # sizes stay as recorded: the layout fixes them


def test_a_fast_call_takes_the_replay_once_one_is_recorded() -> None:
    """The first calls of a layout compile (the JIT) or tune, so nothing is recorded yet: the
    fast call runs the program, asks again on later calls, then takes the replay, and falls
    back to the program whenever the replay declines (a scalar of the other sign)."""
    from fusile.backends.dispatch import FastCall

    class Program:
        def __init__(self) -> None:
            self.asked = 0
            self.sign = True

        def replay_for(self, args):
            self.asked += 1
            return (lambda a: ["replayed"] if self.sign else None) if self.asked >= 2 else None

        def __call__(self, args):
            return ["full"]

    compiled = types.SimpleNamespace(derived=[], runtime_params=[0])
    program = Program()
    x = torch.randn(2)
    fast = FastCall(compiled, program, (x,), [x])
    assert [fast((x,)) for _ in range(3)] == ["full", "replayed", "replayed"]
    assert program.asked == 2  # once found, not asked again
    program.sign = False
    assert fast((x,)) == "full"


def test_a_replayed_call_passes_sliced_parameters_as_addresses() -> None:
    """Once a replay is found, a sliced parameter reaches it as the parameter's address plus
    the view's byte offset (no torch view made), except where the replay uses it as a tensor
    (a result it returns or a copy it makes): there, a real view of this call's tensor."""
    from fusile.backends.dispatch import FastCall

    seen = []

    class Replay:
        tensor_args = frozenset({2})

        def __call__(self, args):
            seen.append(args)
            return ["replayed"]

    class Program:
        def __init__(self) -> None:
            self.got: list = []

        def replay_for(self, args):
            return Replay()

        def __call__(self, args):
            self.got.append(args)
            return ["full"]

    x = torch.randn(4, 8)
    compiled = types.SimpleNamespace(
        derived=[(0, (slice(None), slice(3, 8))), (0, (slice(1, 3),))], runtime_params=[0],
        runtime_args=lambda v: [v[0], v[0][:, 3:8], v[0][1:3]])
    program = Program()
    fast = FastCall(compiled, program, (x,), [x])
    assert fast((x,)) == "replayed"  # found on the first call, which made real views
    y = torch.randn(4, 8)
    assert fast((y,)) == "replayed"
    args = seen[-1]
    assert args[0] is y and args[1] == y.data_ptr() + 3 * 4
    assert torch.equal(args[2], y[1:3]) and args[2].data_ptr() == y[1:3].data_ptr()
    # a replay that declines (a scalar's sign changed): the full path gets real views
    fast.replay = lambda args: None
    assert fast((y,)) == "full"
    (got,) = program.got
    assert all(isinstance(a, torch.Tensor) for a in got)
    assert got[1].data_ptr() == y.data_ptr() + 3 * 4


def test_an_int_for_a_float_parameter_stays_a_float_on_repeated_calls() -> None:
    """The first call converts it (2**64 would overflow Triton's int specialization); the
    cached path must too, on every later call with the same int."""
    x = torch.randn(4, 8)
    for _ in range(3):
        assert_close(scaled(x, 2**64, 1), _scaled(x, float(2**64), 1.0), torch.float32)
