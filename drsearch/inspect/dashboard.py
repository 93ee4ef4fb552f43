"""Serving optuna-dashboard on a study's storage, with the artifacts its trials uploaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    storage: Any,
    artifacts: Path,
    title: str,
    host: str,
    port: int,
    say: Callable[[str, bool], None],
    verbose: bool = False,
) -> None:
    """Serve ``storage`` until interrupted; ``say(line, is_warning)`` tells the user where
    (``title`` names the study and its masked storage URL) and, off loopback, that the
    dashboard has no authentication. The server logs every request only when ``verbose``."""
    from bottle import run
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import wsgi

    artifacts.mkdir(parents=True, exist_ok=True)
    if host not in LOOPBACK:
        say(
            f"Warning: serving on {host}: optuna-dashboard has no authentication, so anyone "
            f"who can reach this machine on port {port} can read and change the study; use "
            "the default 127.0.0.1 and an SSH tunnel to share it safely",
            True,
        )
    say(f"optuna-dashboard for {title} at http://{host}:{port}/dashboard/ - Ctrl+C to stop", False)
    app = wsgi(storage, artifact_store=FileSystemArtifactStore(str(artifacts)))
    # optuna-dashboard's own run_server is bottle's run() without ``quiet``: a line per GET
    run(app, host=host, port=port, quiet=not verbose)
