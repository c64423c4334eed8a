"""The roles AOTAutograd's descriptors give a joint graph's inputs and outputs.

``aot_export_joint_with_descriptors`` labels every placeholder (``ParamAOTInput``,
``BufferAOTInput``, ``PlainAOTInput``, ``TangentAOTInput``) and every output
(``PlainAOTOutput``, ``InputMutationAOTOutput``, ``GradAOTOutput``). These turn them into
the IR's roles and output records, and refuse what the planner does not handle.
"""
from __future__ import annotations

from typing import Any

from .capture_errors import CaptureError
from .ir import BUFFER, INPUT, PARAM, TANGENT, OutputRecord


def desc_str(desc: Any) -> str:
    """A descriptor as text (``""`` for none)."""
    return "" if desc is None else repr(desc)


def placeholder_role(desc: Any) -> tuple[str, str]:
    """(role, what it stands for) of a joint-graph input: a parameter or buffer (its name),
    a model input (its position) or an output's gradient (the output's descriptor)."""
    kind = type(desc).__name__
    if kind == "ParamAOTInput":
        return PARAM, desc.target
    if kind == "BufferAOTInput":
        return BUFFER, desc.target
    if kind == "PlainAOTInput":
        return INPUT, str(desc.idx)
    if kind == "TangentAOTInput":
        return TANGENT, desc_str(desc.output)
    raise CaptureError(f"unsupported graph input {desc!r}: only parameters, buffers, "
                       "tensor inputs and output gradients are handled")


def output_record(desc: Any, node_index: int) -> OutputRecord | None:
    """What a joint-graph output is: a user output, a buffer update or a gradient."""
    kind = type(desc).__name__
    if desc is None:
        return None
    if kind == "PlainAOTOutput":
        return OutputRecord("user", node_index, str(desc.idx))
    if kind == "InputMutationAOTOutput":
        mutated = desc.mutated_input
        if type(mutated).__name__ != "BufferAOTInput":
            raise CaptureError(f"the model mutates its input {mutated!r} in place; only "
                               "buffer updates (batch-norm statistics) are supported")
        return OutputRecord("mutation", node_index, mutated.target)
    if kind == "GradAOTOutput":
        of = desc.grad_of
        target = of.target if type(of).__name__ == "ParamAOTInput" else f"input:{of.idx}"
        return OutputRecord("grad", node_index, target)
    raise CaptureError(f"unsupported graph output {desc!r}")
