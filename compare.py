"""
Compare FFN activations: train one run per (activation, seed) with train.py, then plot and tabulate them.

    python compare.py config/compare_shakespeare_char.py                       # the default 4-way comparison
    python compare.py config/compare_shakespeare_char.py --seeds=1,2,3           # reuses seed 1, adds 2 and 3
    python compare.py config/compare_shakespeare_char.py --n_expert=8 --top_k=2   # MoE, same recipe
    python compare.py config/compare_shakespeare_char.py --replot              # plots + tables from the logs only

Every --key=value that is not one of the settings below goes to train.py unchanged. A config file may set both kinds;
its train.py settings are handed on as --key=value too (train.py would reject compare.py's keys in a config file).
Runs land in out_dir/<activation>-s<seed>/. What makes the runs comparable:
- the same `seed` for every activation of a seed: train.py draws its batches from (seed, step), so the data order is
  identical; init_seed=seed, and model.py seeds each parameter from (init_seed, parameter name), so every non-FFN
  weight starts identical;
- parameter-matched FFNs (model.py's default hidden width: SwiGLU gets 2/3 of it because it has three matrices).
A run whose summary.json says finished is skipped; a run with a ckpt.pt but no finished summary is resumed
(--init_from=resume), so Ctrl-C and rerun the same command is safe. Raising --max_iters extends finished runs at
the end of their schedule (lr stays at min_lr past lr_decay_iters); for a longer schedule use a new --out_dir.

Outputs in out_dir: loss_curves.png, summary.csv, summary.md and the paper's analyses (arXiv 2411.03884, sec. 5):
effective_rank.png, layer_cosine.png, poly_coefficients.png, activation_curves.png. The analyses need each run's
ckpt.pt once; their numbers are cached in <run>/analysis.json, so --replot works from the logs alone.
"""
import ast
import csv
import json
import math
import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

# -----------------------------------------------------------------------------
# compare.py's own settings; everything else on the command line is a train.py setting
out_dir = 'out-compare'
activations = 'gelu,swiglu,polyrelu,polynorm'   # comma-separated names from model.ACTIVATIONS
seeds = '1'                                     # comma-separated; each seed = one data order + one init
replot = False                                  # True: no training, only re-read the logs and redraw
plot_only = False                               # alias of replot
parallel = 0                                    # most GPUs to use at once, one run each (0 = all visible)
analysis_batch_size = 8                         # validation sequences for the hidden-state analyses
COMPARE_KEYS = ['out_dir', 'activations', 'seeds', 'replot', 'plot_only', 'parallel', 'analysis_batch_size']
# compare.py sets these per run; a user value would silently break the pairing, so it is refused with a hint
RESERVED = {'activation': '--activations=a,b,...', 'seed': '--seeds=1,2,...', 'init_seed': '--seeds=1,2,...',
            'init_from': 'nothing: compare.py resumes interrupted runs by itself'}
# changing these between two invocations does not change what a run computes (max_iters extends a run)
HARMLESS_CHANGES = {'max_iters', 'compile', 'log_interval', 'device', 'always_save_checkpoint'}
HERE = Path(__file__).resolve().parent
# -----------------------------------------------------------------------------


class CompareError(ValueError):
    """A mistake in how compare.py was called: printed as one line, no traceback."""


# ----------------------------------------------------------------------------- command line
def parse_value(text):
    """'3' -> 3, 'False' -> False, 'gelu' -> 'gelu' (nanoGPT's configurator rule)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def as_argument(key, value):
    """A config-file value as train.py's --key=value (strings raw: train.py keeps the text of a str setting)."""
    return f'--{key}={value}' if isinstance(value, str) else f'--{key}={value!r}'


def parse_args(argv):
    """Split argv into compare settings and train.py settings (config files first, then --key=value, so the command
    line wins). Returns (train_args: list of '--k=v' strings for train.py, train_settings: {k: v})."""
    train_args, train_settings = [], {}
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                raise FileNotFoundError(f"config file {arg!r} not found (expected e.g. config/compare_shakespeare_char.py)")
            namespace = {}
            exec(open(arg).read(), namespace)   # same rule as train.py: a config file is Python that sets globals
            for key, value in namespace.items():
                if key.startswith('_') or callable(value) or isinstance(value, type(os)):
                    continue
                if key in COMPARE_KEYS:
                    globals()[key] = value
                elif key in RESERVED:
                    continue                     # a train config reused as is: compare.py sets these per run
                else:
                    train_args.append(as_argument(key, value))
                    train_settings[key] = value
            continue
        key, sep, text = arg[2:].partition('=')
        if key in ('replot', 'plot_only') and not sep:
            globals()[key] = True                # allow a bare --replot
            continue
        if not sep:
            raise CompareError(f"argument {arg!r} must look like --key=value")
        if key in RESERVED:
            raise CompareError(f"--{key} is set by compare.py for every run; use {RESERVED[key]}")
        if key in COMPARE_KEYS:
            globals()[key] = parse_value(text)
        else:
            train_args.append(arg)
            train_settings[key] = parse_value(text)
    return train_args, train_settings


def as_list(value, kind):
    """'a,b' / ['a','b'] / 3 -> list of kind."""
    if isinstance(value, (list, tuple)):
        return [kind(v) for v in value]
    return [kind(v) for v in str(value).split(',') if str(v).strip()]


# ----------------------------------------------------------------------------- running train.py
def run_dir_of(activation, seed):
    return Path(out_dir) / f'{activation}-s{seed}'


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_state(run_dir, max_iters):
    """'done', 'resume' or 'scratch'. A finished run is extended (resumed) when asked for more iterations."""
    summary = read_json(run_dir / 'summary.json')
    if summary and summary.get('finished') and (max_iters is None or summary.get('iter', 0) >= max_iters):
        return 'done'
    return 'resume' if (run_dir / 'ckpt.pt').exists() else 'scratch'


def check_same_settings(run_dir, settings):
    """Refuse to mix results of different settings under one out_dir: a finished run trained with other settings
    would otherwise be skipped silently and end up in the table next to runs it is not comparable with."""
    old = read_json(run_dir / 'compare_settings.json')
    if old is not None:
        changed = sorted(k for k in set(old) | set(settings)
                         if k not in HARMLESS_CHANGES and old.get(k) != settings.get(k))
        if changed:
            detail = ', '.join(f'{k}: {old.get(k)!r} -> {settings.get(k)!r}' for k in changed)
            raise CompareError(f"{run_dir} was trained with other settings ({detail}); use a new --out_dir, "
                             f"delete {run_dir}, or add --replot to only redraw the existing runs")


def record_settings(run_dir, settings):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / 'compare_settings.json').write_text(json.dumps(settings, indent=1, sort_keys=True, default=repr))


def launch(jobs, slots_available):
    """Run train.py jobs, one per slot at a time. A slot is a GPU id (the child sees only that GPU through
    CUDA_VISIBLE_DEVICES) or None (no restriction: CPU or a single GPU, runs one after the other).
    Each child's output is echoed with a '[i/N name]' prefix. Stops starting new jobs after a failure.
    Returns the list of (name, command) that failed."""
    slots = queue.Queue()
    for slot in slots_available:
        slots.put(slot)
    print_lock, failures, threads = threading.Lock(), [], []

    def run_one(job, slot):
        env = dict(os.environ, PYTHONUNBUFFERED='1')   # stream the child's progress lines as they come
        if slot is not None:
            env['CUDA_VISIBLE_DEVICES'] = slot
        try:
            proc = subprocess.Popen(job['cmd'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            for line in proc.stdout:
                with print_lock:
                    print(f"[{job['tag']}] {line}", end='', flush=True)
            if proc.wait() != 0:
                failures.append((job['name'], ' '.join(job['cmd'])))
        finally:
            slots.put(slot)

    for job in jobs:
        slot = slots.get()                        # blocks until a GPU (or the single CPU slot) is free
        if failures:
            break
        with print_lock:
            print(f"=== [{job['tag']}] {job['state']}: {' '.join(job['cmd'][1:])}", flush=True)
        thread = threading.Thread(target=run_one, args=(job, slot))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return failures


def run_slots(train_settings):
    """[None] to run one at a time; with several GPUs visible (and device 'auto' or 'cuda'), one slot per GPU id, so
    each run owns a GPU. `parallel` caps the number of GPUs used."""
    if str(train_settings.get('device', 'auto')) not in ('auto', 'cuda'):
        return [None]                               # CPU, mps, or a GPU the user pinned with cuda:N
    import torch
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    ids = visible.split(',') if visible else [str(i) for i in range(torch.cuda.device_count())]
    ids = ids[:int(parallel)] if parallel else ids
    return ids if len(ids) > 1 else [None]


def train_all(train_args, train_settings, acts, seed_list):
    max_iters = train_settings.get('max_iters')
    jobs, runs = [], [(a, s) for s in seed_list for a in acts]   # seed-major: a full comparison is ready early
    for i, (act, seed) in enumerate(runs):
        run_dir = run_dir_of(act, seed)
        settings = dict(train_settings, activation=act, seed=seed)
        check_same_settings(run_dir, settings)
        state = run_state(run_dir, max_iters)
        tag = f'{i + 1}/{len(runs)} {act}-s{seed}'
        if state == 'done':
            print(f'=== [{tag}] finished earlier, skipping ({run_dir}/summary.json)')
            continue
        record_settings(run_dir, settings)
        cmd = [sys.executable, str(HERE / 'train.py'), *train_args,
               f'--activation={act}', f'--seed={seed}', f'--init_seed={seed}', f'--out_dir={run_dir}',
               f'--init_from={state}']
        jobs.append(dict(name=f'{act}-s{seed}', tag=tag, cmd=cmd, run_dir=run_dir,
                         state='resuming from ckpt.pt' if state == 'resume' else 'training'))
    failures = launch(jobs, run_slots(train_settings)) if jobs else []
    if failures:
        lines = '\n'.join(f'  {name}: {cmd}' for name, cmd in failures)
        raise SystemExit(f'train.py failed for:\n{lines}\nfix the error printed above and rerun the same command '
                         f'(finished runs are skipped, interrupted ones resume)')


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


def load_runs(acts, seed_list):
    """{activation: [run dicts]} for every run dir that has a log; prints what is missing."""
    runs = {}
    for act in acts:
        for seed in seed_list:
            run_dir = run_dir_of(act, seed)
            log = read_log(run_dir / 'log.csv')
            if log is None:
                print(f'note: no log.csv in {run_dir}, leaving it out of the plots')
                continue
            runs.setdefault(act, []).append(dict(
                seed=seed, dir=run_dir, log=log, coeffs=read_log(run_dir / 'coeffs.csv'),
                summary=read_json(run_dir / 'summary.json') or {}, analysis=read_json(run_dir / 'analysis.json')))
    return runs


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
    from model import ACTIVATIONS, GPTConfig, GPT
    ckpt = torch.load(run_dir / 'ckpt.pt', map_location='cpu', weights_only=True)
    config = GPTConfig(**ckpt['model_args'])
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


def ensure_analyses(runs):
    """Compute analysis.json for runs that have a checkpoint newer than their cached analysis."""
    for act_runs in runs.values():
        for run in act_runs:
            ckpt, cached = run['dir'] / 'ckpt.pt', run['dir'] / 'analysis.json'
            if not ckpt.exists():
                continue                                                   # --replot from logs: keep the cache
            if cached.exists() and cached.stat().st_mtime >= ckpt.stat().st_mtime:
                continue
            print(f"analysing {run['dir']} (effective rank, layer cosine, activation curves)")
            run['analysis'] = analyze_run(run['dir'], analysis_batch_size)
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


def plot_loss_curves(runs, colors, path):
    """Panel 1: train (dashed, smoothed) and val (solid) loss vs tokens, mean ± std over seeds; panel 2: vs time."""
    plt, fig, axes = new_figure(2, width=7.0, height=4.8)
    shown = []                                                             # (x fraction, y) of every mean point
    for act, act_runs in runs.items():
        logs = [r['log'] for r in act_runs]
        n_seeds = len(act_runs)
        train, val = seed_band(logs, 'train_loss'), seed_band(logs, 'val_loss')
        for ax, x_key in zip(axes, ('tokens', 'elapsed_s')):
            if train is not None and x_key in train:
                window = max(1, len(train['mean']) // 25)
                mean, std = smooth(train['mean'], window), smooth(train['std'], window)
                ax.plot(train[x_key], mean, '--', lw=0.9, color=colors[act], alpha=0.8)
                ax.fill_between(train[x_key], mean - std, mean + std, color=colors[act], alpha=0.08, lw=0)
                if x_key == 'tokens':
                    shown += list(zip(train['iter'] / max(train['iter'].max(), 1), mean))
            if val is not None and x_key in val:
                label = f'{act} (val, {n_seeds} seed{"s" if n_seeds > 1 else ""})'
                ax.plot(val[x_key], val['mean'], '-', lw=1.8, color=colors[act], label=label, marker='.', ms=3)
                ax.fill_between(val[x_key], val['mean'] - val['std'], val['mean'] + val['std'],
                                color=colors[act], alpha=0.2, lw=0)
                if x_key == 'tokens':
                    shown += list(zip(val['iter'] / max(val['iter'].max(), 1), val['mean']))
    # the first steps fall from ln(vocab) and would squash the part worth comparing: scale y to the last 80%
    late = [y for frac, y in shown if frac >= 0.2 and np.isfinite(y)]
    if late:
        low, high = min(late), max(late)
        pad = 0.05 * max(high - low, 1e-3)
        for ax in axes:
            ax.set_ylim(low - pad, high + pad)
    from matplotlib.ticker import FuncFormatter
    axes[0].xaxis.set_major_formatter(FuncFormatter(lambda value, _: f'{value / 1e6:g}M'))
    axes[0].set_xlabel('tokens')
    axes[1].set_xlabel('wall-clock training time (s)')
    for ax in axes:
        ax.set_ylabel('loss')
        ax.grid(alpha=0.3)
    axes[0].plot([], [], 'k--', lw=0.9, label='train (smoothed)')
    axes[0].legend(fontsize=8)
    axes[0].set_title('loss vs tokens (band: ± std over seeds)')
    axes[1].set_title('loss vs wall-clock time')
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
        fig.colorbar(image, ax=list(axes[1:]), shrink=0.8)
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
            ax.set_title(f'{act}: {coef}')
            ax.set_xlabel('iteration')
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
        ax.axhline(0, color='k', lw=0.5)
        ax.axvline(0, color='k', lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('f(x)')
    axes[0].legend(fontsize=7, markerscale=6)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- tables
def run_numbers(run):
    """The headline numbers of one run (nan where not available, e.g. an unfinished run)."""
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
        'mean_effective_rank': analysis.get('mean_effective_rank', math.nan),
        'mean_layer_cosine': analysis.get('mean_consecutive_cosine', math.nan),
    }


NUMBER_COLUMNS = ['final_val_loss', 'best_val_loss', 'final_train_loss', 'delta_final_val', 'tokens_per_sec',
                  'ms_per_iter', 'peak_mem_mb', 'mean_effective_rank', 'mean_layer_cosine']


def summarize(runs):
    """One row per activation: means and sample stds over seeds, plus the final val loss minus the baseline's (the
    first activation) on the same seed. Pairing by seed removes the data-order noise shared by both runs."""
    per_run = {act: {r['seed']: run_numbers(r) for r in rs} for act, rs in runs.items()}
    baseline = next(iter(per_run), None)
    rows = []
    for act, by_seed in per_run.items():
        for seed, numbers in by_seed.items():
            base = per_run[baseline].get(seed)
            numbers['delta_final_val'] = numbers['final_val_loss'] - base['final_val_loss'] if base else math.nan
        row = {'activation': act, 'seeds': ','.join(str(s) for s in by_seed), 'n_seeds': len(by_seed)}
        for key in ('total_params', 'active_params', 'ffn_params', 'tokens'):
            row[key] = next(iter(by_seed.values()))[key]
        for key in NUMBER_COLUMNS:
            values = np.array([n[key] for n in by_seed.values()], dtype=float)
            values = values[~np.isnan(values)]
            row[key] = values.mean() if len(values) else math.nan
            row[key + '_std'] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    return rows, baseline


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
    return text if math.isnan(std) else f'{text} ± {std:.{digits}f}'


def millions(value):
    return '–' if value is None or math.isnan(value) else f'{value / 1e6:.2f}M'


def write_summary_md(rows, baseline, path, command):
    lines = [f'# Activation comparison ({Path(out_dir).name})', '',
             f'`{command}`', '',
             'Mean ± sample std over seeds. Δ val = final val loss minus '
             f'{baseline}\'s on the same seed (same data order and non-FFN init). Train loss: mean of the last 10% of '
             'logged iterations. Effective rank: mean over all FFN matrices (higher = more directions used). '
             'Layer cosine: mean cos(h_l, h_l+1) between consecutive blocks\' outputs (residual stream, validation '
             'batch; lower = less redundant layers).', '',
             '| activation | seeds | params (total / active / FFN) | final val loss | best val loss | Δ val vs '
             f'{baseline} | final train loss | tokens/s | ms/iter | peak mem MB | FFN eff. rank | layer cosine |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        params = ' / '.join(millions(row[k]) for k in ('total_params', 'active_params', 'ffn_params'))
        delta = 'baseline' if row['activation'] == baseline else fmt(row, 'delta_final_val')
        lines.append(f"| {row['activation']} | {row['n_seeds']} | {params} | {fmt(row, 'final_val_loss')} | "
                     f"{fmt(row, 'best_val_loss')} | {delta} | {fmt(row, 'final_train_loss')} | "
                     f"{fmt(row, 'tokens_per_sec', 0)} | {fmt(row, 'ms_per_iter', 1)} | {fmt(row, 'peak_mem_mb', 0)} | "
                     f"{fmt(row, 'mean_effective_rank', 1)} | {fmt(row, 'mean_layer_cosine', 3)} |")
    tokens = rows[0]['tokens']
    if not math.isnan(tokens):
        lines += ['', f'Each run: {int(tokens):,} training tokens.']
    for key, name in (('final_val_loss', 'Final val loss'), ('final_train_loss', 'Final train loss')):
        ranked = sorted((r for r in rows if not math.isnan(r[key])), key=lambda r: r[key])
        if ranked:
            lines += ['', f'{name}, lowest first: ' + ' < '.join(f"{r['activation']} ({r[key]:.4f})" for r in ranked)]
    Path(path).write_text('\n'.join(lines) + '\n')
    return '\n'.join(lines)


def report(acts, seed_list, command):
    """Draw every figure and write the tables from whatever runs exist under out_dir."""
    runs = load_runs(acts, seed_list)
    if not runs:
        raise FileNotFoundError(f'no run with a log.csv under {out_dir}/<activation>-s<seed>/; train first '
                                f'(drop --replot) or point --out_dir at an existing comparison')
    ensure_analyses(runs)
    colors = colors_for(acts)
    out = Path(out_dir)
    written = [out / 'loss_curves.png']
    plot_loss_curves(runs, colors, written[0])
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
    rows, baseline = summarize(runs)
    write_summary_csv(rows, out / 'summary.csv')
    table = write_summary_md(rows, baseline, out / 'summary.md', command)
    print(table)
    print('wrote ' + ', '.join(str(p) for p in written + [out / 'summary.csv', out / 'summary.md']))


def main(argv):
    train_args, train_settings = parse_args(argv)
    acts = as_list(activations, str)
    seed_list = as_list(seeds, int)
    if not acts or not seed_list:
        raise CompareError('need at least one activation and one seed, e.g. --activations=gelu,polynorm --seeds=1')
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # the command that trains these runs (a --replot of them re-reads what that command wrote)
    command = ' '.join(['python compare.py', *(a for a in argv if a.split('=')[0] not in ('--replot', '--plot_only'))])
    if not (replot or plot_only):
        from model import ACTIVATIONS                                       # fail before any run on a typo
        unknown = [a for a in acts if a not in ACTIVATIONS]
        if unknown:
            raise CompareError(f'unknown activation(s) {unknown}; choose from {sorted(ACTIVATIONS)}')
        train_all(train_args, train_settings, acts, seed_list)
    report(acts, seed_list, command)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (CompareError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
