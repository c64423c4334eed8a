"""How many bytes an allocation of a tensor's storage really takes on its device.

The CUDA caching allocator (``c10/cuda/CUDACachingAllocator.cpp``, ``round_size``) rounds
every request up to a multiple of ``kMinBlockSize`` = 512 bytes, small and large blocks
alike (requests under 512 bytes take 512), unless ``PYTORCH_CUDA_ALLOC_CONF`` sets
``roundup_power2_divisions``, which this project does not use. A request of 0 bytes
allocates nothing. ``torch.cuda.memory_allocated`` and ``max_memory_allocated`` count the
rounded sizes, so a profile made for CUDA records them, and the planner's peak is then in
the allocator's bytes. CPU sizes are the storages' own bytes, unchanged.

What this does not model (see bench/memory_model.md): a large cached block reused without
being split (the allocator splits a large block only when more than 1 MiB would be left)
is counted whole by ``memory_allocated``; and libraries' persistent workspaces (cuBLAS
keeps one per handle and stream) are allocated once and stay.
"""
from __future__ import annotations

import torch

CUDA_BLOCK_BYTES = 512  # kMinBlockSize of the CUDA caching allocator


def allocator_bytes(nbytes: int, device: torch.device | str) -> int:
    """Bytes the allocator of ``device`` takes for a storage of ``nbytes``: rounded up to a
    multiple of 512 on CUDA (0 stays 0), unchanged elsewhere."""
    nbytes = int(nbytes)
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    if kind != "cuda" or nbytes <= 0:
        return nbytes
    return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES
