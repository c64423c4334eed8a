"""The monet command as a user runs it: exit codes, outputs, one-line errors, no partial files."""
import pytest

from conftest import imported_modules, monet, reference_seconds


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "profile.json"
    r = monet("profile", "examples.gpt:gpt_small", "--input", "4x64:int64:512", "--estimate",
              "-o", str(path))
    assert r.returncode == 0, r.stderr
    assert "backward stages" in r.stdout and "unoptimised peak" in r.stdout
    return path


def one_line_error(r):
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_solve_and_inspect(profile_path, tmp_path):
    plan = tmp_path / "plan.json"
    # Neither command imports torch (4.8 s of solve's start here before, 1.0 s after): the
    # profile records which ops have out= overloads (Profile.pointwise_out).
    timed = {"PYTHONPROFILEIMPORTTIME": "1"}
    r = monet("solve", str(profile_path), "--budget", "0.75", "--time-limit", "5", "-o", str(plan),
              env=timed)
    assert r.returncode == 0, r.stderr
    assert "predicted peak" in r.stdout
    r2 = monet("inspect", str(plan), env=timed)
    assert r2.returncode == 0, r2.stderr
    for word in ("budget", "peak", "step time", "recomputed", "solver"):
        assert word in r2.stdout
    assert "operator variant" in r2.stdout
    for run in (r, r2):
        imported = imported_modules(run.stderr)
        assert {"planner.plan", "profiler.ir"} <= imported
        assert not {m for m in imported if m.split(".")[0] == "torch"
                    or m.startswith("profiler.capture")}


@pytest.mark.parametrize("solver", ["highs", "cpsat"])
def test_verbose_solve_shows_progress(profile_path, tmp_path, solver):
    plan = tmp_path / "plan.json"
    # -v before the command (highs) or after it, as `monet solve -v` (cpsat)
    before, after = (["-v"], []) if solver == "highs" else ([], ["-v"])
    r = monet(*before, "solve", *after, str(profile_path), "--budget", "0.6", "--time-limit",
              f"{reference_seconds(6):.0f}", "--solver", solver, "--variants", "exact", "-o",
              str(plan))
    assert r.returncode == 0, r.stderr
    progress = [line for line in r.stderr.splitlines() if "incumbent" in line]
    assert progress and all("bound" in line and "gap" in line for line in progress)
    assert f"solver {solver}" in r.stdout


def test_budget_forms(profile_path, tmp_path, cli):
    for budget in ("1.0", "50MiB", "100000000"):
        r = cli("solve", str(profile_path), "--budget", budget, "--time-limit", "5",
                  "-o", str(tmp_path / "p.json"))
        assert r.returncode == 0, r.stderr


def test_bad_budget_string(profile_path, tmp_path, cli):
    plan = tmp_path / "plan.json"
    line = one_line_error(cli("solve", str(profile_path), "--budget", "lots", "-o", str(plan)))
    assert "does not parse" in line
    assert not plan.exists()


def test_infeasible_budget_names_smallest_and_writes_nothing(profile_path, tmp_path, cli):
    plan = tmp_path / "plan.json"
    line = one_line_error(cli("solve", str(profile_path), "--budget", "0.05",
                                "--time-limit", "5", "-o", str(plan)))
    assert "infeasible" in line and "smallest feasible budget is" in line
    assert not plan.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model,message", [
    ("torchvision:resnet_nope", "torchvision has no model"),
    ("no_such_module:factory", "cannot import module"),
    ("examples.gpt:no_such_factory", "has no function"),
    ("resnet18", "neither torchvision:<name> nor"),
])
def test_unknown_models(model, message, tmp_path, cli):
    out = tmp_path / "p.json"
    line = one_line_error(cli("profile", model, "--batch", "2", "--image-size", "32",
                                "-o", str(out)))
    assert message in line
    assert not out.exists()


def test_bad_input_spec(tmp_path, cli):
    line = one_line_error(cli("profile", "examples.gpt:gpt_small", "--input", "4by64",
                                "-o", str(tmp_path / "p.json")))
    assert "SHAPE[:DTYPE[:HIGH]]" in line


def test_corrupt_files(profile_path, tmp_path, cli):
    bad = tmp_path / "bad.json"
    bad.write_text(profile_path.read_text()[:1000])
    assert "truncated or corrupt" in one_line_error(cli("solve", str(bad), "--budget", "0.5"))
    assert "truncated or corrupt" in one_line_error(cli("inspect", str(bad)))


def test_verbose_before_or_after_the_command():
    from runtime.cli import build_parser
    parse = build_parser().parse_args
    assert parse(["solve", "p.json", "--budget", "0.5"]).verbose == 0
    assert parse(["-v", "solve", "p.json", "--budget", "0.5"]).verbose == 1
    assert parse(["solve", "p.json", "-vv", "--budget", "0.5"]).verbose == 2
    assert parse(["sweep", "-v"]).verbose == 1
    assert parse(["inspect", "plan.json", "-v"]).verbose == 1


def test_verbose_shows_traceback(tmp_path):
    r = monet("-v", "profile", "torchvision:resnet_nope", "--batch", "2", "-o", str(tmp_path / "p"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_usage_errors():
    r = monet("solve")
    assert r.returncode == 2 and "usage" in r.stderr


def test_missing_files_say_what_to_do(tmp_path, cli):
    line = one_line_error(cli("solve", str(tmp_path / "nope.json"), "--budget", "0.5"))
    assert "no such profile file" in line and "monet profile" in line
    line = one_line_error(cli("inspect", str(tmp_path / "nope.json")))
    assert "no such plan file" in line and "monet solve" in line
