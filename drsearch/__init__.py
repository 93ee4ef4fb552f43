"""drsearch: hyperparameter search around a diabetic-retinopathy grading trainer."""

from __future__ import annotations

import os

# albumentations otherwise asks the network for a newer release at import time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

from drsearch.clinical import GRADES, NUM_CLASSES  # noqa: E402 - after the environment

__all__ = ["GRADES", "NUM_CLASSES", "__version__"]
