"""
The statistics behind compare.py's verdicts: paired differences between activations with Student-t intervals, the
number of seeds a difference needs, an ordering that never claims more than the intervals resolve, and the power-law
fit L(N) = E + A * N^(-alpha) of loss against model size. numpy + scipy only; nothing here trains or plots.

Why paired: two runs with the same seed see the same batches in the same order and start from the same non-FFN
weights (model.py seeds every parameter from (init_seed, name)), so most of the seed-to-seed noise is shared. The
difference of their final losses cancels it; the spread of those differences is what an interval must be built on.
"""
import math

import numpy as np

CONFIDENCE = 0.95          # two-sided intervals
POWER = 0.8                # for the "seeds needed" estimate
MAX_SEEDS_REPORTED = 10000

BETTER, WORSE, UNRESOLVED, ONE_SEED = 'better', 'worse', 'not resolved', 'one seed: no verdict'


def t_interval(values, confidence=CONFIDENCE):
    """Mean, sample std (ddof=1) and the Student-t confidence interval (n - 1 degrees of freedom) of values.
    Returns {'n', 'mean', 'std', 'low', 'high'}; std/low/high are nan for n < 2 (no spread to build on)."""
    from scipy import stats
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {'n': 0, 'mean': math.nan, 'std': math.nan, 'low': math.nan, 'high': math.nan}
    mean = float(x.mean())
    if n < 2:
        return {'n': 1, 'mean': mean, 'std': math.nan, 'low': math.nan, 'high': math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {'n': n, 'mean': mean, 'std': std, 'low': mean - half, 'high': mean + half}


def wilson_interval(successes, n, confidence=CONFIDENCE):
    """The Wilson score interval of a proportion successes / n (one run's accuracy on n items): unlike the normal
    approximation p ± z·sqrt(p(1 - p)/n) it stays inside [0, 1] and keeps its coverage near 0 and 1 and for small n.
    (low, high); (nan, nan) for n = 0."""
    from scipy import stats
    if n == 0:
        return math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def choose_rate(losses):
    """The learning-rate choice of a tuning sweep. losses: {rate: {tuning seed: final val loss}} of the rates whose
    every tuning seed finished and learned. The chosen rate has the lowest mean over the tuning seeds (a tie goes to
    the lower rate, the safer one). Returns {'rate', 'mean', 'runner_up', 'margin', 'low', 'high', 'n'}: margin is
    the runner-up's mean minus the chosen one's (>= 0), low/high the Student-t 95% interval of the per-seed margins
    (nan for one seed or no runner-up: no spread to build on). None when no rate qualifies."""
    means = {r: float(np.mean(list(v.values()))) for r, v in losses.items() if v}
    if not means:
        return None
    ranked = sorted(means, key=lambda r: (means[r], r))
    chosen = ranked[0]
    result = {'rate': chosen, 'mean': means[chosen], 'runner_up': None, 'margin': math.nan, 'low': math.nan,
              'high': math.nan, 'n': len(losses[chosen])}
    if len(ranked) > 1:
        runner_up = ranked[1]
        interval = t_interval(list(paired_differences(losses[runner_up], losses[chosen]).values()))
        result.update(runner_up=runner_up, margin=means[runner_up] - means[chosen], low=interval['low'],
                      high=interval['high'], n=interval['n'])
    return result


def std_ratio_interval(n, confidence=CONFIDENCE):
    """How far the true std may lie from a sample std of n values: the confidence interval of sigma / s, from
    (n - 1) s^2 / sigma^2 ~ chi-square with n - 1 degrees of freedom (normal data). (low, high); n = 3 gives
    (0.52, 6.3): an interval from 3 seeds may be half or six times as wide as it should be."""
    from scipy import stats
    df = n - 1
    tail = (1 - confidence) / 2
    return math.sqrt(df / stats.chi2.ppf(1 - tail, df)), math.sqrt(df / stats.chi2.ppf(tail, df))


def verdict(interval, higher_is_better=False):
    """For a difference 'candidate minus baseline' of a loss (lower is better; an accuracy with higher_is_better):
    better / worse when the interval excludes 0, not resolved when it includes 0, and no verdict from one seed."""
    if interval['n'] < 2:
        return ONE_SEED
    if interval['high'] < 0:
        return WORSE if higher_is_better else BETTER
    if interval['low'] > 0:
        return BETTER if higher_is_better else WORSE
    return UNRESOLVED


def paired_differences(candidate, baseline):
    """candidate, baseline: {seed: value}. Per-seed differences candidate - baseline over the seeds both have."""
    common = sorted(set(candidate) & set(baseline))
    return {s: candidate[s] - baseline[s] for s in common
            if np.isfinite(candidate[s]) and np.isfinite(baseline[s])}


def paired_comparison(candidate, baseline, higher_is_better=False):
    """The full paired result: interval of the differences, verdict, and seeds needed to resolve the mean."""
    diffs = paired_differences(candidate, baseline)
    result = t_interval(list(diffs.values()))
    result['seeds'] = sorted(diffs)
    result['verdict'] = verdict(result, higher_is_better)
    result['seeds_needed'] = seeds_needed(result['mean'], result['std'])
    return result


def paired_t_power(n, effect, std, confidence=CONFIDENCE):
    """Power of the two-sided paired t-test with n pairs when the true mean difference is `effect` and the true std
    of the differences is `std`: P(|T| > t_crit), T ~ noncentral t with n - 1 degrees of freedom and noncentrality
    effect / (std / sqrt(n)). Exact (no normal approximation), which matters at the few seeds we can afford."""
    from scipy import stats
    df = n - 1
    critical = stats.t.ppf(0.5 + confidence / 2, df)
    noncentrality = abs(effect) / (std / math.sqrt(n))
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))


def seeds_needed(effect, std, power=POWER, confidence=CONFIDENCE):
    """Smallest number of seeds n >= 2 at which a paired two-sided t-test at `confidence` detects a mean difference
    `effect` with probability `power`, taking the observed mean and std as the truth (a planning estimate, not a
    promise: with few seeds both are themselves uncertain). None when it cannot be estimated (n < 2 or no effect);
    MAX_SEEDS_REPORTED + 1 means "more than that"."""
    if not (np.isfinite(effect) and np.isfinite(std)) or effect == 0:
        return None
    if std == 0:
        return 2
    n = 2
    while n <= MAX_SEEDS_REPORTED:
        if paired_t_power(n, effect, std, confidence) >= power:
            return n
        # power grows with n; jump ahead with the normal approximation, then walk: fast even for tiny effects
        guess = int(((1.96 + 0.84) * std / abs(effect)) ** 2)
        n = max(n + 1, guess - 2) if guess > n + 3 else n + 1
    return MAX_SEEDS_REPORTED + 1


def resolved_groups(means, pair_interval):
    """Order names by mean (lowest first) and group those the statistics cannot separate.

    means: {name: mean}; pair_interval(a, b) -> the t_interval of the paired differences a - b.
    Two names stay in one group when their interval includes 0 (or is undefined: one seed), and groups are merged
    until each is a contiguous run of the sorted order, so an ordering line written from the groups never puts two
    unresolved names on different sides of a '<'. Returns a list of groups (lists of names), lowest first."""
    names = sorted((n for n in means if np.isfinite(means[n])), key=lambda n: means[n])
    parent = {n: n for n in names}

    def root(n):
        while parent[n] != n:
            n = parent[n]
        return n
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            interval = pair_interval(a, b)
            separated = interval['n'] >= 2 and (interval['high'] < 0 or interval['low'] > 0)
            if not separated:
                parent[root(b)] = root(a)
    # contiguity: a group spans from its first to its last member in sorted order; overlapping spans merge
    spans = {}
    for i, n in enumerate(names):
        lo, hi = spans.get(root(n), (i, i))
        spans[root(n)] = (min(lo, i), max(hi, i))
    groups, current, reach = [], [], -1
    for i, n in enumerate(names):
        if current and i > reach:
            groups.append(current)
            current = []
        current.append(n)
        reach = max(reach, spans[root(n)][1])
    if current:
        groups.append(current)
    return groups


def ordering_line(groups, means, digits=4):
    """'a (1.70) < {b (1.75), c (1.76)}': braces hold names the paired intervals do not order."""
    def item(n):
        return f'{n} ({means[n]:.{digits}f})'
    parts = [item(g[0]) if len(g) == 1 else '{' + ', '.join(item(n) for n in g) + '}' for g in groups]
    return ' < '.join(parts)


# ----------------------------------------------------------------------------- loss against model size
def power_law(n, e, a, alpha):
    """L(N) = E + A * N^(-alpha): E is the loss an infinitely large model would reach on this data and budget."""
    return e + a * np.power(n, -alpha)


def fit_power_law(sizes, losses, sigma=None):
    """Least-squares fit of power_law to (sizes, losses) with scipy's curve_fit. sigma: per-point std (seed spread) or
    None. N is rescaled by its geometric mean inside the fit (A would otherwise span many orders of magnitude and the
    optimiser would stall). Returns {'E', 'A', 'alpha', 'E_se', 'A_se', 'alpha_se'} or None when it cannot be fit
    (fewer than 4 points: three parameters need at least one degree of freedom left to estimate their errors)."""
    from scipy.optimize import curve_fit
    n = np.asarray(sizes, dtype=float)
    y = np.asarray(losses, dtype=float)
    keep = np.isfinite(n) & np.isfinite(y) & (n > 0)
    n, y = n[keep], y[keep]
    if len(n) < 4:
        return None
    scale = float(np.exp(np.log(n).mean()))
    s = None
    if sigma is not None:
        s = np.asarray(sigma, dtype=float)[keep]
        s = s if np.all(np.isfinite(s)) and np.all(s > 0) else None
    span = max(float(y.max() - y.min()), 1e-6)
    start = (float(y.min()) - 0.5 * span, span, 0.5)
    try:
        params, cov = curve_fit(power_law, n / scale, y, p0=start, sigma=s, absolute_sigma=False, maxfev=20000,
                                bounds=([-np.inf, 0.0, 0.0], [np.inf, np.inf, 5.0]))
    except (RuntimeError, ValueError):
        return None
    e, a_scaled, alpha = (float(p) for p in params)
    se = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else np.full(3, math.nan)
    # A * (N / scale)^(-alpha) = (A * scale^alpha) * N^(-alpha); its standard error scales the same way
    factor = scale ** alpha
    return {'E': e, 'A': a_scaled * factor, 'alpha': alpha,
            'E_se': float(se[0]), 'A_se': float(se[1]) * factor, 'alpha_se': float(se[2])}
