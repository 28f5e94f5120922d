"""
The result tables say what the recorded files under assets/ say: every number a reader acts on (means, paired
differences, interval bounds, verdicts) is checked against the report that produced it, and each interval is
recomputed from its mean and std (Student t, n - 1 degrees of freedom), so a hand-edited or stale number fails here.
The full result sections live in docs/results.md; the 10-seed headline table is also on the front page (README.md),
and both copies are checked, as is every number the front page quotes about the results.
"""
import csv
import math
import re
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

REPO = Path(__file__).resolve().parent.parent
README = (REPO / 'README.md').read_text(encoding='utf-8')
RESULTS = (REPO / 'docs' / 'results.md').read_text(encoding='utf-8')   # every result's full section
NUMBER = r'[−+-]?\d+\.\d+'


def number(text):
    return float(text.replace('−', '-'))


def table_after(heading, text):
    """The rows (lists of cells) of the first markdown table after a heading line that starts with `heading`."""
    start = text.index(heading)
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith('|'))
    rows = []
    for line in lines[first + 2:]:
        if not line.startswith('|'):
            break
        rows.append([cell.strip() for cell in line.strip('|').split('|')])
    return rows


def tuned_summary_rows():
    """{activation: cells} of the table in assets/summary_tuned.md (the report the results page's tuned table quotes)."""
    rows = table_after('| activation | lr |', (REPO / 'assets' / 'summary_tuned.md').read_text(encoding='utf-8'))
    return {row[0]: row for row in rows}


def test_the_tuned_table_quotes_its_report():
    readme_rows = table_after('### Where the rates come from: the 3-seed tuning run', RESULTS)
    summary = tuned_summary_rows()
    assert [row[0] for row in readme_rows] == ['GELU', 'SwiGLU', 'PolyReLU', 'PolyNorm']
    for name, lr, loss, delta, verdict in readme_rows:
        row = summary[name.lower()]
        assert float(lr) == float(row[1]), name
        assert loss == row[4], name                          # "mean ± std" exactly as the report printed it
        if name == 'GELU':
            assert delta == 'baseline'
            continue
        mean, low, high = (number(x) for x in re.findall(NUMBER, delta))
        r_mean, r_std, r_low, r_high = (number(x) for x in re.findall(NUMBER, row[5]))
        assert (mean, low, high) == (r_mean, r_low, r_high), name
        assert verdict == row[6], name


@pytest.mark.parametrize('activation', ['swiglu', 'polyrelu', 'polynorm'])
def test_each_tuned_interval_is_the_student_t_interval_of_its_differences(activation):
    """mean ± t(0.975, n-1) * std / sqrt(n) over the n = 3 paired differences, to the 4 printed decimals."""
    row = tuned_summary_rows()[activation]
    n = int(row[2])
    mean, std, low, high = (number(x) for x in re.findall(NUMBER, row[5]))
    half = scipy_stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    # the printed mean and std are rounded to 4 decimals, so the bounds may differ by that rounding times t/sqrt(n)
    slack = 5e-5 * (1 + scipy_stats.t.ppf(0.975, n - 1) / math.sqrt(n)) + 5e-5
    assert abs((mean - half) - low) <= slack and abs((mean + half) - high) <= slack
    assert (row[6] == 'better') == (high < 0) and (row[6] == 'worse') == (low > 0)


def test_the_scaling_table_quotes_its_csv():
    rows = {(r['size'], r['activation']): r for r in
            csv.DictReader(open(REPO / 'assets' / 'scaling_shakespeare_char.csv', encoding='utf-8'))}
    readme_rows = table_after('| non-embedding params | GELU |', RESULTS[RESULTS.index('## Scaling'):])
    assert len(readme_rows) == 4
    for cells in readme_rows:
        size = re.search(r'\((\d+x\d+)\)', cells[0]).group(1)
        gelu = rows[(size, 'gelu')]
        mean, std = (number(x) for x in re.findall(NUMBER, cells[1]))
        assert mean == round(float(gelu['final_val_loss_mean']), 4) and std == round(float(gelu['final_val_loss_std']), 4)
        for activation, cell in zip(('swiglu', 'polyrelu', 'polynorm'), cells[2:]):
            row = rows[(size, activation)]
            delta, low, high = (number(x) for x in re.findall(NUMBER, cell))
            assert delta == round(float(row['delta_val_mean']), 3), (size, activation)
            assert low == round(float(row['delta_val_ci95_low']), 3), (size, activation)
            assert high == round(float(row['delta_val_ci95_high']), 3), (size, activation)


# ----------------------------------------------------------------------------- the 10-seed headline
HEADLINE = '## Each activation at its own learning rate, 10 seeds'   # its full section in docs/results.md
FRONT_HEADLINE = '## The headline, 10 seeds'                         # its copy on the front page
FIRST_HEADLINE = '### The first 10-seed run: SwiGLU at 4e-3'                 # the same with SwiGLU at 4e-3
# (document, heading, per-seed losses, the two reports: GELU baseline, SwiGLU baseline)
HEADLINE_TABLES = [('README.md', FRONT_HEADLINE, 'runs_headline.csv', 'summary_headline'),
                   ('docs/results.md', HEADLINE, 'runs_headline.csv', 'summary_headline'),
                   ('docs/results.md', FIRST_HEADLINE, 'runs_headline_first.csv', 'summary_headline_first')]
NAMES = {'GELU': 'gelu', 'SwiGLU': 'swiglu', 'PolyReLU': 'polyrelu', 'PolyNorm': 'polynorm'}


def per_seed_losses(csv_name, size=None):
    """({variant: {seed: final val loss}}, {variant: lr}) from a runs.csv under assets/ (report.py's one row per run);
    with `size`, only the rows of that size (a sweep's runs.csv has a size column in front)."""
    losses, rates = {}, {}
    for row in csv.DictReader(open(REPO / 'assets' / csv_name, encoding='utf-8')):
        if size is not None and row['size'] != size:
            continue
        assert row['outcome'] == 'finished', row              # a diverged run would need a line of its own
        losses.setdefault(row['variant'], {})[int(row['seed'])] = float(row['final_val_loss'])
        rates.setdefault(row['variant'], set()).add(float(row['lr']))
    assert all(len(r) == 1 for r in rates.values()), rates   # one rate per variant: its tuned (or fixed) one
    return losses, {v: r.pop() for v, r in rates.items()}


def section_text(start, end, text=RESULTS):
    """A document (docs/results.md unless told) from one heading to the next given one (None: to its end), its lines
    rejoined, so that a quoted number may wrap across lines."""
    return ' '.join(text[text.index(start):text.index(end) if end else len(text)].split())


def document(name):
    return {'README.md': README, 'docs/results.md': RESULTS}[name]


def headline_losses(csv_name='runs_headline.csv'):
    """{variant: {seed: final val loss}} of the 10-seed headline's 40 runs (or of the first 10-seed run's)."""
    return per_seed_losses(csv_name)[0]


def paired_interval(a, b):
    """mean, low, high of the Student-t 95% interval of the per-seed differences a - b (same seeds)."""
    assert a.keys() == b.keys()
    d = [a[s] - b[s] for s in sorted(a)]
    n = len(d)
    mean = sum(d) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = scipy_stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return mean, mean - half, mean + half


def verdict(low, high):
    return 'better' if high < 0 else 'worse' if low > 0 else 'not resolved'


@pytest.mark.parametrize('name, heading, csv_name, _', HEADLINE_TABLES)
def test_the_headline_table_is_recomputed_from_the_per_seed_losses(name, heading, csv_name, _):
    """Every number of the 10-seed table (the front page's copy and the results page's, and the first 10-seed run's),
    from the 40 per-seed losses: mean ± sample std, and each paired interval against GELU and against SwiGLU
    (Student t, 9 degrees of freedom), to the printed 4 decimals."""
    losses = headline_losses(csv_name)
    assert sorted(losses) == sorted(NAMES.values()) and all(sorted(v) == list(range(1, 11)) for v in losses.values())
    rows = table_after(heading, document(name))
    check_means_and_pairs([[row[0], *row[2:]] for row in rows], losses, verdict)


def check_means_and_pairs(rows, per_seed, judge):
    """Rows `activation | mean ± std | Δ vs GELU [CI] | verdict | Δ vs SwiGLU [CI] | verdict`, recomputed from
    {variant: {seed: value}}: the mean ± sample std, each paired Student-t interval to 4 decimals, its verdict."""
    assert [row[0] for row in rows] == list(NAMES)
    for name, cell, *pairs in rows:
        values = list(per_seed[NAMES[name]].values())
        mean, std = (number(x) for x in re.findall(NUMBER, cell))
        assert mean == round(sum(values) / len(values), 4), name
        assert std == round(float(scipy_stats.tstd(values)), 4), name
        for (delta, said), base in zip(zip(pairs[::2], pairs[1::2]), ('gelu', 'swiglu')):
            if NAMES[name] == base:
                assert delta == 'baseline', name
                continue
            expected = paired_interval(per_seed[NAMES[name]], per_seed[base])
            printed = tuple(number(x) for x in re.findall(NUMBER, delta))
            assert all(abs(p - e) <= 5e-5 for p, e in zip(printed, expected)) and len(printed) == 3, (name, base)
            assert said == judge(*expected[1:]), (name, base)


@pytest.mark.parametrize('name, heading, _, reports', HEADLINE_TABLES)
@pytest.mark.parametrize('suffix, baseline', [('.md', 'gelu'), ('_vs_swiglu.md', 'swiglu')])
def test_the_headline_reports_say_what_the_readme_says(suffix, baseline, name, heading, _, reports):
    """The two recorded reports (compare.py --replot with each baseline) print the numbers of its tables."""
    report = (REPO / 'assets' / (reports + suffix)).read_text('utf-8')
    summary = {row[0]: row for row in table_after('| activation | lr |', report)}
    column = 3 if baseline == 'gelu' else 5
    for row in table_after(heading, document(name)):
        cells = summary[NAMES[row[0]]]
        assert float(row[1]) == float(cells[1]) and cells[2] == '10' and row[2] == cells[4], row[0]
        if NAMES[row[0]] == baseline:
            assert cells[5] == 'baseline'
            continue
        r_mean, _, r_low, r_high = (number(x) for x in re.findall(NUMBER, cells[5]))
        assert tuple(number(x) for x in re.findall(NUMBER, row[column])) == (r_mean, r_low, r_high), row[0]
        assert row[column + 1] == cells[6], row[0]


# ----------------------------------------------------------------------------- the order r and the compositions
def check_paired_table(heading, csv_name, baseline, variants, seeds):
    """A results table whose rows are `variant | lr | mean ± std | Δ vs baseline [CI] | verdict | ...`, recomputed
    from the per-seed losses: every variant of the csv in the given order, on the given seeds."""
    losses, rates = per_seed_losses(csv_name)
    assert list(losses) == variants and all(sorted(v) == seeds for v in losses.values())
    rows = table_after(heading, RESULTS)
    assert [row[0].strip('`') for row in rows] == variants
    for name, lr, loss, delta, said, *_ in rows:
        name = name.strip('`')
        values = [losses[name][s] for s in seeds]
        mean, std = (number(x) for x in re.findall(NUMBER, loss))
        assert mean == round(sum(values) / len(values), 4) and std == round(float(scipy_stats.tstd(values)), 4), name
        assert float(lr) == rates[name], name
        if name == baseline:
            assert delta == 'baseline', name
            continue
        expected = paired_interval(losses[name], losses[baseline])
        printed = tuple(number(x) for x in re.findall(NUMBER, delta))
        assert len(printed) == 3 and all(abs(p - e) <= 5e-5 for p, e in zip(printed, expected)), name
        assert said == verdict(*expected[1:]), name
    return rows


ORDER = '## The order r of PolyNorm'
ORDERS = [f'polynorm-r{r}' for r in range(1, 7)]


def bench_rows(name):
    """{variant: cells} of the table of a recorded bench.py report under assets/."""
    return {row[0]: row for row in table_after('| variant |', (REPO / 'assets' / name).read_text('utf-8'))}


def check_cost_columns(rows, bench_name):
    """The last three columns of a results table (step time × GELU eager and compiled, saved bytes per token)
    are its bench.py run's: the rows `<variant> eager` and `<variant> compiled` of the recorded report."""
    bench = bench_rows(bench_name)
    for name, *_, eager, compiled, saved in rows:
        variant = name.strip('`')
        assert eager == bench[f'{variant} eager'][5] + '×', name            # the "× GELU" column, same round
        assert compiled == bench[f'{variant} compiled'][5] + '×', name
        assert saved == bench[f'{variant} eager'][7], name                   # saved bytes per token


def test_the_order_table_is_recomputed_from_the_per_seed_losses_and_its_bench_run():
    rows = check_paired_table(ORDER, 'runs_order.csv', 'polynorm-r3', ORDERS, [1, 2, 3])
    check_cost_columns(rows, 'bench_order.md')


def test_r3_of_the_order_runs_reproduces_the_headline_s_polynorm_to_the_last_digit():
    """The results page says r = 3 at 4e-3 is the headline's PolyNorm (same recipe, rate and seeds): the same losses."""
    order, rates = per_seed_losses('runs_order.csv')
    assert rates['polynorm-r3'] == 4e-3
    assert order['polynorm-r3'] == {s: headline_losses('runs_headline_first.csv')['polynorm'][s] for s in (1, 2, 3)}


COMPOSITIONS = '## The compositions'
COMPOSITION_NAMES = ['swiglu', 'polyrelu', 'polyprelu', 'polynorm', 'polyrelunorm', 'polynorm_glu']


def test_the_compositions_table_is_recomputed_from_the_per_seed_losses_and_its_bench_run():
    rows = check_paired_table(COMPOSITIONS, 'runs_compositions.csv', 'swiglu', COMPOSITION_NAMES, [1, 2, 3])
    check_cost_columns(rows, 'bench_compositions.md')


def test_the_shared_runs_of_the_compositions_are_the_headline_s_own():
    """SwiGLU, PolyReLU and PolyNorm train at the first 10-seed run's rates on its recipe and seeds 1-3: the same
    losses, so the compositions table and that run's agree on the runs they share."""
    compositions, rates = per_seed_losses('runs_compositions.csv')
    headline = headline_losses('runs_headline_first.csv')
    for name, rate in (('swiglu', 4e-3), ('polyrelu', 2e-3), ('polynorm', 4e-3)):
        assert rates[name] == rate, name
        assert compositions[name] == {s: headline[name][s] for s in (1, 2, 3)}, name


@pytest.mark.parametrize('a, b', [('polynorm', 'polyprelu'), ('polynorm', 'polyrelu'), ('polyrelunorm', 'polyrelu'),
                                  ('polyrelunorm', 'polynorm'), ('polyprelu', 'polyrelu'), ('polynorm_glu', 'polynorm')])
def test_each_pair_the_compositions_text_names_is_recomputed_from_the_per_seed_losses(a, b):
    """The bullets below the table quote paired differences between compositions, e.g. PolyNorm - PolyPReLU = -0.0310
    [-0.0437, -0.0183]: each is the Student-t interval of the same runs' per-seed differences, as printed."""
    losses = per_seed_losses('runs_compositions.csv')[0]
    mean, low, high = (f'{x:+.4f}'.replace('-', '−') for x in paired_interval(losses[a], losses[b]))
    section = section_text(COMPOSITIONS, '## Scaling')
    assert f'{mean} [{low}, {high}]' in section, (a, b)


# ----------------------------------------------------------------------------- the tuned scaling sweep
TUNED_SCALING = '### With each rate tuned per size and activation'
SCALING_SIZES = ['2x64', '3x96', '4x128', '5x160']
SCALING_NAMES = ['gelu', 'swiglu', 'polyrelu', 'polynorm']


def tuned_scaling_runs():
    """({size: {variant: {seed: final val loss}}}, {size: {variant: lr}}, {size: non-embedding params}) from the
    sweep's per-seed runs (each size's runs.csv, a size column in front) and its scaling.csv."""
    params = {row['size']: int(row['non_embedding_params'])
              for row in csv.DictReader(open(REPO / 'assets' / 'scaling_tuned' / 'scaling.csv', encoding='utf-8'))}
    by_size = {size: per_seed_losses('scaling_tuned/runs.csv', size) for size in params}
    return {s: v[0] for s, v in by_size.items()}, {s: v[1] for s, v in by_size.items()}, params


def without_rate(cell):
    """A cell's numbers without its '(lr 1.6e-2)' part, whose mantissa would read as a loss."""
    return re.sub(r'\(lr [^)]*\)', '', cell)


def test_the_tuned_scaling_table_is_recomputed_from_the_per_seed_losses():
    """Each size's row: GELU's mean ± std and rate, and each activation's paired Δ vs GELU [Student t, 2 df] at its
    own tuned rate, from the 48 per-seed losses, as printed (3 decimals for the Δ, as in the shared-rate table)."""
    losses, rates, params = tuned_scaling_runs()
    assert list(losses) == SCALING_SIZES and list(params) == SCALING_SIZES
    assert all(list(losses[s]) == SCALING_NAMES and all(sorted(v) == [1, 2, 3] for v in losses[s].values())
               for s in SCALING_SIZES)
    rows = table_after(TUNED_SCALING, RESULTS)
    assert [re.search(r'\((\d+x\d+)\)', row[0]).group(1) for row in rows] == SCALING_SIZES
    for size, (label, gelu, *deltas) in zip(SCALING_SIZES, rows):
        assert label.startswith(f'{params[size] / 1e6:.2f}M'), size
        values = list(losses[size]['gelu'].values())
        mean, std = (number(x) for x in re.findall(NUMBER, without_rate(gelu)))
        assert mean == round(sum(values) / 3, 4) and std == round(float(scipy_stats.tstd(values)), 4), size
        for name, cell in zip(SCALING_NAMES, [gelu] + deltas):
            assert float(re.search(r'lr (\S+?)\)', cell).group(1)) == rates[size][name], (size, name)
        for name, cell in zip(SCALING_NAMES[1:], deltas):
            expected = paired_interval(losses[size][name], losses[size]['gelu'])
            printed = tuple(number(x) for x in re.findall(NUMBER, without_rate(cell)))
            assert len(printed) == 3 and all(abs(p - e) <= 5e-4 for p, e in zip(printed, expected)), (size, name)


def tuned_gap_trend(name):
    """Least-squares slope of the 12 per-seed differences (name - GELU) against log10 N, with its t interval
    (10 degrees of freedom): how the gap moves per 10x parameters."""
    losses, _, params = tuned_scaling_runs()
    x, y = [], []
    for size in SCALING_SIZES:
        for seed, loss in losses[size][name].items():
            x.append(math.log10(params[size]))
            y.append(loss - losses[size]['gelu'][seed])
    fit = scipy_stats.linregress(x, y)
    half = scipy_stats.t.ppf(0.975, len(y) - 2) * fit.stderr
    return fit.slope, fit.slope - half, fit.slope + half


@pytest.mark.parametrize('name', ['swiglu', 'polyrelu', 'polynorm'])
def test_each_tuned_trend_the_readme_quotes_is_refitted_from_the_per_seed_losses(name):
    """The results page's slope per 10x parameters and its interval, and the recorded report's, are the least-squares fit
    of the per-seed paired differences (printed to 3 and 4 decimals)."""
    slope, low, high = tuned_gap_trend(name)
    section = section_text(TUNED_SCALING, None)
    quoted = f'{slope:+.3f} per 10× parameters, 95% CI [{low:+.3f}, {high:+.3f}]'.replace('-', '−')
    assert quoted in section, name
    report = (REPO / 'assets' / 'scaling_tuned' / 'summary.md').read_text('utf-8')
    line = f'{name} − gelu: {slope:+.4f} per 10x parameters, 95% CI [{low:+.4f}, {high:+.4f}]'.replace('-', '−')
    assert line in report, name


def test_the_edge_checks_the_readme_quotes_are_the_recorded_runs_and_lost():
    """Each edge choice's one-run-beyond check: the results page quotes both seed-0 losses as recorded, the chosen rate is
    the one the sweep trained (so it was the grid's edge), and the run beyond the edge lost."""
    rates = tuned_scaling_runs()[1]
    section = section_text(TUNED_SCALING, None)
    rows = list(csv.DictReader(open(REPO / 'assets' / 'scaling_tuned' / 'edge_checks.csv', encoding='utf-8')))
    assert len(rows) == 3
    for row in rows:
        chosen, beyond = float(row['chosen_final_val_loss']), float(row['beyond_final_val_loss'])
        assert rates[row['size']][row['variant']] == float(row['chosen_lr']), row
        assert float(row['chosen_lr']) in (2e-3, 1.6e-2), row               # an edge of the config's grid
        assert beyond > chosen, row
        assert f'{beyond:.4f} at ' in section and f'against {chosen:.4f} at ' in section, row


# ----------------------------------------------------------------------------- what the front page says about them
def test_the_front_page_quotes_only_numbers_the_results_page_states():
    """Every decimal number of the front page's summary of the results (headline caveats, one line each on the
    order r, the compositions and scaling) is one that docs/results.md states, sign included."""
    text = README[README.index(FRONT_HEADLINE):README.index('## Adding an activation')]
    prose = ' '.join(line for line in text.splitlines() if not line.startswith('|'))
    results = ' '.join(RESULTS.split())
    quoted = re.findall(r'(?<![\d.])[−+]?\d+\.\d+', prose)
    assert quoted, 'the front page quotes no result'
    missing = [q for q in quoted if not re.search(r'(?<![\d.−+])' + re.escape(q) + r'(?![\d])', results)]
    assert not missing, f'README quotes {missing}, which docs/results.md does not state'


@pytest.mark.parametrize('name, heading, csv_name, _', HEADLINE_TABLES)
def test_the_headline_s_polynorm_swiglu_caveat_is_recomputed(name, heading, csv_name, _):
    """"PolyNorm lower on 8 of the 10 seeds" and "about 10 seeds for 80% power": counted and computed (lab.stats,
    as compare.py does) from the per-seed losses."""
    from lab import stats
    losses = headline_losses(csv_name)
    d = [losses['polynorm'][s] - losses['swiglu'][s] for s in sorted(losses['polynorm'])]
    lower = sum(x < 0 for x in d)
    mean = sum(d) / len(d)
    needed = stats.seeds_needed(mean, float(scipy_stats.tstd(d)))
    end = {FRONT_HEADLINE: '## Adding an activation', HEADLINE: '### Where the rates come from',
           FIRST_HEADLINE: '## The order r of PolyNorm'}[heading]
    text = section_text(heading, end, document(name))
    assert f'lower on {lower} of the 10 seeds' in text or f'lower one on {lower} of the 10 seeds' in text
    assert f'needs about {needed} seeds for 80% power' in text


# ----------------------------------------------------------------------------- the headline's rates, re-tuned on 2 seeds
RETUNE = '### The rates re-tuned on two tuning seeds'


def retune_losses():
    """{variant: {rate: {tuning seed: final val loss}}} from assets/headline_retune/tuning.csv (40 tuning runs)."""
    losses = {}
    with open(REPO / 'assets' / 'headline_retune' / 'tuning.csv', newline='') as f:
        for row in csv.DictReader(f):
            assert row['outcome'] == 'finished', row
            losses.setdefault(row['variant'], {}).setdefault(float(row['learning_rate']), {})[int(row['seed'])] = \
                float(row['final_val_loss'])
    return losses


def test_the_retuning_table_is_recomputed_from_the_tuning_runs():
    """Each rate's mean over tuning seeds 0 and 1000, the chosen (lowest) rate, and its margin to the runner-up with
    the Student-t 95% interval of the two per-seed margins (1 degree of freedom): the results page and the recorded
    report say what the 40 tuning runs say."""
    losses = retune_losses()
    for text in (RESULTS, (REPO / 'assets' / 'headline_retune' / 'summary.md').read_text('utf-8')):
        rows = table_after('| variant | lr 0.001 |', text[text.index(RETUNE):] if text is RESULTS else text)
        assert [row[0] for row in rows] == ['gelu', 'swiglu', 'polyrelu', 'polynorm']
        for row in rows:
            by_rate = losses[row[0]]
            rates = sorted(by_rate)
            means = {r: sum(by_rate[r].values()) / len(by_rate[r]) for r in rates}
            assert [number(c.strip('*')) for c in row[1:6]] == [round(means[r], 4) for r in rates], row[0]
            chosen, runner_up = sorted(rates, key=lambda r: means[r])[:2]
            assert float(row[6]) == chosen and row[1 + rates.index(chosen)].startswith('**'), row[0]
            margins = [by_rate[runner_up][s] - by_rate[chosen][s] for s in (0, 1000)]
            mean = sum(margins) / 2
            half = scipy_stats.t.ppf(0.975, 1) * abs(margins[0] - margins[1]) / math.sqrt(2) / math.sqrt(2)
            found = [number(x) for x in re.findall(NUMBER, row[7])]       # margin, the runner-up rate, low, high
            cell_mean, cell_low, cell_high = found[0], found[-2], found[-1]
            assert f'over {runner_up:g}' in row[7], row[0]
            assert (cell_mean, cell_low, cell_high) == (round(mean, 4), round(mean - half, 4), round(mean + half, 4))


def test_swiglu_at_its_re_tuned_rate_is_recomputed_from_the_per_seed_losses():
    """The pairs of SwiGLU's 10 seeds at 2e-3 (assets/headline_retune/runs_swiglu_2e-3.csv) with the first 10-seed
    run's; they are the headline's own SwiGLU runs."""
    headline = headline_losses('runs_headline_first.csv')
    with open(REPO / 'assets' / 'headline_retune' / 'runs_swiglu_2e-3.csv', newline='') as f:
        swiglu2 = {int(r['seed']): float(r['final_val_loss']) for r in csv.DictReader(f) if r['outcome'] == 'finished'}
    assert sorted(swiglu2) == list(range(1, 11)) and swiglu2 == headline_losses()['swiglu']
    pairs = {'SwiGLU at 2e-3 − SwiGLU at 4e-3': (swiglu2, headline['swiglu']),
             'SwiGLU at 2e-3 − GELU': (swiglu2, headline['gelu']),
             'PolyReLU − SwiGLU at 2e-3': (headline['polyrelu'], swiglu2),
             'PolyNorm − SwiGLU at 2e-3': (headline['polynorm'], swiglu2)}
    rows = table_after('| pair (10 seeds) |', RESULTS)
    assert [row[0] for row in rows] == list(pairs)
    for name, delta, verdict_cell in rows:
        mean, low, high = paired_interval(*pairs[name])
        assert [number(x) for x in re.findall(NUMBER, delta)] == [round(mean, 4), round(low, 4), round(high, 4)], name
        assert verdict_cell == verdict(low, high), name
    values = list(swiglu2.values())
    m = sum(values) / 10
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / 9)
    assert f'SwiGLU at 2e-3: {m:.4f} ± {sd:.4f} (10 seeds' in RESULTS


# ----------------------------------------------------------------------------- the headline's downstream accuracy
def test_the_headline_accuracy_table_is_recomputed_from_the_per_run_scores():
    """Each activation's continuation accuracy (mean ± sample std over the 10 seeds) and its paired intervals against
    GELU and SwiGLU, from the accuracy column of the headline's runs.csv (compare.py --eval)."""
    accuracy = {}
    for row in csv.DictReader(open(REPO / 'assets' / 'runs_headline.csv', encoding='utf-8')):
        accuracy.setdefault(row['variant'], {})[int(row['seed'])] = float(row['eval_accuracy'])
    assert all(len(a) == 10 and all(0.25 < v < 1 for v in a.values()) for a in accuracy.values())   # above chance
    rows = table_after('| activation | continuation accuracy', RESULTS)
    check_means_and_pairs(rows, accuracy, lambda low, high: verdict(-high, -low))      # higher accuracy is better


def test_the_rerun_s_agreement_with_the_first_run_is_recomputed():
    """"rerun − first run, paired by seed": GELU, PolyReLU and PolyNorm ran the same command and seeds twice."""
    first, rerun = headline_losses('runs_headline_first.csv'), headline_losses()
    text = section_text(HEADLINE, '### Where the rates come from')
    for name in ('GELU', 'PolyReLU', 'PolyNorm'):
        mean, low, high = paired_interval(rerun[NAMES[name]], first[NAMES[name]])
        quoted = f"{name} {mean:+.4f} [{low:+.4f}, {high:+.4f}]".replace('-', '−')
        assert quoted in text, quoted
