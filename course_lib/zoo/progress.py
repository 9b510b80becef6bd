r"""How far a zoo model's training has got, shown where someone waits for it and shared between processes.

A process that trains a zoo model writes ``<file>.progress`` (JSON: the model, the model actually
training, e.g. its parent, step, steps, loss, pid) beside the cache file, at most twice a second;
another process waiting for the same model (:func:`course_lib.zoo.cache.build_lock`) reads it and
shows the builder's progress instead of training the model a second time.

:class:`Display` shows progress: a ``tqdm`` bar on a terminal or in a notebook, a plain line every
5 % when the output is a log file or CI (where a bar would print carriage returns).

Introduced in chapter 00.

>>> import io
>>> log = io.StringIO()
>>> display = Display(log, bar=False, every_percent=50)
>>> for step in (10, 50, 60, 100):
...     display.update("digits_unet", step, 100, 0.25)
>>> print(log.getvalue(), end="")
zoo: digits_unet  50% (50/100 steps, loss 0.25)
zoo: digits_unet 100% (100/100 steps, loss 0.25)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from course_lib.training import progress_listener

__all__ = ["Display", "Tracker", "follow", "read_progress", "showing"]


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


class Display:
    """Progress of one or more models: a tqdm bar each, or a plain line every ``every_percent``.

    Args:
        stream: where to write (default ``sys.stderr``).
        bar: tqdm bars (True) or plain lines (False); None: bars when ``stream`` is a terminal or
            the code runs in a notebook.
        every_percent: the step between two plain lines, in percent.
    """

    def __init__(self, stream: TextIO | None = None, *, bar: bool | None = None, every_percent: float = 5) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if bar is None:
            isatty = getattr(self.stream, "isatty", lambda: False)
            bar = bool(isatty()) or (self.stream is sys.stderr and _in_notebook())
        self.bar = bar
        self.every_percent = float(every_percent)
        self._bars: dict = {}
        self._printed: dict[str, int] = {}

    def update(self, label: str, step: int, steps: int, loss: float | None = None) -> None:
        """Show that ``label`` has done ``step`` of ``steps`` (loss ``loss``)."""
        steps = max(1, int(steps))
        if self.bar:
            if label not in self._bars:
                from tqdm.auto import tqdm

                self._bars[label] = tqdm(total=steps, desc=label, file=self.stream if not _in_notebook() else None,
                                         leave=False, dynamic_ncols=True)
            bar = self._bars[label]
            bar.total = steps
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(max(0, step - bar.n))
            return
        bucket = int(100 * step / steps // self.every_percent)
        if bucket > self._printed.get(label, 0) or (step >= steps and self._printed.get(label, 0) < 10**6):
            self._printed[label] = 10**6 if step >= steps else bucket
            tail = "" if loss is None else f", loss {loss:.4g}"
            print(f"zoo: {label} {100 * step / steps:3.0f}% ({step}/{steps} steps{tail})", file=self.stream,
                  flush=True)

    def finish(self, label: str) -> None:
        """Remove ``label``'s bar (a finished model gets a table row instead)."""
        bar = self._bars.pop(label, None)
        if bar is not None:
            bar.close()
        self._printed.pop(label, None)

    def close(self) -> None:
        for label in list(self._bars):
            self.finish(label)


_DISPLAY: list[Display] = []  # set by :func:`showing` (the command line); trainers then report to it
_TRACKERS: list["Tracker"] = []  # the zoo models being trained in this process, outermost first


@contextlib.contextmanager
def showing(display: Display):
    """While active, zoo models trained in this process report their progress to ``display``."""
    _DISPLAY.append(display)
    try:
        yield display
    finally:
        _DISPLAY.remove(display)
        display.close()


def current_display() -> Display | None:
    return _DISPLAY[-1] if _DISPLAY else None


class Tracker:
    """Follows the training of zoo model ``name``: writes ``progress_file`` and feeds the display.

    Use as a context manager around the recipe's fit. A model trained inside another's fit (a
    parent) has its own tracker; every tracker's file then says which model is training.
    """

    def __init__(self, name: str, progress_file: Path | None, min_interval: float = 0.5) -> None:
        self.name, self.file, self.min_interval = name, progress_file, min_interval
        self._last_write = 0.0
        self._listening = None

    def __enter__(self) -> "Tracker":
        _TRACKERS.append(self)
        self._listening = progress_listener(self)
        self._listening.__enter__()
        self._write({"step": 0, "steps": 1, "loss": None, "training": self.name})
        return self

    def __exit__(self, *exc) -> None:
        self._listening.__exit__(*exc)
        _TRACKERS.remove(self)
        display = current_display()
        if display is not None:
            display.finish(self.name)
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.unlink()

    def __call__(self, step: int, steps: int, loss: float) -> None:
        innermost = _TRACKERS[-1] if _TRACKERS else self
        now = time.monotonic()
        if self.file is not None and (now - self._last_write >= self.min_interval or step >= steps):
            self._last_write = now
            self._write({"step": step, "steps": steps, "loss": loss, "training": innermost.name})
        display = current_display()
        if innermost is self and display is not None:
            display.update(self.name, step, steps, loss)

    def _write(self, state: dict) -> None:
        if self.file is None:
            return
        tmp = self.file.with_name(self.file.name + f".{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps({"model": self.name, "pid": os.getpid(), "time": time.time(), **state}))
            os.replace(tmp, self.file)


def read_progress(progress_file: Path) -> dict | None:
    """The state another process wrote to ``progress_file``, or None (absent, half-written, foreign)."""
    try:
        state = json.loads(progress_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not {"step", "steps", "model"} <= set(state):
        return None
    return state


def follow(name: str, display: Display | None):
    """An ``on_wait`` for :func:`~course_lib.zoo.cache.build_lock`: shows the builder's progress on ``display``."""
    shown: list[str] = []

    def on_wait(progress_file: Path) -> None:
        state = read_progress(progress_file)
        if state is None or display is None:
            return
        training = state.get("training") or name
        label = f"{name} (pid {state.get('pid')})" if training == name else \
            f"{name} (pid {state.get('pid')}, training {training})"
        if shown and shown[-1] != label:
            display.finish(shown.pop())
        if not shown:
            shown.append(label)
        display.update(label, int(state["step"]), int(state["steps"]), state.get("loss"))

    def done() -> None:
        """Remove the bar once the builder has finished."""
        while shown and display is not None:
            display.finish(shown.pop())

    on_wait.done = done
    return on_wait
