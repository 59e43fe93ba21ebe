"""The study's stated tests against independent references: closed forms, numerical integration in float64,
printed t tables, a published Welch example, and Holm's procedure run step by step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marginface.experiments import study_stats


def _t_density(x: np.ndarray, df: float) -> np.ndarray:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))


def _simpson(f: np.ndarray, h: float) -> float:
    return float(h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))


def _p_by_integration(t: float, df: float) -> float:
    """1 - 2 * integral of the t density over [0, |t|] (Simpson, 20,000 intervals, float64)."""
    x = np.linspace(0.0, abs(t), 20_001)
    return 1.0 - 2.0 * _simpson(_t_density(x, df), x[1] - x[0])


@pytest.mark.parametrize("t", [0.1, 0.7, 1.5, 2.9, 6.0, 40.0])
def test_the_t_tail_matches_the_closed_forms_of_one_and_two_degrees_of_freedom(t: float) -> None:
    assert study_stats.t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-12, abs=1e-15)
    assert study_stats.t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("t", "df"), [(0.3, 3.7), (1.2, 4.4), (2.16, 7.9), (3.66, 7.2), (2.46, 24.99), (1.9, 120)])
def test_the_t_tail_matches_numerical_integration(t: float, df: float) -> None:
    assert study_stats.t_two_sided_p(t, df) == pytest.approx(_p_by_integration(t, df), abs=1e-9)


@pytest.mark.parametrize(("t", "df", "p"), [(12.706, 1, 0.05), (4.303, 2, 0.05), (2.776, 4, 0.05), (2.228, 10, 0.05),
                                            (2.086, 20, 0.05), (9.925, 2, 0.01), (3.169, 10, 0.01)])
def test_the_t_tail_reproduces_printed_critical_values(t: float, df: int, p: float) -> None:
    """Two-sided critical values of Student's t as any table prints them (3 decimals)."""
    assert study_stats.t_two_sided_p(t, df) == pytest.approx(p, rel=2e-3)


@pytest.mark.parametrize(("x", "a", "b"), [(0.2, 2.0, 0.5), (0.9, 5.0, 0.5), (0.5, 1.3, 2.7), (0.97, 40.0, 0.5)])
def test_incomplete_beta_matches_numerical_integration(x: float, a: float, b: float) -> None:
    """a > 1 and x < 1: the integrand u^(a-1) (1-u)^(b-1) is finite on [0, x], Simpson applies."""
    u = np.linspace(0.0, x, 200_001)
    integral = _simpson(u ** (a - 1) * (1 - u) ** (b - 1), u[1])
    beta = math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    assert study_stats.incomplete_beta(x, a, b) == pytest.approx(integral / beta, abs=1e-6)
    assert study_stats.incomplete_beta(x, a, b) + study_stats.incomplete_beta(1 - x, b, a) == pytest.approx(1.0)


def test_welch_matches_the_naive_formula_and_a_published_example() -> None:
    rng = np.random.default_rng(0)
    for na, nb in [(3, 3), (5, 3), (2, 7), (5, 5)]:
        a, b = rng.normal(0.8, 0.01, na), rng.normal(0.79, 0.02, nb)
        va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
        t = (a.mean() - b.mean()) / np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
        got = study_stats.welch(list(a), list(b))
        assert got.t == pytest.approx(t, rel=1e-10) and got.df == pytest.approx(df, rel=1e-10)
        assert got.p == pytest.approx(_p_by_integration(t, df), abs=1e-8)
    # Welch's t-test, Wikipedia's first example (equal sizes, unequal variances): t = -2.46, df = 25.0, p = 0.021
    a1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    a2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    got = study_stats.welch(a1, a2)
    assert (round(got.t, 2), round(got.df, 1), round(got.p, 3)) == (-2.46, 25.0, 0.021)


def test_welch_without_spread_or_seeds() -> None:
    assert math.isnan(study_stats.welch([0.8], [0.7, 0.71]).p)
    assert study_stats.welch([0.8, 0.8], [0.7, 0.7]).p == 0.0
    assert study_stats.welch([0.8, 0.8], [0.8, 0.8]).p == 1.0
    with pytest.raises(ValueError, match="degrees of freedom"):
        study_stats.t_two_sided_p(1.0, 0.0)


def _holm_rejects(pvalues: list[float], alpha: float) -> set[int]:
    """Holm's procedure as stated: sort; reject while p_(k) <= alpha / (m - k + 1); stop at the first failure."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected: set[int] = set()
    for k, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - k):
            break
        rejected.add(i)
    return rejected


def test_holm_adjusted_p_values_reject_exactly_what_the_step_down_procedure_rejects() -> None:
    assert study_stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = list(rng.uniform(0, 0.2, rng.integers(1, 12)) ** 2)
        adjusted = study_stats.holm(p)
        assert all(q >= pi for q, pi in zip(adjusted, p, strict=True)) and max(adjusted) <= 1.0
        for alpha in (0.001, 0.01, 0.05, 0.1):
            assert {i for i, q in enumerate(adjusted) if q <= alpha} == _holm_rejects(p, alpha)
    got = study_stats.holm([0.02, math.nan, 0.01])  # NaN: no test, not counted in m
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.02)


def test_the_bootstrap_interval() -> None:
    assert study_stats.bootstrap_interval([0.8, 0.8, 0.8], [0.7, 0.7]) == pytest.approx((0.1, 0.1))
    a, b = [0.81, 0.83, 0.82], [0.80, 0.79, 0.805, 0.8]
    assert study_stats.bootstrap_interval(a, b) == study_stats.bootstrap_interval(a, b)  # fixed generator seed
    low, high = study_stats.bootstrap_interval(a, b)
    assert low < np.mean(a) - np.mean(b) < high
    assert math.isnan(study_stats.bootstrap_interval([0.8], b)[0])
    # many seeds: close to the normal interval mean difference +- 1.96 standard errors
    rng = np.random.default_rng(2)
    x, y = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 2.0, 400)
    se = math.sqrt(x.var(ddof=1) / 400 + y.var(ddof=1) / 400)
    low, high = study_stats.bootstrap_interval(list(x), list(y))
    assert (high - low) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="level"):
        study_stats.bootstrap_interval(a, b, level=95)
