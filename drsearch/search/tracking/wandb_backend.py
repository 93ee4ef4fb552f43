"""Weights & Biases: one W&B run per trial, grouped by study, its id derived from the study's
UUID and the trial number (so a resumed or promoted trial continues its run); offline by
default (``wandb sync`` uploads later).

W&B cannot be asked offline what a run holds, so a small record per trial
(``<dir>/drsearch/<study uuid, 8 characters>-<number>.json``: its last logged epoch, state
and status, written atomically after W&B took the write) keeps each epoch logged once and
tells the reconcile what to bring in line with the study.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from drsearch.io import write_text_atomic
from drsearch.search.tracking.common import STATE_TAG


def next_step(mode: str, folder: Path) -> tuple[str, str] | None:
    if mode != "offline":
        return None
    runs = shlex.quote(str(folder.resolve() / "wandb"))
    return f"wandb sync {runs}/offline-run-*", "upload the study's W&B runs (written offline)"


class WandbBackend:
    """One study's trial runs in a W&B project."""

    name = "W&B"

    def __init__(self, project: str, entity: str | None, mode: str, folder: Path) -> None:
        import wandb

        self.wandb = wandb
        self.project, self.entity, self.mode = project, entity, mode
        self.folder = folder.resolve()
        self.records = self.folder / "drsearch"
        self.records.mkdir(parents=True, exist_ok=True)
        self.where = f"{mode} project {project} ({self.folder})"
        self.study = ""
        self.group = ""
        self.runs: dict[int, Any] = {}

    def hide(self, text: str) -> str:
        return text

    def open_study(self, study: str, name: str, params: dict[str, str]) -> None:
        self.study, self.group = study, name

    def study_status(self, running: bool) -> bool:
        """Nothing: W&B groups the trial runs; there is no study run to end."""
        return False

    def _path(self, number: int) -> Path:
        return self.records / f"{self.study[:8]}-{number}.json"

    def _entry(self, number: int) -> dict[str, Any]:
        path = self._path(number)
        return json.loads(path.read_text()) if path.is_file() else {}

    def _write(self, number: int, **changes: Any) -> None:
        entry = self._entry(number) | changes
        write_text_atomic(self._path(number), json.dumps(entry))

    def tracked(self) -> dict[int, tuple[str, str]]:
        out = {}
        for path in self.records.glob(f"{self.study[:8]}-*.json"):
            entry = json.loads(path.read_text())
            if entry.get("study") == self.study:
                number = int(path.stem.rpartition("-")[2])
                out[number] = (str(entry.get("state")), str(entry.get("status")))
        return out

    def last_epoch(self, number: int) -> int:
        return int(self._entry(number).get("epoch", 0))

    def _open(self, number: int, config: dict[str, str] | None = None) -> Any:
        if number not in self.runs:
            self.runs[number] = self.wandb.init(
                project=self.project, entity=self.entity, mode=self.mode, dir=str(self.folder),
                id=f"{self.study[:8]}-trial{number}", name=f"trial {number}", group=self.group,
                job_type="trial", config=config or {}, resume="allow", reinit="create_new",
                settings=self.wandb.Settings(silent=True, console="off"),
            )  # fmt: skip
            if not self._entry(number):
                self._write(number, study=self.study, epoch=0, state="RUNNING", status="RUNNING")
        return self.runs[number]

    def trial_run(
        self, number: int, params: dict[str, str], tags: dict[str, str], running: bool
    ) -> None:
        self._open(number, params | tags)
        if running:
            self._write(number, state="RUNNING", status="RUNNING")

    def log_epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        if epoch <= self.last_epoch(number):
            return
        self._open(number).log(metrics, step=epoch)
        self._write(number, epoch=epoch)

    def pause(self, number: int) -> None:
        run = self.runs.pop(number, None)
        if run is not None:  # paused: this process lets the run go (a promotion resumes it)
            run.summary[STATE_TAG] = "PAUSED"
            run.finish()
        self._write(number, state="PAUSED", status="RUNNING")

    def end_trial(
        self,
        number: int,
        status: str,
        metrics: dict[str, float],
        tags: dict[str, str],
        artifacts: list[Path],
        end_ms: int | None,
    ) -> None:
        run = self._open(number)
        for key, value in [*metrics.items(), *tags.items()]:
            run.summary[key] = value
        if artifacts:
            artifact = self.wandb.Artifact(f"trial{number}-{self.study[:8]}", type="trial")
            for path in artifacts:
                artifact.add_file(str(path))
            run.log_artifact(artifact)
        run.finish(exit_code=0 if status == "FINISHED" else 1)
        self.runs.pop(number, None)
        self._write(number, state=tags.get(STATE_TAG, status), status=status)
