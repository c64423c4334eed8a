"""The full stage MILP in a second process while this one runs the window search.

HiGHS's branch and bound is serial, and so is the window search (``planner.lns``): on a
two-core machine one core sat idle. Now the full MILP runs in ``planner.highs_worker`` for
the whole search: its cuts and tree raise the lower bound the plan's gap is reported
against (ResNet-50 at 1/3 of its peak: 2.8 % after the ~4 s the full solve had in-process,
5.1 % after 50 s), the plans it finds are taken up by the window search, and the window
search's plans are offered back to it. The model travels as an MPS file (written by HiGHS
itself: 0.15 s for ResNet-50's 25K columns), solutions as ``.npy`` vectors of its columns.
"""
from __future__ import annotations

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

import numpy as np

from .backends import SolveOptions, SolveOutcome
from .formulation import StageMILP
from .schedule import Decisions
from .window_highs import PersistentHiGHS

log = logging.getLogger(__name__)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "highs_worker.py")
# The worker's limit is the caller's less this: its start (Python, highspy, reading the
# model) and its stop (HiGHS ends an LP before it looks at the clock), so that it ends on
# its own and reports its final bound rather than being stopped at the deadline.
MARGIN_S = 1.5


def parallel_available(options: SolveOptions, backend: str) -> bool:
    """Whether the full MILP can run in a process of its own: HiGHS, a second core, and the
    user did not ask for one thread."""
    return backend == "highs" and options.parallel and options.threads != 1 and \
        (os.cpu_count() or 1) >= 2


def _float(text: str) -> float | None:
    x = float(text)
    return x if math.isfinite(x) else None


class FullSolveProcess:
    """HiGHS on ``milp`` (of a graph of ``stages`` stages) in ``planner.highs_worker``,
    started at construction, for at most ``time_limit_s``. ``persistent`` is the problem's
    highspy model (built here if None; the window search may re-solve it once the worker
    has its copy). Plans travel both ways as ``Decisions``; call ``close`` (or ``stop``) to
    end it."""

    def __init__(self, milp: StageMILP, stages: int, time_limit_s: float,
                 options: SolveOptions, persistent: PersistentHiGHS | None = None,
                 start: Decisions | None = None):
        self.t0 = time.perf_counter()
        self.milp = milp
        self.stages = stages
        self.persistent = persistent or PersistentHiGHS(milp.problem, options.gap,
                                                        options.threads, options.verbose)
        self.columns = milp.vectors.columns
        self.dir = tempfile.mkdtemp(prefix="monet-full-")
        model = os.path.join(self.dir, "model.mps")
        self.persistent.highs.writeModel(model)
        # -P: not the worker's folder first on sys.path (planner/inspect.py would shadow inspect)
        command = [sys.executable, "-P", WORKER, model, "--dir", self.dir,
                   "--time-limit", repr(max(time_limit_s - MARGIN_S, 0.5)),
                   "--gap", repr(options.gap)]
        if options.threads:
            command += ["--threads", str(options.threads)]
        if start is not None and milp.represents(start):
            np.save(os.path.join(self.dir, "start.npy"),
                    milp.vectors.values(start)[:self.columns])
            command += ["--start", os.path.join(self.dir, "start.npy")]
        if options.verbose:
            command.append("--verbose")
        self.lock = threading.Lock()
        self.bound: float | None = None
        self.incumbent: float | None = None
        self.done: tuple[str, float | None, float | None, float] | None = None
        self._solution: tuple[float, str] | None = None  # the newest not yet taken
        self._other: deque[str] = deque(maxlen=20)  # anything else it wrote (an error)
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=None if options.verbose else
            subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        log.info("full MILP started in process %d with %.1f s", self.process.pid, time_limit_s)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.lock:
                try:
                    self._parse(line)
                except ValueError:  # not a line of the protocol (an error message)
                    self._other.append(line.rstrip())

    def _parse(self, line: str) -> None:
        fields = line.split(maxsplit=2) if line.startswith("SOLUTION ") else line.split()
        if fields[:1] == ["PROGRESS"] and len(fields) == 4:
            self._note(_float(fields[2]), _float(fields[3]))
        elif fields[:1] == ["SOLUTION"] and len(fields) == 3:
            self._solution = (float(fields[1]), fields[2].rstrip("\n"))
            self._note(float(fields[1]), None)
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

    def take_solution(self) -> tuple[float, np.ndarray] | None:
        """The newest solution found since the last call (objective, column values)."""
        with self.lock:
            found, self._solution = self._solution, None
        if found is None:
            return None
        try:
            return found[0], np.load(found[1])
        except (OSError, ValueError) as e:  # removed by close(), or a partial file
            log.warning("full MILP solution %s unreadable: %s", found[1], e)
            return None

    def take_plan(self) -> tuple[float, Decisions] | None:
        """The newest plan found since the last call, and its objective."""
        found = self.take_solution()
        if found is None:
            return None
        for v, x in zip(self.persistent.variables, found[1].tolist()):
            v.varValue = x
        return found[0], self.milp.decisions(self.stages)

    def offer(self, decisions: Decisions) -> None:
        """Give the worker a plan found here, to prune its search with (ignored if it is no
        point of the worker's problem)."""
        if self.finished or decisions.in_place != self.milp.in_place or \
                not self.milp.represents(decisions):
            return
        path = os.path.join(self.dir, "offer.npy")
        try:
            np.save(path + ".tmp.npy", self.milp.vectors.values(decisions)[:self.columns])
            os.replace(path + ".tmp.npy", path)
        except OSError as e:  # the worker is gone and its folder with it
            log.debug("offer not written: %s", e)

    def stop(self) -> None:
        """End the worker now (on an error or an early return) and remove its files."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self, wait_s: float) -> tuple[SolveOutcome, tuple[float, Decisions] | None]:
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
