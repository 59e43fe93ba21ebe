"""The stated tests of ``marginface study --compare``: Welch's t-test over seeds, Holm's correction, a bootstrap
interval of the difference of means.

Pure functions on plain sequences of floats (one value per seed), no scipy: the project does not depend on it.
The Student t tail comes from the regularised incomplete beta function, ``P(|T| > t) = I_x(df/2, 1/2)`` with
``x = df / (df + t^2)``, evaluated by its continued fraction (modified Lentz), which converges fast for
``x < (a + 1) / (a + b + 2)`` and otherwise through the symmetry ``I_x(a, b) = 1 - I_{1-x}(b, a)``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_TINY = 1e-300  # keeps Lentz's denominators away from 0
_EPS = 1e-15  # relative convergence of the continued fraction


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of ``I_x(a, b)`` (without its prefactor); converges for ``x < (a+1)/(a+b+2)``."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even step d_{2m}
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # odd step d_{2m+1}
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"the incomplete beta fraction did not converge (x={x}, a={a}, b={b})")


def incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``0 <= x <= 1``, ``a, b > 0``."""
    if not 0.0 <= x <= 1.0 or a <= 0 or b <= 0:
        raise ValueError(f"incomplete_beta needs 0 <= x <= 1 and a, b > 0, got x={x}, a={a}, b={b}")
    if x in (0.0, 1.0):
        return x
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def t_two_sided_p(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / (df + t * t), df / 2.0, 0.5)


@dataclass(frozen=True)
class Welch:
    """Welch's unequal-variance t-test of ``mean(a) - mean(b)``; ``p`` is two-sided (NaN: cannot test)."""

    t: float
    df: float
    p: float


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's t-test over seeds: ``t = (mean a - mean b) / sqrt(s_a^2/n_a + s_b^2/n_b)`` (sample variances,
    ddof 1), Welch-Satterthwaite degrees of freedom. Needs two values per arm; NaN p otherwise. Two arms with no
    spread at all give p = 0 if their means differ, 1 if not (the t statistic is then undefined)."""
    if min(len(a), len(b)) < 2:
        return Welch(math.nan, math.nan, math.nan)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    difference = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0.0:
        return Welch(math.copysign(math.inf, difference) if difference else math.nan, math.nan,
                     0.0 if difference else 1.0)
    t = difference / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return Welch(t, df, t_two_sided_p(t, df))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest of the ``m`` p-values times
    ``m - i + 1`` (i from 1), made non-decreasing along the sorted order, capped at 1. A hypothesis is rejected at
    family-wise error rate ``alpha`` exactly when its adjusted p is ``<= alpha``. NaN entries (no test) stay NaN
    and do not count in ``m``."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def bootstrap_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a) - mean(b)``: each arm's seeds resampled with replacement,
    ``resamples`` times, from a fixed generator seed (the same rows give the same interval). With 3-5 seeds per arm
    it is narrow-biased (a resample cannot be more spread than the seeds it draws from): read it beside Welch's
    p, not instead. ``(nan, nan)`` with fewer than two values in an arm."""
    if min(len(a), len(b)) < 2:
        return math.nan, math.nan
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    means_a = xa[rng.integers(0, xa.size, (resamples, xa.size))].mean(axis=1)
    means_b = xb[rng.integers(0, xb.size, (resamples, xb.size))].mean(axis=1)
    low, high = np.quantile(means_a - means_b, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)
