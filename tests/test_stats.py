"""Intervals and paired tests (tasks.evaluation.stats) against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.evaluation import stats

Z = 1.959964  # two-sided 95% normal quantile


def test_z_value_and_bad_confidence():
    assert stats.z_value(0.95) == pytest.approx(Z, abs=1e-6)
    with pytest.raises(ValueError, match="confidence"):
        stats.z_value(1.0)


def test_wilson_by_hand():
    # k=8, n=10: p=0.8, z^2=3.841459, denom = 1 + z^2/n = 1.3841459
    # center = (0.8 + z^2/20) / denom = 0.9920729 / 1.3841459 = 0.716737
    # half = z * sqrt(0.8*0.2/10 + z^2/400) / denom = 1.959964 * sqrt(0.0256036) / 1.3841459 = 0.226579
    low, high = stats.wilson(8, 10)
    assert low == pytest.approx(0.490158, abs=1e-5) and high == pytest.approx(0.943316, abs=1e-5)
    # k=0: center = half = (z^2/20)/denom, so low = 0 and high = z^2 / (n + z^2) = 3.841459 / 13.841459
    low, high = stats.wilson(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.277533, abs=1e-5)
    assert all(math.isnan(x) for x in stats.wilson(0, 0))
    # an accuracy as measured: 0.8 on 10 rows is 8 of 10; unknown stays unknown
    assert stats.proportion_ci(0.8, 10) == stats.wilson(8, 10)
    assert stats.proportion_ci(None, 10) is None


def test_wilson_narrows_with_rows():
    # about +-1 point at 2,000 rows around 0.97 (the scale): 1.96*sqrt(.97*.03/2000) = 0.0075
    low, high = stats.wilson(1940, 2000)
    assert 0.012 < high - low < 0.016


def test_mcnemar_exact_and_chi_square_by_hand():
    # exact, b=1 c=5 (n=6 < 25): 2 * (C(6,0) + C(6,1)) / 2^6 = 2 * 7 / 64 = 0.21875
    assert stats.mcnemar(1, 5) == pytest.approx(0.21875)
    # exact, b=5 c=10 (n=15): 2 * (1+15+105+455+1365+3003) / 32768 = 2 * 4944 / 32768 = 0.3017578125
    assert stats.mcnemar(5, 10) == pytest.approx(0.3017578125)
    # chi-square, b=10 c=25 (n=35): (|10-25|-1)^2/35 = 196/35 = 5.6; P(chi2_1 > 5.6) = erfc(sqrt(2.8)) = 0.017960
    assert stats.mcnemar(10, 25) == pytest.approx(0.017960, abs=1e-6)
    assert stats.mcnemar(0, 0) == 1.0 and stats.mcnemar(3, 3) == 1.0


def test_paired_difference_agresti_min_by_hand():
    # n=100, ref_only=5, cand_only=10: delta = 5/100 = 0.05
    # +0.5 per cell: b=5.5 c=10.5 n=102, d = 5/102 = 0.049020
    # se = sqrt((16) - 5^2/102) / 102 = sqrt(15.754902) / 102 = 0.038914; half = 1.959964 * se = 0.076270
    out = stats.paired_difference({"n": 100, "ref_only": 5, "cand_only": 10})
    assert out["delta"] == pytest.approx(0.05)
    assert out["delta_ci95"] == pytest.approx([-0.027251, 0.125290], abs=1e-5)
    assert out["p_value"] == pytest.approx(0.3017578125)


def test_mcnemar_continuity_correction_stops_at_zero():
    """Equal (or one apart) discordant counts on the chi-square path (>= 25 rows) are no evidence of
    a difference: the Yates-corrected statistic max(0, |b - c| - 1)^2 / n is 0 and p is 1."""
    from scipy.stats import chi2

    for b, c in [(15, 15), (15, 16), (40, 39)]:
        stat = max(0, abs(b - c) - 1) ** 2 / (b + c)
        assert stats.mcnemar(b, c) == pytest.approx(float(chi2.sf(stat, 1))) == 1.0
    # one more apart: (|12 - 14| - 1)^2 / 26 = 1/26, unchanged by the clamp
    assert stats.mcnemar(12, 14) == pytest.approx(float(chi2.sf(1 / 26, 1)))


def test_paired_counts_from_rows():
    ref = np.array([1, 1, 0, 0, 1], dtype=bool)
    cand = np.array([1, 0, 1, 0, 1], dtype=bool)
    assert stats.paired_counts(ref, cand) == {"n": 5, "ref_only": 1, "cand_only": 1}
    with pytest.raises(ValueError, match="paired rows differ"):
        stats.paired_counts(ref, cand[:3])


def test_bootstrap_is_seeded_and_degenerate_data_has_no_width():
    v = np.linspace(0.9, 1.0, 200)
    assert stats.bootstrap_mean(v, seed=3) == stats.bootstrap_mean(v, seed=3)
    low, high = stats.bootstrap_mean(v)
    # normal approximation: mean 0.95, sd of uniform-ish grid 0.1/sqrt(12)=0.02902, se = 0.02902/sqrt(200) = 0.002052
    assert low == pytest.approx(0.95 - Z * 0.002052, abs=8e-4) and high == pytest.approx(0.95 + Z * 0.002052, abs=8e-4)
    assert stats.bootstrap_mean([0.5] * 10) == [0.5, 0.5]
    assert all(math.isnan(x) for x in stats.bootstrap_mean([]))


def test_paired_bootstrap_sees_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(0.99, 0.005, 400)
    shifted = stats.paired_bootstrap(a, a - 0.002)  # every row 0.002 better: no doubt
    assert shifted["delta"] == pytest.approx(0.002) and shifted["delta_ci95"] == pytest.approx([0.002, 0.002])
    assert shifted["p_value"] == pytest.approx(2 * 1 / 2001)  # no resample on the far side: (0 + 1) / (B + 1), twice
    noise = stats.paired_bootstrap(a, a + rng.normal(0, 0.005, 400))
    assert noise["delta_ci95"][0] < 0 < noise["delta_ci95"][1] and noise["p_value"] > 0.05


def test_paired_bootstrap_p_value_is_never_zero():
    """B resamples cannot show p = 0: the far side is counted as (k + 1) / (B + 1), so a clear shift
    over 500 resamples gets p = 2 / 501, and p stays within (0, 1]."""
    rng = np.random.default_rng(1)
    a = rng.normal(0.9, 0.01, 50)
    out = stats.paired_bootstrap(a, a - 0.05, n_boot=500)
    assert out["p_value"] == pytest.approx(2 / 501)
    same = stats.paired_bootstrap(a, a, n_boot=500)  # every resample mean is 0: both sides, p capped at 1
    assert same["p_value"] == 1.0


def test_too_few_rows_for_a_bootstrap_give_the_whole_range():
    """One row (or a handful, e.g. equal cosines) would give a percentile bootstrap interval of zero
    width, so a 95% gate would add nothing: below MIN_BOOTSTRAP_ROWS the interval is the figure's
    whole range and the paired p-value 1."""
    assert stats.MIN_BOOTSTRAP_ROWS == 10
    assert stats.bootstrap_mean([0.999], bounds=(-1.0, 1.0)) == [-1.0, 1.0]
    assert stats.bootstrap_mean([0.999] * 9, bounds=(-1.0, 1.0)) == [-1.0, 1.0]
    assert stats.bootstrap_mean([0.999]) == [-math.inf, math.inf]
    out = stats.paired_bootstrap([0.99, 0.98], [0.97, 0.97], bounds=(-2.0, 2.0))
    assert out["delta"] == pytest.approx(0.015) and out["delta_ci95"] == [-2.0, 2.0] and out["p_value"] == 1.0
    # from MIN_BOOTSTRAP_ROWS rows on, the bootstrap: ten values 0.90, 0.91, ... 0.99 -> mean 0.945
    low, high = stats.bootstrap_mean(np.arange(10) / 100 + 0.9, bounds=(-1.0, 1.0))
    assert 0.92 < low < 0.945 < high < 0.97


def test_unpaired_difference_newcombe_by_hand():
    # p1 = 0.5 with [0.4, 0.6], p2 = 0.3 with [0.2, 0.45]: d = 0.2
    # low = 0.2 - sqrt(0.1^2 + 0.15^2) = 0.2 - 0.180278; high = 0.2 + sqrt(0.1^2 + 0.1^2) = 0.2 + 0.141421
    assert stats.unpaired_difference(0.5, [0.4, 0.6], 0.3, [0.2, 0.45]) == pytest.approx([0.019722, 0.341421], abs=1e-6)


def test_spread_median_and_iqr():
    # [1..5]: median 3, p25 at position 1 -> 2, p75 at position 3 -> 4
    assert stats.spread([5, 1, 4, 2, 3]) == {"median": 3.0, "iqr": [2.0, 4.0], "n": 5}
    # two values: p25 = 1 + 0.25 * 2 = 1.5, p75 = 2.5
    assert stats.spread([1, 3]) == {"median": 2.0, "iqr": [1.5, 2.5], "n": 2}
    assert stats.overlaps([1, 2], [2, 3]) and not stats.overlaps([1, 2], [2.1, 3])


def test_t_interval_by_hand():
    # [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.302653, half = 4.302653 / sqrt(3) = 2.484138
    out = stats.t_interval([1, 2, 3])
    assert out["mean"] == 2.0 and out["ci95"] == pytest.approx([-0.484138, 4.484138], abs=1e-6)
    assert math.isnan(stats.t_interval([1.0])["ci95"][0])


def test_verdict_only_where_the_interval_supports_it():
    assert "higher" in stats.verdict([0.1, 0.3], "kd vs ce")
    assert "lower" in stats.verdict([-0.3, -0.1], "kd vs ce")
    assert "not distinguishable" in stats.verdict([-0.1, 0.3], "kd vs ce")
    assert "not measured" in stats.verdict([math.nan, math.nan], "x")
