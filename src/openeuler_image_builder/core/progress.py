"""Progress reporting shared by every stage.

A stage takes a ``Reporter`` and calls it as ``report(phase, percent, detail)``; ``percent`` is
0-100 within that phase, or None when unknown. The CLI passes a terminal bar, the background job
a reporter that writes the job's state file, tests a list collector.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Reporter(Protocol):
    """Receives progress: a phase name, a percentage within it (or None) and a detail text."""

    def __call__(self, phase: str, percent: float | None, detail: str = "") -> None:
        """Report progress."""
        ...


def null_reporter(phase: str, percent: float | None, detail: str = "") -> None:
    """A reporter that ignores everything."""


class MultiReporter:
    """Forwards every report to several reporters."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def __call__(self, phase: str, percent: float | None, detail: str = "") -> None:
        """Forward one report."""
        for reporter in self.reporters:
            reporter(phase, percent, detail)


class ByteProgress:
    """Turns ``(bytes done, total)`` into reports of ``phase``, throttled.

    At most one report every ``interval`` seconds, and always one at the end: reporters may
    write a job state file on every call, so a report per chunk read is too many. The detail
    is ``detail`` when given, else ``12/690 MiB``.
    """

    def __init__(
        self, progress: Reporter, phase: str, detail: str | None = None, interval: float = 0.5
    ) -> None:
        self.progress = progress
        self.phase = phase
        self.detail = detail
        self.interval = interval
        # When the last report went out; None until the first (always sent: the monotonic
        # clock may start near 0 at boot, so no number is safely "long ago").
        self.last: float | None = None

    def __call__(self, done: int, total: int | None) -> None:
        """Report ``done`` bytes of ``total`` (None: unknown)."""
        now = time.monotonic()
        if self.last is not None and now - self.last < self.interval and done != total:
            return
        self.last = now
        percent = 100 * done / total if total else None
        detail = self.detail
        if detail is None:
            of = f"/{total / 2**20:.0f}" if total else ""
            detail = f"{done / 2**20:.0f}{of} MiB"
        self.progress(self.phase, percent, detail)


class TerminalBar:
    """A one-line progress bar on a terminal (stderr); silent when not a terminal.

    Redraws at most ``max_rate`` times a second, and always on a phase change.
    """

    def __init__(
        self, stream: TextIO | None = None, width: int = 30, max_rate: float = 10
    ) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval = 1 / max_rate
        self.enabled = self.stream.isatty()
        self._phase = ""
        self._last = 0.0

    def __call__(self, phase: str, percent: float | None, detail: str = "") -> None:
        """Redraw the bar."""
        if not self.enabled:
            return
        now = time.monotonic()
        if phase == self._phase and now - self._last < self.min_interval and percent != 100:
            return
        if phase != self._phase and self._phase:
            self.stream.write("\n")
        self._phase, self._last = phase, now
        if percent is None:
            bar = "." * self.width
            figure = "   ?%"
        else:
            filled = int(self.width * max(0.0, min(percent, 100.0)) / 100)
            bar = "#" * filled + "-" * (self.width - filled)
            figure = f"{percent:4.0f}%"
        self.stream.write(f"\r{phase:<10} [{bar}] {figure} {detail[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled and self._phase:
            self.stream.write("\n")
            self.stream.flush()
            self._phase = ""
