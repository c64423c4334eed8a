"""Capture the joint forward+backward graph of a model at ATen level with torch.fx.

AOTAutograd's ``aot_export_joint_with_descriptors`` traces the model with fake tensors (no
real compute, no GPU) into one functional graph ``(primals, tangents) -> (outputs, grads)``
whose placeholders and outputs carry their role in ``node.meta["desc"]``. This pass labels
every node with ``node.meta["monet_role"]`` (param, buffer, input, tangent, forward,
backward) and its storages, so that memory is counted per storage, not per node.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import operator
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch._export.utils import _compiling_state_context
from torch._functorch.aot_autograd import aot_export_joint_with_descriptors
from torch.multiprocessing.reductions import StorageWeakRef

from .allocator import allocator_bytes
from .batch_norm_kernels import route_batch_norm_to_cudnn
from .capture_errors import MODULE_META, CaptureError, ModuleTracker, capture_error
from .descriptors import output_record, placeholder_role
from .inplace_backward import (
    INPLACE_META,
    INPLACE_REPLACED,
    add_backward_in_place,
    cross_entropy_backward_in_place,
    softmax_backward_in_place,
)
from .ir import (
    BACKWARD,
    BUFFER,
    FORWARD,
    PARAM,
    TANGENT,
    VARIANT_BACKWARD,
    VARIANT_FORWARD,
    NodeRecord,
    OutputRecord,
)
from .pointwise_chains import fuse_pointwise_chains
from .split_backward import split_convolution_backward
from .variants import VARIANT_META, insert_variants

log = logging.getLogger(__name__)

__all__ = ["CaptureError", "CapturedGraph", "capture", "graph_hash", "autocast_name"]


@dataclass
class CapturedGraph:
    """A captured joint graph and how its inputs and outputs map to the user's model."""

    graph_module: fx.GraphModule
    nodes: list[fx.Node]  # placeholders and compute nodes, in graph order
    records: list[NodeRecord]
    storage_bytes: dict[int, int]
    outputs: list[OutputRecord]
    graph_hash: str
    input_shapes: list[list[int]]
    input_dtypes: list[str]
    input_requires_grad: list[bool]
    dtype: str
    device: str
    # How the model's outputs nest (torch.utils._pytree): the runtime rebuilds dicts,
    # tuples and ModelOutput objects from the graph's flat outputs.
    out_spec: Any = None
    autocast: str = ""  # "" or the torch.autocast dtype the graph was traced under


def autocast_name(dtype: torch.dtype | str | None) -> str:
    """``""`` for no autocast, else the dtype's name (``torch.bfloat16``)."""
    if dtype is None or dtype == "":
        return ""
    if isinstance(dtype, str):
        aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16"}
        dtype = getattr(torch, aliases.get(dtype, dtype.replace("torch.", "")), None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise CaptureError(f"autocast dtype {dtype!r} is not a floating dtype; use "
                               "bf16 or fp16")
    return str(dtype)

def _tensors_of(val: Any) -> list[torch.Tensor]:
    if isinstance(val, torch.Tensor):
        return [val]
    if isinstance(val, (tuple, list)):
        return [t for t in val if isinstance(t, torch.Tensor)]
    return []


def _module_paths(records: list[NodeRecord], nodes: list[fx.Node]) -> None:
    """Name each node after the module it was traced in (``ModuleTracker``), else after
    the module whose parameters it reads, else after its inputs'."""
    for r, n in zip(records, nodes):
        if r.role in (PARAM, BUFFER):
            r.module = r.desc.rsplit(".", 1)[0] if "." in r.desc else ""
            continue
        traced = (n.meta.get("custom") or {}).get(MODULE_META)
        if traced is not None:
            r.module = traced
            continue
        owners = [records[i].module for i in r.inputs if records[i].role in (PARAM, BUFFER)]
        inherited = [records[i].module for i in r.inputs if records[i].module]
        r.module = (owners or inherited or [""])[0]


def _target_name(node: fx.Node) -> str:
    """A name for what a node calls that is the same in every process: ``aten.relu.default``,
    ``<built-in function getitem>``, or ``module.function`` for a variant's function (whose
    repr would carry its address)."""
    if node.op == "placeholder":
        return "placeholder"
    target = node.target
    if isinstance(target, torch._ops.OpOverload) or not callable(target) or \
            target is operator.getitem:
        return str(target)
    return f"{target.__module__}.{target.__qualname__}"


def _is_random(node: fx.Node) -> bool:
    target = node.target
    return isinstance(target, torch._ops.OpOverload) and \
        torch.Tag.nondeterministic_seeded in target.tags


def capture(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor],
            autocast: torch.dtype | str | None = None,
            rewrite_backward: bool = True) -> CapturedGraph:
    """Trace ``model(*example_inputs)`` and its backward into one labelled joint graph.

    Runs with fake tensors: nothing is computed and the model's buffers are not touched.
    The model may return any nesting of tensors that ``torch.utils._pytree`` flattens
    (dicts, tuples, Hugging Face ``ModelOutput``). With ``autocast`` (a dtype) the model is
    traced under ``torch.autocast``, so the graph holds the casts autocast makes. Like
    ``torch.export``, the capture runs with ``torch.compiler.is_compiling()`` true, which
    lets libraries skip checks that would read tensor values. What cannot be traced raises
    :class:`CaptureError` naming the module, the op and the line. ``rewrite_backward=False``
    leaves the backward as eager autograd runs it: convolution backward nodes fused
    (``profiler.split_backward``) and gradient sums allocated anew
    (``profiler.inplace_backward``). It exists to measure those rewrites; the runtime
    re-captures with the default and refuses plans made from such a graph.
    """
    example_inputs = tuple(example_inputs)
    if not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise CaptureError("example inputs must be tensors")
    amp = autocast_name(autocast)
    params = list(model.parameters())
    device_type = params[0].device.type if params else example_inputs[0].device.type
    tracker = ModuleTracker(model)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_compiling_state_context())
            # A capture inside the user's autocast region must not inherit it.
            stack.enter_context(torch.autocast(device_type, enabled=False))
            if amp:
                stack.enter_context(_forward_under_autocast(model, device_type, amp))
            stack.enter_context(tracker.active())
            joint = aot_export_joint_with_descriptors(
                stack, model, example_inputs, _record_nn_module_stack=True)
    except CaptureError:
        raise
    except Exception as e:  # tracing failures surface as many exception types
        raise capture_error(model, tracker, e) from e
    gm = joint.graph_module
    forward = _forward_fx_nodes(gm)
    # The rewrites trace their new nodes on fake tensors: not under the caller's autocast
    # (the graph holds autocast's casts already; an attention pack's matmul would be cast).
    with torch.autocast(device_type, enabled=False):
        _drop_backward_clones(gm, forward)
        if rewrite_backward:
            split_convolution_backward(gm, forward)
            fuse_pointwise_chains(gm, forward)
        insert_variants(gm, forward)
        if rewrite_backward:
            add_backward_in_place(gm, forward)
            cross_entropy_backward_in_place(gm, forward)
            softmax_backward_in_place(gm, forward)
        route_batch_norm_to_cudnn(gm)
    return _label(gm, model, example_inputs, joint.out_spec, amp)


def _dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name.replace("torch.", ""))


@contextlib.contextmanager
def _forward_under_autocast(model: torch.nn.Module, device_type: str, amp: str):
    """Run only the model's forward under autocast, as a training loop does (``with
    autocast: loss = ...`` then ``loss.backward()`` outside): tracing the backward under
    autocast too would cast its float32 gradients down and differ from eager."""
    own = model.__dict__.get("forward")
    inner = model.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=_dtype_of(amp)):
            return inner(*args, **kwargs)
    model.forward = forward
    try:
        yield
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


def _drop_backward_clones(gm: fx.GraphModule, forward: set[fx.Node]) -> int:
    """Read forward values directly instead of through backward clones of them.

    Functionalizing an in-place op (``ReLU6(inplace=True)``) makes the backward clone the
    forward value it saved. The graph is functional, so the clone equals its source: reading
    the source saves the copy's memory and time, and lets a variant replace the reader.
    """
    dropped = 0
    for n in list(gm.graph.nodes):
        if n.target is torch.ops.aten.clone.default and n not in forward and not n.kwargs \
                and isinstance(n.args[0], fx.Node) and n.args[0] in forward \
                and n.users and all(u.op == "call_function" for u in n.users):
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
            dropped += 1
    if dropped:
        gm.recompile()
    return dropped


def _forward_fx_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Compute nodes the forward outputs (user outputs and buffer updates) depend on."""
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    roots = [a for a, d in zip(output_node.args[0], output_node.meta.get("desc", []))
             if isinstance(a, fx.Node) and type(d).__name__ in
             ("PlainAOTOutput", "InputMutationAOTOutput")]
    needed: set[fx.Node] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in needed or n.op == "placeholder":
            continue
        needed.add(n)
        stack.extend(n.all_input_nodes)
    # Outputs of a forward op that only the backward reads (saved statistics, masks).
    for n in list(needed):
        needed.update(u for u in n.users if u.target is operator.getitem)
    return needed


def _label(gm: fx.GraphModule, model: torch.nn.Module,
           example_inputs: tuple[torch.Tensor, ...], out_spec: Any = None,
           amp: str = "") -> CapturedGraph:
    graph_nodes = [n for n in gm.graph.nodes if n.op != "output"]
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    index = {n: i for i, n in enumerate(graph_nodes)}

    # Storages: a node aliases an input's storage, or allocates new ones.
    storage_of: dict[Any, int] = {}  # StorageWeakRef -> id, valid among live meta values
    storage_bytes: dict[int, int] = {}
    records: list[NodeRecord] = []
    # Tied parameters (a shared embedding and output weight) are one tensor in the model
    # but one placeholder each in the graph: give them one storage.
    param_ids = {name: id(p) for name, p in model.named_parameters(remove_duplicate=False)}
    storage_of_param: dict[int, int] = {}
    for i, n in enumerate(graph_nodes):
        tensors = _tensors_of(n.meta.get("val"))
        desc_kind = type(n.meta.get("desc")).__name__ if n.op == "placeholder" else ""
        pid = param_ids.get(n.meta["desc"].target) if desc_kind == "ParamAOTInput" else None
        if pid is not None and pid in storage_of_param and len(tensors) == 1:
            sid = storage_of_param[pid]
            storage_of[StorageWeakRef(tensors[0].untyped_storage())] = sid
            role, desc = placeholder_role(n.meta.get("desc"))
            records.append(NodeRecord(
                index=i, name=n.name, target=_target_name(n), role=role, inputs=[],
                storages=[sid], new_storages=[], shape=list(tensors[0].shape),
                dtype=str(tensors[0].dtype), desc=desc))
            continue
        input_refs = {}
        for inp in n.all_input_nodes:
            for t in _tensors_of(inp.meta.get("val")):
                input_refs[StorageWeakRef(t.untyped_storage())] = True
            if INPLACE_REPLACED in inp.meta:  # views traced from the value it replaced
                input_refs[StorageWeakRef(inp.meta[INPLACE_REPLACED].untyped_storage())] = True
        storages, new = [], []
        for t in tensors:
            ref = StorageWeakRef(t.untyped_storage())
            if ref in input_refs and ref in storage_of:
                sid = storage_of[ref]
            else:
                sid = len(storage_bytes)
                # The allocator's bytes (rounded to 512 on CUDA): what the device's
                # memory statistics count.
                storage_bytes[sid] = allocator_bytes(t.untyped_storage().nbytes(), t.device)
                storage_of[ref] = sid
                new.append(sid)
            if sid not in storages:
                storages.append(sid)
        if INPLACE_REPLACED in n.meta:
            storage_of[StorageWeakRef(n.meta[INPLACE_REPLACED].untyped_storage())] = storages[0]
        if pid is not None and len(storages) == 1:
            storage_of_param[pid] = storages[0]
        variant, site = "", -1
        if n.op == "placeholder":
            role, desc = placeholder_role(n.meta.get("desc"))
        elif VARIANT_META in n.meta:
            variant, kind, site_node = n.meta[VARIANT_META]
            role = VARIANT_FORWARD if kind == "forward" else VARIANT_BACKWARD
            desc, site = "", index[site_node]
        else:
            role, desc = "", ""
        val = n.meta.get("val")
        shape = [list(t.shape) for t in tensors] if isinstance(val, (tuple, list)) else \
            (list(val.shape) if isinstance(val, torch.Tensor) else [])
        strides = [list(t.stride()) for t in tensors] if isinstance(val, (tuple, list)) else \
            (list(val.stride()) if isinstance(val, torch.Tensor) else [])
        records.append(NodeRecord(
            index=i, name=n.name, target=_target_name(n),
            role=role, inputs=[index[a] for a in n.all_input_nodes], storages=storages,
            new_storages=new if n.op != "placeholder" else [], shape=shape, strides=strides,
            dtype=str(tensors[0].dtype) if tensors else "", random=_is_random(n),
            desc=desc, variant=variant, site=site,
            workspace_bytes=allocator_bytes(n.meta.get("monet_workspace", 0),
                                            tensors[0].device if tensors else "cpu"),
            writes_into=index[n.meta[INPLACE_META]] if INPLACE_META in n.meta else -1))

    outputs = []
    for arg, desc in zip(output_node.args[0], output_node.meta.get("desc", [])):
        if arg is None:
            continue
        rec = output_record(desc, index[arg])
        if rec is not None:
            outputs.append(rec)

    # Forward nodes are those the forward outputs (user outputs and buffer updates) need.
    forward_roots = [o.node for o in outputs if o.kind in ("user", "mutation")]
    needed: set[int] = set()
    stack = list(forward_roots)
    while stack:
        i = stack.pop()
        if i in needed or records[i].role:
            continue
        needed.add(i)
        stack.extend(records[i].inputs)
    for r in records:
        if not r.role:
            r.role = FORWARD if r.index in needed else BACKWARD
    # Outputs of a forward op that only the backward reads (saved batch-norm statistics)
    # are taken from the op's result in the forward, like its other outputs.
    for r in records:
        if r.role == BACKWARD and r.target == "<built-in function getitem>" and \
                records[r.inputs[0]].role == FORWARD:
            r.role = FORWARD
    _module_paths(records, graph_nodes)
    for r, n in zip(records, graph_nodes):
        n.meta["monet_role"] = r.role
        n.meta["monet_index"] = r.index
    if not any(r.role == TANGENT for r in records):
        raise CaptureError("the model output does not require grad: nothing to train")

    params = [p for p in model.parameters()]
    dtype = str(params[0].dtype) if params else str(example_inputs[0].dtype)
    device = params[0].device.type if params else example_inputs[0].device.type
    captured = CapturedGraph(
        graph_module=gm, nodes=graph_nodes, records=records, storage_bytes=storage_bytes,
        outputs=outputs, graph_hash="", input_shapes=[list(x.shape) for x in example_inputs],
        input_dtypes=[str(x.dtype) for x in example_inputs],
        input_requires_grad=[bool(x.requires_grad) for x in example_inputs],
        dtype=dtype, device=device, out_spec=out_spec, autocast=amp)
    captured.graph_hash = graph_hash(captured)
    log.info("captured %d nodes (%d forward, %d backward), hash %s", len(records),
             sum(r.role == FORWARD for r in records), sum(r.role == BACKWARD for r in records),
             captured.graph_hash[:12])
    return captured


def graph_hash(captured: CapturedGraph) -> str:
    """A hash of the graph's structure, shapes, dtypes and roles (not of node names)."""
    h = hashlib.sha256()
    for r, n in zip(captured.records, captured.nodes):
        args = fx.node.map_arg((n.args, n.kwargs), lambda a: f"%{a.meta['monet_index']}")
        h.update(repr((r.target, r.role, r.desc, r.inputs,
                       r.shape, r.dtype, r.storages, r.new_storages, args)).encode())
    h.update(repr([(o.kind, o.node, o.target) for o in captured.outputs]).encode())
    h.update(repr((captured.device, captured.dtype, captured.input_requires_grad)).encode())
    # Only what older graphs did not have, so that their hashes stay the same.
    if captured.autocast:
        h.update(f"autocast={captured.autocast}".encode())
    if _nested_outputs(captured.out_spec):
        h.update(f"outputs={captured.out_spec}".encode())
    return h.hexdigest()


def _nested_outputs(spec: Any) -> bool:
    """Whether outputs nest beyond one tensor or a flat tuple of tensors."""
    if spec is None or spec.is_leaf():
        return False
    return not (spec.type is tuple and all(c.is_leaf() for c in spec.children()))
