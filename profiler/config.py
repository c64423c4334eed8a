"""Model configurations (``configs/*.yaml``): a model, its example input, budgets, and
where its committed profile lives.

    model: torchvision:resnet50      # or package.module:function
    batch: 184                       # with image_size, for image models
    image_size: 224
    inputs: ["8x1024:int64:50257"]   # or explicit SHAPE[:DTYPE[:HIGH]] inputs
    budgets: [0.5, 0.3333, 0.25]     # fractions of the unoptimised peak, or sizes
    profile: profiles/resnet50_184x3x224x224.estimated.json   # relative to the file
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from .ir import Profile, ProfileFormatError
from .models import load_model
from .profile import profile_model

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration file that is missing, malformed or names an unknown field."""


@dataclass
class ModelConfig:
    name: str
    model: str
    batch: int | None = None
    image_size: int | None = None
    inputs: list[str] = field(default_factory=list)
    budgets: list[Any] = field(default_factory=list)
    profile: str = ""  # absolute path
    path: str = ""

    @classmethod
    def load(cls, path: str) -> "ModelConfig":
        """Read and check a configuration file."""
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except FileNotFoundError as e:
            raise ConfigError(f"config file {path!r} does not exist") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from e
        if not isinstance(data, dict) or "model" not in data:
            raise ConfigError(f"config file {path!r} needs at least a 'model' entry")
        known = {"model", "batch", "image_size", "inputs", "budgets", "profile"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"config file {path!r}: unknown entries {sorted(unknown)}; "
                              f"known are {sorted(known)}")
        name = os.path.splitext(os.path.basename(path))[0]
        profile = data.get("profile") or f"profiles/{name}.json"
        profile = os.path.join(os.path.dirname(os.path.abspath(path)), profile)
        return cls(name=name, model=data["model"], batch=data.get("batch"),
                   image_size=data.get("image_size"), inputs=list(data.get("inputs") or []),
                   budgets=list(data.get("budgets") or []), profile=profile, path=path)

    def make_profile(self, estimate: bool | None = None) -> Profile:
        """Capture and time the model (FLOP-estimated unless on a GPU, or as ``estimate``
        says) and return its profile."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        estimate = device == "cpu" if estimate is None else estimate
        model, inputs = load_model(self.model, inputs=self.inputs, batch=self.batch,
                                   image_size=self.image_size, device=device)
        return profile_model(model, inputs, name=self.model, estimate=estimate)

    def load_profile(self, make: bool = True) -> Profile:
        """The committed profile; made and saved first if absent and ``make``."""
        try:
            return Profile.load(self.profile)
        except ProfileFormatError:
            if not make or os.path.exists(self.profile):
                raise
        log.info("profiling %s into %s", self.model, self.profile)
        profile = self.make_profile()
        profile.save(self.profile)
        return profile
