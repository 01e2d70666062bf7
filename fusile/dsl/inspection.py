"""What a fused function compiles to, for a call's arguments or a signature: its MLIR, kernel
plan, roofline, Triton, ahead-of-time artifacts, derived backward and the float64 reference.
FusedFunction (fused.py: the decorator and the call path) inherits these methods."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from fusile.dsl.errors import SignatureError
from fusile.dsl.parse_errors import guard as _guard

if TYPE_CHECKING:
    from fusile.dsl.fused import FusedFunction


class Inspection:
    """The inspection API of a fused function: each method binds its arguments and looks up
    (or compiles) the signature's program as a call would, then reads one of its results."""

    if TYPE_CHECKING:  # the call path's, in fused.py
        __fusile_funcdef__: Any

        def _bind_args(self, args: tuple, kwargs: dict[str, Any]) -> list[Any]: ...

        def _lookup(self, values: list[Any]) -> tuple[Any, list[Any]]: ...

        def compiled(self, *args: Any, **kwargs: Any) -> Any: ...

        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def mlir(self, *args: Any, stage: str = "mlir", **kwargs: Any) -> str:
        """The MLIR module for these arguments: stage "mlir" (as emitted), "linalg"
        (generalized, what the reference evaluates) or "fused" (after elementwise fusion)."""
        from fusile.stages import MLIR_STAGES

        if stage not in MLIR_STAGES:
            raise ValueError(f"stage must be one of {', '.join(map(repr, MLIR_STAGES))}, got "
                             f"{stage!r}")
        return str(self.compiled(*args, **kwargs).artifact(stage))

    def plan(self, *args: Any, **kwargs: Any) -> Any:
        """Which ops share which kernel, and the HBM bytes each kernel reads and writes, for
        these arguments (print it, or .to_dict())."""
        import torch

        from fusile.backends import targets
        from fusile.lowering.report import plan_report

        values = self._bind_args(args, kwargs)
        compiled, _ = self._lookup(values)
        runtime = compiled.runtime_args(values)
        shapes = [tuple(v.shape) if hasattr(v, "shape") else None for v in runtime]
        device = next((v.device for v in runtime if isinstance(v, torch.Tensor)), None)
        plan = compiled.plan
        if device is not None and device.type == "cuda":  # what this GPU runs
            plan = _plan_on(compiled, targets.for_device(device), shapes)
        return plan_report(plan, compiled.reference_graph, shapes, compiled.names)

    def explain(self, *args: Any, target: Any = None, measure: bool = False,
                sizes: dict[str, int] | None = None, **kwargs: Any) -> Any:
        """Kernels, HBM bytes, FLOPs and roofline time on `target` (default: the tensors' GPU,
        else h100; "mlir-cpu", or "auto" on CPU tensors: this CPU, measured), for these
        tensors or for a signature: `f.explain(x=bf16["M", 4096], w=bf16[4096],
        sizes={"M": 8192})`. measure=True (tensors on a GPU) also times each kernel. Print
        it, or .to_dict(). For a function with its own parameter `target` (a loss's class
        indices), `target=` with a value that is not a str is that argument."""
        import torch

        from fusile import config
        from fusile import explain as ex
        from fusile.backends import targets
        from fusile.dsl.signature import concrete_shape
        from fusile.lowering.report import plan_report

        target = _own_target(target, None, kwargs)
        t = (targets.this_cpu() if target == "mlir-cpu" else
             targets.get(target) if target not in (None, "auto") else None)
        values = self._bind_args(args, kwargs)
        compiled, _ = self._lookup(values)
        runtime = compiled.runtime_args(values)
        shapes = [concrete_shape(v, sizes or {}) for v in runtime]
        device = next((v.device for v in runtime if isinstance(v, torch.Tensor)), None)
        if t is None:
            on_gpu = device is not None and device.type == "cuda"
            t = (targets.for_device(device) if on_gpu else targets.this_cpu()
                 if target == "auto" else targets.get("h100"))
        plan = _plan_on(compiled, t, shapes)
        report = plan_report(plan, compiled.reference_graph, shapes, compiled.names)
        joined = [] if t.backend == "mlir-cpu" else [  # kernels a GPU launches together
            [m.index for m in ks.segments] for ks in compiled.triton(
                "gpu", config.get("tf32"), plan is compiled.plan)[1] if ks.segments]
        measured = None
        if measure:
            if device is None or device.type != "cuda":
                raise SignatureError("explain(measure=True) needs tensors on a GPU")
            from fusile.backends import run

            self(*args, **kwargs)
            program = run.program_for(compiled, runtime)
            measured = program.time_kernels(runtime)
            plan = program.plan_for(runtime)  # wide head dims: the plain plan ran
            if plan is not compiled.plan:
                report = plan_report(plan, compiled.reference_graph, shapes, compiled.names)
        sixteen = any(getattr(p, "dtype", None) is not None and p.dtype.bits == 16
                      for p in compiled.typed.param_types)
        return ex.build(self.__name__ if hasattr(self, "__name__") else
                        self.__fusile_funcdef__.name, report, t, sixteen, measured, joined)

    def triton(self, *args: Any, target: Any = "auto", **kwargs: Any) -> str:
        """The generated Triton source for these arguments, for `target` ("auto": the
        inputs' device; "cpu" is the interpreter flavour; not a str: the function's own
        argument `target`, as for explain)."""
        import torch

        from fusile import config
        from fusile.backends import targets

        target = _own_target(target, "auto", kwargs)
        values = self._bind_args(args, kwargs)
        compiled, _ = self._lookup(values)
        device = next((v.device for v in values if isinstance(v, torch.Tensor)), "cpu")
        t = targets.for_device(device) if target == "auto" else targets.get(target)
        family = "interpreter" if t.backend == "interpreter" else "gpu"
        return str(compiled.triton(family, config.get("tf32"))[0])

    def compile(self, target: str, /, sizes: dict[str, int] | None = None,
                progress: Any = None, **signature: Any) -> Any:
        """Compile ahead of time for a named target, with no GPU needed:
        `f.compile("mi300x", x=bf16["M", 4096], w=bf16[4096], eps=1e-6)`. Named sizes are
        symbolic; `sizes={"M": 8192}` tells the schedule what to expect. Returns the
        artifacts (Triton, TTIR, PTX + cubin or AMDGCN + hsaco) with registers and spills.
        The target is positional only, so a parameter named `target` (a loss's class
        indices) takes its spec by keyword like any other."""
        from fusile.backends import targets
        from fusile.backends.triton.aot import compile_for

        t = targets.get(target)
        values = self._bind_args((), signature)
        compiled, _ = self._lookup(values)
        return _guard(lambda: compile_for(compiled, t, sizes, progress=progress))

    def backward_source(self, *args: Any, **kwargs: Any) -> tuple[str, str]:
        """The derived forward (results, then what it keeps) and backward, as DSL source."""
        from fusile import autograd

        return _guard(lambda: autograd.backward_source(cast("FusedFunction", self), args,
                                                             kwargs))

    def backward_plan(self, *args: Any, **kwargs: Any) -> Any:
        """The derived backward's kernels and HBM bytes for these arguments (like plan())."""
        from fusile import autograd

        return _guard(lambda: autograd.backward_plan(cast("FusedFunction", self), args,
                                                           kwargs))

    def reference(self, *args: Any, **kwargs: Any) -> Any:
        """Run the float64 numpy reference (the oracle); returns float64/int64 numpy arrays."""
        values = self._bind_args(args, kwargs)
        compiled, _ = self._lookup(values)
        from fusile.backends import run

        outs = run.run_reference(compiled, compiled.runtime_args(values))
        return outs[0] if len(outs) == 1 else tuple(outs)


def _own_target(target: Any, default: Any, kwargs: dict[str, Any]) -> Any:
    """The inspection's target name; a `target=` that is not a str (a tensor, a signature
    type) is the function's own argument of that name, moved to `kwargs`."""
    if target is not None and not isinstance(target, str):
        kwargs["target"] = target
        return default
    return target


def _plan_on(compiled: Any, target: Any, shapes: list[Any]) -> Any:
    """The plan `target` runs for arguments of these shapes: the plain one where a flash
    kernel would hold a head dim wider than the target's (Target.max_head_dim)."""
    from fusile.backends.triton.kinds import runs_flash

    graph, plan = compiled.fused_graph, compiled.plan
    known = {plan.tensor_class(a, axis): n for a, shape in zip(graph.args, shapes, strict=True)
             if shape is not None for axis, n in enumerate(shape) if type(n) is int}
    return plan if runs_flash(compiled, target, known) else compiled.plain_plan
