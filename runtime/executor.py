"""Execute a schedule's run/free records on real tensors, counting the bytes held.

The executor is deliberately dumb: it runs the captured graph's ATen ops in the order the
schedule says and drops values where it says. Random ops that the plan recomputes save
the RNG state before their forward run and replay it when recomputed.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.fx as fx

from planner.in_place import in_place_overload
from planner.schedule import Step
from profiler.allocator import allocator_bytes
from profiler.batch_norm_kernels import batch_norm_into


@dataclass
class MemoryCounter:
    """Bytes of the distinct storages referenced by the executor's values, as the device's
    allocator counts them (``profiler.allocator.allocator_bytes``)."""

    live: int = 0
    peak: int = 0
    refs: dict[int, list[int]] = field(default_factory=dict)  # data_ptr -> [count, bytes]

    def _tensors(self, value: Any) -> Iterable[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            for v in value:
                if isinstance(v, torch.Tensor):
                    yield v

    def _keys(self, value: Any) -> dict[int, int]:
        keys: dict[int, int] = {}
        for t in self._tensors(value):
            st = t.untyped_storage()
            keys[st.data_ptr()] = allocator_bytes(st.nbytes(), t.device)
        return keys

    def add(self, value: Any) -> None:
        for key, nbytes in self._keys(value).items():
            entry = self.refs.setdefault(key, [0, nbytes])
            entry[0] += 1
            if entry[0] == 1:
                self.live += nbytes
        self.peak = max(self.peak, self.live)

    def drop(self, value: Any) -> None:
        for key in self._keys(value):
            entry = self.refs[key]
            entry[0] -= 1
            if entry[0] == 0:
                self.live -= entry[1]
                del self.refs[key]

    def reset_peak(self) -> None:
        self.peak = self.live


class Executor:
    """Runs steps of a schedule over an environment of node index -> value."""

    def __init__(self, fx_nodes: list[fx.Node], count: bool = True,
                 workspace: list[int] | None = None):
        self.fx_nodes = fx_nodes
        # Declared temporary bytes of a node's call (variant implementations), counted at
        # the moment the node runs as the simulator does.
        self.workspace = workspace or [0] * len(fx_nodes)
        self.count = count
        self.counter = MemoryCounter()
        self.rng_states: dict[int, Any] = {}
        self._calls: dict[tuple[int, int], Callable[[dict[int, Any]], Any]] = {}

    def put(self, env: dict[int, Any], index: int, value: Any) -> None:
        env[index] = value
        if self.count:
            self.counter.add(value)

    def _call(self, node: fx.Node, env: dict[int, Any], into: int = -1) -> Any:
        key = (node.meta["monet_index"], into)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = _compile_call(node, into)
        return call(env)

    def _replay(self, node: fx.Node, env: dict[int, Any], state: Any) -> Any:
        """Run a random op again with the RNG state of its first run, leaving the global
        RNG state untouched."""
        kind, device, _ = state
        with torch.random.fork_rng(devices=[device] if kind == "cuda" else []):
            _set_rng_state(state)
            return self._call(node, env)

    def run(self, steps: list[Step], env: dict[int, Any], save_rng: set[int] = frozenset(),
            before_free: Callable[[int, Any], None] | None = None) -> None:
        """Execute ``steps`` in order, updating ``env`` in place. ``before_free`` sees every
        value just before it is dropped."""
        # No local name may hold a value across steps: a freed value that a variable still
        # references stays allocated while the next op runs.
        for step in steps:
            if step.kind == "free":
                self._free(step.node, env.pop(step.node), before_free)
                continue
            self.put(env, step.node, self._execute(step, env, save_rng))
            if self.count and self.workspace[step.runs]:
                self.counter.peak = max(self.counter.peak,
                                        self.counter.live + self.workspace[step.runs])

    def _free(self, index: int, value: Any,
              before_free: Callable[[int, Any], None] | None) -> None:
        if before_free is not None:
            before_free(index, value)
        if self.count:
            self.counter.drop(value)

    def _execute(self, step: Step, env: dict[int, Any], save_rng: set[int]) -> Any:
        node = self.fx_nodes[step.runs]
        if step.stage < 0 and step.node in save_rng:
            self.rng_states[step.node] = _get_rng_state(node)
        if step.stage >= 0 and step.node in self.rng_states:
            return self._replay(node, env, self.rng_states[step.node])
        return self._call(node, env, step.into)


def _in_place_target(node: fx.Node) -> Callable[..., Any]:
    """What runs ``node`` writing its value over an input (``planner.in_place``): the
    ``out=`` overload of an element-wise op or a softmax, or the batch norm that normalises
    in place."""
    if node.target is torch.ops.aten._native_batch_norm_legit_functional.default:
        return batch_norm_into  # not the CUDA-routed batch_norm_training (planner.in_place)
    out = in_place_overload(str(node.target))
    if out is None:
        raise ValueError(f"{node.name} ({node.target}) cannot run in place")
    return out


def _compile_call(node: fx.Node, into: int = -1) -> Callable[[dict[int, Any]], Any]:
    """``env -> value`` for one node, as a generated lambda: its arguments read straight from
    the environment (``env[i]``) and its constants bound once. Mapping the arguments with
    ``fx.node.map_arg`` on every call cost several microseconds per op. With ``into``, the
    call writes its value over the value of node ``into`` (``_in_place_target``)."""
    if node.op == "get_attr":  # a tensor constant the trace lifted (Swin's masks)
        value = node.graph.owning_module
        for part in node.target.split("."):
            value = getattr(value, part)
        return lambda env: value
    constants: dict[str, Any] = {"fn": node.target if into < 0 else _in_place_target(node)}

    def render(arg: Any) -> str:
        if isinstance(arg, fx.Node):
            return f"env[{arg.meta['monet_index']}]"
        if type(arg) in (list, tuple) or isinstance(arg, fx.immutable_collections.immutable_list):
            items = ", ".join(render(a) for a in arg)
            if isinstance(arg, tuple):
                return f"({items},)" if arg else "()"
            return f"[{items}]"
        name = f"c{len(constants)}"
        constants[name] = arg  # a scalar, dtype, device, ... or a structure without nodes
        return name

    if into >= 0 and constants["fn"] is batch_norm_into and not (
            isinstance(node.args[0], fx.Node) and node.args[0].meta["monet_index"] == into):
        raise ValueError(f"{node.name} normalises in place only into its first argument")
    if into < 0 and any(isinstance(a, dict) for a in (*node.args, *node.kwargs.values())):
        def call(env: dict[int, Any]) -> Any:  # rare: a dict argument; map it each time
            args, kwargs = fx.node.map_arg((node.args, node.kwargs),
                                           lambda a: env[a.meta["monet_index"]])
            return node.target(*args, **kwargs)
        return call
    if node.target is operator.getitem:
        body = f"{render(node.args[0])}[{render(node.args[1])}]"
    else:
        parts = [render(a) for a in node.args]
        parts += [f"{k}={render(v)}" for k, v in node.kwargs.items()]
        if into >= 0 and constants["fn"] is not batch_norm_into:
            parts.append(f"out=env[{into}]")
        body = f"fn({', '.join(parts)})"
    return eval(f"lambda env: {body}", constants)  # noqa: S307 (our own generated source)


def _device_of(node: fx.Node) -> torch.device:
    val = node.meta.get("val")
    val = val[0] if isinstance(val, (tuple, list)) else val
    return val.device if isinstance(val, torch.Tensor) else torch.device("cpu")


def _get_rng_state(node: fx.Node) -> Any:
    device = _device_of(node)
    if device.type == "cuda":
        return ("cuda", device, torch.cuda.get_rng_state(device))
    return ("cpu", device, torch.get_rng_state())


def _set_rng_state(state: Any) -> None:
    kind, device, value = state
    if kind == "cuda":
        torch.cuda.set_rng_state(value, device)
    else:
        torch.set_rng_state(value)
