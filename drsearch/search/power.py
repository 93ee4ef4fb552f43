"""Power, up front: the chance that a model truly above a minimum is certified on the images a
study has.

A constraint ``metric >= minimum`` is met when the study's one-sided test at ``confidence``
says so (``clinical.judge``: the score test at the minimum, which the one-sided Wilson bound
agrees with). On ``n`` images a model whose true rate is ``rate`` has ``Binomial(n, rate)``
successes, so the chance it is certified is the binomial tail above the fewest successes the
test accepts. ``check`` and ``run`` say it before a study starts, for a model halfway between
the minimum and 1, beside the true rate that 80% power needs and the images that would give
80% at that halfway rate (what would raise it).

The score test is approximate: on very few images a model exactly at the minimum is
certified more often than ``1 - confidence`` (15 of 15 certifies 0.90 at 90%, which a model
at 0.90 scores 20.6% of the time); the line says so where it is more than 1.5 times looser.
"""

from __future__ import annotations

import math
from functools import lru_cache

from scipy.stats import binom

from drsearch.clinical import judge, one_sided_z

#: The power a study should have to certify a good model (the usual design target).
TARGET_POWER = 0.80


@lru_cache(maxsize=65536)
def successes_needed(minimum: float, n: int, confidence: float) -> int | None:
    """The fewest successes of ``n`` that the study's own test (``clinical.judge``) certifies
    ``>= minimum`` on; ``None`` when none does. Started from the score test's closed form,
    settled by the judge itself (so the two never differ)."""
    if n <= 0:
        return None

    def met(x: int) -> bool:
        cm = [[0.0] * 5 for _ in range(5)]
        cm[0][0], cm[0][1] = float(x), float(n - x)  # accuracy: x of n
        return judge("accuracy", minimum, cm, "lower_bound", confidence).met

    z = one_sided_z(confidence)
    x = min(n, max(0, math.ceil(n * minimum + z * math.sqrt(n * minimum * (1 - minimum))) - 2))
    while x > 0 and met(x - 1):
        x -= 1
    while x <= n and not met(x):
        x += 1
    return x if x <= n else None


def power(minimum: float, n: int, rate: float, confidence: float) -> float:
    """P(certified) for a model of true ``rate`` on ``n`` images."""
    x = successes_needed(minimum, n, confidence)
    if x is None or n <= 0:
        return 0.0
    return float(binom.sf(x - 1, n, rate))


def rate_for_power(
    minimum: float, n: int, confidence: float, target: float = TARGET_POWER
) -> float | None:
    """The lowest true rate certified with probability ``target`` on ``n`` images (bisection:
    power rises with the rate); ``None`` when even a perfect model is not (too few images)."""
    if power(minimum, n, 1.0, confidence) < target:
        return None
    low, high = minimum, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if power(minimum, n, mid, confidence) < target else (low, mid)
    return high


def images_for_power(
    minimum: float, rate: float, confidence: float, target: float = TARGET_POWER, limit: int = 20000
) -> int | None:
    """The fewest images on which a model of true ``rate`` is certified with probability
    ``target`` (power is not monotone in ``n``, a sawtooth: the first ``n`` from which it stays
    at or above the target for the next 20 counts); ``None`` beyond ``limit``."""
    if rate <= minimum:
        return None
    n, run = 1, 0
    while n <= limit:
        run = run + 1 if power(minimum, n, rate, confidence) >= target else 0
        if run == 20:
            return n - 19
        n += 1
    return None


def halfway(minimum: float) -> float:
    """The true rate the up-front power is shown for: halfway from the minimum to 1."""
    return minimum + (1.0 - minimum) / 2


def power_line(
    metric: str, minimum: float, n: int, confidence: float, where: str, fixes: str
) -> tuple[str, float]:
    """One line for ``check`` and ``run``, and the power it states: the chance that a model
    halfway above the minimum is certified on the ``n`` images ``where`` describes."""
    rate = halfway(minimum)
    p = power(minimum, n, rate, confidence)
    needed = rate_for_power(minimum, n, confidence)
    more = images_for_power(minimum, rate, confidence)
    line = (
        f"power: {metric} >= {minimum:g} on {n} images ({where}): a model at {rate:.3g} is "
        f"certified {_pct(p)} of the time"
    )
    if needed is None:
        line += f"; no model is certified {TARGET_POWER:.0%} of the time on {n} images"
    else:
        line += f"; {TARGET_POWER:.0%} needs a model at {needed:.3f}"
    size = power(minimum, n, minimum, confidence)
    if size > 1.5 * (1 - confidence):  # the score test on very few images: looser than said
        line += (
            f"; a model at the minimum {minimum:g} is certified {_pct(size)} of the time "
            f"(nominally {1 - confidence:.0%})"
        )
    if p < TARGET_POWER and more is not None and more > n:
        line += (
            f"; with {more} images a model at {rate:.3g} is certified {TARGET_POWER:.0%} of "
            f"the time ({fixes})"
        )
    return line, p


def _pct(p: float) -> str:
    """A chance as a whole percentage, rounded down (79.98% is not shown as the 80% it
    misses)."""
    if 0 < p < 0.01:
        return "<1%"
    if 0.99 < p < 1:
        return ">99%"
    return f"{math.floor(p * 100 + 1e-9)}%"


def joint_power(powers: list[float]) -> float:
    """Every constraint certified, taking them as independent (they rest on different grades
    or sides; shared images make the true figure somewhat higher)."""
    return float(math.prod(powers)) if powers else 1.0
