"""stats.py against hand-computed values: Student-t intervals, verdicts, seeds needed, ordering, power-law fit."""
import math

import numpy as np
import pytest

from lab import stats

# two-sided 95% Student t quantiles t(0.975, df) from a printed table
T975 = {1: 12.7062, 2: 4.3027, 4: 2.7764}


@pytest.mark.parametrize('values, mean, std, df', [
    ([1.0, 3.0], 2.0, math.sqrt(2), 1),
    ([1.0, 2.0, 3.0], 2.0, 1.0, 2),
    ([0.1, 0.2, 0.3, 0.4, 0.5], 0.3, math.sqrt(0.025), 4),
])
def test_t_interval_matches_the_textbook_formula(values, mean, std, df):
    result = stats.t_interval(values)
    half = T975[df] * std / math.sqrt(len(values))
    assert result['n'] == len(values)
    assert result['mean'] == pytest.approx(mean)
    assert result['std'] == pytest.approx(std)
    assert result['low'] == pytest.approx(mean - half, abs=1e-4)
    assert result['high'] == pytest.approx(mean + half, abs=1e-4)


def test_one_value_has_no_interval_and_no_verdict():
    result = stats.t_interval([0.5])
    assert result['n'] == 1 and result['mean'] == 0.5 and math.isnan(result['low'])
    assert stats.verdict(result) == stats.ONE_SEED


def test_verdicts_follow_the_interval():
    assert stats.verdict(stats.t_interval([-0.10, -0.12, -0.11])) == stats.BETTER     # lower loss, excludes 0
    assert stats.verdict(stats.t_interval([0.10, 0.12, 0.11])) == stats.WORSE
    assert stats.verdict(stats.t_interval([-0.10, 0.12, 0.01])) == stats.UNRESOLVED
    assert stats.verdict(stats.t_interval([-0.1, -0.3])) == stats.UNRESOLVED          # n = 2: t = 12.7 is wide


def test_paired_comparison_pairs_by_seed():
    candidate = {1: 1.70, 2: 1.80, 3: 1.75, 4: 9.0}
    baseline = {1: 1.80, 2: 1.85, 3: 1.90}                     # seed 4 has no partner: left out
    result = stats.paired_comparison(candidate, baseline)
    assert result['seeds'] == [1, 2, 3]
    assert result['mean'] == pytest.approx(np.mean([-0.10, -0.05, -0.15]))
    assert result['std'] == pytest.approx(0.05)


def test_seeds_needed_is_the_smallest_n_with_80_percent_power():
    n = stats.seeds_needed(0.02, 0.02)                          # effect = 1 std: about 10 pairs (textbook: 10)
    assert n == 10
    assert stats.paired_t_power(n, 0.02, 0.02) >= 0.8 > stats.paired_t_power(n - 1, 0.02, 0.02)
    assert stats.seeds_needed(0.2, 0.02) == 3                   # a huge effect still needs a spread to test against
    assert stats.seeds_needed(0.0, 0.02) is None and stats.seeds_needed(0.1, math.nan) is None
    assert stats.seeds_needed(1e-6, 1.0) == stats.MAX_SEEDS_REPORTED + 1


def test_ordering_never_separates_unresolved_names():
    values = {'a': {1: 1.0, 2: 1.1, 3: 1.05}, 'b': {1: 1.02, 2: 1.09, 3: 1.08},   # a, b tied
              'c': {1: 1.5, 2: 1.6, 3: 1.55}}                                      # c clearly worse
    means = {k: np.mean(list(v.values())) for k, v in values.items()}

    def pair(x, y):
        return stats.t_interval(list(stats.paired_differences(values[x], values[y]).values()))
    groups = stats.resolved_groups(means, pair)
    assert groups == [['a', 'b'], ['c']]
    assert stats.ordering_line(groups, means, 2) == '{a (1.05), b (1.06)} < c (1.55)'
    # one seed: nothing is resolved, everything is one group
    one = {k: {1: v[1]} for k, v in values.items()}
    assert len(stats.resolved_groups({k: v[1] for k, v in one.items()}, lambda x, y: stats.t_interval(
        list(stats.paired_differences(one[x], one[y]).values())))) == 1


def test_ordering_groups_are_contiguous_when_ties_interleave():
    # a < b < c by mean; a~c unresolved but b resolved against both: the line cannot put b between a and c
    means = {'a': 1.0, 'b': 1.1, 'c': 1.2}
    resolved = {('a', 'b'), ('b', 'c')}

    def pair(x, y):
        sep = (x, y) in resolved or (y, x) in resolved
        return {'n': 3, 'mean': 0, 'std': 0, 'low': 0.1 if sep else -1, 'high': 0.2 if sep else 1}
    assert stats.resolved_groups(means, pair) == [['a', 'b', 'c']]


def test_power_law_fit_recovers_known_parameters():
    n = np.array([1e5, 3e5, 1e6, 3e6, 1e7])
    loss = stats.power_law(n, 1.5, 40.0, 0.3)
    fit = stats.fit_power_law(n, loss)
    assert fit['E'] == pytest.approx(1.5, abs=1e-3)
    assert fit['A'] == pytest.approx(40.0, rel=1e-2)
    assert fit['alpha'] == pytest.approx(0.3, abs=1e-3)
    noisy = loss + np.random.default_rng(0).normal(0, 0.002, len(n))
    fit = stats.fit_power_law(n, noisy, sigma=[0.002] * len(n))
    assert abs(fit['alpha'] - 0.3) < 3 * fit['alpha_se'] + 0.02 and fit['alpha_se'] > 0


def test_no_fit_from_fewer_than_four_sizes():
    assert stats.fit_power_law([1e5, 1e6, 1e7], [3.0, 2.5, 2.2]) is None


def test_std_ratio_interval_matches_the_chi_square_table():
    # chi-square quantiles with 2 degrees of freedom from a printed table: 0.05064 (2.5%) and 7.3778 (97.5%)
    low, high = stats.std_ratio_interval(3)
    assert low == pytest.approx(math.sqrt(2 / 7.3778), abs=1e-4)
    assert high == pytest.approx(math.sqrt(2 / 0.05064), abs=1e-3)
    # and the interval narrows with more seeds: 10 seeds (9 df: 2.700, 19.023)
    low, high = stats.std_ratio_interval(10)
    assert (low, high) == (pytest.approx(math.sqrt(9 / 19.023), abs=1e-4), pytest.approx(math.sqrt(9 / 2.700), abs=1e-3))
