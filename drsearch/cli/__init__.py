"""The ``drsearch`` command line: thin commands that parse, call and print.

One module per group of commands (``train``: train, lr; ``study``: run, check, export;
``inspect``: report, dashboard, diagnose, sync; ``evaluate``: evaluate; ``predict``: grading new
images; ``confirm``: the finalist stage; ``data``), sharing ``common`` (the group, one-line
errors with exit code 2, shared options) and ``progress`` (live displays).
"""

from __future__ import annotations

from drsearch.cli import confirm, data, evaluate, inspect, predict, study, train  # noqa: F401
from drsearch.cli.common import UserError, cli


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="drsearch")


__all__ = ["UserError", "cli", "main"]
