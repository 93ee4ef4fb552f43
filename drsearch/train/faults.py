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
import threading
import time
from pathlib import Path
from typing import Any

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


def calls_fault(target: Any, point: str) -> Any:
    """``target`` itself, or, with ``DRSEARCH_FAULT=<point>:<n>``, a stand-in that kills this
    process with SIGKILL inside its ``n``-th method call (after the call began, before it
    returned: the write half done, as a kill at the worst moment leaves it). For the chaos
    benchmark's kills inside a tracking client (``point``: ``tracking``)."""
    spec = os.environ.get("DRSEARCH_FAULT", "")
    wanted, _, at = spec.partition(":")
    if wanted != point or not at.isdigit():
        return target
    return _KillOnCall(target, int(at))


class _KillOnCall:
    def __init__(self, target: Any, n: int) -> None:
        self._target, self._left = target, n

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._left -= 1
            if self._left <= 0:
                # the call goes out, and the process dies before it hears the answer
                threading.Thread(target=attr, args=args, kwargs=kwargs, daemon=True).start()
                time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)
            return attr(*args, **kwargs)

        return call
