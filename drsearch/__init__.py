"""drsearch: hyperparameter search around a diabetic-retinopathy grading trainer."""

from __future__ import annotations

import os

# albumentations otherwise asks the network for a newer release at import time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

GRADES = ("none", "mild", "moderate", "severe_npdr", "pdr")
NUM_CLASSES = len(GRADES)
