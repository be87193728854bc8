"""The demo's output: a block redrawn in place on a terminal, plain lines anywhere else."""

from __future__ import annotations

import shutil
from typing import TextIO

from nodeagent.lab.summary import Event, Snapshot, clock, render, render_line

PLAIN_EVERY = 5.0  # seconds between two summary lines when stdout is not a terminal
_UP, _CLEAR, _HIDE, _SHOW = "\x1b[{}F", "\x1b[J", "\x1b[?25l", "\x1b[?25h"


class Console:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0  # lines of the live block on screen
        self._last_plain: float | None = None

    def say(self, text: str) -> None:
        """A line of its own (setup, teardown), below the live block if there is one."""
        self.end_live()
        print(text, file=self.out, flush=True)

    def event(self, event: Event) -> None:
        """Something the demo did: on a terminal the next redraw shows it, in a log a line now."""
        if not self.tty:
            print(f"  {clock(event.at):>5}  {event.text}", file=self.out, flush=True)

    def show(self, snap: Snapshot, *, final: bool = False) -> None:
        if self.tty:
            width = shutil.get_terminal_size().columns
            lines = render(snap, width)
            head = (_UP.format(self._drawn) if self._drawn else _HIDE) + _CLEAR
            self.out.write(head + "\n".join(lines) + "\n")
            self.out.flush()
            self._drawn = len(lines)
        elif final or self._last_plain is None or snap.elapsed - self._last_plain >= PLAIN_EVERY:
            self._last_plain = snap.elapsed
            print(render_line(snap), file=self.out, flush=True)

    def end_live(self) -> None:
        """Leave the live block as it is and give the cursor back."""
        if self.tty and self._drawn:
            self.out.write(_SHOW)
            self.out.flush()
            self._drawn = 0
