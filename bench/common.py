"""What the bench scripts share: results written atomically, so an interrupted run keeps
the rows it finished and never leaves a half-written file, budget fractions, and the
benchmark models (the configurations under configs/)."""
from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterable

from profiler.config import ModelConfig
from profiler.ir import write_atomic

__all__ = ["config_names", "load_config", "parse_fraction", "write_atomic",
           "write_rows_as_they_finish"]
log = logging.getLogger("bench")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs")


def config_names() -> list[str]:
    """The benchmark models: the names of the configurations under configs/, sorted."""
    return sorted(os.path.splitext(os.path.basename(p))[0]
                  for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))


def load_config(name: str) -> ModelConfig:
    """The configuration ``configs/<name>.yaml``."""
    return ModelConfig.load(os.path.join(CONFIG_DIR, f"{name}.yaml"))


def parse_fraction(text: str) -> float:
    """``1/3`` or ``0.5`` as a number in (0, 1]."""
    num, _, den = text.partition("/")
    value = float(num) / float(den or 1)
    if not 0 < value <= 1:
        raise ValueError(f"budget fraction {text!r} is not in (0, 1]")
    return value


def write_rows_as_they_finish(rows: Iterable[dict], output: str,
                              render: Callable[[list[dict]], str]) -> list[dict]:
    """Log each row of ``rows`` as it comes and rewrite ``output`` (atomically) with
    ``render`` of every row so far; the planner logs only its warnings meanwhile. Returns
    the rows."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("planner").setLevel(logging.WARNING)
    done: list[dict] = []
    for row in rows:
        done.append(row)
        log.info("%s", row)
        write_atomic(output, render(done))
    return done
