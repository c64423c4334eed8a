"""A GPT built from ``torch.nn``: token and position embeddings, pre-norm
``nn.TransformerEncoderLayer`` blocks with a causal mask, a final LayerNorm and an untied
head. ``GPT(vocab=50257, d=1024, heads=16, layers=24, seq=1024)`` is the GPT of DESIGN.md.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class GPT(nn.Module):
    def __init__(self, vocab: int = 50257, d: int = 1024, heads: int = 16, layers: int = 24,
                 seq: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.token = nn.Embedding(vocab, d)
        self.position = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        positions = torch.arange(t, device=tokens.device)
        h = self.token(tokens) + self.position(positions)
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h))


class GPTWithLoss(GPT):
    """The GPT and its next-token cross-entropy in one module: ``forward(tokens, targets)``
    returns the loss. Profiled and planned this way, the loss is in the graph, so the
    logits, their log-softmax and their gradients (1.5 GiB each for the GPT of DESIGN.md)
    are planned like any activation instead of being held by the user's loss outside.
    Train it as ``planned(tokens, targets).backward()``.
    """

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = super().forward(tokens)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        # A node of its own for the step's output: nll_loss_forward also returns the total
        # weight its backward reads, and an op whose other output is the held user output
        # cannot be recomputed.
        return loss * 1.0


def gpt_small(batch: int = 4, seq: int = 64, vocab: int = 512):
    """A 2-layer GPT with dropout and a token batch: ``monet profile examples.gpt:gpt_small``."""
    model = GPT(vocab=vocab, d=64, heads=4, layers=2, seq=seq, dropout=0.1)
    tokens = torch.randint(0, vocab, (batch, seq))
    return model, tokens


def gpt_small_fused(batch: int = 4, seq: int = 64, vocab: int = 512):
    """``gpt_small`` without dropout: its attention runs the fused (flash) kernel on the CPU
    too, so the plan may choose the math backend's backward instead (``attention_math``)."""
    model = GPT(vocab=vocab, d=64, heads=4, layers=2, seq=seq, dropout=0.0)
    tokens = torch.randint(0, vocab, (batch, seq))
    return model, tokens
