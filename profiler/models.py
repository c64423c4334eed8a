"""Resolve a model specification and example inputs from the command line.

``MODEL`` is ``torchvision:<name>`` (random weights, nothing downloaded) or
``package.module:function``, a factory of the user's that returns either a model or a
``(model, example_inputs)`` pair. Example inputs are given with ``--input SPEC`` (repeatable):

* ``8x3x64x64``            a float tensor of that shape (standard normal);
* ``8x128:int64:50257``    integer tokens in ``[0, 50257)``;
* ``8x16:float64``         a tensor of another dtype.

For image models ``--batch B --image-size S`` is short for ``--input Bx3xSxS``.
"""
from __future__ import annotations

import importlib
import re
from typing import Any, Sequence

import torch


class ModelSpecError(ValueError):
    """A model name or an input specification that cannot be resolved."""


_DTYPES = {name: getattr(torch, name) for name in (
    "float16", "bfloat16", "float32", "float64", "int32", "int64", "uint8", "bool")}


def parse_input_spec(spec: str, device: str = "cpu",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Make one example tensor from a ``SHAPE[:DTYPE[:HIGH]]`` specification."""
    parts = spec.split(":")
    if not re.fullmatch(r"\d+(x\d+)*", parts[0]) or len(parts) > 3:
        raise ModelSpecError(f"input {spec!r} is not SHAPE[:DTYPE[:HIGH]], e.g. 8x3x64x64 "
                             "or 8x128:int64:50257")
    shape = [int(d) for d in parts[0].split("x")]
    dtype = torch.float32
    if len(parts) > 1:
        if parts[1] not in _DTYPES:
            raise ModelSpecError(f"unknown dtype {parts[1]!r} in input {spec!r}; "
                                 f"use one of {', '.join(_DTYPES)}")
        dtype = _DTYPES[parts[1]]
    if dtype.is_floating_point:
        if len(parts) > 2:
            raise ModelSpecError(f"a HIGH bound is only for integer inputs: {spec!r}")
        return torch.randn(shape, dtype=dtype, generator=generator).to(device)
    high = int(parts[2]) if len(parts) > 2 else 2
    return torch.randint(0, high, shape, dtype=dtype, generator=generator).to(device)


def load_model(spec: str, inputs: Sequence[str] = (), batch: int | None = None,
               image_size: int | None = None, device: str = "cpu",
               seed: int = 0) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Build the model named by ``spec`` in training mode, with its example inputs."""
    torch.manual_seed(seed)
    if ":" not in spec:
        raise ModelSpecError(f"model {spec!r} is neither torchvision:<name> nor "
                             "package.module:function")
    source, name = spec.split(":", 1)
    example: Any = None
    if source == "torchvision":
        import torchvision
        if name not in torchvision.models.list_models():
            raise ModelSpecError(f"torchvision has no model {name!r}; see "
                                 "torchvision.models.list_models()")
        model = torchvision.models.get_model(name, weights=None)
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as e:
            raise ModelSpecError(f"cannot import module {source!r} for model {spec!r}: {e}") from e
        factory = getattr(module, name, None)
        if not callable(factory):
            raise ModelSpecError(f"module {source!r} has no function {name!r}")
        built = factory()
        model, example = built if isinstance(built, tuple) else (built, None)
        if not isinstance(model, torch.nn.Module):
            raise ModelSpecError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    generator = torch.Generator().manual_seed(seed)
    if inputs:
        example = tuple(parse_input_spec(s, device, generator) for s in inputs)
    elif batch is not None or image_size is not None:
        b, s = batch or 1, image_size or 224
        example = (torch.randn(b, 3, s, s, generator=generator).to(device),)
    if example is None:
        raise ModelSpecError(f"no example input for {spec}: give --input SHAPE[:DTYPE[:HIGH]] "
                             "(or --batch/--image-size for image models)")
    if isinstance(example, torch.Tensor):
        example = (example,)
    return model.to(device).train(), tuple(x.to(device) for x in example)
