"""Progress display for long work: study trials, epochs inside a training run, data
preparation.

The command line switches one display on for a command (:func:`activate`); the study runner,
the trainer and the data loader report to whichever is active (:func:`current`), so the
library itself stays silent when no one asked. Two renderers:

* :class:`RichProgress` - a live display on a terminal (rich, which Typer depends on): a
  trials bar with done/total, ETA and the best result so far, an epochs bar for the training
  run in progress, and a spinner while data is prepared. Lines printed meanwhile (the
  per-trial lines) scroll above it.
* :class:`PlainProgress` - one line per event on a stream, for logs (``--progress`` when
  stdout is not a terminal).

Example:
    >>> from autodim import progress
    >>> with progress.activate(progress.PlainProgress()) as p:   # doctest: +SKIP
    ...     p.start_trials(total=8, done=0)
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import IO, Any, Iterator

__all__ = ["NullProgress", "PlainProgress", "RichProgress", "activate", "current",
           "choose", "epoch_callback", "format_eta"]


def format_eta(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03`` / ``-`` (unknown)."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class NullProgress:
    """Shows nothing (the default: the library is silent unless a display is active)."""

    enabled = False

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.best: str | None = None
        self._t0: float | None = None
        self._done0 = 0

    # -- trials -----------------------------------------------------------------------------
    def start_trials(self, total: int, done: int = 0) -> None:
        self.total, self.done, self._done0 = int(total), int(done), int(done)
        self._t0 = time.monotonic()
        self._show_trials()

    def trial_done(self, done: int, best: str | None = None) -> None:
        self.done = int(done)
        if best is not None:
            self.best = best
        self._show_trials()

    def eta(self) -> float | None:
        """Seconds left at this session's pace (None before the first trial ends)."""
        ran = self.done - self._done0
        if self._t0 is None or ran <= 0:
            return None
        return (time.monotonic() - self._t0) / ran * max(0, self.total - self.done)

    def _show_trials(self) -> None:
        pass

    # -- epochs -----------------------------------------------------------------------------
    def start_epochs(self, total: int | None) -> None:
        pass

    def epoch_done(self, epoch: int, total: int | None, metric: float | None = None) -> None:
        pass

    def end_epochs(self) -> None:
        pass

    # -- data -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass


class PlainProgress(NullProgress):
    """One line per event (``progress: trials 3/8, ETA 1:20, best ...``) on a stream."""

    enabled = True

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream

    def _line(self, text: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(f"progress: {text}", file=stream, flush=True)

    def _show_trials(self) -> None:
        best = f", best {self.best}" if self.best else ""
        self._line(f"trials {self.done}/{self.total}, ETA {format_eta(self.eta())}{best}")

    def epoch_done(self, epoch: int, total: int | None, metric: float | None = None) -> None:
        auc = f", val AUC {metric:.4f}" if metric is not None else ""
        self._line(f"epoch {epoch}/{total if total else '?'}{auc}")

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[None]:
        t0 = time.monotonic()
        self._line(f"{text} ...")
        yield
        self._line(f"{text}: done in {time.monotonic() - t0:.1f} s")


class RichProgress(NullProgress):
    """A live display on a terminal (rich)."""

    enabled = True

    def __init__(self, console: Any = None) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console if console is not None else Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description:<10}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[extra]}"),
            console=self.console, transient=True, redirect_stdout=True, redirect_stderr=True)
        self._trials: Any = None
        self._epochs: Any = None
        self._started = False

    def _start(self) -> None:
        if not self._started:
            self._progress.start()
            self._started = True

    def _show_trials(self) -> None:
        self._start()
        extra = f"ETA {format_eta(self.eta())}" + (f"  best {self.best}" if self.best else "")
        if self._trials is None:
            self._trials = self._progress.add_task("trials", total=self.total or None,
                                                   completed=self.done, extra=extra)
        else:
            self._progress.update(self._trials, total=self.total or None,
                                  completed=self.done, extra=extra)

    def start_epochs(self, total: int | None) -> None:
        self._start()
        if self._epochs is not None:
            self._progress.remove_task(self._epochs)
        self._epochs = self._progress.add_task("epochs", total=total, completed=0, extra="")

    def epoch_done(self, epoch: int, total: int | None, metric: float | None = None) -> None:
        if self._epochs is None:
            self.start_epochs(total)
        self._progress.update(self._epochs, completed=epoch, total=total,
                              extra=f"val AUC {metric:.4f}" if metric is not None else "")

    def end_epochs(self) -> None:
        if self._epochs is not None:
            self._progress.remove_task(self._epochs)
            self._epochs = None

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[None]:
        self._start()
        task = self._progress.add_task(text, total=None, extra="")
        try:
            yield
        finally:
            self._progress.remove_task(task)

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False


_ACTIVE: NullProgress = NullProgress()


def current() -> NullProgress:
    """The active display (a :class:`NullProgress` when none is)."""
    return _ACTIVE


@contextlib.contextmanager
def activate(display: NullProgress) -> Iterator[NullProgress]:
    """Make ``display`` the active one for the block, then close it."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, display
    try:
        yield display
    finally:
        _ACTIVE = previous
        display.close()


def choose(*, quiet: bool, asked: bool | None, stdout: IO[str] | None = None) -> NullProgress:
    """The display a command gets: none with ``quiet``; else, when ``asked`` is None, a live
    one only when stdout is a terminal; ``asked=True`` forces one (lines when stdout is not
    a terminal), ``False`` none."""
    stdout = stdout if stdout is not None else sys.stdout
    if quiet or asked is False:
        return NullProgress()
    tty = bool(getattr(stdout, "isatty", lambda: False)())
    if not tty:
        return PlainProgress() if asked else NullProgress()
    try:
        return RichProgress()
    except ImportError:  # rich missing: lines instead
        return PlainProgress()


def epoch_callback():
    """A Lightning callback that reports each epoch (and its val AUC) to the active display;
    None when no display is active."""
    display = current()
    if not display.enabled:
        return None
    from lightning.pytorch.callbacks import Callback

    class _Epochs(Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
            display.start_epochs(total)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            auc = trainer.callback_metrics.get("val_auc")
            total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
            display.epoch_done(trainer.current_epoch + 1, total,
                               float(auc) if auc is not None else None)

        def on_fit_end(self, trainer, pl_module) -> None:
            display.end_epochs()

    return _Epochs()
