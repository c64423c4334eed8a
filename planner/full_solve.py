"""The full stage MILP in a second process while this one runs the window search.

HiGHS's branch and bound is serial, and so is the window search (``planner.lns``): on a
two-core machine one core sat idle. Now the full MILP runs in ``planner.full_worker`` for
the whole solve: its cuts and tree raise the lower bound the plan's gap is reported
against (ResNet-50 at 1/3 of its peak: 2.8 % after the ~4 s the full solve had in-process,
5.4 % beside the search), the plans it finds are taken up by the window search, and the
window search's plans are offered back to it. The worker loads the profile and builds the
problem on its own core; plans travel both ways as decisions (JSON files), so neither side
needs the other's problem.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import replace

from profiler.ir import Profile
from profiler.out_overloads import pointwise_out_table

from .backends import SolveOptions, SolveOutcome
from .heuristic import LPRounding
from .schedule import Decisions

log = logging.getLogger(__name__)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "full_worker.py")
# The worker's limit is the caller's less this: its stop (HiGHS ends an LP before it looks
# at the clock), so that it ends on its own and reports its final bound rather than being
# stopped at the deadline.
MARGIN_S = 1.5
# Below this time limit the worker does not run: it spends a few seconds starting and
# building its problem and stops MARGIN_S early, so it would have a few seconds at most
# for the cost of a process start.
PARALLEL_MIN_LIMIT_S = 15.0
# At this share of its limit, a worker whose branch and bound has not closed its gap to
# within full_worker.WINDOWS_GAP searches windows instead, beside this process's window
# search (a budgeted problem only).
WINDOWS_AFTER = 0.4


def parallel_available(options: SolveOptions, backend: str) -> bool:
    """Whether the full MILP can run in a process of its own: HiGHS, a second core, a time
    limit of at least PARALLEL_MIN_LIMIT_S, and the user did not ask for one thread."""
    return backend == "highs" and options.parallel and options.threads != 1 and \
        options.time_limit_s >= PARALLEL_MIN_LIMIT_S and (os.cpu_count() or 1) >= 2


def _decisions_json(decisions: Decisions) -> dict:
    return {"keep": [sorted(k) for k in decisions.keep],
            "recompute": [sorted(r) for r in decisions.recompute],
            "variants": {str(e): name for e, name in decisions.variants.items()},
            "in_place": decisions.in_place}


def _decisions_of(data: dict) -> Decisions:
    return Decisions(keep=[set(k) for k in data["keep"]],
                     recompute=[set(r) for r in data["recompute"]],
                     variants={int(e): name for e, name in data["variants"].items()},
                     in_place=data["in_place"])


def write_decisions(path: str, decisions: Decisions, base: Decisions | None = None) -> None:
    """``decisions`` as JSON at ``path``, replaced atomically; with ``base``, the plan its
    sender's own changes started from (``planner.merge``)."""
    data = _decisions_json(decisions)
    if base is not None:
        data["base"] = _decisions_json(base)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


def read_plan(path: str) -> tuple[Decisions, Decisions | None]:
    """The decisions at ``path`` and the base they were sent with (None if none)."""
    with open(path) as f:
        data = json.load(f)
    return _decisions_of(data), _decisions_of(data["base"]) if "base" in data else None


def read_decisions(path: str) -> Decisions:
    """The decisions at ``path`` (``write_decisions``)."""
    return read_plan(path)[0]


def _float(text: str) -> float | None:
    x = float(text)
    return x if math.isfinite(x) else None


class FullSolveProcess:
    """HiGHS on the stage MILP of ``profile`` for ``budget`` bytes (None: the lowest-peak
    problem) in ``planner.full_worker``, started at construction, for at most
    ``time_limit_s``, from ``start`` if it is a point of that problem. Call ``close`` (or
    ``stop``) to end it."""

    def __init__(self, profile: Profile, budget: int | None, time_limit_s: float,
                 options: SolveOptions, start: Decisions | None = None):
        self.t0 = time.perf_counter()
        self.dir = tempfile.mkdtemp(prefix="monet-full-")
        profile_path = os.path.join(self.dir, "profile.json")
        if not profile.pointwise_out:
            # A profile from before the table of out= overloads was recorded: made here,
            # as the worker runs without torch (planner.full_worker).
            profile = replace(profile, pointwise_out=pointwise_out_table(profile.nodes))
        profile.save(profile_path)
        # -P and an explicit path: the package importable wherever we run, and nothing in
        # the working directory shadowing a module.
        root = os.path.dirname(os.path.dirname(WORKER))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        command = [sys.executable, "-P", WORKER, profile_path, "--dir", self.dir,
                   "--time-limit", repr(max(time_limit_s - MARGIN_S, 0.5)),
                   "--gap", repr(options.gap), "--variants", options.variants]
        command += ["--lowest"] if budget is None else \
            ["--budget", str(budget), "--windows-after", repr(WINDOWS_AFTER)]
        # One thread: the other core is this process's.
        command += ["--threads", str(options.threads or 1)]
        if start is not None:
            write_decisions(os.path.join(self.dir, "start.json"), start)
            command += ["--start", os.path.join(self.dir, "start.json")]
        if options.verbose:
            command.append("--verbose")
        self.lock = threading.Lock()
        self.bound: float | None = None
        self.incumbent: float | None = None
        self.done: tuple[str, float | None, float | None, float] | None = None
        self._solution: tuple[float, str] | None = None  # the newest not yet taken
        self._other: deque[str] = deque(maxlen=20)  # anything else it wrote (an error)
        self._lp_path: str | None = None  # its LP relaxation's optimum, for rounding
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=None if options.verbose else
            subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        log.info("full MILP started in process %d with %.1f s", self.process.pid, time_limit_s)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.lock:
                try:
                    self._parse(line)
                except ValueError:  # not a line of the protocol (a warning, an error)
                    self._other.append(line.rstrip())

    def _parse(self, line: str) -> None:
        fields = line.split(maxsplit=2) if line.startswith("SOLUTION ") else line.split()
        if fields[:1] == ["PROGRESS"] and len(fields) == 4:
            self._note(_float(fields[2]), _float(fields[3]))
        elif fields[:1] == ["SOLUTION"] and len(fields) == 3:
            self._solution = (float(fields[1]), fields[2].rstrip("\n"))
            self._note(float(fields[1]), None)
        elif fields[:1] == ["LP"] and len(fields) == 3:
            self._lp_path = fields[2]
            self._note(None, _float(fields[1]))
        elif fields[:1] == ["CUTS"] and len(fields) == 4:
            log.info("full MILP: %s of %s recomputation cuts added in %.1f s", fields[1],
                     fields[2], float(fields[3]))
        elif fields[:1] == ["DONE"] and len(fields) == 5:
            self._note(_float(fields[2]), _float(fields[3]))
            self.done = (fields[1], _float(fields[2]), _float(fields[3]), float(fields[4]))
        else:
            raise ValueError(line)

    def _note(self, incumbent: float | None, bound: float | None) -> None:
        if incumbent is not None and (self.incumbent is None or incumbent < self.incumbent):
            self.incumbent = incumbent
        if bound is not None and (self.bound is None or bound > self.bound):
            self.bound = bound  # a bound once proved stays valid

    @property
    def finished(self) -> bool:
        return self.done is not None or self.process.poll() is not None

    @property
    def proved_optimal(self) -> bool:
        return self.done is not None and self.done[0] == "optimal"

    def lp_rounding(self, until: float) -> LPRounding | None:
        """The worker's plain LP relaxation optimum (``planner.heuristic.LPRounding``),
        waiting for it until ``until`` (``time.perf_counter()``); None if it did not come
        by then (the LP took longer, or the worker ended without one)."""
        while self._lp_path is None and not self.finished and time.perf_counter() < until:
            time.sleep(0.05)
        if self._lp_path is None and self.finished:
            self._reader.join(timeout=1.0)  # the lines it wrote before it ended
        path = self._lp_path
        if path is None or path == "none":
            return None
        try:
            with open(path) as f:
                return LPRounding.from_json(json.load(f))
        except (OSError, ValueError, KeyError) as e:
            log.warning("full MILP's LP relaxation %s unreadable: %s", path, e)
            return None

    def take_plan(self) -> tuple[float, Decisions, Decisions | None] | None:
        """The newest plan found since the last call: its objective, its decisions and the
        base its changes started from (None: take it whole)."""
        with self.lock:
            found, self._solution = self._solution, None
        if found is None:
            return None
        try:
            return (found[0], *read_plan(found[1]))
        except (OSError, ValueError, KeyError) as e:  # removed by stop()
            log.warning("full MILP plan %s unreadable: %s", found[1], e)
            return None

    def offer(self, decisions: Decisions, base: Decisions | None = None) -> None:
        """Give the worker a plan found here, to prune its search with (it ignores a plan
        that is no point of its problem); ``base``: the plan this side's own changes
        started from, for a worker searching windows to merge them into its plan."""
        if self.finished:
            return
        try:
            write_decisions(os.path.join(self.dir, "offer.json"), decisions, base)
        except OSError as e:  # the worker is gone and its folder with it
            log.debug("offer not written: %s", e)

    def stop(self) -> None:
        """End the worker now (on an error or an early return) and remove its files."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self, wait_s: float
              ) -> tuple[SolveOutcome, tuple[float, Decisions, Decisions | None] | None]:
        """Wait up to ``wait_s`` for the worker to end at its own limit, stop it otherwise;
        return its outcome (the last bound it reported if it had to be stopped) and its
        newest plan not yet taken."""
        try:
            self.process.wait(timeout=max(wait_s, 0.0))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            log.info("full MILP stopped at the deadline")
        self._reader.join(timeout=5.0)
        seconds = time.perf_counter() - self.t0
        with self.lock:
            if self.done is not None:
                status, objective, bound, _ = self.done
            else:
                if self.process.returncode not in (0, -9):
                    log.warning("full MILP process ended with status %s: %s",
                                self.process.returncode, " | ".join(self._other))
                status = "feasible" if self.incumbent is not None else "no_solution"
                objective, bound = self.incumbent, self.bound
            if self.bound is not None:
                bound = self.bound if bound is None else max(bound, self.bound)
        last = self.take_plan()
        shutil.rmtree(self.dir, ignore_errors=True)
        log.info("full MILP: %s, objective %s, bound %s", status, objective, bound)
        return SolveOutcome(status, objective, bound, seconds), last
