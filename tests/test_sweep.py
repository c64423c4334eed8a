"""``monet sweep`` and ``monet inspect --plot`` as a user runs them: CSV, plots, resume after
an interrupt, a config file, a measured trace, and bad arguments with one-line errors."""
import csv
import glob
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, monet
from planner.budget import BudgetError
from planner.sweep import CSV_COLUMNS, parse_budget_list

ENV = dict(os.environ, PYTHONPATH=ROOT)
BUDGETS = "0.6:1.0:0.1"  # 5 budgets


def one_line_error(r, code=1):
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def assert_png(path, min_side=200):
    import matplotlib.image as mpimg
    image = mpimg.imread(str(path))
    assert image.shape[0] > min_side and image.shape[1] > min_side, image.shape
    assert image.std() > 0.01  # not a single colour


def read_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:8] == CSV_COLUMNS[:8]
        return list(reader)


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "gpt.json"
    r = monet("profile", "examples.gpt:gpt_small", "--input", "4x64:int64:512", "--estimate",
              "-o", str(path))
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def swept(profile_path, tmp_path_factory):
    """A sweep interrupted after its first plans, then resumed: (directory, both runs)."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    args = [sys.executable, "-m", "runtime.cli", "sweep", str(profile_path), "--budgets",
            BUDGETS, "--time-limit", "3", "-o", str(out)]
    p = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(glob.glob(str(out / "plan_*.json"))) < 2 and p.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, first_err = p.communicate(timeout=120)
    finished = sorted(os.path.basename(f) for f in glob.glob(str(out / "plan_*.json")))
    second = monet("-v", "sweep", str(profile_path), "--budgets", BUDGETS, "--time-limit", "3",
                   "-o", str(out))
    return out, p.returncode, first_err, finished, second


def test_budget_lists():
    assert parse_budget_list(["0.2:1.0:0.2"]) == ["0.2", "0.4", "0.6", "0.8", "1.0"]
    assert parse_budget_list(["0.5,0.3", "2GiB"]) == ["0.5", "0.3", "2GiB"]
    assert parse_budget_list(["1000:3000:1000"]) == ["1000", "2000", "3000"]
    for bad in (["0.2:1.0:0"], ["a:b:c"], ["1.0:0.5:0.1"], ["0.1:0.2"], [","]):
        with pytest.raises(BudgetError):
            parse_budget_list(bad)


def test_interrupted_sweep_resumes(swept, profile_path):
    out, code, first_err, finished, second = swept
    from planner.budget import format_bytes
    from planner.floor import peak_floor
    from planner.solve import planner_graph
    from profiler.ir import Profile
    profile = Profile.load(str(profile_path))
    floor = peak_floor(profile, planner_graph(profile))
    if code != 0:  # interrupted (the sweep may rarely finish before the signal lands)
        assert code == 130 and "interrupted; run the same command again to resume" in first_err
    assert second.returncode == 0, second.stderr
    skipped = [line for line in second.stderr.splitlines() if "skipped" in line
               and "planner.sweep" in line]
    assert len(skipped) == len(finished) >= 2, (finished, second.stderr)
    rows = read_rows(out / "sweep.csv")
    assert [r["budget"] for r in rows] == ["1.0", "0.9", "0.8", "0.7", "0.6"]
    for r in rows:
        if r["status"] == "infeasible":
            assert int(r["smallest_feasible_bytes"]) > int(r["budget_bytes"])
        else:
            assert floor.peak_bytes <= int(r["predicted_peak_bytes"]) <= int(r["budget_bytes"])
            assert float(r["overhead"]) >= 0 and os.path.exists(out / r["plan"])
    assert rows[0]["status"] == "optimal" and float(rows[0]["overhead"]) == 0
    assert "sweep.csv: 5 budgets" in second.stdout
    assert f"no plan peaks below {format_bytes(floor.peak_bytes)}" in second.stdout
    assert_png(out / "pareto.png")


def test_sweep_progress_lines(swept):
    second = swept[4]
    progress = [line for line in second.stderr.splitlines() if line.startswith("[")]
    assert any("5/5" in line for line in progress)
    assert all("elapsed" in line and "left" in line for line in progress)


def test_inspect_plots_with_measured_trace(swept, tmp_path):
    out = swept[0]
    plan = out / "plan_0.9.json"
    r = monet("inspect", str(plan), "--plot", str(tmp_path / "timeline.png"))
    assert r.returncode == 0, r.stderr  # the profile comes from the sweep's manifest
    assert "memory over the training step" in r.stdout and "predicted peak" not in r.stderr
    assert_png(tmp_path / "timeline.png")
    assert_png(tmp_path / "timeline_schedule.png")
    events = [{"action": "alloc", "addr": i, "size": 1000 * (i % 5 + 1), "frames": []}
              for i in range(30)]
    events += [{"action": "free_completed", "addr": i, "size": 1000 * (i % 5 + 1)}
               for i in range(30)]
    snapshot = {"segments": [{"address": 0, "total_size": 1 << 20, "blocks": []}],
                "device_traces": [events]}
    trace = tmp_path / "snapshot.pickle"
    trace.write_bytes(pickle.dumps(snapshot))
    r = monet("inspect", str(plan), "--plot", str(tmp_path / "measured.png"), "--trace",
              str(trace), "--schedule-plot", str(tmp_path / "grid.png"))
    assert r.returncode == 0, r.stderr
    assert "measured beside predicted" in r.stdout
    assert_png(tmp_path / "measured.png")
    assert_png(tmp_path / "grid.png")


def test_inspect_plot_errors(swept, profile_path, tmp_path, cli):
    plan = tmp_path / "plan.json"
    shutil.copy(swept[0] / "plan_0.9.json", plan)  # outside the sweep directory
    png = tmp_path / "t.png"
    assert "--profile" in one_line_error(cli("inspect", str(plan), "--plot", str(png)))
    assert "--plot" in one_line_error(cli("inspect", str(plan), "--trace", "x.pickle"))
    assert "no such profile file" in one_line_error(
        cli("inspect", str(plan), "--plot", str(png), "--profile", str(tmp_path / "nope")))
    notpickle = tmp_path / "bad.pickle"
    notpickle.write_text("not a pickle")
    assert "not a torch memory snapshot" in one_line_error(
        cli("inspect", str(plan), "--plot", str(png), "--profile", str(profile_path),
              "--trace", str(notpickle)))
    obj = tmp_path / "obj.pickle"
    obj.write_bytes(pickle.dumps(BudgetError("x")))  # an object: refused, never constructed
    assert "only torch.cuda.memory._dump_snapshot" in one_line_error(
        cli("inspect", str(plan), "--plot", str(png), "--profile", str(profile_path),
              "--trace", str(obj)))
    assert "does not exist" in one_line_error(
        cli("inspect", str(plan), "--plot", str(png), "--profile", str(profile_path),
              "--trace", str(tmp_path / "missing.pickle")))
    assert not png.exists()
    other = tmp_path / "other.json"
    r = cli("profile", "examples.gpt:gpt_small", "--input", "2x32:int64:512", "--estimate",
            "-o", str(other))
    assert r.returncode == 0
    assert "graph hashes differ" in one_line_error(
        cli("inspect", str(plan), "--plot", str(png), "--profile", str(other)))


def test_sweep_from_config(profile_path, tmp_path):
    shutil.copy(profile_path, tmp_path / "gpt.json")
    config = tmp_path / "small.yaml"
    config.write_text("model: examples.gpt:gpt_small\ninputs: ['4x64:int64:512']\n"
                      "budgets: [1.0, 0.8]\nprofile: gpt.json\n")
    out = tmp_path / "out"
    r = monet("sweep", "--config", str(config), "--time-limit", "2", "-o", str(out),
              "--plot", str(tmp_path / "p.png"))
    assert r.returncode == 0, r.stderr
    assert [row["budget"] for row in read_rows(out / "sweep.csv")] == ["1.0", "0.8"]
    assert_png(tmp_path / "p.png")


def test_every_benchmark_model_has_a_config():
    from profiler.config import ModelConfig
    names = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "configs/*.yaml"))}
    assert {"resnet50", "googlenet", "mobilenet_v2", "vgg16", "unet", "gpt"} <= names
    for name in names:
        config = ModelConfig.load(os.path.join(ROOT, "configs", f"{name}.yaml"))
        assert config.budgets and os.path.exists(config.profile), name


@pytest.mark.parametrize("args,message", [
    (["missing.json", "--budgets", "0.5"], "no such profile file"),
    (["PROFILE", "--budgets", "0.2:1.0:0"], "STEP must be positive"),
    (["PROFILE", "--budgets", "abc"], "does not parse"),
    (["PROFILE", "--budgets", "2.0"], "not in (0, 1]"),
    (["PROFILE", "--budgets", "0.5", "--time-limit", "0"], "--time-limit must be positive"),
    (["PROFILE"], "give the budgets to sweep"),
    ([], "give a PROFILE"),
    (["--config", "configs/nope.yaml"], "no such config file"),
    (["PROFILE", "--config", "configs/gpt.yaml"], "not both"),
    (["CORRUPT", "--budgets", "0.5"], "truncated or corrupt"),
    (["BADCONFIG"], "unknown entries"),
])
def test_sweep_bad_arguments(args, message, profile_path, tmp_path, cli):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(profile_path.read_text()[:500])
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("model: torchvision:resnet18\nbatchsize: 3\n")
    subst = {"PROFILE": str(profile_path), "CORRUPT": str(corrupt),
             "BADCONFIG": "--config=" + str(bad_config)}
    out = tmp_path / "out"
    line = one_line_error(cli("sweep", *[subst.get(a, a) for a in args], "-o", str(out)))
    assert message in line
    assert not glob.glob(str(out / "plan_*"))


def test_sweep_usage_error(profile_path):
    r = monet("sweep", "--budgets")  # a real process: argparse's own exit status
    assert r.returncode == 2 and "usage" in r.stderr
    line = one_line_error(monet("sweep", str(profile_path), "--budgets", "0.5:0.1:0.1"))
    assert line.startswith("monet sweep: error:") and "START <= STOP" in line


def test_train_gpt_example_runs():
    r = subprocess.run([sys.executable, "examples/train_gpt.py", "--steps", "1",
                        "--time-limit", "2"], capture_output=True, text=True, cwd=ROOT,
                       env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "step 0: loss" in r.stderr


@pytest.mark.slow
def test_train_resnet_example_runs():
    r = subprocess.run([sys.executable, "examples/train_resnet.py", "--steps", "1"],
                       capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "step 0: loss" in r.stderr


def test_a_faster_plan_of_a_smaller_budget_serves_the_larger_one(tmp_path):
    """Every budget ends with the fastest plan of the sweep that fits it: a slow plan for
    0.8 is replaced by the faster plan solved for 0.7, saved under 0.8's budget."""
    from conftest import model_case
    from planner.backends import SolveOptions
    from planner.heuristic import checkpoint_decisions
    from planner.plan import Plan
    from planner.solve import plan_for, planner_graph, solve
    from planner.sweep import SweepRow, _share_faster_plans

    profile = model_case("gpt").profile
    graph = planner_graph(profile)
    fast = solve(profile, 0.7, options=SolveOptions(time_limit_s=5))
    slow = plan_for(profile, checkpoint_decisions(graph, set()), budget=0.8)  # recompute all
    assert slow.predicted_time_s > fast.predicted_time_s
    paths = {b: str(tmp_path / f"plan_{b}.json") for b in ("0.8", "0.7")}
    slow.save(paths["0.8"])
    fast.save(paths["0.7"])
    plans = {slow.budget_bytes: (slow, paths["0.8"]), fast.budget_bytes: (fast, paths["0.7"])}
    rows = [SweepRow("0.8", slow.budget_bytes, status="given"),
            SweepRow("0.7", fast.budget_bytes, status=fast.solver.status)]
    assert _share_faster_plans(plans, rows, fast.baseline_time_s)
    shared = Plan.load(paths["0.8"])
    assert shared.budget_bytes == slow.budget_bytes
    assert shared.predicted_time_s == fast.predicted_time_s == rows[0].predicted_time_s
    assert shared.solver.status.startswith("from budget") and shared.solver.gap is None
    assert Plan.load(paths["0.7"]).predicted_time_s == fast.predicted_time_s  # unchanged
    assert not _share_faster_plans(plans, rows, fast.baseline_time_s)  # idempotent


def test_time_shares():
    """Tighter budgets get more of the sweep's time; the shares average 1 (the total is
    unchanged) and ``even`` gives each budget the limit."""
    from planner.sweep import time_shares
    peak = 1000
    budgets = [700, 500, 250]
    tight = time_shares(budgets, peak)
    assert sum(tight) == pytest.approx(len(budgets))
    assert tight[0] < tight[1] < tight[2]
    assert tight[2] / tight[0] == pytest.approx(700 / 250)
    assert time_shares(budgets, peak, "even") == [1.0, 1.0, 1.0]
    assert time_shares([], peak) == []
    with pytest.raises(ValueError, match="one of tight, even"):
        time_shares(budgets, peak, "steep")


@pytest.mark.parametrize("split", ["tight", "even"])
def test_sweep_gives_each_budget_its_share(split, tmp_path, monkeypatch):
    """run_sweep hands every solve its share of the time (recorded through a stand-in for
    the solver that raises infeasible, so nothing is solved)."""
    import planner.sweep as sweep
    from conftest import model_case
    from planner import InfeasibleBudgetError
    from planner.backends import SolveOptions

    limits = {}

    def record(profile, spec, backend, options, hints=()):
        limits[spec] = options.time_limit_s
        raise InfeasibleBudgetError(1, None, "recorded")

    monkeypatch.setattr(sweep, "solve", record)
    profile = model_case("gpt").profile
    sweep.run_sweep(profile, ["0.8", "0.4"], str(tmp_path / "s"),
                    options=SolveOptions(time_limit_s=30), time_split=split)
    assert sum(limits.values()) == pytest.approx(60)
    if split == "tight":
        assert limits["0.4"] == pytest.approx(2 * limits["0.8"], rel=1e-3)
    else:
        assert limits == {"0.8": 30, "0.4": 30}
