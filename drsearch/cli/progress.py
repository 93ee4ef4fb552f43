"""Live displays: ``drsearch train`` (epoch and batch bars, a line per epoch) and
``drsearch run`` (elapsed, time left, running trials by epoch, a line per finished trial)."""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from drsearch.fmt import duration, num, short
from drsearch.ranking import Ranked, closest, search_best


def stderr_console(stderr: bool = True) -> Console:
    """A console (progress: stderr; tables: stdout): on a terminal, rich as usual; in a log
    or a pipe (``| tee``, CI), lines are never wrapped at 80 columns."""
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    width = int(os.environ.get("COLUMNS") or 200)  # no terminal: wide tables, no wrapping
    return Console(stderr=stderr, soft_wrap=True, width=width)


class RichTrainProgress:
    """Implements ``drsearch.train.Progress`` on a rich console."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or stderr_console()
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._epoch_task: Any = None
        self._batch_task: Any = None

    def __enter__(self) -> RichTrainProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def status(self, message: str) -> None:
        if self._epoch_task is None:
            self._epoch_task = self.bars.add_task("setup", total=None, info=message)
        else:
            self.bars.update(self._epoch_task, info=message)

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        self.bars.update(
            self._epoch_task, description="epoch", total=epochs, completed=epoch - 1, info=""
        )
        if self._batch_task is None:
            self._batch_task = self.bars.add_task("batch", total=batches, info="")
        self.bars.reset(self._batch_task, total=batches, info="")

    def advance(self, loss: float) -> None:
        self.bars.update(self._batch_task, advance=1, info=f"loss {loss:.4f}")

    def end_epoch(self, record: dict[str, Any]) -> None:
        self.bars.update(self._epoch_task, completed=record["epoch"])
        val, train, lr = record["val"], record["train"], record["lr"]
        sens = val["sensitivity"]
        lrs = " ".join(f"{name} {value:.2e}" for name, value in lr.items())
        self.console.print(
            f"epoch {record['epoch']:>3} train loss {train['loss']:.3f}"
            f" acc {train['accuracy']:.3f} | val acc {num(val['accuracy']).rjust(5)}"
            f" qwk {num(val['qwk']).rjust(5)}"
            f" sens3 {num(sens[3]).rjust(5)} sens4 {num(sens[4]).rjust(5)} | lr {lrs}"
            f" | {record['epoch_seconds']:.1f}s"
        )


class RichStudyProgress:
    """Live view of a study: finished / pruned / failed / running and the best value so far.

    Implements ``drsearch.search.runners.common.StudyProgress``; one line is printed per finished
    trial so the history stays on screen.
    """

    def __init__(
        self, n_trials: int, max_epochs: int | None = None, console: Console | None = None
    ) -> None:
        from rich.live import Live

        self.console = console or stderr_console()
        self.n_trials, self.max_epochs = n_trials, max_epochs
        self.started = time.monotonic()
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.running: dict[int, str] = {}
        self.paused: set[int] = set()  # promotion ASHA: waiting at a rung
        self.params: dict[int, dict[str, Any]] = {}
        self.finished: list[Ranked] = []  # this run's complete trials, as ranking sees them
        self.epochs_done = 0  # epochs reported by every trial of this run
        self.epoch_of: dict[int, int] = {}  # a running trial's latest epoch
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)

    def __enter__(self) -> RichStudyProgress:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def _render(self) -> Any:
        from rich.text import Text

        c = self.counts
        best = "none yet"
        top = search_best(self.finished)
        if top is not None:
            best = f"{top.value:.4f} (trial {top.number}, feasible)"
        elif (near := closest(self.finished)) is not None:
            best = f"none feasible yet; closest {near.value:.4f} (trial {near.number})"
        lines = [
            f"{duration(time.monotonic() - self.started)} elapsed{self._eta()} | this run: "
            f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed, "
            f"{len(self.running)} running"
            + (f", {len(self.paused)} paused" if self.paused else "")
            + f" (budget {self.n_trials}) | best {best}"
        ]
        lines += [f"  trial {n}: {status}" for n, status in sorted(self.running.items())]
        return Text("\n".join(lines))

    def _eta(self) -> str:
        """A rough time left: the mean time per finished trial times the trials left (pruned
        trials make the real figure smaller). Before any trial has finished: the epochs left
        if every trial ran all ``max_epochs``, at the epochs per second seen so far (an upper
        bound: pruning only shortens it)."""
        done = sum(self.counts.values())
        if not done:
            if not self.epochs_done or not self.max_epochs:
                return ""
            seconds = time.monotonic() - self.started
            waiting = max(0, self.n_trials - len(set(self.running) | set(self.epoch_of)))
            left = waiting * self.max_epochs + sum(
                self.max_epochs - e for e in self.epoch_of.values()
            )
            return f", at most about {duration(left * seconds / self.epochs_done)} left"
        left = max(0, self.n_trials - done - len(self.running)) + len(self.running) / 2
        per_trial = (time.monotonic() - self.started) / (done + len(self.running) / 2)
        return f", about {duration(left * per_trial)} left"

    def _refresh(self) -> None:
        self.live.update(self._render())

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        if number in self.paused:
            self.console.print(f"trial {number:>4} promoted: resumed from its checkpoint")
        self.running[number] = "starting"
        self.paused.discard(number)
        self.params[number] = params
        self._refresh()

    def trial_epoch(self, number: int, epoch: int, value: float) -> None:
        if epoch > self.epoch_of.get(number, 0):  # a promoted trial's replayed epochs: not new
            self.epochs_done += epoch - self.epoch_of.get(number, 0)
            self.epoch_of[number] = epoch
        of = f"/{self.max_epochs}" if self.max_epochs else ""
        self.running[number] = f"epoch {epoch}{of}, pruning metric {value:.4f}"
        self._refresh()

    def trial_finished(self, number: int, outcome: Any) -> None:
        self.running.pop(number, None)
        self.paused.discard(number)
        self.counts[outcome.state] = self.counts.get(outcome.state, 0) + 1
        attrs = outcome.user_attrs
        self.epoch_of.pop(number, None)
        if outcome.state == "COMPLETE" and outcome.value is not None:
            self.finished.append(Ranked(number, outcome.value, bool(attrs.get("feasible"))))
            detail = (
                f"value {outcome.value:.4f} (accuracy {num(attrs.get('accuracy')).rjust(5)}, "
                f"{'feasible' if attrs.get('feasible') else 'infeasible'})"
            )
        elif outcome.state == "PRUNED":
            detail = f"at epoch {attrs.get('pruned_at_epoch')}"
        else:
            detail = str(attrs.get("fail_reason", ""))
        params = ", ".join(f"{k}={short(v)}" for k, v in self.params.pop(number, {}).items())
        self.console.print(
            f"trial {number:>4} {outcome.state.lower():<8} {detail}"
            + (f" | {params}" if params else ""),
            highlight=False,
        )
        self._refresh()

    def trial_paused(self, number: int, epoch: int) -> None:
        """Promotion ASHA: the trial waits at its rung (resumed if it comes into the top)."""
        self.running.pop(number, None)
        self.paused.add(number)
        self.console.print(
            f"trial {number:>4} paused   at epoch {epoch}, a rung: resumed from its checkpoint "
            "once it ranks in the rung's top, else pruned at the end",
            highlight=False,
        )
        self._refresh()

    def warn(self, message: str) -> None:
        self.console.print(f"Warning: {message}", highlight=False)
