"""bench/compare.py end to end on the CPU: profile, solve and run the small GPT, and check
the table, the JSON and the plot (a check of the script; the benchmark itself needs a GPU)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # about 40 s on a shared 2-core machine
def test_compare_all_small_on_cpu(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, os.path.join(ROOT, "bench", "compare.py"), "all", "--device", "cpu",
           "--small", "--models", "gpt", "--fractions", "0.8", "0.6", "--time-limit", "5",
           "--warmup", "1", "--steps", "2", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("compare.md", "compare.json", "compare_pareto.png"):
        assert (out / name).stat().st_size > 0, name
    body = json.loads((out / "compare.json").read_text())
    assert body["info"]["device"] == "cpu" and body["info"]["small"]
    assert body["info"]["torch_version"] and body["info"]["date"]
    rows = {r["method"]: r for r in body["rows"]}
    assert set(rows) == {"eager", "checkpoint", "ours 0.8", "ours 0.6"}
    for method, r in rows.items():
        assert r["status"] == "ok", (method, r)
        assert r["peak_allocated"] > 0 and r["peak_reserved"] > 0 and r["step_s"] > 0
        # Same loss and gradients as eager (checkpointing and our plans are exact here).
        assert r["loss"] == rows["eager"]["loss"]
        assert r["grad_diff"] <= 1e-6, (method, r["grad_diff"])
    for label in ("0.8", "0.6"):
        r = rows[f"ours {label}"]
        assert r["budget_bytes"] > 0 and r["predicted_peak"] > 0 and r["ratio"] > 0
        assert r["predicted_peak"] <= r["budget_bytes"]
    table = (out / "compare.md").read_text()
    assert table.count("| gpt |") == 4 and "torch " in table
    # The plans and profiles of the other phases are where `all` put them.
    work = out / "work"
    assert (work / "gpt.measured.json").exists() and (work / "plans.json").exists()
    # The report phase merges result files into the same table.
    merged = tmp_path / "merged"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "compare.py"), "report",
                          "--inputs", str(out / "compare.json"), "--out", str(merged)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (merged / "compare.md").read_text().count("| gpt |") == 4


def test_compare_imports_no_solver_at_module_level():
    """The GPU machine has no PuLP or HiGHS: profile and run must import without them."""
    code = ("import sys\n"
            "for m in ('pulp', 'highspy', 'ortools'): sys.modules[m] = None\n"
            f"sys.path.insert(0, {os.path.join(ROOT, 'bench')!r})\n"
            "import compare, runtime\n"
            "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]


def test_grad_difference_floors_gradients_that_are_zero_in_exact_arithmetic():
    import torch
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from measure import grad_difference
    weight, bias = torch.full((4,), 2.5), torch.full((4,), 4e-7)  # bias: rounding noise
    # Noise of the same size on the bias is 1.6e-4 of the floor, not a 100 % difference.
    assert grad_difference([weight, bias * 2], [weight, bias]) < 1e-3
    # A real difference still shows on any parameter, relative to its own scale.
    assert grad_difference([weight * 1.1, bias], [weight, bias]) == pytest.approx(0.1)
    assert grad_difference([weight, bias + 1e-2], [weight, bias]) > 1
