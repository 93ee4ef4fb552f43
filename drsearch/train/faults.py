"""Fault injection for the robustness tests: kill this process at a named point, once.

``DRSEARCH_FAULT=<point>:<epoch>`` (e.g. ``after_checkpoint:2``) makes the training process
kill itself with SIGKILL when it reaches ``point`` at the end of epoch ``epoch``, the first
time only (a marker file in the run folder remembers it), so the tests can reproduce a crash
between two writes, in-process or inside a Ray worker. ``<point>:<epoch>:INT`` sends SIGINT
instead: Ctrl-C at an exact moment (the local executor trains in the runner's process).
Unset, it costs one environment lookup per epoch.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

POINTS = ("after_checkpoint", "after_record")


def fault_point(point: str, epoch: int, run_dir: Path) -> None:
    spec = os.environ.get("DRSEARCH_FAULT")
    if not spec:
        return
    wanted, _, rest = spec.partition(":")
    at, _, name = rest.partition(":")
    if wanted != point or not at.isdigit() or int(at) != epoch:
        return
    marker = run_dir / f".fault-{point}-{epoch}"
    if marker.exists():
        return
    marker.touch()
    os.kill(os.getpid(), signal.SIGINT if name == "INT" else signal.SIGKILL)
