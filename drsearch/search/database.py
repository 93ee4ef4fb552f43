"""Opening a study's database: storage URLs (secrets masked wherever shown), one-line
connection errors, reading a study without creating one, and the lock runners share."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

from drsearch.config.study import StudyConfig
from drsearch.errors import ConfigError

#: Query parameters of a URL whose values are secrets (``?password=...``, ``sslpassword``,
#: ``api_key``, ``token``...).
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|credential|auth", re.IGNORECASE)


def masked_url(url: str) -> str:
    """The URL with every secret hidden (the user-info password and password-like query
    parameters), for anything shown or written: console, records, recipes, errors."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL we can take apart: show none of it
        return "<storage URL hidden: not a valid SQLAlchemy URL>"
    query = {k: ("***" if _SECRET_PARAM.search(k) else v) for k, v in parsed.query.items()}
    shown = parsed.set(query=query).render_as_string(hide_password=True)
    return shown.replace("%2A%2A%2A", "***")


def make_storage(url: str) -> RDBStorage:
    """An ``RDBStorage``; SQLite waits for locks instead of failing at once. A storage that
    cannot be opened is a one-line error with the URL's secrets masked."""
    from sqlalchemy.engine import make_url

    kwargs: dict[str, Any] = {}
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs = {"connect_args": {"timeout": 60}}
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    with storage_errors(url):
        return RDBStorage(url, engine_kwargs=kwargs)


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn a database error into one line naming the storage, its secrets masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        detail = cause[0] if cause else type(exc).__name__
        for secret in _secrets(make_url(url)):
            detail = detail.replace(secret, "***")
        raise ConfigError(f"storage {masked_url(url)}: cannot open it: {detail}") from None


def _secrets(parsed: Any) -> list[str]:
    found = [parsed.password] if parsed.password else []
    found += [v for k, v in parsed.query.items() if _SECRET_PARAM.search(k) and isinstance(v, str)]
    return [str(s) for s in found if s]


def open_existing(config: StudyConfig, source: Path | str) -> optuna.Study:
    """The study, for reading (report, export, dashboard): a one-line error, and no database
    file created, when it has not been run yet."""
    from sqlalchemy.engine import make_url

    url = config.storage_url()
    parsed = make_url(url)
    missing = (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and not Path(str(parsed.database)).is_file()
    )
    if not missing:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            return optuna.load_study(study_name=config.name, storage=make_storage(url))
        except KeyError:
            pass
    raise ConfigError(
        f"{source}: no study {config.name!r} in {masked_url(url)} yet; run it first with "
        f"`drsearch run {source}`"
    )


class StudyLock:
    """A lock every runner of a study takes to claim a trial (and to create the study).

    SQLite: ``flock`` on ``<database>.lock`` (one machine; SQLite is not for several).
    PostgreSQL: a session advisory lock keyed by the study name, so runners on any machine
    that reaches the server exclude each other. Not re-entrant.
    """

    def __init__(self, url: str, name: str) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        self.url = url
        self.file: Path | None = None
        self._engine: Any = None
        if self.backend == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                self.file = Path(parsed.database + ".lock")
        elif self.backend != "postgresql":
            raise ConfigError(
                f"storage: {self.backend} is not supported; use SQLite (the default) or "
                "PostgreSQL (postgresql+psycopg2://user@host/db)"
            )
        digest = hashlib.sha256(f"drsearch:{name}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.backend == "postgresql":
            yield from self._advisory()
        elif self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with self.file.open("a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        else:
            yield

    def _advisory(self) -> Iterator[None]:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        if self._engine is None:
            self._engine = create_engine(self.url, poolclass=NullPool)
        with storage_errors(self.url):
            conn = self._engine.connect()
        with conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
