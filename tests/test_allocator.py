"""The allocator's rounding of storage sizes: 512-byte blocks on CUDA, exact bytes on the CPU."""
import torch

from profiler import capture
from profiler.allocator import allocator_bytes


def test_cuda_sizes_round_up_to_512_bytes():
    assert allocator_bytes(0, "cuda") == 0
    assert allocator_bytes(1, "cuda") == 512
    assert allocator_bytes(512, "cuda") == 512
    assert allocator_bytes(513, "cuda:0") == 1024
    assert allocator_bytes(3 * 2**20 + 1, torch.device("cuda", 0)) == 3 * 2**20 + 512


def test_cpu_sizes_are_unchanged():
    for n in (0, 1, 511, 513, 10**9 + 7):
        assert allocator_bytes(n, "cpu") == n


def test_cpu_capture_records_exact_bytes():
    """A CPU profile keeps the storages' own bytes (4 x 3 float32 = 48, not 512)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    cap = capture(model.train(), (torch.randn(4, 3),))
    x = next(r for r in cap.records if r.role == "input")
    assert [cap.storage_bytes[s] for s in x.storages] == [48]
    assert any(b % 512 for b in cap.storage_bytes.values())
