"""What every config model shares: the base section (unknown keys are errors) and the
constrained number types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]

#: Seeds go to numpy and torch, which take 0 .. 2**32 - 1.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
#: A count of epochs; far beyond any real run, so a typo (1e30) fails instead of hanging.
Epochs = Annotated[int, Field(ge=1, le=100_000)]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, assignments are validated,
    numbers must be finite (no inf or NaN)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
