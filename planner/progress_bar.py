"""A plain-text progress bar for sweeps, on stderr.

On a terminal one line is redrawn with ``\\r`` (and refreshed every second while a budget
is solving); otherwise one line per event, so logs and CI output stay readable.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from .budget import format_bytes
from .sweep import SweepRow


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}" if seconds < 3600 else \
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SweepProgress:
    """``progress`` callback for ``run_sweep``: which budget runs, done/total, elapsed, ETA."""

    def __init__(self, stream: TextIO | None = None, width: int = 20):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self.start = time.perf_counter()
        self.line = ""
        self._stop: threading.Event | None = None

    def __call__(self, event: str, index: int, total: int, row: SweepRow,
                 eta: float | None) -> None:
        self._stop_ticker()
        done = index + (event != "start")
        bar = "#" * (self.width * done // total) + "." * (self.width - self.width * done // total)
        head = f"[{bar}] {done}/{total}"
        if event == "start":
            what = f"solving budget {row.budget} ({format_bytes(row.budget_bytes)})"
        elif event == "skipped":
            what = f"budget {row.budget}: skipped, already done ({row.status})"
        else:
            what = f"budget {row.budget}: {row.status}"
            if row.feasible and row.predicted_peak_bytes is not None:
                what += (f", peak {format_bytes(row.predicted_peak_bytes)}, overhead "
                         f"{row.overhead:+.1%}")
            what += f" in {row.solve_time_s:.1f} s"
        self.line = f"{head} {what}"
        self.eta, self.eta_at = eta, time.perf_counter()
        self._draw()
        if event == "start" and self.tty:
            self._start_ticker()
        if self.tty and done == total:
            self.stream.write("\n")
            self.stream.flush()
            self.line = ""

    def _draw(self) -> None:
        elapsed = time.perf_counter() - self.start
        eta = None if self.eta is None else max(0.0, self.eta - (time.perf_counter()
                                                                 - self.eta_at))
        text = f"{self.line}  elapsed {_clock(elapsed)}, left ~{_clock(eta)}"
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _start_ticker(self) -> None:
        self._stop = threading.Event()

        def tick(stop: threading.Event) -> None:
            while not stop.wait(1.0):
                self._draw()
        threading.Thread(target=tick, args=(self._stop,), daemon=True).start()

    def _stop_ticker(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def close(self) -> None:
        """Stop refreshing (call when the sweep ends or is interrupted)."""
        self._stop_ticker()
        if self.tty and self.line:
            self.stream.write("\n")
            self.stream.flush()
            self.line = ""
