"""A one-line progress display with the rate and the time left, for long loops over images.

On a terminal the line is redrawn in place; otherwise (logs, CI) a line is printed every
`every_seconds`, so a log of a five-hour evaluation stays short.
"""

import sys
import time


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts done items of `total` and shows done/total, items/s and the time left.

    Args:
        total: number of items, or None if unknown (then no time left is shown).
        what: the items' name ("images").
        stream: where to write (default stderr, so stdout stays the command's result).
        every_seconds: minimum time between lines when the stream is not a terminal.
        enabled: False makes every call a no-op.
        prefix: names the phase ("checking", "writing") at the start of the line.
    """

    def __init__(self, total, what="images", stream=None, every_seconds=10.0, enabled=True,
                 prefix=""):
        self.total, self.what, self.enabled = total, what, enabled
        self.prefix = f"{prefix}: " if prefix else ""
        self.stream = stream or sys.stderr
        self.every_seconds = every_seconds
        self.done = 0
        self.start = self._last = time.monotonic()
        self._interactive = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

    @property
    def rate(self):
        """Items per second since the start."""
        return self.done / max(time.monotonic() - self.start, 1e-9)

    def line(self):
        """The current text, e.g. "120/5000 images, 2.1 images/s, 0:38:43 left"."""
        text = (f"{self.prefix}{self.done}/{self.total or '?'} {self.what}, "
                f"{self.rate:.1f} {self.what}/s")
        if self.total and self.done:
            text += f", {_duration((self.total - self.done) / self.rate)} left"
        return text

    def update(self, count=1):
        """Adds `count` done items and redraws when due."""
        if not self.enabled:
            return
        self.done += count
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if self._interactive:
            self.stream.write("\r" + self.line() + ("\n" if finished else ""))
            self.stream.flush()
        elif finished or now - self._last >= self.every_seconds:
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()
