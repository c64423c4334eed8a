"""The models the coverage benchmark and tests run: every torchvision classification model,
torchvision's segmentation models and detection backbones, and small Hugging Face models
built from a config with random weights (nothing is downloaded).

Each case builds ``(model, example_inputs)`` in training mode at a small input (batch 2,
64x64 unless a model needs more), seeded so that two builds are identical.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

BATCH = 2


@dataclass
class Case:
    """One model of the coverage run."""

    name: str
    family: str  # torchvision | segmentation | detection-backbone | huggingface
    build: Callable[[], torch.nn.Module]
    input_spec: str  # e.g. "2x3x64x64" or "2x16:int64:256"
    kwargs: dict = field(default_factory=dict)

    def describe(self) -> str:
        """The input, and the builder's arguments where they differ from the defaults."""
        extra = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.input_spec} ({extra})" if extra else self.input_spec

    def make(self, seed: int = 0) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
        """The model (training mode) and its example inputs, from ``seed``."""
        from profiler.models import parse_input_spec
        torch.manual_seed(seed)
        model = self.build().train()
        gen = torch.Generator().manual_seed(seed)
        return model, (parse_input_spec(self.input_spec, generator=gen),)


# Inputs a model needs beyond 64x64: Inception's stem needs 75+ (its auxiliary classifier
# about 299, so it is built without it here), MaxViT's partitions need 224, ViTs take an
# image_size.
_IMAGE_SIZE = {"inception_v3": 80, "maxvit_t": 224, "vit_h_14": 56}
_BUILD_KWARGS = {"inception_v3": {"aux_logits": False},
                 "vit_b_16": {"image_size": 64}, "vit_b_32": {"image_size": 64},
                 "vit_l_16": {"image_size": 64}, "vit_l_32": {"image_size": 64},
                 "vit_h_14": {"image_size": 56}}


def _torchvision(name: str) -> Case:
    import torchvision
    size = _IMAGE_SIZE.get(name, 64)
    kwargs = _BUILD_KWARGS.get(name, {})

    def build() -> torch.nn.Module:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    return Case(name, "torchvision", build, f"{BATCH}x3x{size}x{size}", kwargs)


def _segmentation(name: str) -> Case:
    import torchvision

    def build() -> torch.nn.Module:
        return torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                            num_classes=4)
    return Case(name, "segmentation", build, f"{BATCH}x3x64x64")


_DETECTION = ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
              "fasterrcnn_mobilenet_v3_large_fpn", "retinanet_resnet50_fpn_v2",
              "fcos_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large"]


def _detection_backbone(name: str) -> Case:
    """The backbone of a detection model (an FPN returning an OrderedDict of feature maps):
    the detection heads' losses need targets and data-dependent box matching."""
    import torchvision

    def build() -> torch.nn.Module:
        return torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                            num_classes=3).backbone
    size = 300 if name.startswith("ssd300") else 96 if "ssd" in name else 64
    return Case(f"{name}.backbone", "detection-backbone", build, f"{BATCH}x3x{size}x{size}")


def _hf_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256,
                                      n_positions=64, use_cache=False, bos_token_id=0,
                                      eos_token_id=0))


def _hf_bert() -> torch.nn.Module:
    from transformers import BertConfig, BertForMaskedLM
    return BertForMaskedLM(BertConfig(hidden_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=128,
                                      vocab_size=256, max_position_embeddings=64))


def _hf_vit() -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification
    return ViTForImageClassification(ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=8, num_labels=10))


def _hf_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=64, use_cache=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0))


HF_CASES = [
    Case("hf_gpt2", "huggingface", _hf_gpt2, f"{BATCH}x16:int64:256"),
    Case("hf_bert_mlm", "huggingface", _hf_bert, f"{BATCH}x16:int64:256"),
    Case("hf_vit", "huggingface", _hf_vit, f"{BATCH}x3x32x32"),
    Case("hf_llama", "huggingface", _hf_llama, f"{BATCH}x16:int64:256"),
]


def all_cases() -> list[Case]:
    """Every case, in a stable order: torchvision, segmentation, detection, Hugging Face."""
    import torchvision
    cases = [_torchvision(n) for n in torchvision.models.list_models(module=torchvision.models)]
    cases += [_segmentation(n) for n in
              torchvision.models.list_models(module=torchvision.models.segmentation)]
    cases += [_detection_backbone(n) for n in _DETECTION]
    return cases + HF_CASES


def case_by_name(name: str) -> Case:
    """The case called ``name`` (KeyError naming the known ones otherwise)."""
    if name.startswith("hf_"):
        found = {c.name: c for c in HF_CASES}
    else:
        found = {c.name: c for c in all_cases()}
    if name not in found:
        raise KeyError(f"no coverage case {name!r}; known: {', '.join(found)}")
    return found[name]
