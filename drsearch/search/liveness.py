"""Which runner owns a RUNNING trial, and whether that runner still runs.

A runner is named by its host, boot, PID namespace, PID, process start time and a token of
its own (``RunnerId``); each RUNNING trial also carries a heartbeat, written by its runner at
once when it takes the trial and every ``HEARTBEAT_EVERY_S`` after, on the database's clock
(as Optuna's RDB heartbeat does), so the clocks of the runners' hosts never matter. What
decides, by the evidence the stored id carries:

- this runner: alive; another runner of this process: alive while it is open (its token);
- the same machine (host, boot id and PID namespace equal: the process can be asked): alive
  while a process with that PID and start time exists and has not exited (a zombie, killed
  but not yet reaped by its parent, is dead; so is a reused PID); one that exists but cannot
  be read is not proof of death, and its heartbeat decides;
- the same host name with another boot id: an earlier boot of this machine, or another
  machine of the same name (a cloned VM, a container): only the heartbeat can tell them
  apart, so it decides (an earlier boot's heartbeat has stopped; a clone's still beats);
- another PID namespace (a container on this kernel), another host, or an id that names no
  runner: the heartbeat decides.

The heartbeat decides as: alive while the last beat is younger than ``STALE_AFTER_S``; a
trial that never beat (its runner died between claiming and its first beat) is dead.

Optuna's own ``fail_stale_trials`` is not used: promotion ASHA leaves paused trials RUNNING
with no runner, and it would fail them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from optuna.storages import RDBStorage

RUNNER_ATTR = "drsearch:runner"
HEARTBEAT_ATTR = "drsearch:heartbeat"
#: A RUNNING trial whose runner cannot be asked is presumed dead after this long without news.
STALE_AFTER_S = 300.0
HEARTBEAT_EVERY_S = 30.0

#: Tokens of the runners open in this process (a runner that raised and let go is not).
_OPEN: set[str] = set()


@dataclass(frozen=True)
class RunnerId:
    host: str
    pid: int
    started: float
    boot: str = ""
    pidns: str = ""
    token: str = ""

    def __str__(self) -> str:
        return ":".join(
            [self.host, str(self.pid), f"{self.started:.2f}", self.boot, self.pidns, self.token]
        )

    @classmethod
    def parse(cls, text: str) -> RunnerId | None:
        """The stored form; the older ``host:pid:start`` form too. ``None`` if neither."""
        parts = text.split(":")
        if len(parts) not in (3, 6) or not parts[1].isdigit():
            return None
        try:
            started = float(parts[2])
        except ValueError:
            return None
        return cls(parts[0], int(parts[1]), started, *parts[3:])

    def same_machine(self, other: RunnerId) -> bool:
        """Whether ``other``'s process can be asked from here (same host, boot and PIDs)."""
        if not (self.boot and other.boot):  # an id of the older form: its host alone
            return self.host == other.host
        return self.host == other.host and self.boot == other.boot and self.pidns == other.pidns


def boot_id() -> str:
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as fh:
        return fh.read().strip().replace("-", "")[:12]
    return ""


def pid_namespace() -> str:
    with contextlib.suppress(OSError):
        return str(os.stat("/proc/self/ns/pid").st_ino)
    return ""


def process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch); ``None`` if there is none, or
    it has exited and only waits to be reaped (a zombie: its start time still answers).
    Raises ``PermissionError`` when it exists but cannot be read (not proof of death)."""
    import psutil

    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                return None
            return float(process.create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        raise PermissionError(pid) from None


def open_runner() -> RunnerId:
    """A new runner of this process, open until ``close_runner``."""
    pid = os.getpid()
    me = RunnerId(
        socket.gethostname(),
        pid,
        process_start(pid) or 0.0,
        boot_id(),
        pid_namespace(),
        uuid.uuid4().hex[:8],
    )
    _OPEN.add(me.token)
    return me


def close_runner(me: RunnerId) -> None:
    _OPEN.discard(me.token)


def runner_alive(owner: str, me: RunnerId, heartbeat_age: float | None) -> bool:
    """Whether the runner named ``owner`` still runs. ``heartbeat_age``: seconds since the
    trial's last heartbeat on the database's clock (``None``: never beat)."""
    if owner == str(me):
        return True
    other = RunnerId.parse(owner)
    # the same host name with another boot id (an earlier boot of this machine, or a cloned
    # machine) is not the same machine: its heartbeat decides, below
    if other is not None and me.same_machine(other):
        if other.pid == me.pid and abs(other.started - me.started) < 1.0:
            return not other.token or other.token in _OPEN  # this process: is it open?
        try:
            started = process_start(other.pid)
        except PermissionError:
            pass  # exists, unreadable: the heartbeat decides
        else:
            return started is not None and abs(started - other.started) < 1.0
    return heartbeat_age is not None and heartbeat_age < STALE_AFTER_S


def db_now(storage: RDBStorage) -> float:
    """The database's clock, in seconds since the epoch (one clock for every runner); an
    in-memory storage (the simulated executor's) has only this process's clock."""
    from sqlalchemy import text

    if getattr(storage, "engine", None) is None:
        return time.time()

    with storage.engine.connect() as conn:
        value: Any = conn.execute(text("SELECT CURRENT_TIMESTAMP")).scalar()
    if isinstance(value, str):  # SQLite: 'YYYY-MM-DD HH:MM:SS' in UTC
        value = datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return float(value.timestamp())


class Heartbeat:
    """Beats for a runner's trials every ``HEARTBEAT_EVERY_S`` on the database's clock."""

    def __init__(self, storage: RDBStorage, active: Callable[[], Iterable[int]]) -> None:
        self.storage, self.active = storage, active
        self._stop: threading.Event | None = None

    def beat(self, trial_id: int) -> None:
        self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, db_now(self.storage))

    def age(self, system_attrs: dict[str, Any], now: float) -> float | None:
        beat = system_attrs.get(HEARTBEAT_ATTR)
        return None if beat is None else now - float(beat)

    def start(self) -> None:
        if self._stop is not None:
            return
        stop = self._stop = threading.Event()

        def run() -> None:
            while not stop.wait(HEARTBEAT_EVERY_S):
                for trial_id in list(self.active()):
                    with contextlib.suppress(Exception):  # the next beat will try again
                        self.beat(trial_id)

        threading.Thread(target=run, name="drsearch-heartbeat", daemon=True).start()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
