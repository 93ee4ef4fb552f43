"""One way to show a number: metrics to three decimals, "n/a" where undefined; durations;
file names."""

from __future__ import annotations

import os
from typing import Any


def num(value: Any, digits: int = 3) -> str:
    """A metric or other float: ``0.912``; ``n/a`` for an undefined (``None``) value."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def points(value: float | None, limit: float | None = None) -> str:
    """Percentage points: ``9.0 points``; with ``limit``, as many decimals (up to 4) as keep
    the figure shown on its side of it (4.96 against "< 5" is ``4.96 points``, not ``5.0``)."""
    if value is None:
        return "n/a"
    for digits in range(1, 5):
        text = f"{value:.{digits}f}"
        if limit is None or (float(text) < limit) == (value < limit):
            break
    return f"{text} points"


def short(value: Any) -> str:
    """A parameter value in a line of text: floats to 4 significant digits, the rest as is."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def sci(value: Any, digits: int = 3) -> str:
    """A learning rate or other tiny number: ``3.000e-04``; ``n/a`` when undefined."""
    return "n/a" if value is None else f"{value:.{digits}e}"


def duration(seconds: float | None) -> str:
    """A wall time: ``4:05`` (minutes), ``1:02:03`` past an hour; ``n/a`` when unknown."""
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def filename(path: Any) -> str:
    """A file name in a line of text or a CSV cell: bytes that are not UTF-8 (which Python
    holds as surrogate escapes) shown as ``\\xNN``, so writing it never fails."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
