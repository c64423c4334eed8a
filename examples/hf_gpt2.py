"""GPT-2 small from Hugging Face ``transformers``, built from its config (no weights are
downloaded), with its next-token loss in the graph like ``examples.gpt.GPTWithLoss``.

Its MLP activation is ``gelu_new``, written as a chain of element-wise ops
(``0.5 * x * (1 + tanh(...))``): the workload of ``profiler.pointwise_chains``.

    monet profile examples.hf_gpt2:GPT2WithLoss --input 8x1024:int64:50257 \\
        --input 8x1024:int64:50257
"""
from __future__ import annotations

import torch
import torch.nn as nn


class GPT2WithLoss(nn.Module):
    """``GPT2LMHeadModel(GPT2Config(**config))``; ``forward(tokens, targets)`` returns the
    mean cross-entropy of the logits against ``targets``. The default config is GPT-2
    small (12 layers, 768 wide, 50257 tokens, 1024 positions, dropout 0.1)."""

    def __init__(self, **config):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel
        self.lm = GPT2LMHeadModel(GPT2Config(use_cache=False, **config))

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.lm(input_ids=tokens).logits
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return loss * 1.0  # a node of its own, as in examples.gpt.GPTWithLoss
