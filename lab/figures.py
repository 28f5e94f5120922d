"""
Every figure of a comparison, drawn with matplotlib (files only, no display) from what report.py read off the runs:
loss_curves.png, lr_sweep.png, paired_deltas.png, effective_rank.png, layer_cosine.png, poly_coefficients.png,
activation_curves.png and scaling.png. A run that diverged or did not learn draws no line: its name is in the
legend, marked as such. Every activation has one colour in every figure (ACTIVATION_COLORS).
"""
import re
import zlib

import numpy as np

from lab import stats
from lab.analysis import first_int


def seed_band(logs, column, x_columns=('tokens', 'elapsed_s')):
    """Mean and std of `column` over seeds at the iterations every seed logged it.
    Returns {'iter', 'mean', 'std', <x columns>: median over seeds} or None."""
    series = []
    for log in logs:
        if log is None or column not in log:
            continue
        keep = ~np.isnan(log[column])
        series.append({k: log[k][keep] for k in ('iter', column, *x_columns) if k in log})
    if not series:
        return None
    common = set(series[0]['iter'].tolist())
    for s in series[1:]:
        common &= set(s['iter'].tolist())
    common = np.array(sorted(common))
    if len(common) == 0:
        return None
    picked = [{k: v[np.isin(s['iter'], common)] for k, v in s.items()} for s in series]
    values = np.stack([p[column] for p in picked])                        # (n_seeds, n_points)
    std = values.std(0, ddof=1) if len(picked) > 1 else np.zeros(len(common))   # sample std, as in the table
    band = {'iter': common, 'mean': values.mean(0), 'std': std, 'n': len(picked)}
    for x in x_columns:
        if all(x in p for p in picked):
            # median: one seed slowed down by another job on the machine should not drag the time axis
            band[x] = np.median(np.stack([p[x] for p in picked]), axis=0)
    return band


def smooth(y, window):
    """Trailing moving average: the logged train loss is one micro-batch, too noisy to compare 4 curves by eye."""
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    head = np.cumsum(y[:window - 1]) / np.arange(1, window)              # shorter windows at the start
    return np.concatenate([head, np.convolve(y, kernel, mode='valid')])




def new_figure(n_panels, width=6.0, height=4.2):
    import matplotlib
    matplotlib.use('Agg')                                                  # files only, works without a display
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, height), squeeze=False, layout='constrained')
    return plt, fig, axes[0]


def integer_ticks(ax, axis='x'):
    from matplotlib.ticker import MaxNLocator
    (ax.xaxis if axis == 'x' else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


# one colour per activation in every figure of every comparison, whatever the order on the command line
ACTIVATION_COLORS = {'gelu': '#1f77b4', 'swiglu': '#ff7f0e', 'polyrelu': '#2ca02c', 'polynorm': '#d62728',
                     'relu': '#9467bd', 'silu': '#8c564b', 'relu2': '#e377c2', 'polygelu': '#7f7f7f',
                     'polysilu': '#bcbd22', 'polyprelu': '#17becf', 'polyrelunorm': '#393b79', 'polynorm_glu': '#843c39'}
# other variants (polynorm-poly_order2, r5, ...) draw from these, by a hash of their name (the same name, the same
# colour, unless two variants of one comparison hash alike: then the later one in name order takes the next free one)
SPARE_COLORS = ['#637939', '#8c6d31', '#7b4173', '#3182bd', '#e6550d', '#31a354', '#756bb1', '#636363', '#fd8d3c',
                '#74c476', '#9e9ac8', '#969696', '#6baed6', '#fdae6b', '#a1d99b', '#bcbddc', '#ce6dbd', '#e7ba52']


def colors_for(acts):
    """{variant: colour}: an activation's own colour, else a spare colour chosen by its name."""
    colors = {a: ACTIVATION_COLORS[a] for a in acts if a in ACTIVATION_COLORS}
    for act in sorted(a for a in acts if a not in ACTIVATION_COLORS):
        start = zlib.crc32(act.encode()) % len(SPARE_COLORS)
        free = [SPARE_COLORS[(start + i) % len(SPARE_COLORS)] for i in range(len(SPARE_COLORS))
                if SPARE_COLORS[(start + i) % len(SPARE_COLORS)] not in colors.values()]
        colors[act] = free[0] if free else SPARE_COLORS[start]
    return colors


def paired_difference_band(candidate_logs, baseline_logs, column='val_loss'):
    """The paired difference of a candidate to the baseline over training: at every iteration where each paired seed
    logged `column` in both runs, the mean over seeds of (candidate - baseline, same seed) and its Student-t 95%
    interval. candidate_logs, baseline_logs: {seed: log}. Returns {'iter', 'tokens', 'mean', 'low', 'high', 'n'} or
    None with fewer than 2 paired seeds (no interval)."""
    seeds = sorted(set(candidate_logs) & set(baseline_logs))
    if len(seeds) < 2:
        return None
    per_seed, common = [], None
    for seed in seeds:
        a, b = candidate_logs[seed], baseline_logs[seed]
        if a is None or b is None or column not in a or column not in b:
            return None
        values_a = {int(i): v for i, v in zip(a['iter'], a[column]) if np.isfinite(v)}
        values_b = {int(i): v for i, v in zip(b['iter'], b[column]) if np.isfinite(v)}
        diffs = {i: values_a[i] - values_b[i] for i in set(values_a) & set(values_b)}
        per_seed.append((diffs, dict(zip(b['iter'].astype(int), b['tokens'])) if 'tokens' in b else {}))
        common = set(diffs) if common is None else common & set(diffs)
    iters = np.array(sorted(common), dtype=int)
    if len(iters) == 0:
        return None
    values = np.array([[d[i] for i in iters] for d, _ in per_seed])      # (n_seeds, n_points)
    intervals = [stats.t_interval(values[:, k]) for k in range(len(iters))]
    tokens = np.array([per_seed[0][1].get(i, np.nan) for i in iters], dtype=float)
    return {'iter': iters, 'tokens': tokens, 'mean': values.mean(0), 'low': np.array([t['low'] for t in intervals]),
            'high': np.array([t['high'] for t in intervals]), 'n': len(seeds)}


def plot_loss_curves(runs, colors, path, lrs=None, loaded=False, failed=None, baseline=None):
    """Three panels: (a) the whole run vs tokens on a log loss axis, (b) the last 80% of it zoomed in, (c) the same vs
    wall-clock time. Train loss dashed (smoothed), val loss solid; with several seeds, the mean and a ± std band.
    With 2 or more seeds a fourth, (d): each variant's paired difference to the baseline over training (mean over
    seeds of val loss minus the baseline's on the same seed, 95% band): the seed-to-seed spread that widens the bands
    of (a)-(c) is mostly shared by two runs of one seed, so (d) shows a difference the overlapping bands hide.
    failed = {variant: {seed: 'diverged' / 'did not learn'}}: named in the legend, no line (no curve of the recipe)."""
    lrs, failed = lrs or {}, failed or {}
    n_max = max(len(rs) for rs in runs.values())
    differences = paired_difference_bands(runs, baseline) if n_max > 1 and baseline in runs else {}
    plt, fig, axes = new_figure(4 if differences else 3, width=6.0, height=4.8)
    shown = []                                                             # (x fraction, y) of every mean point
    for act, act_runs in runs.items():
        logs = [r['log'] for r in act_runs]
        n_seeds = len(act_runs)
        train, val = seed_band(logs, 'train_loss'), seed_band(logs, 'val_loss')
        for ax, x_key in zip(axes, ('tokens', 'tokens', 'elapsed_s')):
            if train is not None and x_key in train:
                window = max(1, len(train['mean']) // 25)
                mean, std = smooth(train['mean'], window), smooth(train['std'], window)
                ax.plot(train[x_key], mean, '--', lw=0.9, color=colors[act], alpha=0.8)
                if n_seeds > 1:
                    ax.fill_between(train[x_key], mean - std, mean + std, color=colors[act], alpha=0.08, lw=0)
                if ax is axes[1]:
                    shown += list(zip(train['iter'] / max(train['iter'].max(), 1), mean))
            if val is not None and x_key in val:
                lr_text = f', lr {lrs[act]:g}' if lrs.get(act) is not None else ''
                seeds_text = f'{n_seeds} seed{"s" if n_seeds > 1 else ""}{failed_text(act, failed)}'
                label = f'{act} (val{lr_text}, {seeds_text})'
                ax.plot(val[x_key], val['mean'], '-', lw=1.8, color=colors[act], label=label, marker='.', ms=3)
                if n_seeds > 1:
                    ax.fill_between(val[x_key], val['mean'] - val['std'], val['mean'] + val['std'],
                                    color=colors[act], alpha=0.2, lw=0)
                if ax is axes[1]:
                    shown += list(zip(val['iter'] / max(val['iter'].max(), 1), val['mean']))
    # the first steps fall from ln(vocab) and would squash the part worth comparing: (b) and (c) show the last 80%
    late = [y for frac, y in shown if frac >= 0.2 and np.isfinite(y)]
    if late:
        low, high = min(late), max(late)
        pad = 0.05 * max(high - low, 1e-3)
        for ax in axes[1:3]:
            ax.set_ylim(low - pad, high + pad)
    axes[0].set_yscale('log')
    from matplotlib.ticker import FuncFormatter
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f'{value:g}'))
    axes[0].yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f'{value:g}'))
    for ax in (axes[0], axes[1], *axes[3:]):
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f'{value / 1e6:g}M'))
        ax.set_xlabel('training tokens')
    axes[2].set_xlabel('wall-clock training time (s)')
    for ax in axes:
        ax.set_ylabel('cross-entropy loss (nats/token)')
        ax.grid(alpha=0.3)
    for act, seeds in failed.items():
        if act not in runs:                                                # every seed failed: a legend entry only
            axes[0].plot([], [], 'x', color=colors[act], label=f'{act}: no result ({failed_text(act, failed)[2:]})')
    axes[0].plot([], [], 'k--', lw=0.9, label='train (smoothed)')
    axes[0].legend(fontsize=8)
    band = f'mean of {n_max} seeds, band ± std' if n_max > 1 else '1 seed'
    axes[0].set_title(f'(a) whole run, log scale ({band})', fontsize=10)
    axes[1].set_title('(b) last 80% of training, zoomed', fontsize=10)
    axes[2].set_title('(c) vs wall-clock time' + (' — NOT comparable: machine was loaded' if loaded else ''),
                      fontsize=10)
    if differences:
        draw_paired_differences(axes[3], differences, colors, baseline)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def paired_difference_bands(runs, baseline):
    """{variant: paired_difference_band of its val loss to the baseline's} for every variant with 2 paired seeds."""
    logs = {act: {r['seed']: r['log'] for r in act_runs} for act, act_runs in runs.items()}
    bands = {act: paired_difference_band(logs[act], logs[baseline]) for act in runs if act != baseline}
    return {act: band for act, band in bands.items() if band is not None}


def draw_paired_differences(ax, differences, colors, baseline):
    """Panel (d) of loss_curves.png: the mean paired difference and its 95% band per variant, a line at 0. The first
    evaluations (near ln(vocab) for every model) are left out of the y range, as in (b)."""
    late = []
    for act, band in differences.items():
        ax.plot(band['tokens'], band['mean'], '-', lw=1.6, color=colors[act], marker='.', ms=3,
                label=f"{act} − {baseline} ({band['n']} seeds)")
        ax.fill_between(band['tokens'], band['low'], band['high'], color=colors[act], alpha=0.2, lw=0)
        keep = band['iter'] >= 0.2 * band['iter'].max()
        late += [*band['low'][keep], *band['high'][keep]]
    ax.axhline(0, color='k', lw=0.8)
    late = [v for v in late if np.isfinite(v)] + [0.0]
    pad = 0.1 * max(max(late) - min(late), 1e-3)
    ax.set_ylim(min(late) - pad, max(late) + pad)
    ax.set_ylabel(f'val loss minus {baseline}\'s, same seed (nats/token)')
    ax.set_title(f'(d) paired difference to {baseline}: mean, 95% band (below 0 = better)', fontsize=10)
    ax.legend(fontsize=8)


def failed_text(act, failed):
    """'; s3 diverged, s4 did not learn' for a legend label, '' when every seed of act is a result."""
    by_outcome = {}
    for seed, outcome in sorted(failed.get(act, {}).items()):
        by_outcome.setdefault(outcome, []).append(f's{seed}')
    return ''.join(f"; {', '.join(seeds)} {outcome}" for outcome, seeds in by_outcome.items())


def plot_lr_sweep(tuning, colors, path):
    """Final val loss of every tuning rate against the learning rate (log x), one line per variant through the means
    over the tuning seeds, each seed a small dot; the chosen rate is a star, a failed rate (a tuning seed diverged or
    did not learn) an x at the top of the panel, labelled with what happened. Returns False when no tuning rate has
    finished or failed yet (nothing to draw)."""
    entries_all = [t for es in tuning['runs'].values() for t in es]
    finite = [r['final_val_loss'] for t in entries_all if t['status'] == 'done' for r in t['seeds'].values()]
    failed_status = ('diverged', 'did not learn')
    if not finite and not any(t['status'] in failed_status for t in entries_all):
        return False
    plt, fig, axes = new_figure(1, width=6.5, height=4.6)
    ax = axes[0]
    top = max(finite) + 0.05 * max(max(finite) - min(finite), 1e-3) if finite else 1.0
    for act, entries in tuning['runs'].items():
        done = sorted((t['lr'], t['final_val_loss']) for t in entries if t['status'] == 'done')
        failed = [t for t in entries if t['status'] in failed_status]
        label = act + (' (every rate failed)' if failed and not done else
                       f" ({len(failed)} rate{'s' if len(failed) > 1 else ''} failed)" if failed else '')
        if done:
            ax.plot(*zip(*done), '-o', color=colors[act], label=label, ms=4)
            if len(tuning['seeds']) > 1:
                dots = [(t['lr'], r['final_val_loss']) for t in entries if t['status'] == 'done'
                        for r in t['seeds'].values()]
                ax.plot(*zip(*dots), '.', color=colors[act], ms=3, alpha=0.5)
        for t in failed:
            ax.plot([t['lr']], [top], 'x', color=colors[act], ms=8, label=None if done else label)
            ax.annotate(t['status'], (t['lr'], top), textcoords='offset points', xytext=(0, 6), ha='center',
                        fontsize=6, color=colors[act])
            label = None
        chosen = tuning['chosen'].get(act)
        if chosen is not None:
            best = next(t['final_val_loss'] for t in entries if t['lr'] == chosen)
            ax.plot([chosen], [best], '*', color=colors[act], ms=16, markeredgecolor='k')
    ax.set_xscale('log')
    from matplotlib.ticker import FuncFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f'{value:g}'))
    ax.set_xlabel('peak learning rate')
    ax.set_ylabel('final validation loss (nats/token)')
    seeds = tuning['seeds']
    what = f"mean of tuning seeds {', '.join(map(str, seeds))} (dots: each seed)" if len(seeds) > 1 else \
        f'tuning seed {seeds[0]}'
    ax.set_title(f"learning-rate sweep, {what}; star: chosen, x: failed", fontsize=9)
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_paired_deltas(rows, differences, baseline, colors, path):
    """The verdicts as a picture: one line per variant, its per-seed differences to the baseline (final val loss, same
    seed) as dots, their mean as a diamond and the paired Student-t 95% interval as a bar, with 0 marked. rows: the
    summary rows (report.summarize); differences: {variant: {seed: Δ}}. Returns False when no variant has 2 pairs
    (no interval to draw)."""
    drawn = [r for r in rows if r['verdict'] not in ('baseline', 'diverged', 'did not learn', 'failed')
             and r['n_pairs'] >= 2]
    if not drawn:
        return False
    plt, fig, axes = new_figure(1, width=7.0, height=1.2 + 0.45 * len(drawn))
    ax = axes[0]
    for y, row in enumerate(reversed(drawn)):
        act = row['activation']
        ax.plot(list(differences[act].values()), [y] * len(differences[act]), 'o', ms=3, alpha=0.5,
                color=colors[act])
        mean, low, high = row['delta_val_mean'], row['delta_val_ci95_low'], row['delta_val_ci95_high']
        ax.errorbar([mean], [y], xerr=[[mean - low], [high - mean]], fmt='D', ms=6, capsize=4, color=colors[act])
        right = max(high, *differences[act].values())                  # the verdict sits right of bar and dots
        ax.annotate(row['verdict'], (right, y), textcoords='offset points', xytext=(6, -3), fontsize=7)
    ax.axvline(0, color='k', lw=0.8)
    ax.margins(x=0.12)                                                     # room for the verdicts on the right
    ax.set_yticks(range(len(drawn)), [r['activation'] for r in reversed(drawn)])
    ax.set_xlabel(f'final val loss minus {baseline}\'s, same seed (nats/token)')
    ax.set_title(f'paired differences to {baseline}: seeds (dots), mean and 95% interval (bar)', fontsize=10)
    ax.grid(alpha=0.3, axis='x')
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def mean_over_seeds(act_runs, getter):
    """Stack getter(analysis) over the seeds that have an analysis; None if none does."""
    values = [getter(r['analysis']) for r in act_runs if r['analysis']]
    return np.array(values, dtype=float) if values else None


def plot_effective_rank(runs, colors, path):
    """Effective rank per layer, one panel per side of the FFN (input: W1 / gate / up, output: W2)."""
    sides = ['input', 'output']
    plt, fig, axes = new_figure(len(sides))
    for ax, side in zip(axes, sides):
        for act, act_runs in runs.items():
            def per_layer(analysis):
                layers = {}
                for r in analysis['effective_rank']:
                    if r['side'] == side:                  # several matrices per layer (gate+up, experts): mean
                        layers.setdefault(r['layer'], []).append(r['erank'])
                return [np.mean(layers[k]) for k in sorted(layers)]
            values = mean_over_seeds(act_runs, per_layer)
            if values is None or values.size == 0:
                continue
            mean, std = values.mean(0), values.std(0)
            ax.errorbar(np.arange(len(mean)), mean, yerr=std, color=colors[act], marker='o', capsize=3, label=act)
        ceiling = max((min(r['shape']) for rs in runs.values() for run in rs if run['analysis']
                       for r in run['analysis']['effective_rank'] if r['side'] == side), default=0)
        ax.set_title(f'FFN {side} matrices' + (' (W1, gate, up)' if side == 'input' else ' (W2)'))
        ax.set_xlabel('layer')
        ax.set_ylabel(f'effective rank (at most {ceiling})')
        ax.set_ylim(0, max(ceiling, 1) * 1.05)          # from 0: a few units must not look like a large difference
        integer_ticks(ax)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_layer_cosine(runs, colors, path):
    """Panel 1: cos(h_l, h_l+1) per layer; then one layer x layer heat map per activation (mean over seeds)."""
    acts = [a for a, rs in runs.items() if any(r['analysis'] for r in rs)]
    plt, fig, axes = new_figure(1 + len(acts), width=4.6, height=4.0)
    for act in acts:
        values = mean_over_seeds(runs[act], lambda a: a['consecutive_cosine'])
        axes[0].errorbar(np.arange(1, values.shape[1] + 1), values.mean(0), yerr=values.std(0), color=colors[act],
                         marker='o', capsize=3, label=act)
    axes[0].set_xlabel('block l (compares residual stream before and after it)')
    axes[0].set_ylabel('mean cosine similarity over tokens')
    axes[0].set_title('consecutive layers')
    axes[0].grid(alpha=0.3)
    integer_ticks(axes[0])
    axes[0].legend(fontsize=8)
    for ax, act in zip(axes[1:], acts):
        matrix = mean_over_seeds(runs[act], lambda a: a['layer_cosine']).mean(0)
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap='viridis')
        ax.set_title(f'{act}: layer x layer')
        ax.set_xlabel('layer (0 = embedding)')
        ax.set_ylabel('layer')
        integer_ticks(ax, 'x')
        integer_ticks(ax, 'y')
    if acts:
        fig.colorbar(image, ax=list(axes[1:]), shrink=0.8, label='mean cosine similarity over tokens')
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_poly_coefficients(runs, path):
    """The PolyCom coefficients over training: one row per activation that has them, one panel per coefficient,
    one line per layer (mean over seeds). Column names 'layer0.a3' split into group 'layer0' and coefficient 'a3'.
    Returns False when no run has coefficients (nothing drawn)."""
    table = {}                                                             # act -> (iters, {coef: {group: values}})
    for act, act_runs in runs.items():
        logs = [r['coeffs'] for r in act_runs if r['coeffs'] is not None and len(r['coeffs']) > 1]
        columns = [c for c in (logs[0] if logs else {}) if c != 'iter']
        if not columns:
            continue
        per_coef = {}
        for column in columns:
            band = seed_band(logs, column, x_columns=())
            if band is None:
                continue
            group, _, coef = column.rpartition('.')
            per_coef.setdefault(coef, {})[group] = band
        table[act] = per_coef
    if not table:
        return False
    n_cols = max(len(c) for c in table.values())
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(table), n_cols, figsize=(3.6 * n_cols, 3.0 * len(table)), squeeze=False)
    for row, (act, per_coef) in enumerate(table.items()):
        for col, coef in enumerate(sorted(per_coef, reverse=True)):       # a3, a2, a1, a0: highest power first
            ax = axes[row][col]
            groups = per_coef[coef]
            cmap = matplotlib.colormaps['viridis']
            for k, (group, band) in enumerate(sorted(groups.items(), key=lambda g: first_int(g[0]))):
                ax.plot(band['iter'], band['mean'], color=cmap(k / max(len(groups) - 1, 1)), lw=1.2, label=group)
            power = coef[1:] if re.fullmatch(r'a\d+', coef) else None
            meaning = '' if power is None else ' (constant term)' if power == '0' else f' (weight of power {power})'
            ax.set_title(f'{act}: {coef}{meaning}')
            ax.set_xlabel('iteration')
            ax.set_ylabel(f'{coef} (mean over seeds)')
            ax.grid(alpha=0.3)
            if col == 0:
                ax.legend(fontsize=6)
        for col in range(len(per_coef), n_cols):
            axes[row][col].axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_activation_curves(runs, colors, path):
    """f(x) of every layer at the end of training (first seed): a line for pointwise activations, a scatter of real
    (pre-activation, output) pairs from the validation batch for PolyNorm (see activation_curves for why)."""
    first = {act: next((r['analysis'] for r in rs if r['analysis']), None) for act, rs in runs.items()}
    first = {act: a for act, a in first.items() if a}
    if not first:
        return False
    n_layer = max(len(a['activation_curves']) for a in first.values())
    plt, fig, axes = new_figure(n_layer, width=3.8, height=3.6)
    for act, analysis in first.items():
        for entry in analysis['activation_curves']:
            ax = axes[entry['layer']]
            if entry.get('pointwise'):
                # a gated FFN computes f(x W_gate) * (x W_up): the curve is f of the gate half only
                label = f'{act} (gate nonlinearity)' if analysis.get('gated') else act
                ax.plot(entry['grid_x'], entry['grid_y'], color=colors[act], lw=1.5, label=label)
            elif 'x' in entry:
                ax.scatter(entry['x'], entry['y'], s=1, alpha=0.25, color=colors[act], label=f'{act} (per unit)')
    for layer, ax in enumerate(axes):
        ax.set_title(f'layer {layer}')
        ax.set_xlabel('pre-activation x')
        ax.set_ylabel('activation output f(x)')
        ax.axhline(0, color='k', lw=0.5)
        ax.axvline(0, color='k', lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, markerscale=6)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True



def plot_scaling(table, fits, baseline, colors, path):
    """(a) final val loss against non-embedding parameters (log x), seed std as error bars, the fitted
    L(N) = E + A N^-alpha dashed where there are >= 4 sizes; (b) the paired Δ vs the baseline at each size with its
    95% interval: read 'does the gap grow with N' off it."""
    plt, fig, axes = new_figure(2, width=6.4, height=4.8)
    acts = list(dict.fromkeys(r['activation'] for r in table))
    from matplotlib.ticker import FuncFormatter
    for act in acts:
        rows = sorted((r for r in table if r['activation'] == act), key=lambda r: r['non_embedding_params'])
        n = np.array([r['non_embedding_params'] for r in rows], dtype=float)
        loss = np.array([r['final_val_loss_mean'] for r in rows], dtype=float)
        std = np.array([r['final_val_loss_std'] for r in rows], dtype=float)
        fit = fits.get(act)
        label = act if fit is None else f"{act}: α = {fit['alpha']:.2f} ± {fit['alpha_se']:.2f}, E = {fit['E']:.2f}"
        diverged = [f"{r['size']} s{s}" for r in rows for key in ('diverged', 'did_not_learn')
                    for s in str(r.get(key) or '').split(',') if s]
        label += f" (failed, left out: {', '.join(diverged)})" if diverged else ''
        axes[0].errorbar(n, loss, yerr=np.nan_to_num(std), color=colors[act], marker='o', capsize=3,
                         lw=1.2 if fit is None else 0, elinewidth=1.2, label=label)
        if fit is not None:
            grid = np.geomspace(n.min() / 1.3, n.max() * 1.3, 100)
            axes[0].plot(grid, stats.power_law(grid, fit['E'], fit['A'], fit['alpha']), '--', color=colors[act], lw=1)
        if act == baseline:
            continue
        mean = np.array([r['delta_val_mean'] for r in rows], dtype=float)
        low = np.array([r['delta_val_ci95_low'] for r in rows], dtype=float)
        high = np.array([r['delta_val_ci95_high'] for r in rows], dtype=float)
        shift = 1 + 0.03 * (acts.index(act) - len(acts) / 2)            # spread the markers so the bars don't overlap
        yerr = np.vstack([np.nan_to_num(mean - low), np.nan_to_num(high - mean)])
        axes[1].errorbar(n * shift, mean, yerr=yerr, color=colors[act], marker='o', capsize=3, lw=1.2,
                         label=act + (' (failed runs left out)' if diverged else ''))
    axes[1].axhline(0, color='k', lw=0.8)
    for ax in axes:
        ax.set_xscale('log')
        ax.set_xlabel('non-embedding parameters')
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f'{value / 1e6:g}M'))
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=8)
    axes[0].set_ylabel('final validation loss (nats/token)')
    axes[0].set_title('(a) loss vs size (bars: ± std over seeds' + ('; dashed: E + A·N^-α' if fits else '') + ')',
                      fontsize=10)
    axes[1].set_ylabel(f'Δ final val loss vs {baseline} (same seed)')
    axes[1].set_title(f'(b) paired gap vs {baseline}, 95% CI (below 0 = better)', fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)

