"""Say what a failed capture could not trace: the module, the op and the user's line.

Tracing failures surface as many exception types deep inside torch. While the model is
traced, global module hooks keep the stack of the user's modules being run; when tracing
fails, the innermost one, the ATen op that could not be traced (when torch names it) and the
innermost line of the user's code are put into one :class:`CaptureError` message.
"""
from __future__ import annotations

import contextlib
import linecache
import os
import traceback
from typing import Any, Iterator

import torch

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_OWN_DIR = os.path.dirname(os.path.abspath(__file__))
_STDLIB = os.path.dirname(os.path.abspath(contextlib.__file__))


def _is_user_file(path: str) -> bool:
    path = os.path.abspath(path)
    if path.startswith((_TORCH_DIR, _OWN_DIR)):
        return False
    return not (path.startswith(_STDLIB) and "site-packages" not in path)


MODULE_META = "monet_module"


class CaptureError(RuntimeError):
    """The model could not be captured into a joint graph."""


class ModuleTracker:
    """The dotted paths of the model's modules being run, innermost last. While active, the
    nodes traced inside a module carry its path in their metadata (``MODULE_META`` of
    ``node.meta["custom"]``, through ``torch.fx.traceback.annotate``; autograd copies it
    to many of their backward nodes), since the joint export records no module stack."""

    def __init__(self, model: torch.nn.Module):
        self.names = {id(m): name or type(model).__name__ for name, m in model.named_modules()}
        self.paths = {id(m): name for name, m in model.named_modules()}
        self.stack: list[str] = []
        self.at_failure: list[str] = []

    @contextlib.contextmanager
    def active(self) -> Iterator["ModuleTracker"]:
        from torch.fx.traceback import annotate
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        annotations: list[contextlib.AbstractContextManager] = []

        def pre(module: torch.nn.Module, args: Any) -> None:
            if id(module) in self.names:
                self.stack.append(self.names[id(module)])
                annotations.append(annotate({MODULE_META: self.paths[id(module)]}))
                annotations[-1].__enter__()

        def post(module: torch.nn.Module, args: Any, out: Any) -> None:
            if id(module) in self.names and self.stack:
                self.stack.pop()
                annotations.pop().__exit__(None, None, None)

        handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
        try:
            yield self
        except BaseException:
            self.at_failure = list(self.stack)
            raise
        finally:
            for h in handles:
                h.remove()
            while annotations:  # a module that raised never ran its post hook
                annotations.pop().__exit__(None, None, None)


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def failing_op(e: BaseException) -> str:
    """The ATen op torch reports as untraceable, or ''."""
    for err in _chain(e):
        func = getattr(err, "func", None)
        if isinstance(func, torch._ops.OpOverload):
            return str(func)
    return ""


def user_frame(e: BaseException) -> str:
    """``Qualified.name (file:line: code)`` of the innermost frame outside torch, or ''."""
    for err in _chain(e):
        frames = list(traceback.walk_tb(err.__traceback__))
        for frame, lineno in reversed(frames):
            filename = frame.f_code.co_filename
            if _is_user_file(filename):
                name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
                line = linecache.getline(filename, lineno).strip()
                return f"{name} ({os.path.basename(filename)}:{lineno}: {line})"
    return ""


def _reason(e: BaseException, op: str) -> str:
    text = " ".join(f"{type(x).__name__}: {x}" for x in _chain(e)).lower()
    if op.endswith(("_local_scalar_dense.default", "item.default")) or \
            "data-dependent" in text or "data dependent" in text:
        return ("data-dependent control flow or a Python value read from a tensor "
                "(if tensor..., .item(), .tolist()): the graph would depend on the data")
    if "dynamic" in text and "shape" in text:
        return "an op whose output shape depends on the data"
    if "too small" in text or "greater than actual input size" in text:
        return "the example input is too small for this layer: capture at a larger input"
    if "numpy" in text:
        return "a tensor leaves torch (numpy): the capture cannot trace it"
    return "an op or Python code the fake-tensor capture cannot trace"


def capture_error(model: torch.nn.Module, tracker: ModuleTracker, e: BaseException
                  ) -> CaptureError:
    """A CaptureError naming the module, the op and the line where tracing failed."""
    op = failing_op(e)
    where = tracker.at_failure[-1] if tracker.at_failure else ""
    parts = [f"could not capture {type(model).__name__}"]
    if where:
        parts.append(f"in module {where!r} ({type(_get(model, where)).__name__})")
    else:
        parts.append("outside any module's forward (in the backward of a custom "
                     "autograd.Function, or in code between modules)")
    if op:
        parts.append(f"at op {op}")
    frame = user_frame(e)
    if frame:
        parts.append(f"in {frame}")
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return CaptureError(" ".join(parts) + f": {_reason(e, op)} [{type(e).__name__}: "
                        f"{first[:300]}]")


def _get(model: torch.nn.Module, path: str) -> Any:
    try:
        return model.get_submodule(path) if path != type(model).__name__ else model
    except AttributeError:
        return model
