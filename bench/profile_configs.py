"""GPU-measured profiles of the configurations under configs/ (issue 4's models).

For every configuration (or those named), capture the model at its configured input, time
every node on the GPU and save the profile beside the committed FLOP-estimated one, named
as that one with ``.measured`` for ``.estimated``. Profiles are written as they finish (an
interrupted run keeps them); one line per model goes to the log: nodes, seconds, the
unoptimised peak and step the profile predicts.

    python bench/profile_configs.py                      # every config, into configs/profiles
    python bench/profile_configs.py --models resnet50 unet --out /tmp/profiles
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from planner.budget import format_bytes  # noqa: E402
from planner.graph import PlannerGraph  # noqa: E402
from planner.schedule import baseline_decisions, build_schedule  # noqa: E402
from planner.simulator import simulate  # noqa: E402
from profiler.config import ModelConfig  # noqa: E402

log = logging.getLogger("bench.profile_configs")


def measured_path(config: ModelConfig, out: str | None) -> str:
    """Where the measured profile of ``config`` goes: the estimated profile's name with
    ``.measured``, in ``out`` or beside it."""
    name = os.path.basename(config.profile).replace(".estimated.", ".measured.")
    if name == os.path.basename(config.profile):
        name = os.path.splitext(name)[0] + ".measured.json"
    return os.path.join(out or os.path.dirname(config.profile), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="config names (default: every config)")
    parser.add_argument("--out", help="folder for the profiles (default: beside the "
                        "committed ones, configs/profiles)")
    parser.add_argument("--estimate", action="store_true",
                        help="FLOP-estimate instead of measuring (a dry run without a GPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.estimate and not torch.cuda.is_available():
        parser.error("no GPU: measured profiles need CUDA (--estimate for a dry run)")
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
    configs = [ModelConfig.load(p) for p in paths]
    if args.models:
        unknown = set(args.models) - {c.name for c in configs}
        if unknown:
            parser.error(f"no config named {sorted(unknown)}")
        configs = [c for c in configs if c.name in args.models]
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    failed = 0
    for config in configs:
        t0 = time.perf_counter()
        try:
            profile = config.make_profile(estimate=args.estimate)
        except Exception:  # one model's failure must not lose the others
            log.exception("%s: profiling failed", config.name)
            failed += 1
            continue
        path = measured_path(config, args.out)
        if args.estimate:
            path = path.replace(".measured.", ".dry-run.")
        profile.save(path)
        graph = PlannerGraph.build(profile.nodes, profile.storage_bytes, profile.outputs)
        base = simulate(profile, build_schedule(graph, baseline_decisions(graph)))
        log.info("%s: %d nodes, %s on %s in %.0f s; unoptimised peak %s, step %.1f ms -> %s",
                 config.name, len(profile.nodes), profile.timing, profile.device_name,
                 time.perf_counter() - t0, format_bytes(base.peak_bytes),
                 base.time_s * 1e3, path)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
