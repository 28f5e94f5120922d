"""
What compare.py's runs mean: read their logs, compute the paper's analyses, draw every figure and write the tables.

compare.py decides what to train and trains it; this module only reads what the runs left on disk (log.csv,
coeffs.csv, summary.json, ckpt.pt once for the analyses), so `compare.py --replot` needs nothing else. Its parts:
runs.py reads the run folders, analysis.py computes the analyses from a checkpoint, figures.py draws, stats.py has the
numbers behind verdicts (paired intervals, seeds needed, ordering, power-law fits); this file writes the tables
(summary.csv, summary.md, scaling.csv) and puts one comparison's report together.
"""
import csv
import math
from pathlib import Path

import numpy as np

from lab import downstream, figures, stats
from lab.analysis import ensure_analyses
from lab.runs import load_runs

# other processes using more than this many CPU cores on average during a run make its speed figures incomparable
LOAD_NOTE_CORES = 0.25
DIVERGED = 'diverged'          # the verdict of a variant whose every seed diverged
NOT_LEARNED = 'did not learn'  # ... whose every seed ended with a val loss not below the unigram entropy
FAILED = 'failed'              # ... whose every seed did one or the other
FAILED_VERDICTS = (DIVERGED, NOT_LEARNED, FAILED)


# ----------------------------------------------------------------------------- tables
def run_numbers(run):
    """The headline numbers of one finished run (nan where not available)."""
    log, summary, analysis, evaluation = run['log'], run['summary'], run['analysis'] or {}, run.get('eval') or {}
    val = log['val_loss'][~np.isnan(log['val_loss'])] if 'val_loss' in log else np.array([])
    train = log['train_loss'][~np.isnan(log['train_loss'])] if 'train_loss' in log else np.array([])
    tail = train[-max(1, len(train) // 10):]                              # last 10% of logged train losses

    def get(key, fallback=math.nan):                                       # summary.json value, if any
        value = summary.get(key)
        return fallback if value is None else value
    return {
        'total_params': get('total_params'), 'active_params': get('active_params'),
        'ffn_params': analysis.get('ffn_params', math.nan),
        'final_val_loss': get('final_val_loss', val[-1] if len(val) else math.nan),
        'best_val_loss': get('best_val_loss', val.min() if len(val) else math.nan),
        'final_train_loss': tail.mean() if len(tail) else math.nan,
        'tokens': get('tokens', log['tokens'][-1] if 'tokens' in log else math.nan),
        'tokens_per_sec': get('tokens_per_sec'), 'ms_per_iter': get('ms_per_iter'),
        'peak_mem_mb': get('peak_mem_mb'), 'elapsed_s': get('elapsed_s'),
        'other_load_cores': get('other_load_cores'),
        'mean_effective_rank': analysis.get('mean_effective_rank', math.nan),
        'mean_layer_cosine': analysis.get('mean_consecutive_cosine', math.nan),
        'eval_accuracy': evaluation.get('accuracy', math.nan),
        'eval_accuracy_norm': evaluation.get('accuracy_norm', math.nan),
        'eval_score_s': evaluation.get('score_s', math.nan),
    }


NUMBER_COLUMNS = ['final_val_loss', 'best_val_loss', 'final_train_loss', 'tokens_per_sec', 'ms_per_iter',
                  'peak_mem_mb', 'mean_effective_rank', 'mean_layer_cosine']


def per_seed(runs):
    """{activation: {seed: run_numbers}}"""
    return {act: {r['seed']: run_numbers(r) for r in rs} for act, rs in runs.items()}


def per_seed_values(runs, key='final_val_loss'):
    """{activation: {seed: one number of run_numbers}}: what the paired differences are taken over."""
    return {act: {s: n[key] for s, n in by_seed.items()} for act, by_seed in per_seed(runs).items()}


def summarize(runs, baseline, lrs, failed=None, order=None, specs=None):
    """One row per variant: means and sample stds over its finished seeds, and the paired comparison with the baseline.

    Pairing: the difference of final val losses on the same seed (same data order, same non-FFN init) cancels the
    noise both runs share; its mean, std and Student-t 95% interval are computed in stats.paired_comparison.
    failed = {variant: {seed: 'diverged' or 'did not learn'}}: listed in the 'diverged' and 'did_not_learn' columns,
    never in a number; a variant whose every seed failed gets a row of its own with no numbers and the verdict
    'diverged', 'did not learn' or 'failed' (some of each). order: the variants in the order of the comparison;
    specs: {variant: its spec (activation:key=value...)} for the 'settings' column."""
    numbers, failed, specs = per_seed(runs), failed or {}, specs or {}
    base = {s: n['final_val_loss'] for s, n in numbers.get(baseline, {}).items()}
    rows = []
    for act in order or list(numbers):
        by_seed, lost = numbers.get(act, {}), failed.get(act, {})
        if not by_seed and not lost:
            continue                                                       # nothing on disk for it yet
        row = {'activation': act, 'settings': specs.get(act, act), 'lr': lrs.get(act),
               'seeds': ','.join(str(s) for s in by_seed), 'n_seeds': len(by_seed),
               'diverged': ','.join(str(s) for s, o in sorted(lost.items()) if o == DIVERGED),
               'did_not_learn': ','.join(str(s) for s, o in sorted(lost.items()) if o == NOT_LEARNED)}
        first = next(iter(by_seed.values()), {})
        for key in ('total_params', 'active_params', 'ffn_params', 'tokens'):
            row[key] = first.get(key, math.nan)
        for key in NUMBER_COLUMNS:
            values = np.array([n[key] for n in by_seed.values()], dtype=float)
            values = values[~np.isnan(values)]
            row[key] = values.mean() if len(values) else math.nan
            row[key + '_std'] = values.std(ddof=1) if len(values) > 1 else math.nan
        if not by_seed:
            outcomes = set(lost.values())
            pair = {'n': 0, 'mean': math.nan, 'std': math.nan, 'low': math.nan, 'high': math.nan,
                    'verdict': outcomes.pop() if len(outcomes) == 1 else FAILED, 'seeds_needed': None}
        elif act == baseline:
            pair = {'n': len(base), 'mean': 0.0, 'std': math.nan, 'low': math.nan, 'high': math.nan,
                    'verdict': 'baseline', 'seeds_needed': None}
        else:
            pair = stats.paired_comparison({s: n['final_val_loss'] for s, n in by_seed.items()}, base)
        row.update({'delta_val_mean': pair['mean'], 'delta_val_std': pair['std'],
                    'delta_val_ci95_low': pair['low'], 'delta_val_ci95_high': pair['high'],
                    'verdict': pair['verdict'], 'n_pairs': pair['n'], 'seeds_needed': pair['seeds_needed']})
        if any(np.isfinite(n['eval_accuracy']) for rs in numbers.values() for n in rs.values()):
            row.update(eval_columns(act, by_seed, numbers.get(baseline, {}), baseline))
        loads = [n['other_load_cores'] for n in by_seed.values()]
        row['max_other_load_cores'] = max((x for x in loads if x is not None and np.isfinite(x)), default=math.nan)
        rows.append(row)
    return rows


def eval_columns(act, by_seed, base, baseline):
    """The downstream accuracy of one variant (mean ± sample std over its scored seeds) and its paired difference to
    the baseline's on the same seeds: Student-t 95% interval and verdict (higher is better), as for the loss."""
    row = {}
    for key in ('eval_accuracy', 'eval_accuracy_norm'):
        values = np.array([n[key] for n in by_seed.values()], dtype=float)
        values = values[~np.isnan(values)]
        row[key] = values.mean() if len(values) else math.nan
        row[key + '_std'] = values.std(ddof=1) if len(values) > 1 else math.nan
    accuracy = {s: n['eval_accuracy'] for s, n in by_seed.items()}
    if act == baseline:
        pair = {'n': None, 'mean': 0.0, 'std': math.nan, 'low': math.nan, 'high': math.nan, 'verdict': 'baseline'}
    else:
        pair = stats.paired_comparison(accuracy, {s: n['eval_accuracy'] for s, n in base.items()},
                                       higher_is_better=True)
        pair['verdict'] = pair['verdict'] if pair['n'] else '–'
    row.update({'delta_eval_accuracy_mean': pair['mean'], 'delta_eval_accuracy_std': pair['std'],
                'delta_eval_accuracy_ci95_low': pair['low'], 'delta_eval_accuracy_ci95_high': pair['high'],
                'eval_n_pairs': pair['n'], 'eval_verdict': pair['verdict']})
    return row


def ordering(runs, key='final_val_loss'):
    """The groups of stats.resolved_groups for `key`, from paired differences between every two activations."""
    values = per_seed_values(runs, key)
    means = {act: float(np.nanmean(list(v.values()))) for act, v in values.items()}
    groups = stats.resolved_groups(
        means, lambda a, b: stats.t_interval(list(stats.paired_differences(values[a], values[b]).values())))
    return groups, means


def write_summary_csv(rows, path):
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


RUN_COLUMNS = ['variant', 'lr', 'seed', 'outcome', 'final_val_loss', 'best_val_loss', 'final_train_loss', 'ms_per_iter',
               'tokens', 'eval_accuracy', 'eval_accuracy_norm']


def write_runs_csv(runs, lrs, failed, path):
    """One row per run, failed ones included (outcome 'diverged', no numbers, or 'did not learn', its final val loss):
    the per-seed numbers behind every mean and interval of summary.csv, so anyone can recompute them (and
    tests/test_readme_results.py does) after the runs are gone. failed: load_runs' list."""
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=RUN_COLUMNS)
        writer.writeheader()
        for act, by_seed in per_seed(runs).items():
            for seed, numbers in sorted(by_seed.items()):
                writer.writerow({'variant': act, 'lr': lrs.get(act), 'seed': seed, 'outcome': 'finished',
                                 **{key: numbers[key] for key in RUN_COLUMNS[4:]}})
        for f in sorted(failed, key=lambda f: (f['act'], f['seed'])):
            writer.writerow({'variant': f['act'], 'lr': lrs.get(f['act']), 'seed': f['seed'], 'outcome': f['outcome'],
                             'final_val_loss': f['final_val_loss']})


def fmt(row, key, digits=4):
    mean, std = row.get(key, math.nan), row.get(key + '_std', math.nan)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return '–'
    text = f'{mean:.{digits}f}'
    return text if std is None or math.isnan(std) else f'{text} ± {std:.{digits}f}'


def millions(value):
    return '–' if value is None or math.isnan(value) else f'{value / 1e6:.2f}M'


def signed(value, digits=4):
    return '–' if value is None or not np.isfinite(value) else f'{value:+.{digits}f}'.replace('-', '−')


def rate(value):
    return '–' if value is None else f'{value:g}'


def delta_cell(row):
    """'−0.0171 [−0.0290, −0.0052]' or '−0.0171 (1 seed)'."""
    if row['verdict'] == 'baseline' or row['verdict'] in FAILED_VERDICTS:
        return row['verdict']
    if not np.isfinite(row['delta_val_mean']):
        return '–'
    if row['n_pairs'] < 2:
        return f"{signed(row['delta_val_mean'])} (1 seed)"
    return (f"{signed(row['delta_val_mean'])} ± {row['delta_val_std']:.4f} "
            f"[{signed(row['delta_val_ci95_low'])}, {signed(row['delta_val_ci95_high'])}]")


def seeds_cell(row):
    """'3', or '2 (s3 diverged)': a failed seed is named wherever the seeds are counted."""
    return f"{row['n_seeds']}" + failed_seeds_text(row, '; ', ' (', ')')


def failed_seeds_text(row, join=', ', before='', after=''):
    """'s3 diverged, s4 did not learn' of a summary row ('' when every seed is a result)."""
    parts = [f"{', '.join('s' + s for s in str(row.get(key) or '').split(',') if s)} {what}"
             for key, what in (('diverged', DIVERGED), ('did_not_learn', NOT_LEARNED)) if row.get(key)]
    return before + join.join(parts) + after if parts else ''


def seeds_needed_text(row):
    n = row.get('seeds_needed')
    if row['verdict'] in ('baseline', stats.ONE_SEED) or n is None:
        return '–'
    return f'> {stats.MAX_SEEDS_REPORTED}' if n > stats.MAX_SEEDS_REPORTED else str(n)


def tuning_lines(tuning):
    """The learning-rate sweep as a markdown table: each rate's mean final val loss over the tuning seeds (the chosen
    one in bold), the chosen rate and its margin to the runner-up with a paired interval; edge and failure warnings."""
    if not tuning:
        return []
    rates = sorted({t['lr'] for entries in tuning['runs'].values() for t in entries})
    seeds = tuning['seeds']
    several = len(seeds) > 1
    lines = ['## Learning rate, tuned per variant', '',
             f"Every rate trained on tuning seed{'s' if several else ''} {', '.join(map(str, seeds))} (not comparison "
             "seeds, so the numbers above carry no winner's curse). Each cell is the final val loss"
             f"{' averaged over the tuning seeds' if several else ''}; the rate with the lowest one (**bold**; a tie "
             "goes to the lower rate) is used for every comparison seed. Margin: the runner-up rate's loss minus the "
             "chosen one's" + (", with the paired Student-t 95% interval over the tuning seeds (n − 1 degrees of "
                               "freedom)" if several else " (one tuning seed: no interval)") +
             ". A rate on which a tuning seed diverged or did not learn is a failed rate, never chosen. min_lr keeps "
             "its ratio to the peak rate. Every tuning run: tuning.csv.", '',
             '| variant | ' + ' | '.join(f'lr {r:g}' for r in rates) + ' | chosen | margin to runner-up [95% CI] |',
             '|---|' + '---|' * (len(rates) + 2)]
    for act, entries in tuning['runs'].items():
        by_rate = {t['lr']: t for t in entries}
        cells = [tuning_cell(by_rate.get(r), r == tuning['chosen'].get(act)) for r in rates]
        chosen = 'every rate failed' if act in tuning.get('all_failed', []) else rate(tuning['chosen'].get(act))
        lines.append(f"| {act} | " + ' | '.join(cells) + f" | {chosen} | {margin_cell(tuning['choices'].get(act))} |")
    for act, edge in tuning['edges'].items():
        lines += ['', f"**WARNING: {act}'s best rate {tuning['chosen'][act]:g} is the {edge} end of the grid: its "
                      f"optimum may lie beyond it; extend --tune_lr past {tuning['chosen'][act]:g}.**"]
    for act in tuning.get('all_failed', []):
        lines += ['', f'**{all_failed_line(act, rates)}**']
    for act, lr in tuning.get('fixed', {}).items():
        lines += ['', f'{act}: not tuned, its variant fixes learning_rate = {lr:g}.']
    return lines + ['']


def tuning_cell(entry, chosen):
    """One rate of the tuning table: its mean loss (bold when chosen), or what happened to it."""
    if entry is None or entry['status'] == 'missing':
        return '–'
    if entry['status'] == 'partial':
        return 'unfinished'
    if entry['status'] != 'done':
        failed = [f"s{s} {r['status']}" for s, r in entry['seeds'].items() if r['status'] != 'finished']
        return entry['status'] if len(entry['seeds']) == 1 else f"{entry['status']} ({', '.join(failed)})"
    text = f"{entry['final_val_loss']:.4f}"
    return f'**{text}**' if chosen else text


def margin_cell(choice):
    """'+0.0123 over 4e-3 [−0.0050, +0.0296]' (no interval from one tuning seed), '–' before a choice."""
    if choice is None:
        return '–'
    if choice['runner_up'] is None:
        return 'no other rate finished'
    text = f"{signed(choice['margin'])} over {choice['runner_up']:g}"
    return text + (f" [{signed(choice['low'])}, {signed(choice['high'])}]" if np.isfinite(choice['low']) else '')


def all_failed_line(act, rates):
    """The one line for a variant whose every tuning rate failed (compare.py prints it too)."""
    return (f"every tuning rate of {act} diverged or did not learn ({', '.join(f'{r:g}' for r in rates)}): it has "
            f"no comparison runs; add lower rates to --tune_lr")


TUNING_COLUMNS = ['variant', 'learning_rate', 'seed', 'final_val_loss', 'chosen', 'outcome']


def write_tuning_csv(tuning, path):
    """One row per tuning run (variant, rate, tuning seed): what every choice of the tuning table was made from."""
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=TUNING_COLUMNS)
        writer.writeheader()
        for act, entries in tuning['runs'].items():
            for entry in entries:
                for seed, run in entry['seeds'].items():
                    writer.writerow({'variant': act, 'learning_rate': entry['lr'], 'seed': seed,
                                     'final_val_loss': run['final_val_loss'],
                                     'chosen': entry['lr'] == tuning['chosen'].get(act), 'outcome': run['status']})


def eval_lines(rows, runs, baseline):
    """The downstream accuracy table of summary.md (compare.py --eval): what the items are, each variant's accuracy
    and its paired difference to the baseline, and what the scoring cost against the training."""
    results = [r['eval'] for rs in runs.values() for r in rs if r.get('eval')]
    if not results or 'eval_accuracy' not in rows[0]:
        return []
    first, task = results[0], results[0]['task']
    items = first['items']
    if task == 'continuation':
        what = (f"{items['n_items']:,} items from the val split of {items['dataset']} (seed {items['seed']}): a "
                f"context of {items['context_tokens']} tokens, its true next {items['choice_tokens']} tokens and "
                f"{items['n_choices'] - 1} distractor spans of {items['choice_tokens']} tokens from elsewhere in the "
                f"split (all of one length, so the per-token accuracy ranks them as the sum does)")
    else:
        source = 'the official file' if items.get('official') else 'NOT the official file'
        what = (f"{items['n_items']:,} HellaSwag items ({source}); per token: the summed log-likelihood divided by "
                f"the ending's number of tokens")
    same = len({r['items']['fingerprint'] for r in results}) == 1
    train_s = [r['summary'].get('elapsed_s') for rs in runs.values() for r in rs if r.get('eval')]
    score_s = [r['score_s'] for r in results]
    cost = ''
    if all(isinstance(t, (int, float)) and t > 0 for t in train_s):
        cost = (f" Scoring took {np.mean(score_s):.1f} s per run on average, {np.sum(score_s) / np.sum(train_s):.1%} "
                f"of the runs' training time.")
    lines = [f'## Downstream: {task} accuracy', '',
             f"Each run's final checkpoint answers the multiple-choice items `eval.py --task={task}` would give it: "
             f"{what}. The answer is the choice with the highest log-likelihood given the context; chance is "
             f"{first['chance']:.2f}. " + ('Every run answered the same items. ' if same else
                                            '**The runs were scored on different items** (the dataset changed?): '
                                            'compare the accuracies with care. ') +
             f"Accuracy: mean ± sample std over seeds; Δ: minus {baseline}'s on the same seed, with the Student-t "
             "95% interval over seeds; verdict better / worse only where that interval excludes 0. One run's own "
             f"95% interval (Wilson) is in its eval_{task}.json." + cost, '',
             f'| variant | seeds scored | accuracy | per token | Δ accuracy vs {baseline} [95% CI] | verdict |',
             '|---|---|---|---|---|---|']
    for row in rows:
        if row['verdict'] in FAILED_VERDICTS:
            continue
        scored = sum(1 for r in runs.get(row['activation'], []) if r.get('eval'))
        delta = {'verdict': row['eval_verdict'], 'delta_val_mean': row['delta_eval_accuracy_mean'],
                 'delta_val_std': row['delta_eval_accuracy_std'], 'n_pairs': row['eval_n_pairs'] or 0,
                 'delta_val_ci95_low': row['delta_eval_accuracy_ci95_low'],
                 'delta_val_ci95_high': row['delta_eval_accuracy_ci95_high']}
        lines.append(f"| {row['activation']} | {scored} | {fmt(row, 'eval_accuracy')} | "
                     f"{fmt(row, 'eval_accuracy_norm')} | {delta_cell(delta)} | {row['eval_verdict']} |")
    return lines + ['']


def cost_lines(costs):
    """What each variant costs: its parameters (an order-r PolyCom adds r + 1 scalars per layer) and the time of one
    training step, measured by compare.py with bench.py's timing step before the runs started."""
    if not costs:
        return []
    lines = ['## Cost of each variant', '',
             'Parameters of the model each variant builds (activation scalars: the learned coefficients of PolyCom '
             'activations, r + 1 per layer for order r). Step: one optimizer step of the run\'s batch and precision '
             '(bench.py\'s timing step), mean of a few steps measured in compare.py\'s own process; the machine may '
             'have been busy: for careful speed numbers use bench.py.', '',
             '| variant | settings | params (total) | FFN params | activation scalars | ms per step |',
             '|---|---|---|---|---|---|']
    for name, c in costs.items():
        step = c.get('step_ms')
        lines.append(f"| {name} | {c.get('spec', name)} | {c['total_params']:,} | {c['ffn_params']:,} | "
                     f"{c['activation_params']:,} | {'–' if step is None else f'{step:.1f}'} |")
    return lines + ['']


def few_seeds_note(n):
    """With 2 or 3 seeds the std behind every interval comes from 1 or 2 degrees of freedom: say how uncertain."""
    if not 2 <= n <= 3:
        return []
    low, high = stats.std_ratio_interval(n)
    return [f'**With {n} seeds the widths of these intervals are themselves uncertain**: a std from {n - 1} degree'
            f'{"s" if n > 2 else ""} of freedom can be far off, the true spread lying anywhere from {low:.2f} to '
            f'{high:.1f} times the observed one (95%, chi-square). A narrow interval may be luck; more seeds make the '
            'width trustworthy.', '']


def load_note(rows):
    """A sentence when other processes loaded the machine during some run, so speed figures are not comparable."""
    loaded = [(r['activation'], r['max_other_load_cores']) for r in rows
              if np.isfinite(r['max_other_load_cores']) and r['max_other_load_cores'] > LOAD_NOTE_CORES]
    unknown = [r['activation'] for r in rows if not np.isfinite(r['max_other_load_cores'])]
    if loaded:
        detail = ', '.join(f'{a} (up to {c:.1f} cores)' for a, c in loaded)
        return (f'Speed figures (tokens/s, ms/iter, the wall-clock panel) are NOT comparable: other processes used '
                f'the CPU during runs of {detail}. Use bench.py for speed.')
    if unknown:
        return 'Speed figures: the machine load was not recorded for every run; compare speeds with bench.py.'
    return None


def write_summary_md(group, rows, runs, partial, failed, path, command):
    baseline = group['baseline']
    title = f"# Activation comparison ({Path(group['dir']).name})"
    lines = [title, '', f'`{command}`', '']
    if partial:
        lines += ['**Unfinished runs, left out of every number below: ' +
                  ', '.join(f'{name} ({where})' for name, where in partial) + '.**', '']
    for outcome, what in ((DIVERGED, 'Diverged runs'), (NOT_LEARNED, 'Runs that did not learn (final val loss not '
                                                                   'below the unigram entropy of the training tokens)')):
        named = [f"{f['name']} ({f['note']})" if f['note'] else f['name'] for f in failed if f['outcome'] == outcome]
        if named:
            lines += [f'**{what}, left out of every mean, interval and verdict below: ' + ', '.join(named) + '.**', '']
    n_max = max(r['n_seeds'] for r in rows)
    lines += [f'Mean ± sample std over seeds. Δ val = final val loss minus {baseline}\'s on the same seed (same data '
              'order and non-FFN init): mean ± std of the per-seed differences and its 95% confidence interval '
              '(Student t, n − 1 degrees of freedom). Verdict: better / worse when the interval excludes 0, not '
              'resolved when it includes 0. Seeds needed: how many seeds a paired t-test (two-sided, 95%) needs to '
              'detect the observed mean difference with 80% power if the observed mean and std were the truth '
              '(exact, from the noncentral t distribution; a planning estimate). Train loss: mean of the last 10% of '
              'logged iterations. Effective rank: mean over all FFN matrices (higher = more directions used). Layer '
              'cosine: mean cos(h_l, h_l+1) between consecutive blocks\' outputs (residual stream, validation batch; '
              'lower = less redundant layers).', '',
              f'| activation | lr | seeds | params (total / active / FFN) | final val loss | Δ val vs {baseline} '
              '[95% CI] | verdict | seeds needed | best val loss | final train loss | tokens/s | ms/iter | '
              'peak mem MB | FFN eff. rank | layer cosine |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        params = ' / '.join(millions(row[k]) for k in ('total_params', 'active_params', 'ffn_params'))
        lines.append(f"| {row['activation']} | {rate(row['lr'])} | {seeds_cell(row)} | {params} | "
                     f"{fmt(row, 'final_val_loss')} | {delta_cell(row)} | {row['verdict']} | "
                     f"{seeds_needed_text(row)} | {fmt(row, 'best_val_loss')} | {fmt(row, 'final_train_loss')} | "
                     f"{fmt(row, 'tokens_per_sec', 0)} | {fmt(row, 'ms_per_iter', 1)} | {fmt(row, 'peak_mem_mb', 0)} | "
                     f"{fmt(row, 'mean_effective_rank', 1)} | {fmt(row, 'mean_layer_cosine', 3)} |")
    tokens = next((r['tokens'] for r in rows if np.isfinite(r['tokens'])), math.nan)
    if not math.isnan(tokens):
        lines += ['', f'Each run: {int(tokens):,} training tokens.']
    lines += ['']
    if n_max < 2:
        lines += ['**One seed: this gives no verdict.** With one seed nothing measures how much changing the seed '
                  'alone moves the losses, so no difference here is shown to be real. For a verdict, rerun with '
                  'several seeds and each '
                  f'activation at its own tuned rate, e.g. `{verdict_command(command)}`.', '']
    lines += few_seeds_note(max((r['n_pairs'] for r in rows if r['verdict'] != 'baseline' and
                                 r['verdict'] not in FAILED_VERDICTS),
                                default=n_max))
    for key, name in (('final_val_loss', 'Final val loss'), ('final_train_loss', 'Final train loss')):
        groups, means = ordering(runs, key)
        if groups:
            lines += [f'{name}, lowest first (braces: not ordered by the paired 95% intervals): '
                      + stats.ordering_line(groups, means), '']
    note = load_note(rows)
    if note:
        lines += [note, '']
    lines += eval_lines(rows, runs, baseline)
    lines += cost_lines(group.get('costs'))
    lines += tuning_lines(group.get('tuning'))
    Path(path).write_text('\n'.join(lines) + '\n')
    return '\n'.join(lines)


def verdict_command(command):
    """The user's command with 3 seeds and a learning-rate grid, for the 'no verdict' sentence."""
    parts = [p for p in command.split() if not p.startswith(('--seeds=', '--tune_lr='))]
    return ' '.join(parts + ['--seeds=1,2,3', '--tune_lr=1e-3,2e-3,4e-3,8e-3'])


def report_comparison(group, command, analysis_batch_size=8):
    """Draw every figure and write the tables of one comparison (one model size) from the runs on disk.
    Returns the summary rows (for the scaling report), or None when no run has finished or failed."""
    runs, partial, failed = load_runs(group)
    out = Path(group['dir'])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    colors = figures.colors_for(group['acts'])
    if group.get('tuning'):
        if figures.plot_lr_sweep(group['tuning'], colors, out / 'lr_sweep.png'):
            written.append(out / 'lr_sweep.png')
    if group.get('tuning'):
        write_tuning_csv(group['tuning'], out / 'tuning.csv')
        written.append(out / 'tuning.csv')
    if not runs and not failed:
        print(f"note: no finished comparison run under {out} yet")
        if group.get('tuning'):                                           # the tuning so far is worth reading
            lines = [f"# Activation comparison ({out.name})", '', f'`{command}`', '',
                     'No comparison run has finished yet.', '', *tuning_lines(group['tuning'])]
            (out / 'summary.md').write_text('\n'.join(lines) + '\n')
        return None
    failed_seeds = {}                                                     # {variant: {seed: outcome}}
    for f in failed:
        failed_seeds.setdefault(f['act'], {})[f['seed']] = f['outcome']
    baseline = group['baseline'] if group['baseline'] in runs else next(iter(runs), group['baseline'])
    group = dict(group, baseline=baseline)
    ensure_analyses(runs, analysis_batch_size)
    downstream.ensure_evals(runs, group.get('eval'), group.get('eval_data'))
    rows = summarize(runs, baseline, group.get('lrs', {}), failed_seeds, group['acts'], group.get('specs'))
    if runs:
        figures.plot_loss_curves(runs, colors, out / 'loss_curves.png', group.get('lrs', {}),
                                 loaded=bool(load_note(rows)), failed=failed_seeds, baseline=baseline)
        written.append(out / 'loss_curves.png')
        if any(r['analysis'] for rs in runs.values() for r in rs):
            figures.plot_effective_rank(runs, colors, out / 'effective_rank.png')
            figures.plot_layer_cosine(runs, colors, out / 'layer_cosine.png')
            written += [out / 'effective_rank.png', out / 'layer_cosine.png']
            if figures.plot_activation_curves(runs, colors, out / 'activation_curves.png'):
                written.append(out / 'activation_curves.png')
        else:
            print('note: no checkpoint or cached analysis.json, skipping the effective-rank / cosine / f(x) figures')
        if figures.plot_poly_coefficients(runs, out / 'poly_coefficients.png'):
            written.append(out / 'poly_coefficients.png')
        values = per_seed_values(runs)
        differences = {act: stats.paired_differences(v, values[baseline]) for act, v in values.items()
                       if baseline in values}
        if figures.plot_paired_deltas(rows, differences, baseline, colors, out / 'paired_deltas.png'):
            written.append(out / 'paired_deltas.png')
    write_summary_csv(rows, out / 'summary.csv')
    write_runs_csv(runs, group.get('lrs', {}), failed, out / 'runs.csv')
    table = write_summary_md(group, rows, runs, partial, failed, out / 'summary.md', command)
    print(table)
    print('wrote ' + ', '.join(str(p) for p in written + [out / 'summary.csv', out / 'runs.csv', out / 'summary.md']))
    return rows


# ----------------------------------------------------------------------------- model-size sweeps
SCALING_COLUMNS = ['size', 'n_layer', 'n_embd', 'activation', 'lr', 'non_embedding_params', 'tokens', 'flops',
                   'n_seeds', 'final_val_loss_mean', 'final_val_loss_std', 'n_pairs', 'delta_val_mean',
                   'delta_val_ci95_low', 'delta_val_ci95_high', 'verdict', 'diverged', 'did_not_learn']


def scaling_table(groups, rows_per_group):
    """One row per (size, activation) from the per-size summaries. FLOPs = training FLOPs per token (model.py's
    count, the baseline activation's model) x tokens."""
    table = []
    for group, rows in zip(groups, rows_per_group):
        level = group['level']
        for row in rows or []:
            table.append({
                'size': level['name'], 'n_layer': level['settings']['n_layer'], 'n_embd': level['settings']['n_embd'],
                'activation': row['activation'], 'lr': row['lr'],
                'non_embedding_params': level['non_embedding_params'], 'tokens': level['tokens'],
                'flops': level['flops_per_token'] * level['tokens'], 'n_seeds': row['n_seeds'],
                'final_val_loss_mean': row['final_val_loss'], 'final_val_loss_std': row['final_val_loss_std'],
                'n_pairs': row['n_pairs'], 'delta_val_mean': row['delta_val_mean'],
                'delta_val_ci95_low': row['delta_val_ci95_low'],
                'delta_val_ci95_high': row['delta_val_ci95_high'], 'verdict': row['verdict'],
                'diverged': row['diverged'], 'did_not_learn': row['did_not_learn']})
    return table


def gap_trend(groups, activation, baseline):
    """Least-squares slope of the per-seed paired Δ (activation - baseline) against log10(non-embedding params),
    over every (size, seed): how much the gap changes per 10x parameters, with a t-interval (n - 2 df).
    None with fewer than 3 points or fewer than 2 sizes."""
    from scipy import stats as scipy_stats
    x, y = [], []
    for group in groups:
        runs = load_runs(group, quiet=True)[0]
        values = {act: {r['seed']: run_numbers(r)['final_val_loss'] for r in rs} for act, rs in runs.items()}
        if activation not in values or baseline not in values:
            continue
        for seed, d in stats.paired_differences(values[activation], values[baseline]).items():
            x.append(math.log10(group['level']['non_embedding_params']))
            y.append(d)
    if len(y) < 3 or len(set(x)) < 2:
        return None
    fit = scipy_stats.linregress(x, y)
    half = scipy_stats.t.ppf(0.975, len(y) - 2) * fit.stderr
    return {'slope': fit.slope, 'low': fit.slope - half, 'high': fit.slope + half, 'n': len(y)}


def report_scaling(groups, rows_per_group, out, command):
    """scaling.csv, scaling.png and summary.md (scaling section + links to each size's own summary)."""
    table = scaling_table(groups, rows_per_group)
    if not table:
        print('note: no finished run at any size yet: no scaling figure')
        return
    baseline = groups[0]['baseline']
    acts = list(dict.fromkeys(r['activation'] for r in table))
    fits = {}
    for act in acts:
        rows = [r for r in table if r['activation'] == act and np.isfinite(r['final_val_loss_mean'])]
        std = [r['final_val_loss_std'] for r in rows]
        fit = stats.fit_power_law([r['non_embedding_params'] for r in rows], [r['final_val_loss_mean'] for r in rows],
                                  sigma=std if all(np.isfinite(std)) else None)
        if fit is not None:
            fits[act] = fit
    with open(out / 'scaling.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=SCALING_COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    figures.plot_scaling(table, fits, baseline, figures.colors_for(acts), out / 'scaling.png')
    sizes = list(dict.fromkeys(r['size'] for r in table))
    lines = [f'# Activation comparison across model sizes ({out.name})', '', f'`{command}`', '',
             'Final validation loss, mean ± std over seeds, and the paired Δ vs '
             f'{baseline} (same seed: same data order and non-FFN init) with its 95% Student-t interval and verdict. '
             'Each size has its own summary (linked) with every other column.', '',
             '| size | non-emb. params | tokens | ' + ' | '.join(acts) + ' |', '|---|---|---|' + '---|' * len(acts)]
    for size in sizes:
        rows = {r['activation']: r for r in table if r['size'] == size}
        first = next(iter(rows.values()))
        cells = []
        for act in acts:
            r = rows.get(act)
            if r is None:
                cells.append('–')
                continue
            text = fmt({'v': r['final_val_loss_mean'], 'v_std': r['final_val_loss_std']}, 'v')
            if r['verdict'] in FAILED_VERDICTS:
                cells.append(f"no result (every seed failed: {failed_seeds_text(r)})")
                continue
            text += failed_seeds_text(r, '; ', ' (', ')')
            if r['lr'] is not None and groups[0]['tuning']:
                text += f" (lr {r['lr']:g})"
            if act != baseline:
                text += f"<br>Δ {delta_cell(dict(r, delta_val_std=0.0)).split(' ±')[0]}"
                if r['n_pairs'] >= 2:
                    text += f" [{signed(r['delta_val_ci95_low'])}, {signed(r['delta_val_ci95_high'])}]"
                text += f": {r['verdict']}"
            cells.append(text)
        lines.append(f"| [{size}]({size}/summary.md) | {millions(first['non_embedding_params'])} | "
                     f"{first['tokens'] / 1e6:.2f}M | " + ' | '.join(cells) + ' |')
    lines += ['']
    if fits:
        lines += ['Power-law fits L(N) = E + A·N^(−α) (scipy curve_fit, weighted by the seed std; ± standard error):', '']
        for act, fit in fits.items():
            lines.append(f"- {act}: α = {fit['alpha']:.3f} ± {fit['alpha_se']:.3f}, E = {fit['E']:.3f} ± "
                         f"{fit['E_se']:.3f}, A = {fit['A']:.3g}")
            print(f"power-law fit {act}: alpha = {fit['alpha']:.3f} ± {fit['alpha_se']:.3f}, "
                  f"E = {fit['E']:.3f} ± {fit['E_se']:.3f}")
        lines += ['']
    elif len(sizes) < 4:
        lines += [f'No power-law fit: it needs at least 4 sizes (here {len(sizes)}).', '']
    trends = []
    for act in acts:
        if act == baseline:
            continue
        trend = gap_trend(groups, act, baseline)
        if trend is not None:
            trends.append(f"- {act} − {baseline}: {signed(trend['slope'])} per 10x parameters, 95% CI "
                          f"[{signed(trend['low'])}, {signed(trend['high'])}] ({trend['n']} paired runs)"
                          + (': not resolved' if trend['low'] <= 0 <= trend['high'] else
                             ': the difference moves in favour of ' + (act if trend['slope'] < 0 else baseline) + ' as N grows'))
    if trends:
        lines += ['Trend of the paired gap with size (least-squares slope of the per-seed Δ against log10 N; a '
                  'negative slope means the activation gains on the baseline as the model grows):', ''] + trends + ['']
    lines += ['![scaling](scaling.png)', '']
    Path(out / 'summary.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    print(f"wrote {out / 'scaling.png'}, {out / 'scaling.csv'}, {out / 'summary.md'}")
