"""A plan applied on every rank of DistributedDataParallel (2 processes, gloo, CPU): each
rank loads the same plan file, makes the same decisions (same graph hash, same schedule),
and the averaged gradients equal eager DDP's bit for bit."""
from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import loss_of
from examples.gpt import gpt_small
from planner import solve
from planner.backends import SolveOptions
from profiler import profile_model

WORLD = 2


def _model():
    torch.manual_seed(0)
    model, tokens = gpt_small(batch=4, seq=64, vocab=128)
    return model.train(), tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, plan_path: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(2)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from runtime import load_plan
        model, _ = _model()
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own batch
        tokens = torch.randint(0, 128, (4, 64), generator=gen)
        results = {}
        for kind in ("planned", "eager"):
            m = copy.deepcopy(model)
            if kind == "planned":
                m = load_plan(m, plan_path)
                runner = m.runner
                results["decisions"] = (runner.captured.graph_hash,
                                        [(s.kind, s.node, s.stage) for s in
                                         runner.schedule.forward + runner.schedule.backward])
            ddp = DDP(m)
            torch.manual_seed(7 + rank)
            loss = loss_of(ddp(tokens))
            loss.backward()
            inner = m.module if kind == "planned" else m
            results[kind] = ({n: p.grad for n, p in inner.named_parameters()}, loss.detach())
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_plan_under_ddp_matches_eager_ddp(tmp_path):
    model, tokens = _model()
    profile = profile_model(model, (tokens,), estimate=True)
    plan = solve(profile, 0.75, options=SolveOptions(time_limit_s=5, variants="exact"))
    assert sum(map(len, plan.recompute)) > 0
    plan_path = str(tmp_path / "plan.json")
    plan.save(plan_path)
    mp.spawn(_rank_main, args=(_free_port(), plan_path, str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert ranks[0]["decisions"] == ranks[1]["decisions"], "ranks made different decisions"
    assert ranks[0]["decisions"][0] == plan.graph_hash
    for r in ranks:
        (planned, loss), (eager, eager_loss) = r["planned"], r["eager"]
        assert torch.equal(loss, eager_loss)
        assert planned.keys() == eager.keys()
        for name, g in eager.items():
            assert torch.equal(planned[name], g), name
    # DDP averaged: both ranks hold the same gradients, which differ from one rank's own.
    for name, g in ranks[0]["planned"][0].items():
        assert torch.equal(g, ranks[1]["planned"][0][name]), name
    assert not torch.equal(ranks[0]["planned"][1], ranks[1]["planned"][1])
