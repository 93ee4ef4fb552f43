"""What a study's tracking owes, kept on disk: ``<run_root>/<name>-tracking-ledger.jsonl``.

The study (Optuna's record, each trial's ``metrics.jsonl`` and files) holds everything a
tracked run should hold, so a lost write need not be kept to be replayed: the reconcile
derives it again. The ledger only records *that* a backend lost writes (and the last error),
so that the next chance to catch up (the next epoch or trial of this runner, the next
``drsearch run``, ``drsearch report`` or ``drsearch sync``) checks every run in full (its
epochs too), not only its state; and that it caught up since.

One JSON line per event, appended (one small write: runners of a study append without a
lock): ``{"owed": "MLflow", "error": ...}`` when a backend falls behind, ``{"paid": "MLflow",
"through": N}`` when a reconcile that started with N lines in the file succeeded. A backend
is owed while a line owing it comes at or after the last ``through``: a runner that fell
behind while another caught up is still owed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text()
        except OSError:
            return []
        out: list[dict[str, Any]] = []
        for line in text.split("\n")[:-1]:  # whole lines only (the last may be cut short)
            try:
                row = json.loads(line)
            except ValueError:
                row = {}  # a line cut by a crash: it still counts as a line
            out.append(row if isinstance(row, dict) else {})
        return out

    def mark(self) -> int:
        """Where a reconcile starts: what it pays for when it succeeds."""
        return len(self._lines())

    def owed(self, name: str) -> dict[str, Any] | None:
        """The last line owing ``name`` that no reconcile has paid for yet."""
        lines = self._lines()
        through = max((int(r.get("through", 0)) for r in lines if r.get("paid") == name), default=0)
        owing = [r for r in lines[through:] if r.get("owed") == name]
        return owing[-1] if owing else None

    def owe(self, name: str, error: str) -> None:
        self._append({"owed": name, "error": error, "at": _now()})

    def paid(self, name: str, through: int) -> None:
        if self.owed(name) is not None:
            self._append({"paid": name, "through": through, "at": _now()})

    def _append(self, row: dict[str, Any]) -> None:
        # one write of one line with O_APPEND: runners appending at once never interleave
        # within a line; a full disk costs the record, never the study
        data = (json.dumps(row) + "\n").encode()
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a line cut by a kill
                    data = b"\n" + data
                os.write(fd, data)
            finally:
                os.close(fd)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
