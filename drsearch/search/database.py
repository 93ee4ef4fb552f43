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
from urllib.parse import quote, unquote

import optuna
from optuna.storages import RDBStorage

from drsearch.config.study import StudyConfig
from drsearch.errors import ConfigError

#: Query parameters of a URL whose values are secrets (``?password=...``, ``sslpassword``,
#: ``api_key``, ``token``...).
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|credential|auth", re.IGNORECASE)


def masked_url(url: str) -> str:
    """The URL with every secret hidden (the user-info password and password-like query
    parameters), for anything shown or written: console, records, recipes, errors.

    The password is everything between the user name's ``:`` and the last ``@`` of the
    authority, as the HTTP client (``requests``, ``urllib``) splits it; SQLAlchemy splits at
    the first ``@``, so a password holding an ``@`` (``alice:Pa@SECRET@host``) has the part
    after it taken for the host: masked too, whichever parser reads the URL."""
    parts = _split(url)
    if parts is None:
        return "<storage URL hidden: not a valid SQLAlchemy URL>"
    scheme, user, password, rest = parts
    if not scheme:
        return rest  # a local path: nothing to hide
    shown = f"{scheme}://"
    if user is not None:
        shown += f"{user}:***@" if password is not None else f"{user}@"
    where, mark, query = rest.partition("?")
    if mark:
        pairs = [p.partition("=") for p in query.split("&")]
        query = "&".join(
            f"{k}=***" if eq and _SECRET_PARAM.search(unquote(k)) else f"{k}{eq}{v}"
            for k, eq, v in pairs
        )
    return shown + where + mark + query


def hide_secrets(text: str, url: str) -> str:
    """``text`` (an error, a library's message) with ``url`` and each of its secrets, in
    every form a parser may echo (raw, decoded, encoded), shown as ``***``."""
    text = text.replace(url, masked_url(url))
    for secret in sorted(url_secrets(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def url_secrets(url: str) -> set[str]:
    """The secrets of ``url`` as any parser of it may show them: the password (raw, decoded,
    re-encoded; as SQLAlchemy's first-``@`` split sees it, also the piece it takes for the
    host) and the values of password-like query parameters."""
    parts = _split(url)
    found: set[str] = set()
    if parts is None:
        return {url} if url else set()
    if not parts[0]:
        return set()
    scheme, user, password, rest = parts
    if password:
        found |= {password, unquote(password), quote(unquote(password), safe="")}
        pieces = {*password.split("@"), *unquote(password).split("@")}
        found |= {piece for piece in pieces if len(piece) >= 3}
    for pair in rest.partition("?")[2].split("&"):
        k, eq, v = pair.partition("=")
        if eq and v and _SECRET_PARAM.search(unquote(k)):
            found |= {v, unquote(v)}
    return {s for s in found if s and s != "@"}


def _split(url: str) -> tuple[str, str | None, str | None, str] | None:
    """``(scheme, user, password, the rest)`` of a URL (scheme ``""``: a local path, such as
    MLflow's ``mlruns``); ``None`` when it is neither.

    The user information ends at the last ``@`` before the host (``urllib``, ``requests``)
    or at SQLAlchemy's, which may lie past a ``/`` or ``?`` of the password: the later of
    the two, so that no parser sees a secret where this one sees none."""
    from urllib.parse import urlsplit

    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", url, re.DOTALL)
    if match is None:
        return ("", None, None, url) if url and ":" not in url and "@" not in url else None
    scheme, rest = match.groups()
    end = -1
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        end = authority.rindex("@")
    # sqlalchemy.engine.url's user and password (a database URL's; never an HTTP one's)
    alchemy = re.match(r"^[^:/]*(?::[^@]*)?@", rest)
    if alchemy is not None and scheme.lower() not in ("http", "https"):
        end = max(end, alchemy.end() - 1)
    if end < 0:
        try:
            urlsplit(url)
        except ValueError:
            return None
        return scheme, None, None, rest
    info = rest[:end]
    user, colon, password = info.partition(":")
    return scheme, user, password if colon else None, rest[end + 1 :]


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
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        detail = hide_secrets(cause[0] if cause else type(exc).__name__, url)
        raise ConfigError(f"storage {masked_url(url)}: cannot open it: {detail}") from None


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
