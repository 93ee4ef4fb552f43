"""What ``fit`` tells its caller: the reporter seam and the result.

The search layer drives training only through ``reporter(epoch, metrics)`` (``Reporter``),
called once per finished epoch after it is checkpointed; raising ``StopTraining`` from it ends
the run cleanly. A ``Progress`` display may follow the batches; ``FitResult`` is what a run
achieved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Reporter = Callable[[int, dict[str, Any]], None]


class StopTraining(Exception):  # noqa: N818 - a signal, not an error
    """Raise from a reporter to end training after the current epoch."""


class Progress(Protocol):
    """What ``fit`` tells a progress display; every method may be a no-op."""

    def status(self, message: str) -> None: ...
    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...
    def advance(self, loss: float) -> None: ...
    def end_epoch(self, record: dict[str, Any]) -> None: ...


class _Silent:
    def status(self, message: str) -> None: ...
    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...
    def advance(self, loss: float) -> None: ...
    def end_epoch(self, record: dict[str, Any]) -> None: ...


@dataclass
class FitResult:
    """What a run achieved; ``best`` holds the validation metrics of ``best_epoch``."""

    run_dir: Path
    best_epoch: int
    best: dict[str, Any]
    last: dict[str, Any]
    epochs_completed: int
    stopped: str  # "completed", "early_stopping", "select_epoch" or "reporter"
    wall_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # total / trainable / lora
    skipped: dict[str, int] = field(default_factory=dict)  # data.skip_bad: reason -> count
