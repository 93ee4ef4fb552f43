"""``python -m drsearch.cli``."""

from drsearch.cli import main

main()
