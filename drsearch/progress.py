"""A rich progress display for ``drsearch train``: epoch and batch bars, one line per epoch."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _fmt(value: Any) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


class RichTrainProgress:
    """Implements ``drsearch.train.Progress`` on a rich console."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
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
            f" acc {train['accuracy']:.3f} | val acc {_fmt(val['accuracy'])} qwk {_fmt(val['qwk'])}"
            f" sens3 {_fmt(sens[3])} sens4 {_fmt(sens[4])} | lr {lrs}"
            f" | {record['epoch_seconds']:.1f}s"
        )
