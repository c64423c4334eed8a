"""The names of the operator variants whose arithmetic is the original's (bit-identical
gradients), without importing torch: the planner reads them to restrict a solve to exact
variants (``--variants exact``), and its solver processes start faster without torch.
``profiler.variants`` registers the rules; tests/test_variants.py checks the two agree."""
from __future__ import annotations

EXACT_VARIANTS = frozenset({"relu_mask", "hardtanh_mask", "dropout_bits", "max_pool_compact"})
