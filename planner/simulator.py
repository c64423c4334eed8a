"""An independent simulator: replays a schedule and recomputes its memory and time.

It trusts nothing the solver says. It checks that every node's inputs are present when it
runs, counts memory per storage (a view keeps its base alive), and sums node times.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from profiler.ir import Profile

from .graph import PlannerGraph
from .schedule import Decisions, Schedule, Step, schedule_by_stage


class SimulationError(ValueError):
    """A schedule that cannot run: a node's input is not present."""


@dataclass
class SimulationResult:
    peak_bytes: int
    time_s: float
    recompute_time_s: float
    memory: list[int] = field(default_factory=list)  # live bytes after every run step
    peak_step: int = 0
    # With ``simulate(..., breakdown=True)``: per run step, bytes by category (CATEGORIES);
    # each entry sums to the same step of ``memory``.
    breakdown: list[dict[str, int]] = field(default_factory=list)
    forward_steps: int = 0  # run steps of the forward pass (the rest are the backward's)


# Categories of ``SimulationResult.breakdown``: parameters, buffers and inputs; forward
# tensors from the forward pass (kept); forward tensors recomputed in the backward;
# backward tensors (gradients, output gradients, temporaries); a running node's workspace.
CATEGORIES = ("constant", "kept", "recomputed", "backward", "workspace")


def simulate(profile: Profile, schedule: Schedule, breakdown: bool = False) -> SimulationResult:
    """Replay ``schedule`` on ``profile``: peak live bytes and total time of the step; with
    ``breakdown``, also the bytes of every step by category (the rest is unchanged)."""
    replay = Replay(profile, breakdown)
    replay.forward(schedule.forward, schedule.saved)
    replay.backward(schedule.backward)
    return replay.result()


def simulate_by_stage(profile: Profile, graph: PlannerGraph, decisions: Decisions,
                      reject: Callable[[int, float], bool] | None = None
                      ) -> tuple[SimulationResult, int] | None:
    """The simulation of ``decisions`` and the stage of its peak step (-1: forward); None
    as soon as ``reject(peak so far, seconds so far)`` holds after a part (the forward
    pass, then each stage). Both only grow, so a search that rejects a plan above a peak
    or slower than a time stops there: a stage is built only when the replay reaches it.
    On U-Net's measured profile at 1/3, more than half of the peak search's trials go
    above the peak it has within the first tenth of their steps (``planner.peak_search``).
    """
    replay = Replay(profile)
    ends: list[int] = []  # per stage, the run steps replayed up to its end
    done = checked = peak = 0
    for schedule, stage in schedule_by_stage(graph, decisions):
        if stage < 0:
            replay.forward(schedule.forward, schedule.saved)
        else:
            replay.backward(schedule.backward[done:])
            done = len(schedule.backward)
            ends.append(len(replay.memory))
        if reject is not None:
            peak = max(peak, max(replay.memory[checked:], default=0))
            checked = len(replay.memory)
            if reject(peak, replay.seconds()):
                return None
    result = replay.result()
    if result.peak_step < result.forward_steps:
        return result, -1
    return result, bisect.bisect_right(ends, result.peak_step)


class Replay:
    """A replay fed in parts: the forward pass and its saved nodes, then the backward's
    steps in as many pieces as come (``simulate`` replays a whole schedule;
    ``simulate_by_stage`` each stage as it is built, stopping where the search rejects the
    plan). ``memory`` grows with every run step; ``seconds()`` is the time of the steps
    replayed so far."""

    def __init__(self, profile: Profile, breakdown: bool = False):
        self.memory: list[int] = []
        self.forward_steps = 0
        self._run, self._finish_forward, self._finish, self.seconds = _replay_closures(
            profile, breakdown, self.memory)

    def forward(self, steps: list[Step], saved: list[int]) -> None:
        """Replay the forward pass and check that only ``saved`` forward nodes are held."""
        self._run(steps, False)
        self.forward_steps = len(self.memory)
        self._finish_forward(saved)

    def backward(self, steps: list[Step]) -> None:
        """Replay the next ``steps`` of the backward."""
        self._run(steps, True)

    def result(self) -> SimulationResult:
        """The replay's result, once the whole backward has been fed."""
        return self._finish(self.forward_steps)


def _replay_closures(profile: Profile, breakdown: bool, memory: list[int]):
    """The replay's state as locals of closures: a step of a search's schedules costs a
    cell access, where an attribute of an object cost a dictionary look-up."""
    nodes = profile.nodes
    # Per node, its storages; and each storage's size: locals, not attribute look-ups per
    # step.
    storages_of = [n.storages for n in nodes]
    size = profile.storage_bytes
    refs: dict[int, int] = {}
    live = 0
    env: set[int] = set()
    overwritten: set[int] = set()  # storages a run in place wrote over, until dropped
    category: dict[int, str] = {}  # storage -> category, from the node that made it live
    totals = dict.fromkeys(CATEGORIES, 0)
    phase = ["constant"]

    def add(n: int) -> None:
        nonlocal live
        env.add(n)
        for s in storages_of[n]:
            count = refs.get(s, 0) + 1
            refs[s] = count
            if count == 1:
                live += size[s]
                if breakdown:
                    role = nodes[n].role
                    cat = phase[0] if role in ("forward", "variant_forward") or \
                        phase[0] == "constant" else "backward"
                    category[s] = cat
                    totals[cat] += size[s]

    def drop(n: int) -> None:
        env.discard(n)
        for s in storages_of[n]:
            count = refs[s] - 1
            if count:
                refs[s] = count
            else:
                del refs[s]
                if s in overwritten:
                    overwritten.discard(s)  # its bytes went to the op that wrote over it
                else:
                    release(s)

    def release(s: int) -> None:
        nonlocal live
        live -= size[s]
        if breakdown:
            totals[category.pop(s)] -= size[s]

    for n in nodes:
        if n.role in ("param", "buffer", "input"):
            add(n.index)
    phase[0] = "kept"
    steps_breakdown: list[dict[str, int]] = []
    time_s = recompute_s = 0.0

    def replay(steps, backward: bool) -> None:
        nonlocal time_s, recompute_s
        # Once per step of every schedule a search simulates: fields are unpacked once, and
        # the checks that find nothing wrong cost a set operation each.
        for kind, index, _stage, impl, into in steps:
            n = nodes[index]
            if kind == "run":
                op = nodes[impl] if impl >= 0 else n  # a variant's implementation runs as its site
                if impl >= 0 and (op.role != "variant_backward" or op.site != n.index):
                    raise SimulationError(f"{op.name} is not a variant of {n.name}")
                if not env.issuperset(op.inputs):
                    missing = [i for i in op.inputs if i not in env]
                    raise SimulationError(f"{op.name} runs without {nodes[missing[0]].name}")
                if overwritten:
                    stale = [i for i in op.inputs if overwritten.intersection(nodes[i].storages)]
                    if stale:
                        raise SimulationError(f"{op.name} reads {nodes[stale[0]].name} after "
                                              "a run in place wrote over it")
                if index in env:
                    raise SimulationError(f"{n.name} runs while its value is held")
                if into >= 0 and (into not in op.inputs or len(nodes[into].storages) != 1):
                    raise SimulationError(f"{op.name} cannot write over {nodes[into].name}")
                add(index)
                if into >= 0:  # the output takes over the input's bytes
                    s = nodes[into].storages[0]
                    overwritten.add(s)
                    release(s)
                memory.append(live + op.workspace_bytes)
                if breakdown:
                    steps_breakdown.append({**totals, "workspace": op.workspace_bytes})
                time_s += op.time_s
                if backward and n.role == "forward":
                    recompute_s += op.time_s
            elif kind == "free":
                if index not in env:
                    raise SimulationError(f"{n.name} is freed but not held")
                drop(index)
            else:
                raise SimulationError(f"unknown step kind {kind!r}")

    def finish_forward(saved_nodes: list[int]) -> None:
        saved = set(saved_nodes)
        for n in list(env):
            if nodes[n].role in ("forward", "variant_forward") and n not in saved:
                raise SimulationError(f"{nodes[n].name} is held after the forward but not saved")
        for n in nodes:
            if n.role == "tangent":
                add(n.index)
        phase[0] = "recomputed"

    def finish(forward_steps: int) -> SimulationResult:
        missing_grads = [o for o in profile.outputs if o.kind == "grad" and o.node not in env]
        if missing_grads:
            raise SimulationError(f"the gradient of {missing_grads[0].target} is not produced")
        peak = max(memory) if memory else live
        return SimulationResult(peak_bytes=peak, time_s=time_s, recompute_time_s=recompute_s,
                                memory=memory, peak_step=memory.index(peak) if memory else 0,
                                breakdown=steps_breakdown, forward_steps=forward_steps)

    def seconds() -> float:
        return time_s

    return replay, finish_forward, finish, seconds
