"""Capture and profile: roles, storages, buffers, random ops, hashing and the JSON file."""
import json
import os

import pytest
import torch
import torchvision

from examples.gpt import gpt_small
from profiler import Profile, ProfileFormatError, capture, profile_model
from profiler.ir import write_json_atomic


def small_resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).train(), torch.randn(2, 3, 32, 32)


def test_roles_and_storages():
    model, x = small_resnet()
    cap = capture(model, (x,))
    roles = {r.role for r in cap.records}
    assert roles == {"param", "buffer", "input", "tangent", "forward", "backward",
                     "variant_forward", "variant_backward"}
    # Every ReLU, batch norm and the max pool gets its variant, attached to its site.
    variants = [r for r in cap.records if r.role == "variant_backward"]
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    by_name = {}
    for r in variants:
        by_name[r.variant] = by_name.get(r.variant, 0) + 1
        assert cap.records[r.site].role == "backward"
    assert by_name["batch_norm_from_output"] == bns
    assert by_name["max_pool_compact"] == 1
    assert by_name["relu_mask"] == 17  # one per ReLU call, shared modules included
    n_params = sum(1 for _ in model.parameters())
    assert sum(r.role == "param" for r in cap.records) == n_params
    assert sum(o.kind == "grad" for o in cap.outputs) == n_params
    # Every batch norm updates running_mean, running_var and num_batches_tracked.
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sum(o.kind == "mutation" for o in cap.outputs) == 3 * bns
    # Views allocate nothing and share their input's storage.
    views = [r for r in cap.records if r.target in ("aten.t.default", "aten.view.default")]
    assert views and all(not r.new_storages for r in views)
    # Exact bytes: the first convolution's output is 2 x 64 x 16 x 16 float32.
    conv = next(r for r in cap.records if r.target == "aten.convolution.default")
    assert [cap.storage_bytes[s] for s in conv.new_storages] == [2 * 64 * 16 * 16 * 4]


def test_capture_does_not_touch_buffers():
    model, x = small_resnet()
    before = [b.clone() for b in model.buffers()]
    capture(model, (x,))
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_random_ops_are_marked():
    model, tokens = gpt_small()
    cap = capture(model.train(), (tokens,))
    assert sum(r.random for r in cap.records) == 8  # 4 dropouts in each of 2 layers


def test_hash_changes_with_model_shape_and_dtype():
    model, x = small_resnet()
    h = capture(model, (x,)).graph_hash
    assert capture(model, (x,)).graph_hash == h
    assert capture(model, (torch.randn(4, 3, 32, 32),)).graph_hash != h
    other = torchvision.models.resnet18(num_classes=11).train()
    assert capture(other, (x,)).graph_hash != h
    assert capture(model.double(), (x.double(),)).graph_hash != h


def test_profile_round_trip(tmp_path):
    model, x = small_resnet()
    p = profile_model(model, (x,), name="r18", estimate=True)
    assert p.timing == "estimated" and sum(n.time_s for n in p.nodes) > 0
    assert any(n.flops > 0 for n in p.nodes)
    path = tmp_path / "p.json"
    p.save(str(path))
    q = Profile.load(str(path))
    assert q.graph_hash == p.graph_hash and q.nodes == p.nodes
    assert q.storage_bytes == p.storage_bytes


def test_measured_times_leave_rng_and_buffers_alone():
    model, tokens = gpt_small()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    p = profile_model(model, (tokens,), estimate=False, repeats=2)
    assert p.timing == "measured"
    assert torch.equal(before, torch.get_rng_state())
    assert sum(n.time_s for n in p.nodes if n.role == "forward") > 0


def test_corrupt_profiles_are_refused(tmp_path):
    model, x = small_resnet()
    path = tmp_path / "p.json"
    profile_model(model, (x,), estimate=True).save(str(path))
    text = path.read_text()
    (tmp_path / "trunc.json").write_text(text[: len(text) // 2])
    with pytest.raises(ProfileFormatError, match="truncated or corrupt"):
        Profile.load(str(tmp_path / "trunc.json"))
    data = json.loads(text)
    data["schema_version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(ProfileFormatError, match="schema_version"):
        Profile.load(str(tmp_path / "v.json"))
    with pytest.raises(ProfileFormatError, match="does not exist"):
        Profile.load(str(tmp_path / "missing.json"))
    newer = {**json.loads(text), "fused_kernels": {}}  # a field a later version might add
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(ProfileFormatError, match=r"does not know \(fused_kernels\).*newer"):
        Profile.load(str(tmp_path / "newer.json"))


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(str(path), {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(str(path), {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]


def test_graph_hash_is_the_same_in_another_process():
    """Plans are made in one process and loaded in another: nothing process-specific (such
    as a variant function's address) may enter the hash."""
    import subprocess
    import sys
    code = ("import torch, torchvision; from profiler.capture import capture; "
            "torch.manual_seed(0); "
            "m = torchvision.models.resnet18(num_classes=10).train(); "
            "print(capture(m, (torch.randn(2, 3, 32, 32),)).graph_hash)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, env=dict(os.environ, PYTHONPATH=root), timeout=300)
    assert out.returncode == 0, out.stderr
    model, x = small_resnet()
    assert out.stdout.split()[-1] == capture(model, (x,)).graph_hash
