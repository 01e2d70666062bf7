"""The compile pipeline: one function, one line per stage, each stage a plain function."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusile import config
from fusile.dsl import ast
from fusile.dsl.check import check
from fusile.dsl.errors import InternalError, Source
from fusile.dsl.signature import SizeCheck, nonempty_checks, size_checks
from fusile.dsl.slicing import derived_spec, torch_index
from fusile.dsl.typed import Binding, Typed
from fusile.dsl.types import ShapeEnv, TensorSpec
from fusile.lowering.graph import Graph, reaccumulated, read_graph, tensor_names
from fusile.lowering.partition import Plan, partition
from fusile.lowering.pipeline import FUSE, Stages, repro, run_pipeline, save_module
from fusile.lowering.to_mlir import to_mlir


@dataclass
class Compiled:
    """Everything one signature compiled to, keyed by stage name where it is an artifact."""

    typed: Typed
    stages: Stages
    reference_graph: Graph  # unfused linalg: what the oracle evaluates
    fused_graph: Graph  # fused linalg: what kernel backends read
    checks: list[SizeCheck]
    nonempty: list[tuple[Any, Any, Source, str]]  # dims max/min reduce over (signature.py)
    runtime_params: list[int]  # parameters passed at run time (tensors and float scalars)
    programs: dict[str, Any] = field(default_factory=dict)  # target name -> launchable program
    grads: dict[tuple, Any] = field(default_factory=dict)  # (wrt, save) -> autograd.Derivation
    sources: dict[tuple[str, bool, bool, bool], Any] = field(default_factory=dict)  # see triton()

    @functools.cached_property
    def plan(self) -> Plan:
        """The fused graph partitioned into kernels, once: plan(), explain(), triton(), the
        runtime and AOT all read this one."""
        return self._partition(True)

    @functools.cached_property
    def plain_plan(self) -> Plan:
        """The plan without flash attention kernels (scores through HBM), for head dims wider
        than a target holds on chip; the same as `plan` where there is no attention."""
        return self._partition(False)

    def _partition(self, flash: bool) -> Plan:
        plan = partition(self.fused_graph, flash)
        if config.debug_enabled("plan"):
            from fusile.lowering.report import plan_outline

            what = "" if flash else " (no flash kernels)"
            print(f"# ----- FUSILE_DEBUG plan{what}\n{plan_outline(plan, self.names)}",
                  file=sys.stderr)
        return plan

    @functools.cached_property
    def names(self) -> dict[int, str]:
        """Readable kernel argument names (parameters by name, results out0.., others t<id>)."""
        return tensor_names(self.fused_graph, self.arg_names)

    def triton(self, family: str, tf32: bool, flash: bool = True) -> tuple[str, list[Any]]:
        """The plan's Triton module for a target family ("gpu": what every GPU target
        compiles, "interpreter"), with float32 dots at TF32 or not (`flash=False`: the plain
        plan's): its text and a KernelSource per kernel, made once each. A code generator's
        internal error carries the fused MLIR as its repro."""
        from fusile.backends.triton.generate import generate

        key = (family, tf32, flash, config.get("horizontal"))
        hit = self.sources.get(key)
        if hit is None:
            try:
                plan = self.plan if flash else self.plain_plan
                hit = self.sources[key] = generate(plan, family, self.names, tf32)
                if config.debug_enabled("triton"):
                    print(f"# ----- FUSILE_DEBUG triton ({family}{', tf32' if tf32 else ''})\n"
                          f"{hit[0]}", file=sys.stderr)
            except InternalError as exc:
                if exc.repro:
                    raise
                path = save_module(self.stages.fused.operation.get_asm(enable_debug_info=True))
                raise InternalError(exc.detail, exc.span, exc.source, f"the fused MLIR the "
                                    f"{family} code generator failed on: {path}") from exc
        return hit

    @functools.cached_property
    def derived(self) -> list[tuple[int, tuple]]:
        """(parameter, torch index) of each sliced parameter: extra arguments, after the
        runtime parameters, that are views of the caller's tensors (slicing.py)."""
        return [(p, torch_index(ops)) for p, ops in self.typed.derived]

    @property
    def arg_names(self) -> list[str]:
        """A name per argument of the lowered function (kernel argument names)."""
        params = self.typed.func.params
        return [params[i].name for i in self.runtime_params] + [
            f"{params[p].name}_v{k}" for k, (p, _) in enumerate(self.typed.derived)]

    @property
    def arg_types(self) -> list[Any]:
        return [self.typed.param_types[i] for i in self.runtime_params] + [
            t for _, t in self.typed.derived.values()]

    def runtime_args(self, values: list[Any]) -> list[Any]:
        """The lowered function's arguments for a call's parameter values."""
        out = [values[i] for i in self.runtime_params]
        for p, index in self.derived:
            v = values[p]
            out.append(derived_spec(v, index) if isinstance(v, TensorSpec) else v[index])
        return out

    @functools.cached_property
    def result_types(self) -> list[Any]:
        """The caller's results' types (a concat's pieces are one result)."""
        types = self.typed.result_types
        return [types[j] if isinstance(j, int) else j.type for j in self.typed.joins] or types

    def assemble(self, outs: list[Any]) -> list[Any]:
        """The caller's results from the lowered ones (numpy arrays or torch tensors): the
        pieces of a concat copied into one array. The runtime writes them in place instead."""
        if not self.typed.joins:
            return outs
        results = []
        for j in self.typed.joins:
            if isinstance(j, int):
                results.append(outs[j])
                continue
            first = outs[j.parts[0][0]]
            shape = [d if isinstance(d := self.typed.env.find(s), int) else first.shape[a]
                     for a, s in enumerate(j.type.shape)]
            full = (np.empty(shape, first.dtype) if isinstance(first, np.ndarray) else
                    first.new_empty(shape))
            for pos, index in j.parts:
                full[index] = outs[pos]
            results.append(full)
        return results

    def artifact(self, kind: str) -> Any:
        """A front-end stage's text (stages.py: ast, mlir, linalg, fused)."""
        table = {"ast": lambda: ast.dump(self.typed.func), "mlir": lambda: self.stages.mlir,
                 "linalg": lambda: str(self.stages.linalg), "fused": lambda: str(self.stages.fused)}
        if kind not in table:
            raise KeyError(f"unknown artifact {kind!r}; known: {sorted(table)}")
        return table[kind]()


def compile_program(func: ast.FuncDef, source: Source, globals_: dict[str, Any],
                    params: list[Binding], env: ShapeEnv) -> Compiled:
    if config.debug_enabled("ast"):
        print(f"// ----- FUSILE_DEBUG ast\n{ast.dump(func)}", file=sys.stderr)
    typed = check(func, source, globals_, params, env)  # dsl: names, types, shapes
    module = to_mlir(typed)  # lowering: func.func of linalg on tensors
    stages = run_pipeline(module)  # lowering: verify, generalize, fuse elementwise
    runtime = [i for i, b in enumerate(params) if not b.is_const]
    fused = read_graph(stages.fused)
    why = reaccumulated(fused)
    if why:
        raise repro(stages.linalg.operation.get_asm(enable_debug_info=True), FUSE[0], "fused",
                    why)
    return Compiled(typed, stages, read_graph(stages.linalg), fused,
                    size_checks(typed.param_types, env), nonempty_checks(env), runtime)
