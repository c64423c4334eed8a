"""Run a plan inside torch.autograd: ``load_plan(model, "plan.json")`` returns a module.

The returned module's forward runs the planned forward program inside one
``torch.autograd.Function``; its backward runs the planned backward program (with the
recomputations the plan prescribes) and hands parameter gradients to autograd, which fills
``.grad`` as eager PyTorch would. The user's loop, loss and optimizer are unchanged.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from typing import Any

import torch
import torch.utils._pytree as pytree

from planner.graph import PlannerGraph
from planner.plan import Plan
from planner.schedule import build_schedule
from profiler.capture import CapturedGraph, CaptureError, capture
from profiler.ir import BUFFER, INPUT, PARAM, TANGENT
from profiler.profile import device_name

from .executor import Executor

log = logging.getLogger(__name__)


class PlanMismatchError(ValueError):
    """The plan was made for another graph, device, dtype or input shape."""


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.replace("torch.", ""))


def _check_plan(plan: Plan, captured: CapturedGraph, model: torch.nn.Module) -> None:
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    differences = []
    if plan.device != device.type:
        differences.append(f"device: plan {plan.device}, model {device.type}")
    elif plan.device_name != device_name(device):
        differences.append(f"device: plan {plan.device_name}, model {device_name(device)}")
    if plan.dtype != captured.dtype:
        differences.append(f"dtype: plan {plan.dtype}, model {captured.dtype}")
    if plan.autocast != captured.autocast:
        differences.append(f"autocast: plan {plan.autocast or 'off'}, model "
                           f"{captured.autocast or 'off'}")
    if plan.graph_hash != captured.graph_hash:
        targets = [r.target for r in captured.records]
        if len(targets) != len(plan.graph_targets):
            differences.append(f"graph: plan has {len(plan.graph_targets)} nodes, model "
                               f"{len(targets)}")
        else:
            for i, (a, b) in enumerate(zip(plan.graph_targets, targets)):
                if a != b:
                    differences.append(f"graph: node {i} is {a} in the plan, {b} in the model")
                    break
            else:
                differences.append("graph: same ops, different shapes, strides or parameters")
    if differences:
        raise PlanMismatchError(f"plan {plan.model or ''} does not fit this model: "
                                + "; ".join(differences))


class _PlannedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, runner: "PlanRunner", *flat: torch.Tensor):  # type: ignore[override]
        with runner.no_autocast():
            outputs, saved, extra = runner.run_forward(flat)
        ctx.runner = runner
        ctx.extra = extra
        # Not ctx.save_for_backward: autograd would keep every saved tensor until the whole
        # backward returns, where the schedule frees each one at its last reader. Detached
        # aliases (no grad_fn, so no reference cycle through the outputs) are handed over
        # to the backward's environment, which then holds the only references.
        ctx.saved = [t.detach() for t in saved]
        ctx.taken = []  # the output gradients, handed over by _TakeOutputGradients
        ctx.mark_non_differentiable(*(o for o, t in zip(outputs, runner.output_tangents)
                                      if t is None))
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs: torch.Tensor):  # type: ignore[override]
        if ctx.saved is None:
            raise RuntimeError("a planned step's backward ran twice: its saved values are "
                               "freed as the plan goes (retain_graph is not supported)")
        saved, ctx.saved = ctx.saved, None
        # The gradients the hook took (placeholders came in their place); where it took
        # None (no gradient flowed), the engine's materialised zeros.
        taken = [t if t is not None else g for t, g in zip(ctx.taken, grad_outputs)] \
            if ctx.taken else list(grad_outputs)
        ctx.taken.clear()
        with ctx.runner.no_autocast():
            grads = ctx.runner.run_backward(saved, ctx.extra, taken)
        return (None, *grads)


class _TakeOutputGradients:
    """A pre-hook on the planned step's backward node that takes the output gradients out
    of the autograd engine's hands: the engine holds the gradients it passes to a backward
    call until the call returns, so the logits' gradient of a language model would stay
    for the whole backward. The hook moves them into ``taken`` (the node's ``ctx.taken``)
    and hands the engine zero-stride placeholders instead; the backward then holds the
    only references (unless the caller keeps its own) and frees each gradient after its
    last reader, as the schedule says. It holds the list, not the node: no cycle."""

    def __init__(self, taken: list):
        self.taken = taken

    def __call__(self, grad_outputs):
        self.taken[:] = grad_outputs
        return tuple(None if g is None else
                     torch.empty((), dtype=g.dtype, device=g.device).expand(g.shape)
                     for g in grad_outputs)


class PlanRunner:
    """Holds the captured graph and schedule; runs the forward and backward programs."""

    def __init__(self, module: torch.nn.Module, plan: Plan, captured: CapturedGraph):
        self.module = module
        self.plan = plan
        self.captured = captured
        self.graph = PlannerGraph.build(captured.records, captured.storage_bytes, captured.outputs)
        self.schedule = build_schedule(self.graph, plan.decisions())
        # The profile's workspaces (measured on the device), where the plan carries them.
        workspace = [plan.workspace_bytes.get(str(r.index), 0) if plan.workspace_bytes
                     else r.workspace_bytes for r in captured.records]
        self.executor = Executor(captured.nodes, workspace=workspace)
        recs = captured.records
        self.param_nodes = [r.index for r in recs if r.role == PARAM]
        self.input_nodes = sorted((r for r in recs if r.role == INPUT), key=lambda r: int(r.desc))
        self.buffer_nodes = [r.index for r in recs if r.role == BUFFER]
        self.user_outputs = [o.node for o in sorted(
            (o for o in captured.outputs if o.kind == "user"), key=lambda o: int(o.target))]
        # The tangent (gradient placeholder) of each user output, None where the output
        # needs no gradient; tangents name their output as PlainAOTOutput(idx=k).
        by_output = {}
        for r in recs:
            if r.role == TANGENT:
                m = re.search(r"idx=(\d+)", r.desc)
                if m is None:
                    raise CaptureError(f"gradient input {r.desc!r} names no model output")
                by_output[int(m.group(1))] = r.index
        positions = sorted(int(o.target) for o in captured.outputs if o.kind == "user")
        self.output_tangents = [by_output.get(k) for k in positions]
        self.mutations = [(o.node, o.target) for o in captured.outputs if o.kind == "mutation"]
        grads = {o.target: o.node for o in captured.outputs if o.kind == "grad"}
        self.grad_nodes = [grads.get(recs[i].desc) for i in self.param_nodes] + \
            [grads.get(f"input:{r.desc}") for r in self.input_nodes]
        mutated = {t for _, t in self.mutations}
        read_later = {i for s in self.schedule.backward if s.kind == "run"
                      for i in recs[s.node].inputs}
        self.snapshot_buffers = [i for i in self.buffer_nodes
                                 if recs[i].desc in mutated and i in read_later]
        self.rng_nodes = set(self.schedule.rng_nodes)

    def no_autocast(self) -> contextlib.AbstractContextManager:
        """The graph already holds the casts autocast made at capture: run its ops as they
        are, whatever autocast state the caller's region has."""
        return torch.autocast(self.captured.device, enabled=False)

    @property
    def params(self) -> list[torch.Tensor]:
        named = dict(self.module.named_parameters(remove_duplicate=False))
        return [named[self.captured.records[i].desc] for i in self.param_nodes]

    def run_forward(self, flat: tuple[torch.Tensor, ...]):
        n_params = len(self.param_nodes)
        params, inputs = flat[:n_params], flat[n_params:]
        buffers = dict(self.module.named_buffers(remove_duplicate=False))
        ex = self.executor
        ex.counter = type(ex.counter)()
        ex.rng_states = {}
        env: dict[int, Any] = {}
        for i, p in zip(self.param_nodes, params):
            ex.put(env, i, p.detach())
        for r, x in zip(self.input_nodes, inputs):
            ex.put(env, r.index, x.detach())
        for i in self.buffer_nodes:
            ex.put(env, i, buffers[self.captured.records[i].desc])
        # Buffers the backward reads keep their pre-update value (not counted: small).
        snapshots = {i: env[i].clone() for i in self.snapshot_buffers}
        mutations = dict(self.mutations)

        def update_buffer(node: int, value: Any) -> None:
            if node in mutations:
                with torch.no_grad():
                    buffers[mutations[node]].copy_(value)

        ex.run(self.schedule.forward, env, self.rng_nodes, before_free=update_buffer)
        for node in mutations:
            if node in env:  # updates the backward reads too are held, not freed
                update_buffer(node, env[node])
        saved_nodes = self.schedule.saved
        saved = [env[i] for i in saved_nodes]
        outputs = tuple(env[i] for i in self.user_outputs)
        extra = {"snapshots": snapshots, "counter": ex.counter, "rng": dict(ex.rng_states),
                 "inputs": [env[r.index] for r in self.input_nodes],
                 "buffers": [env[i] for i in self.buffer_nodes]}
        return outputs, saved, extra

    def run_backward(self, saved: list[torch.Tensor], extra: dict, grad_outputs):
        """Run the backward program; ``saved`` and ``grad_outputs`` (lists) are emptied so
        that the environment holds the only references and each value is freed where the
        schedule frees it."""
        ex = self.executor
        ex.counter = extra["counter"]
        ex.rng_states = extra["rng"]
        env: dict[int, Any] = {}
        for i, p in zip(self.param_nodes, self.params):
            env[i] = p.detach()
        for r, x in zip(self.input_nodes, extra["inputs"]):
            env[r.index] = x
        for i, b in zip(self.buffer_nodes, extra["buffers"]):
            env[i] = extra["snapshots"].get(i, b)
        for i, t in zip(self.schedule.saved, saved):
            env[i] = t
        saved.clear()
        for i, g in zip(self.output_tangents, grad_outputs):
            if i is None:
                continue
            traced = self.captured.nodes[i].meta["val"]
            if g.stride() != traced.stride():
                g = torch.empty_strided(traced.shape, traced.stride(), dtype=g.dtype,
                                        device=g.device).copy_(g)
            ex.put(env, i, g)
        # The environment holds the only references: each output gradient is freed after
        # its last reader (planner.schedule).
        grad_outputs.clear()
        g = None
        ex.run(self.schedule.backward, env)
        return [None if n is None else env[n] for n in self.grad_nodes]


@functools.cache
def _advise_expandable_segments() -> None:
    """Say once how to make the allocator's count match the plan's: without expandable
    segments the CUDA caching allocator may hand out a cached block up to 1 MiB larger than
    a tensor (it does not split smaller remainders), so ``max_memory_allocated`` can exceed
    the predicted peak by that much per live tensor (bench/memory_model.md)."""
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + \
        os.environ.get("PYTORCH_ALLOC_CONF", "")
    if "expandable_segments:True" not in conf:
        log.warning("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True is not set: the measured "
                    "peak can exceed the plan's prediction by up to 1 MiB per live tensor "
                    "(whole cached blocks); set it before CUDA starts for the plan's figure")


class PlannedModule(torch.nn.Module):
    """A model that trains with a plan's schedule; evaluation and no-grad calls run eagerly."""

    def __init__(self, module: torch.nn.Module, plan: Plan):
        super().__init__()
        self.module = module
        self.plan = plan
        if not module.training:
            raise PlanMismatchError("plans are for training: call model.train() before "
                                    "load_plan")
        device = next(iter(module.parameters())).device
        examples = tuple(torch.zeros(s, dtype=_dtype(d), device=device)
                         for s, d in zip(plan.input_shapes, plan.input_dtypes))
        try:
            captured = capture(module, examples, autocast=plan.autocast or None)
        except CaptureError as e:
            raise PlanMismatchError(f"plan {plan.model} does not fit this model: it cannot run "
                                    f"on the plan's inputs {plan.input_shapes}: {e}") from e
        _check_plan(plan, captured, module)
        self.runner = PlanRunner(module, plan, captured)
        if device.type == "cuda":
            _advise_expandable_segments()

    @property
    def last_peak_bytes(self) -> int:
        """Peak bytes the executor held during the last training step."""
        return self.runner.executor.counter.peak

    def forward(self, *inputs: torch.Tensor):
        if not (self.training and torch.is_grad_enabled()):
            return self.module(*inputs)
        device = self.runner.captured.device
        amp = str(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else ""
        if amp != self.plan.autocast:
            raise PlanMismatchError(
                f"the plan was captured {_amp_text(self.plan.autocast)} but the model is "
                f"called {_amp_text(amp)}: profile and solve with the same autocast setting "
                "(monet profile --autocast bf16|fp16)")
        shapes = [list(x.shape) for x in inputs]
        dtypes = [str(x.dtype) for x in inputs]
        if shapes != self.plan.input_shapes or dtypes != self.plan.input_dtypes:
            raise PlanMismatchError(f"input shapes {shapes} ({dtypes}) differ from the plan's "
                                    f"{self.plan.input_shapes} ({self.plan.input_dtypes}): "
                                    "profile and solve for this input")
        if any(x.requires_grad for x in inputs) != any(self.runner.captured.input_requires_grad):
            raise PlanMismatchError("whether the input requires grad differs from the plan")
        flat = _PlannedFunction.apply(self.runner, *self.runner.params, *inputs)
        node = next((t.grad_fn for t in flat if getattr(t, "grad_fn", None) is not None), None)
        if node is not None:  # (the node is the step's ctx)
            node.register_prehook(_TakeOutputGradients(node.taken))
        return pytree.tree_unflatten(list(flat), self.runner.captured.out_spec)


def _amp_text(amp: str) -> str:
    return f"under torch.autocast({amp})" if amp else "without autocast"


def load_plan(model: torch.nn.Module, plan: str | Plan) -> PlannedModule:
    """Return ``model`` wrapped so that its training steps follow ``plan`` (a path or Plan)."""
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    return PlannedModule(model, plan)
