"""The terminal progress of a batch: cases done / failed / left and the time left.

On a terminal one line is redrawn in place; elsewhere (a log file, CI) one line is printed per
finished case. ``quiet`` prints nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


def format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Counts finished cases of ``total`` (after ``skipped`` resumed ones) and shows them."""

    def __init__(self, total: int, *, skipped: int = 0, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.total, self.skipped = total, skipped
        self.done = self.failed = 0
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.monotonic()
        self._live = bool(getattr(self.stream, "isatty", lambda: False)())

    @property
    def left(self) -> int:
        return self.total - self.skipped - self.done - self.failed

    def line(self) -> str:
        finished = self.done + self.failed
        todo = self.total - self.skipped
        filled = round(BAR_WIDTH * finished / todo) if todo else BAR_WIDTH
        eta = ""
        if finished and self.left:
            eta = f", about {format_seconds((time.monotonic() - self.t0) / finished * self.left)} left"
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done} done, {self.failed} failed, "
                f"{self.left} left{skipped}{eta}")

    def say(self, text: str) -> None:
        """A message on its own line (the bar is redrawn after it)."""
        if self.quiet:
            return
        print(("\r\033[K" if self._live else "") + text, file=self.stream, flush=True)
        self.draw()

    def draw(self) -> None:
        if self.quiet:
            return
        if self._live:
            print("\r\033[K" + self.line(), end="", file=self.stream, flush=True)

    def case_finished(self, row: dict) -> None:
        """Count a finished case's report row ("ok" or "failed") and show it."""
        if row["status"] == "ok":
            self.done += 1
        else:
            self.failed += 1
        if self.quiet:
            return
        if self._live:
            if row["status"] != "ok":
                self.say(f"{row['case']}: failed: {row['message']}")
            self.draw()
        else:
            what = "ok" if row["status"] == "ok" else f"failed: {row['message']}"
            print(f"{row['case']}: {what} ({float(row['seconds']):.1f} s) -- {self.line()}", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if not self.quiet and self._live:
            print(file=self.stream, flush=True)
