"""
What compare.py's runs mean: read their logs, compute the paper's analyses, draw every figure and write the tables.

compare.py decides what to train and trains it; this module only reads what the runs left on disk (log.csv,
coeffs.csv, summary.json, ckpt.pt once for the analyses), so `compare.py --replot` needs nothing else. The numbers
behind verdicts (paired intervals, seeds needed, ordering, power-law fits) are in stats.py.

Figures: loss_curves.png, lr_sweep.png, effective_rank.png, layer_cosine.png, poly_coefficients.png,
activation_curves.png, scaling.png. Tables: summary.csv, summary.md, scaling.csv.
"""
import csv
import json
import math
import os
import re
from pathlib import Path

import numpy as np

import stats

HERE = Path(__file__).resolve().parent
# other processes using more than this many CPU cores on average during a run make its speed figures incomparable
LOAD_NOTE_CORES = 0.25


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------- reading logs
def read_log(path):
    """CSV -> {column: float array}, empty cells -> nan. Rows are keyed by iter and the last one wins: should a
    resumed run's log repeat the iterations between its checkpoint and the interruption, the rerun counts."""
    if not Path(path).exists():
        return None
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    by_iter = {}
    for row in rows:
        by_iter[int(float(row['iter']))] = row
    ordered = [by_iter[k] for k in sorted(by_iter)]

    def number(text):
        try:
            return float(text)
        except (TypeError, ValueError):
            return math.nan
    log = {col: np.array([number(r.get(col)) for r in ordered]) for col in rows[0].keys()}
    if 'elapsed_s' in log:                                                # the iter-0 evaluation row has no time
        log['elapsed_s'][(log['iter'] == 0) & np.isnan(log['elapsed_s'])] = 0.0
    return log


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


def load_runs(group):
    """Read every run of one comparison. Returns (runs, partial): runs = {activation: [run dicts]} of the FINISHED runs
    only (summary.json says finished at the expected iteration), partial = [(name, how far it got)] of runs that
    exist but are not finished. Partial runs are left out of every mean, interval, verdict and figure: averaging a
    run stopped at iteration 50 with runs of 400 iterations would report a number nobody trained."""
    runs, partial = {}, []
    for act in group['acts']:
        for seed in group['seeds']:
            run_dir = group['run_dirs'][act, seed]
            log = read_log(run_dir / 'log.csv')
            summary = read_json(run_dir / 'summary.json') or {}
            if log is None:
                continue
            expected = group.get('expected_iters')
            done_iter = int(np.nanmax(log['iter'])) if len(log['iter']) else 0
            if not summary.get('finished') or (expected and summary.get('iter', 0) < expected):
                partial.append((f'{act}-s{seed}', f'iter {done_iter}' + (f' of {expected}' if expected else '')))
                continue
            runs.setdefault(act, []).append(dict(
                seed=seed, dir=run_dir, log=log, coeffs=read_log(run_dir / 'coeffs.csv'),
                summary=summary, analysis=read_json(run_dir / 'analysis.json')))
    missing = [f'{a}-s{s}' for a in group['acts'] for s in group['seeds']
               if not any(r['seed'] == s for r in runs.get(a, [])) and f'{a}-s{s}' not in dict(partial)]
    if missing:
        print(f"note: no finished run for {', '.join(missing)} under {group['dir']}: left out")
    for name, where in partial:
        print(f"WARNING: {name} under {group['dir']} is not finished ({where}): left out of every figure and "
              f"table; rerun the same command without --replot to finish it")
    return runs, partial


# ----------------------------------------------------------------------------- the paper's analyses
def effective_rank(matrix):
    """Roy & Vetterli (2007): exp of the entropy of the normalised singular values, p_k = s_k / sum(s).
    Between 1 (rank one) and min(shape) (all singular values equal). float64 so that an identity gives exactly n."""
    import torch
    s = torch.linalg.svdvals(torch.as_tensor(matrix).detach().to(torch.float64))
    total = s.sum()
    if total <= 0:
        return 0.0                                                         # zero matrix: no direction at all
    p = s / total
    p = p[p > 0]                                                           # 0 * log 0 = 0
    return float(torch.exp(-(p * p.log()).sum()))


def layer_cosine_matrix(hidden_states):
    """hidden_states: list of L+1 tensors (B, T, C). Returns (L+1, L+1): mean over tokens of cos(h_i, h_j).
    High values between consecutive layers mean a block barely changed the residual stream (redundant depth)."""
    import torch
    h = torch.stack([t.float() for t in hidden_states]).flatten(1, 2)    # (L+1, B*T, C)
    h = torch.nn.functional.normalize(h, dim=-1)
    return torch.einsum('itc,jtc->ij', h, h) / h.shape[1]


def validation_batch(train_config, block_size, batch_size):
    """The same validation batch for every run (fixed seed), so the hidden-state analyses are paired."""
    from data.dataset import TokenDataset
    dataset = train_config.get('dataset', 'shakespeare_char')
    data_dir = dataset if os.sep in dataset else os.path.join(HERE, 'data', dataset)    # train.py's rule
    x, _ = TokenDataset(data_dir, 'val').get_batch(batch_size, block_size, seed=0, step=0, micro_step=0)
    return x


def activation_curves(model, idx, n_points=2000, grid_points=200):
    """The learned f(x) of every layer's FFN activation, as plottable samples.

    We feed the real validation batch and record each activation module's input and output with forward hooks,
    instead of evaluating f on a synthetic grid, because PolyNorm is not pointwise: it normalises x, x^2, x^3 by
    their RMS over the hidden width, so f(x) depends on the other hidden units of the same token. A grid of x
    values fed as one row would make the grid itself the "token" and show a curve the model never computes.
    The scatter of real (pre-activation, output) pairs shows what the trained model does; for pointwise
    activations (GELU, PolyReLU, ...) the scatter lies on a line, and we also evaluate f on a grid spanning the
    observed pre-activations to draw that line cleanly. For SwiGLU the module is the gate nonlinearity (silu of
    x W_gate); the product with x W_up is outside it. A module whose output does not match its input's shape gets
    no scatter, and one that fails on a column or a row input no line.
    """
    import torch
    gen = torch.Generator().manual_seed(0)
    modules = model.activations()
    samples = [[] for _ in modules]

    def hook_for(layer):
        def hook(module, inputs, output):
            x = inputs[0] if inputs else None
            if not torch.is_tensor(x) or not torch.is_tensor(output) or x.shape != output.shape:
                return
            x, y = x.detach().flatten().float().cpu(), output.detach().flatten().float().cpu()
            pick = torch.randperm(x.numel(), generator=gen)[:n_points]    # keep memory small at GPT-2 size
            samples[layer].append((x[pick], y[pick]))
        return hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        model(idx)
    finally:
        for handle in handles:
            handle.remove()

    curves = []
    for layer, module in enumerate(modules):
        entry = {'layer': layer, 'kind': type(module).__name__}
        if samples[layer]:
            x = torch.cat([s[0] for s in samples[layer]])[:n_points]
            y = torch.cat([s[1] for s in samples[layer]])[:n_points]
            entry['x'], entry['y'] = x.tolist(), y.tolist()
            lo, hi = np.percentile(x.numpy(), [0.5, 99.5]).tolist()
        else:
            lo, hi = -4.0, 4.0
        # pointwise iff f gives the same on a column (each x alone) as on a row (all x together)
        grid = torch.linspace(lo, max(hi, lo + 1e-3), grid_points)
        try:
            param = next(module.parameters(), None)
            grid = grid.to(param.device if param is not None else 'cpu')
            column, row = module(grid[:, None]).flatten(), module(grid[None, :]).flatten()
            pointwise = column.shape == grid.shape and torch.allclose(column, row, atol=1e-5, rtol=1e-4)
        except Exception:                                                  # e.g. a gated module wanting 2 inputs
            pointwise = False
        entry['pointwise'] = bool(pointwise)
        if pointwise:
            entry['grid_x'], entry['grid_y'] = grid.cpu().tolist(), column.float().cpu().tolist()
        curves.append(entry)
    return curves


def analyze_run(run_dir, batch_size):
    """Load <run_dir>/ckpt.pt and compute everything the figures need; the result is cached in analysis.json."""
    import torch
    from model import ACTIVATIONS, GPTConfig, GPT, upgrade_model_args
    ckpt = torch.load(run_dir / 'ckpt.pt', map_location='cpu', weights_only=True)
    config = GPTConfig(**upgrade_model_args(ckpt['model_args']))      # older checkpoints spell out their widths
    model = GPT(config, verbose=False)
    model.load_state_dict(ckpt['model'])
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    model.to(device).eval()
    with torch.no_grad():
        ranks = []
        for name, weight in model.ffn_weight_matrices().items():
            # by name, not shape: Linear weights are (out, in) but stacked expert weights are (in, out)
            side = 'output' if 'proj' in name else 'input'                 # c_fc / c_gate / w_fc / w_gate: input
            ranks.append({'name': name, 'layer': first_int(name), 'side': side, 'shape': list(weight.shape),
                          'erank': effective_rank(weight)})
        idx = validation_batch(ckpt.get('config', {}), config.block_size, batch_size).to(device)
        cosine = layer_cosine_matrix(model.hidden_states(idx)).cpu()
        curves = activation_curves(model, idx)
    consecutive = torch.diagonal(cosine, offset=1)                           # cos(h_l, h_l+1), l = 0..L-1
    # the headline leaves out l = 0 (embedding -> block 1): the embedding has a small norm (init std 0.02), so that
    # cosine mostly says how large block 1's update is, not whether two blocks compute the same thing
    between_blocks = consecutive[1:] if len(consecutive) > 1 else consecutive
    return {
        'activation': config.activation, 'gated': ACTIVATIONS[config.activation].gated,
        'model_args': ckpt['model_args'], 'iter': ckpt.get('iter_num'),
        'ffn_params': model.num_ffn_params(), 'effective_rank': ranks,
        'mean_effective_rank': float(np.mean([r['erank'] for r in ranks])) if ranks else math.nan,
        'layer_cosine': cosine.tolist(), 'consecutive_cosine': consecutive.tolist(),
        'mean_consecutive_cosine': float(between_blocks.mean()), 'activation_curves': curves,
    }


def first_int(name):
    """Layer index of a name like 'layer3.c_fc.weight' or 'layer3.a2' -> 3 (-1 if none)."""
    match = re.search(r'\d+', name)
    return int(match.group()) if match else -1


def ensure_analyses(runs, batch_size):
    """Compute analysis.json for runs that have a checkpoint newer than their cached analysis."""
    for act_runs in runs.values():
        for run in act_runs:
            ckpt, cached = run['dir'] / 'ckpt.pt', run['dir'] / 'analysis.json'
            if not ckpt.exists():
                continue                                                   # --replot from logs: keep the cache
            if cached.exists() and cached.stat().st_mtime >= ckpt.stat().st_mtime:
                continue
            print(f"analysing {run['dir']} (effective rank, layer cosine, activation curves)")
            run['analysis'] = analyze_run(run['dir'], batch_size)
            cached.write_text(json.dumps(run['analysis']))


# ----------------------------------------------------------------------------- figures
def new_figure(n_panels, width=6.0, height=4.2):
    import matplotlib
    matplotlib.use('Agg')                                                  # files only, works without a display
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, height), squeeze=False, layout='constrained')
    return plt, fig, axes[0]


def integer_ticks(ax, axis='x'):
    from matplotlib.ticker import MaxNLocator
    (ax.xaxis if axis == 'x' else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def colors_for(acts):
    import matplotlib
    cmap = matplotlib.colormaps['tab10']
    return {act: cmap(i % 10) for i, act in enumerate(acts)}


def plot_loss_curves(runs, colors, path, lrs=None, loaded=False):
    """Three panels: (a) the whole run vs tokens on a log loss axis, (b) the last 80% of it zoomed in, (c) the same vs
    wall-clock time. Train loss dashed (smoothed), val loss solid; with several seeds, the mean and a ± std band."""
    plt, fig, axes = new_figure(3, width=6.0, height=4.8)
    lrs = lrs or {}
    shown = []                                                             # (x fraction, y) of every mean point
    n_max = max(len(rs) for rs in runs.values())
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
                label = f'{act} (val{lr_text}, {n_seeds} seed{"s" if n_seeds > 1 else ""})'
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
        for ax in axes[1:]:
            ax.set_ylim(low - pad, high + pad)
    axes[0].set_yscale('log')
    from matplotlib.ticker import FuncFormatter
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f'{value:g}'))
    axes[0].yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f'{value:g}'))
    for ax in axes[:2]:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f'{value / 1e6:g}M'))
        ax.set_xlabel('training tokens')
    axes[2].set_xlabel('wall-clock training time (s)')
    for ax in axes:
        ax.set_ylabel('cross-entropy loss (nats/token)')
        ax.grid(alpha=0.3)
    axes[0].plot([], [], 'k--', lw=0.9, label='train (smoothed)')
    axes[0].legend(fontsize=8)
    band = f'mean of {n_max} seeds, band ± std' if n_max > 1 else '1 seed'
    axes[0].set_title(f'(a) whole run, log scale ({band})', fontsize=10)
    axes[1].set_title('(b) last 80% of training, zoomed', fontsize=10)
    axes[2].set_title('(c) vs wall-clock time' + (' — NOT comparable: machine was loaded' if loaded else ''),
                      fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lr_sweep(tuning, colors, path):
    """Final val loss of every tuning run against its learning rate (log x), one line per activation; the chosen
    rate is a star, a diverged run an x at the top of the panel. Returns False when there is nothing to draw."""
    plt, fig, axes = new_figure(1, width=6.5, height=4.6)
    ax = axes[0]
    finite = [t['final_val_loss'] for es in tuning['runs'].values() for t in es if t['status'] == 'done']
    if not finite:
        plt.close(fig)
        return False
    top = max(finite) + 0.05 * max(max(finite) - min(finite), 1e-3)
    for act, entries in tuning['runs'].items():
        done = sorted((t['lr'], t['final_val_loss']) for t in entries if t['status'] == 'done')
        if done:
            ax.plot(*zip(*done), '-o', color=colors[act], label=act, ms=4)
        diverged = [t['lr'] for t in entries if t['status'] == 'diverged']
        if diverged:
            ax.plot(diverged, [top] * len(diverged), 'x', color=colors[act], ms=8)
        chosen = tuning['chosen'].get(act)
        if chosen is not None:
            best = next(t['final_val_loss'] for t in entries if t['lr'] == chosen)
            ax.plot([chosen], [best], '*', color=colors[act], ms=16, markeredgecolor='k')
    ax.set_xscale('log')
    from matplotlib.ticker import FuncFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f'{value:g}'))
    ax.set_xlabel('peak learning rate')
    ax.set_ylabel('final validation loss (nats/token)')
    ax.set_title(f"learning-rate sweep, tuning seed {tuning['seed']} (star: chosen; x: diverged)", fontsize=10)
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
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


# ----------------------------------------------------------------------------- tables
def run_numbers(run):
    """The headline numbers of one finished run (nan where not available)."""
    log, summary, analysis = run['log'], run['summary'], run['analysis'] or {}
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
    }


NUMBER_COLUMNS = ['final_val_loss', 'best_val_loss', 'final_train_loss', 'tokens_per_sec', 'ms_per_iter',
                  'peak_mem_mb', 'mean_effective_rank', 'mean_layer_cosine']


def per_seed(runs):
    """{activation: {seed: run_numbers}}"""
    return {act: {r['seed']: run_numbers(r) for r in rs} for act, rs in runs.items()}


def summarize(runs, baseline, lrs):
    """One row per activation: means and sample stds over seeds, and the paired comparison with the baseline.

    Pairing: the difference of final val losses on the same seed (same data order, same non-FFN init) cancels the
    noise both runs share; its mean, std and Student-t 95% interval are computed in stats.paired_comparison."""
    numbers = per_seed(runs)
    base = {s: n['final_val_loss'] for s, n in numbers.get(baseline, {}).items()}
    rows = []
    for act, by_seed in numbers.items():
        row = {'activation': act, 'lr': lrs.get(act), 'seeds': ','.join(str(s) for s in by_seed),
               'n_seeds': len(by_seed)}
        for key in ('total_params', 'active_params', 'ffn_params', 'tokens'):
            row[key] = next(iter(by_seed.values()))[key]
        for key in NUMBER_COLUMNS:
            values = np.array([n[key] for n in by_seed.values()], dtype=float)
            values = values[~np.isnan(values)]
            row[key] = values.mean() if len(values) else math.nan
            row[key + '_std'] = values.std(ddof=1) if len(values) > 1 else math.nan
        if act == baseline:
            pair = {'n': len(base), 'mean': 0.0, 'std': math.nan, 'low': math.nan, 'high': math.nan,
                    'verdict': 'baseline', 'seeds_needed': None}
        else:
            pair = stats.paired_comparison({s: n['final_val_loss'] for s, n in by_seed.items()}, base)
        row.update({'delta_val_mean': pair['mean'], 'delta_val_std': pair['std'],
                    'delta_val_ci95_low': pair['low'], 'delta_val_ci95_high': pair['high'],
                    'verdict': pair['verdict'], 'n_pairs': pair['n'], 'seeds_needed': pair['seeds_needed']})
        loads = [n['other_load_cores'] for n in by_seed.values()]
        row['max_other_load_cores'] = max((x for x in loads if x is not None and np.isfinite(x)), default=math.nan)
        rows.append(row)
    return rows


def ordering(runs, key='final_val_loss'):
    """The groups of stats.resolved_groups for `key`, from paired differences between every two activations."""
    numbers = per_seed(runs)
    values = {act: {s: n[key] for s, n in by_seed.items()} for act, by_seed in numbers.items()}
    means = {act: float(np.nanmean(list(v.values()))) for act, v in values.items()}
    groups = stats.resolved_groups(
        means, lambda a, b: stats.t_interval(list(stats.paired_differences(values[a], values[b]).values())))
    return groups, means


def write_summary_csv(rows, path):
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


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
    if row['verdict'] == 'baseline':
        return 'baseline'
    if not np.isfinite(row['delta_val_mean']):
        return '–'
    if row['n_pairs'] < 2:
        return f"{signed(row['delta_val_mean'])} (1 seed)"
    return (f"{signed(row['delta_val_mean'])} ± {row['delta_val_std']:.4f} "
            f"[{signed(row['delta_val_ci95_low'])}, {signed(row['delta_val_ci95_high'])}]")


def seeds_needed_text(row):
    n = row.get('seeds_needed')
    if row['verdict'] in ('baseline', stats.ONE_SEED) or n is None:
        return '–'
    return f'> {stats.MAX_SEEDS_REPORTED}' if n > stats.MAX_SEEDS_REPORTED else str(n)


def tuning_lines(tuning):
    """The learning-rate sweep as a markdown table (rates as columns, the chosen one in bold) + edge warnings."""
    if not tuning:
        return []
    rates = sorted({t['lr'] for entries in tuning['runs'].values() for t in entries})
    lines = ['## Learning rate, tuned per activation', '',
             f"One run per rate on tuning seed {tuning['seed']} (not a comparison seed, so the numbers above carry no "
             "winner's curse); the rate with the lowest final val loss (**bold**) is used for every comparison seed. "
             "min_lr keeps its ratio to the peak rate.", '',
             '| activation | ' + ' | '.join(f'lr {r:g}' for r in rates) + ' | chosen |',
             '|---|' + '---|' * (len(rates) + 1)]
    for act, entries in tuning['runs'].items():
        by_rate = {t['lr']: t for t in entries}
        cells = []
        for r in rates:
            t = by_rate.get(r)
            if t is None or t['status'] == 'missing':
                cells.append('–')
            elif t['status'] == 'diverged':
                cells.append('diverged')
            elif t['status'] == 'partial':
                cells.append('unfinished')
            else:
                text = f"{t['final_val_loss']:.4f}"
                cells.append(f'**{text}**' if r == tuning['chosen'].get(act) else text)
        lines.append(f"| {act} | " + ' | '.join(cells) + f" | {rate(tuning['chosen'].get(act))} |")
    for act, edge in tuning['edges'].items():
        lines += ['', f"**WARNING: {act}'s best rate {tuning['chosen'][act]:g} is the {edge} end of the grid: its "
                      f"optimum may lie beyond it; extend --tune_lr past {tuning['chosen'][act]:g}.**"]
    return lines + ['']


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


def write_summary_md(group, rows, runs, partial, path, command):
    baseline = group['baseline']
    title = f"# Activation comparison ({Path(group['dir']).name})"
    lines = [title, '', f'`{command}`', '']
    if partial:
        lines += ['**Unfinished runs, left out of every number below: ' +
                  ', '.join(f'{name} ({where})' for name, where in partial) + '.**', '']
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
        lines.append(f"| {row['activation']} | {rate(row['lr'])} | {row['n_seeds']} | {params} | "
                     f"{fmt(row, 'final_val_loss')} | {delta_cell(row)} | {row['verdict']} | "
                     f"{seeds_needed_text(row)} | {fmt(row, 'best_val_loss')} | {fmt(row, 'final_train_loss')} | "
                     f"{fmt(row, 'tokens_per_sec', 0)} | {fmt(row, 'ms_per_iter', 1)} | {fmt(row, 'peak_mem_mb', 0)} | "
                     f"{fmt(row, 'mean_effective_rank', 1)} | {fmt(row, 'mean_layer_cosine', 3)} |")
    tokens = rows[0]['tokens']
    if not math.isnan(tokens):
        lines += ['', f'Each run: {int(tokens):,} training tokens.']
    lines += ['']
    if n_max < 2:
        lines += ['**One seed: this gives no verdict.** With one seed nothing measures how much changing the seed '
                  'alone moves the losses, so no difference here is shown to be real. For a verdict, rerun with '
                  'several seeds and each '
                  f'activation at its own tuned rate, e.g. `{verdict_command(command)}`.', '']
    for key, name in (('final_val_loss', 'Final val loss'), ('final_train_loss', 'Final train loss')):
        groups, means = ordering(runs, key)
        if groups:
            lines += [f'{name}, lowest first (braces: not ordered by the paired 95% intervals): '
                      + stats.ordering_line(groups, means), '']
    note = load_note(rows)
    if note:
        lines += [note, '']
    lines += tuning_lines(group.get('tuning'))
    Path(path).write_text('\n'.join(lines) + '\n')
    return '\n'.join(lines)


def verdict_command(command):
    """The user's command with 3 seeds and a learning-rate grid, for the 'no verdict' sentence."""
    parts = [p for p in command.split() if not p.startswith(('--seeds=', '--tune_lr='))]
    return ' '.join(parts + ['--seeds=1,2,3', '--tune_lr=1e-3,2e-3,4e-3,8e-3'])


def report_comparison(group, command, analysis_batch_size=8):
    """Draw every figure and write the tables of one comparison (one model size) from the runs on disk.
    Returns the summary rows (for the scaling report), or None when no run has finished."""
    runs, partial = load_runs(group)
    out = Path(group['dir'])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if group.get('tuning'):
        if plot_lr_sweep(group['tuning'], colors_for(group['acts']), out / 'lr_sweep.png'):
            written.append(out / 'lr_sweep.png')
    if not runs:
        print(f"note: no finished comparison run under {out} yet")
        return None
    ensure_analyses(runs, analysis_batch_size)
    colors = colors_for(group['acts'])
    plot_loss_curves(runs, colors, out / 'loss_curves.png', group.get('lrs', {}), loaded=bool(
        load_note(summarize(runs, group['baseline'], group.get('lrs', {})))))
    written.append(out / 'loss_curves.png')
    if any(r['analysis'] for rs in runs.values() for r in rs):
        plot_effective_rank(runs, colors, out / 'effective_rank.png')
        plot_layer_cosine(runs, colors, out / 'layer_cosine.png')
        written += [out / 'effective_rank.png', out / 'layer_cosine.png']
        if plot_activation_curves(runs, colors, out / 'activation_curves.png'):
            written.append(out / 'activation_curves.png')
    else:
        print('note: no checkpoint or cached analysis.json, skipping the effective-rank / cosine / f(x) figures')
    if plot_poly_coefficients(runs, out / 'poly_coefficients.png'):
        written.append(out / 'poly_coefficients.png')
    baseline = group['baseline'] if group['baseline'] in runs else next(iter(runs))
    group = dict(group, baseline=baseline)
    rows = summarize(runs, baseline, group.get('lrs', {}))
    write_summary_csv(rows, out / 'summary.csv')
    table = write_summary_md(group, rows, runs, partial, out / 'summary.md', command)
    print(table)
    print('wrote ' + ', '.join(str(p) for p in written + [out / 'summary.csv', out / 'summary.md']))
    return rows


# ----------------------------------------------------------------------------- model-size sweeps
SCALING_COLUMNS = ['size', 'n_layer', 'n_embd', 'activation', 'lr', 'non_embedding_params', 'tokens', 'flops',
                   'n_seeds', 'final_val_loss_mean', 'final_val_loss_std', 'delta_val_mean', 'delta_val_ci95_low',
                   'delta_val_ci95_high', 'verdict']


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
                'delta_val_mean': row['delta_val_mean'], 'delta_val_ci95_low': row['delta_val_ci95_low'],
                'delta_val_ci95_high': row['delta_val_ci95_high'], 'verdict': row['verdict']})
    return table


def gap_trend(groups, activation, baseline):
    """Least-squares slope of the per-seed paired Δ (activation - baseline) against log10(non-embedding params),
    over every (size, seed): how much the gap changes per 10x parameters, with a t-interval (n - 2 df).
    None with fewer than 3 points or fewer than 2 sizes."""
    from scipy import stats as scipy_stats
    x, y = [], []
    for group in groups:
        runs, _ = load_runs(group)
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
        axes[1].errorbar(n * shift, mean, yerr=yerr, color=colors[act], marker='o', capsize=3, lw=1.2, label=act)
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
    plot_scaling(table, fits, baseline, colors_for(acts), out / 'scaling.png')
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
            if r['lr'] is not None and groups[0]['tuning']:
                text += f" (lr {r['lr']:g})"
            if act != baseline:
                text += f"<br>Δ {delta_cell(dict(r, n_pairs=r['n_seeds'], delta_val_std=0.0)).split(' ±')[0]}"
                if r['n_seeds'] >= 2:
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
