"""The names of the operator variants whose arithmetic is the original's (bit-identical
gradients), without importing torch: the planner reads them to restrict a solve to exact
variants (``--variants exact``), and its solver processes start faster without torch.
``profiler.variants`` registers the rules, whose ``exact`` is read from here;
tests/test_variants.py checks that every name here is a registered rule."""
from __future__ import annotations

EXACT_VARIANTS = frozenset({"relu_mask", "hardtanh_mask", "dropout_bits", "max_pool_compact"})
