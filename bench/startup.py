"""Seconds from typing a command to its first line of output, for the commands a user runs often.

    python bench/startup.py [--repeat 3]

Runs the demo study's smoke version once (local executor, in a temporary run root) so that
``trials``, ``best``, ``report`` and ``dashboard`` have a study to open, then times each
command as a new process, from start to its first byte of output (for ``report``: to exit,
since it prints when the page is written; ``dashboard`` is stopped after its first line).
Prints the median of ``--repeat`` runs; the goal is under 2 s on a 2-core CPU. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled")


def first_output(command: list[str], stop_after_first: bool = False) -> float:
    """Seconds until the process writes its first byte (to stdout or stderr)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    elapsed = time.perf_counter() - started
    if stop_after_first:
        proc.terminate()
    out = first + proc.stdout.read()
    # 2: a one-line answer such as "no feasible complete trial yet" (a smoke study may have
    # none) is still the command's first output
    if proc.wait() not in (0, 2, -15) or not first:
        sys.exit(f"{' '.join(command)} failed:\n{out.decode(errors='replace')}")
    return elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    drsearch = str(Path(sys.executable).with_name("drsearch"))
    with tempfile.TemporaryDirectory() as tmp:
        opened = ["--smoke", "--run-root", tmp]
        subprocess.run(
            [drsearch, "run", "studies/demo.yaml", *opened, "--executor", "local", "--quiet"],
            cwd=REPO,
            env=ENV,
            check=True,
            capture_output=True,
        )
        commands: list[tuple[str, list[str], bool]] = [
            ("drsearch --help", [drsearch, "--help"], False),
            ("drsearch lr recipes/demo.yaml", [drsearch, "lr", "recipes/demo.yaml"], False),
            ("drsearch trials (smoke study)", [drsearch, "trials", "studies/demo.yaml",
                                               *opened], False),
            ("drsearch best (smoke study)", [drsearch, "best", "studies/demo.yaml", *opened],
             False),
            ("drsearch report (to exit)", [drsearch, "report", "studies/demo.yaml", *opened,
                                           "--out", f"{tmp}/report"], False),
            ("drsearch dashboard (first line)", [drsearch, "dashboard", "studies/demo.yaml",
                                                 *opened, "--port", str(free_port())], True),
        ]  # fmt: skip
        width = max(len(name) for name, _, _ in commands)
        print(f"{'command':<{width}}  median s  (runs, {os.cpu_count()} cores)")
        for name, command, stop in commands:
            times = [first_output(command, stop) for _ in range(args.repeat)]
            print(f"{name:<{width}}  {statistics.median(times):8.2f}  {times}")


if __name__ == "__main__":
    main()
