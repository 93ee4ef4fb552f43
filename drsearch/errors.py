"""One error family: the CLI prints these as one line, ``Error: ...``, and exits with code 2
(``NoWinner``: code 3, an outcome rather than bad input)."""

from __future__ import annotations


class DrsearchError(Exception):
    """A user-facing error: bad input, missing files, impossible settings."""


class ConfigError(DrsearchError):
    """A recipe or study file that does not validate."""


class NoWinner(ConfigError):  # noqa: N818 - an outcome, named as the CLI says it
    """The study's finalist stage named no winner (no finalist held up on confirmation) and
    the command asked for the study's best. The CLI exits with code 3, so a script (or ``make
    demo``) tells this honest outcome from a mistake in its input (code 2)."""


class DataError(DrsearchError):
    """A dataset that cannot be read as configured."""


class TrainingError(DrsearchError):
    """Training cannot go on (for example the loss became NaN)."""


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite."""


class StudyInterrupted(Exception):  # noqa: N818 - not an error: the user stopped the run
    """Ctrl-C during ``drsearch run``: the message says what stopped and how to continue;
    the CLI prints it and exits with code 130."""
