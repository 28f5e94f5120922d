"""
Compare FFN activations fairly: train one run per (activation, seed) with train.py, each activation at its own tuned
learning rate if asked, optionally at several model sizes; then report.py draws and tabulates them.

    python compare.py config/compare_shakespeare_char.py                       # the default 4-way comparison, 1 seed
    python compare.py config/compare_shakespeare_char.py --seeds=1,2,3 --tune_lr=1e-3,2e-3,4e-3,8e-3   # a verdict
    python compare.py config/compare_shakespeare_char.py --n_expert=8 --top_k=2 --out_dir=out-compare-moe   # MoE
    python compare.py config/scaling_shakespeare_char.py                       # the same at several model sizes
    python compare.py config/compare_shakespeare_char.py --replot              # figures + tables from the logs only

Every --key=value that is not one of the settings below goes to train.py unchanged. A config file may set both kinds;
its train.py settings are handed on as --key=value too (train.py would reject compare.py's keys in a config file).

What makes the runs comparable:
- the same `seed` for every activation of a seed: train.py draws its batches from (seed, step), so the data order is
  identical; init_seed = seed, and model.py seeds each parameter from (init_seed, parameter name), so every non-FFN
  weight starts identical. report.py pairs runs by seed for its intervals;
- parameter-matched FFNs (model.py's hidden-width rule: SwiGLU has three matrices, so it gets 2/3 of the width);
- with --tune_lr, each activation at the learning rate that is best FOR IT, chosen on a tuning seed that is not one
  of the comparison seeds (so the reported losses are not the lucky draws the choice was made on).

Where runs land (sizes and tuning are optional levels):
    out_dir/[<size>/]<activation>[-lr<rate>]-s<seed>/        comparison runs (the lr part only with --tune_lr)
    out_dir/[<size>/]tune/<activation>-lr<rate>-s<tune_seed>/ tuning runs
A run whose summary.json says finished is skipped; a run with a ckpt.pt but no finished summary is resumed
(--init_from=resume), so Ctrl-C and rerunning the same command is safe. Raising --max_iters extends finished runs at
the end of their schedule (lr stays at min_lr past lr_decay_iters); for a longer schedule use a new --out_dir.
"""
import ast
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import report
from report import read_json

# -----------------------------------------------------------------------------
# compare.py's own settings; everything else on the command line is a train.py setting
out_dir = 'out-compare'
activations = 'gelu,swiglu,polyrelu,polynorm'   # comma-separated names from model.ACTIVATIONS
seeds = '1'                                     # comma-separated; each seed = one data order + one init
baseline = ''                                   # Δ and verdicts are against this activation ('' = the first one)
tune_lr = ''                                    # comma-separated peak learning rates to tune over ('' = no tuning:
                                                # every activation trains at train.py's learning_rate)
tune_seed = 0                                   # the seed of the tuning runs; must not be a comparison seed
sizes = ''                                      # comma-separated LAYERSxWIDTH model sizes, e.g. '2x64,4x128,6x192'
                                                # ('' = the one model given by the train.py settings)
head_size = 32                                  # with sizes: n_head = width / head_size
tokens_per_param = 0.0                          # with sizes: training tokens per non-embedding parameter
                                                # (0 = every size trains max_iters iterations)
replot = False                                  # True: no training, only re-read the logs and redraw
plot_only = False                               # alias of replot
parallel = 0                                    # runs at once: GPUs, one run each (0 = all visible); on CPU,
                                                # N runs share the cores, cores/N threads each (0 = one at a time)
analysis_batch_size = 8                         # validation sequences for the hidden-state analyses
COMPARE_KEYS = ['out_dir', 'activations', 'seeds', 'baseline', 'tune_lr', 'tune_seed', 'sizes', 'head_size',
                'tokens_per_param', 'replot', 'plot_only', 'parallel', 'analysis_batch_size']
# compare.py sets these per run; a user value would silently break the pairing, so it is refused with a hint
RESERVED = {'activation': '--activations=a,b,...', 'seed': '--seeds=1,2,...', 'init_seed': '--seeds=1,2,...',
            'init_from': 'nothing: compare.py resumes interrupted runs by itself', 'out_dir': None}
# set per size by --sizes (refused on the command line together with it)
SIZE_KEYS = ('n_layer', 'n_embd', 'n_head', 'ffn_hidden', 'expert_hidden')
# changing these between two invocations does not change what a run computes (max_iters extends a run)
HARMLESS_CHANGES = {'max_iters', 'compile', 'log_interval', 'device', 'always_save_checkpoint', 'overwrite'}
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


def read_config_file(path):
    """The globals a config file sets. A file that is not valid Python fails in one line with file:line."""
    if not os.path.isfile(path):
        raise CompareError(f"config file {path!r} not found (expected e.g. config/compare_shakespeare_char.py)")
    text = Path(path).read_text()
    namespace = {}
    try:
        exec(compile(text, path, 'exec'), namespace)   # same rule as train.py: a config file is Python setting globals
    except SyntaxError as e:
        raise CompareError(f"{path}:{e.lineno}: {e.msg} (config files are Python: key = value)") from None
    except Exception as e:                             # e.g. a NameError from an unquoted string
        line = next((f.lineno for f in reversed(__import__('traceback').extract_tb(e.__traceback__))
                     if f.filename == path), '?')
        raise CompareError(f"{path}:{line}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith('_') and not callable(v) and not isinstance(v, type(os))}


def parse_args(argv):
    """Split argv into compare settings and train.py settings (config files first, then --key=value, so the command
    line wins). Returns (train_args: list of '--k=v' strings for train.py, train_settings: {k: v}, command_line: the
    train.py keys given on the command line)."""
    train_args, train_settings, command_line = [], {}, set()
    for arg in argv:
        if not arg.startswith('--'):
            for key, value in read_config_file(arg).items():
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
        if key == 'out_dir':
            globals()[key] = text
        elif key in RESERVED:
            raise CompareError(f"--{key} is set by compare.py for every run; use {RESERVED[key]}")
        elif key in COMPARE_KEYS:
            globals()[key] = parse_value(text)
        else:
            train_args.append(arg)
            train_settings[key] = parse_value(text)
            command_line.add(key)
    return train_args, train_settings, command_line


def as_list(value, kind, what):
    """'a,b' / ['a','b'] / 3 -> list of kind; a bad item or a duplicate is one error line naming the setting."""
    items = list(value) if isinstance(value, (list, tuple)) else [v for v in str(value).split(',') if v.strip()]
    try:
        out = [kind(v.strip() if isinstance(v, str) else v) for v in items]
    except (TypeError, ValueError):
        example = '1,2,3' if kind is int else '1e-3,2e-3'
        raise CompareError(f"--{what}={value!r}: every item must be a{'n integer' if kind is int else ' number'}, "
                           f"e.g. --{what}={example}") from None
    duplicates = sorted({str(v) for v in out if out.count(v) > 1})
    if duplicates:
        raise CompareError(f"--{what} lists {', '.join(duplicates)} more than once; each must appear once")
    return out


def parse_sizes(text, head):
    """'2x64,4x128' -> [{'name': '2x64', 'n_layer': 2, 'n_embd': 64, 'n_head': 2}, ...]."""
    out = []
    for item in as_list(text, str, 'sizes'):
        match = re.fullmatch(r'(\d+)x(\d+)', item)
        if not match:
            raise CompareError(f"--sizes: {item!r} must look like LAYERSxWIDTH, e.g. --sizes=2x64,4x128,6x192")
        n_layer, n_embd = int(match.group(1)), int(match.group(2))
        if n_layer < 1 or n_embd < 1:
            raise CompareError(f"--sizes: {item!r} needs at least 1 layer and width 1")
        if n_embd % head:
            raise CompareError(f"--sizes: width {n_embd} of {item!r} is not a multiple of --head_size={head}; "
                               f"pick a width divisible by {head} (e.g. {max(1, round(n_embd / head)) * head})")
        out.append({'name': item, 'n_layer': n_layer, 'n_embd': n_embd, 'n_head': n_embd // head})
    return out


def train_defaults():
    """train.py's default settings, read from its source (importing train.py would start training)."""
    tree = ast.parse((HERE / 'train.py').read_text())
    defaults = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                defaults[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return defaults


# ----------------------------------------------------------------------------- where runs live
def run_dir_of(act, seed, size=None, lr=None, tune=False):
    base = Path(out_dir) / size if size else Path(out_dir)
    base = base / 'tune' if tune else base
    return base / (act + (f'-lr{lr:g}' if lr is not None else '') + f'-s{seed}')


def run_state(run_dir, max_iters):
    """'done', 'diverged', 'resume' or 'scratch'. A finished run is extended (resumed) when asked for more iterations."""
    summary = read_json(run_dir / 'summary.json')
    if summary and summary.get('finished') and (max_iters is None or summary.get('iter', 0) >= max_iters):
        return 'done'
    if (run_dir / 'diverged.json').exists():
        return 'diverged'
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


# ----------------------------------------------------------------------------- running train.py
RUNNING = []          # the train.py processes alive right now, so Ctrl-C can stop them cleanly


def launch(jobs, slots_available):
    """Run train.py jobs, one per slot at a time. A slot is a GPU id (the child sees only that GPU through
    CUDA_VISIBLE_DEVICES) or None (no restriction: CPU or a single GPU, runs one after the other).
    Each child's output is echoed with a '[i/N name]' prefix. A job may carry on_failure(output_tail) -> True to
    accept its failure (a tuning run that diverged); any other failure stops new jobs from starting.
    Returns the list of (name, command) that failed."""
    slots = queue.Queue()
    for slot in slots_available:
        slots.put(slot)
    print_lock, failures, threads = threading.Lock(), [], []

    def run_one(job, slot):
        env = dict(os.environ, PYTHONUNBUFFERED='1')   # stream the child's progress lines as they come
        if slot is not None and slot.startswith('cpu'):
            env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = slot.split(':')[1]
        elif slot is not None:
            env['CUDA_VISIBLE_DEVICES'] = slot
        try:
            proc = subprocess.Popen(job['cmd'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            RUNNING.append(proc)
            tail = deque(maxlen=20)
            for line in proc.stdout:
                tail.append(line)
                with print_lock:
                    print(f"[{job['tag']}] {line}", end='', flush=True)
            code = proc.wait()
            RUNNING.remove(proc)
            if code != 0 and code != -signal.SIGINT and not (job.get('on_failure') and job['on_failure'](''.join(tail))):
                failures.append((job['name'], ' '.join(job['cmd'])))
        finally:
            slots.put(slot)

    for job in jobs:
        slot = slots.get()                        # blocks until a GPU (or the single CPU slot) is free
        if failures:
            break
        with print_lock:
            print(f"=== [{job['tag']}] {job['state']}: {' '.join(job['cmd'][1:])}", flush=True)
        thread = threading.Thread(target=run_one, args=(job, slot), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        while thread.is_alive():                   # join with a timeout so Ctrl-C reaches the main thread
            thread.join(0.2)
    return failures


def stop_running(grace_s=60):
    """Ctrl-C: pass SIGINT on to the train.py children (train.py saves nothing half-written and exits) and wait."""
    for proc in list(RUNNING):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.time() + grace_s
    for proc in list(RUNNING):
        try:
            proc.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()


def run_slots(train_settings):
    """[None] to run one at a time; with several GPUs visible (and device 'auto' or 'cuda'), one slot per GPU id, so
    each run owns a GPU (`parallel` caps the number used). On CPU, --parallel=N gives N slots 'cpu:<threads>': small
    models use many cores poorly, so N runs with cores/N threads each finish sooner than N runs one after another
    (measured on 2 cores, the default model: 2 runs x 1 thread = 1.06x the throughput of 1 run x 2 threads)."""
    import torch
    device = str(train_settings.get('device', 'auto'))
    on_cpu = device == 'cpu' or (device == 'auto' and not torch.cuda.is_available())
    if on_cpu and int(parallel) > 1:
        threads = max(1, (os.cpu_count() or 1) // int(parallel))
        return [f'cpu:{threads}'] * int(parallel)
    if device not in ('auto', 'cuda'):
        return [None]                               # CPU, mps, or a GPU the user pinned with cuda:N
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    ids = visible.split(',') if visible else [str(i) for i in range(torch.cuda.device_count())]
    ids = ids[:int(parallel)] if parallel else ids
    return ids if len(ids) > 1 else [None]


def make_job(tag, run_dir, settings, train_args, state, tune=False):
    """The train.py command of one run. Settings that differ from the shared train_args come last (they win)."""
    overrides = [report_setting(k, v) for k, v in settings.items() if k not in ('activation', 'seed')]
    act, seed = settings['activation'], settings['seed']
    cmd = [sys.executable, str(HERE / 'train.py'), *train_args, *overrides,
           f'--activation={act}', f'--seed={seed}', f'--init_seed={seed}', f'--out_dir={run_dir}',
           f'--init_from={"resume" if state == "resume" else "scratch"}']
    if state == 'scratch':
        cmd.append('--overwrite=True')      # what an earlier attempt left before its first checkpoint is worth nothing
    job = dict(name=run_dir.name, tag=tag, cmd=cmd, run_dir=run_dir,
               state='resuming from ckpt.pt' if state == 'resume' else 'training')
    if tune:
        def diverged(output):
            # train.py stops a run whose loss becomes inf/nan (exit 1, 'non-finite'): at a too-high rate that is a
            # result of the sweep, not an error; remember it so a rerun does not train it again
            if 'non-finite' not in output:
                return False
            (run_dir / 'diverged.json').write_text(json.dumps({'diverged': True, 'lr': settings.get(
                'learning_rate'), 'message': output.strip().splitlines()[-1]}))
            return True
        job['on_failure'] = diverged
    return job


def report_setting(key, value):
    return f'--{key}={value!r}' if not isinstance(value, str) else f'--{key}={value}'


# ----------------------------------------------------------------------------- the plan: sizes, rates, runs
class Plan:
    """Everything compare.py will train, in the order it trains it, and where each run lives.

    levels: one per model size (or a single level without --sizes) = {'name', 'settings' (train.py overrides of that
    size), 'max_iters', 'non_embedding_params', 'tokens', 'flops_per_token'}."""

    def __init__(self, train_settings, command_line):
        self.acts = as_list(activations, str, 'activations')
        self.seeds = as_list(seeds, int, 'seeds')
        if not self.acts or not self.seeds:
            raise CompareError('need at least one activation and one seed, e.g. --activations=gelu,polynorm --seeds=1')
        self.baseline = str(baseline) if baseline else self.acts[0]
        if self.baseline not in self.acts:
            raise CompareError(f"--baseline={self.baseline!r} is not one of --activations={','.join(self.acts)}")
        self.rates = sorted(as_list(tune_lr, float, 'tune_lr'))
        if any(not (r > 0 and math.isfinite(r)) for r in self.rates):
            raise CompareError(f"--tune_lr={tune_lr!r}: every rate must be a positive number")
        try:
            self.tune_seed = int(tune_seed)
        except (TypeError, ValueError):
            raise CompareError(f"--tune_seed={tune_seed!r} must be an integer") from None
        if self.rates and self.tune_seed in self.seeds:
            raise CompareError(f"--tune_seed={self.tune_seed} is also a comparison seed; tuning on a seed that is "
                               f"then reported would pick each activation's lucky draw: use a seed not in --seeds")
        self.explicit_train = dict(train_settings)
        self.train = dict(train_defaults(), **train_settings)
        base_lr, base_min = float(self.train['learning_rate']), float(self.train['min_lr'])
        self.min_lr_ratio = base_min / base_lr if base_lr > 0 else 0.1
        self.levels = self.make_levels(train_settings, command_line)

    def make_levels(self, train_settings, command_line):
        if not sizes:
            if tokens_per_param:
                raise CompareError('--tokens_per_param needs --sizes (it sets each size\'s training length)')
            return [{'name': None, 'settings': {}, 'max_iters': train_settings.get('max_iters')}]
        try:
            head = int(head_size)
        except (TypeError, ValueError):
            raise CompareError(f"--head_size={head_size!r} must be an integer") from None
        if head < 2 or head % 2:
            raise CompareError(f"--head_size={head} must be an even number >= 2 (RoPE rotates pairs of channels)")
        size_list = parse_sizes(sizes, head)
        clash = sorted(set(SIZE_KEYS) & command_line)
        if clash:
            raise CompareError(f"--{clash[0]} cannot be combined with --sizes, which sets {', '.join(SIZE_KEYS)} for "
                               f"every size; drop it (or drop --sizes)")
        try:
            per_param = float(tokens_per_param)
        except (TypeError, ValueError):
            raise CompareError(f"--tokens_per_param={tokens_per_param!r} must be a number") from None
        if per_param < 0:
            raise CompareError(f"--tokens_per_param={per_param} must be >= 0 (0 = max_iters at every size)")
        tokens_per_iter = self.train['batch_size'] * self.train['block_size'] * self.train['gradient_accumulation_steps']
        levels = []
        for size in size_list:
            # ffn_hidden = 0: model.py's width rule, which matches the FFN parameters of gated and non-gated
            # activations exactly at every width (PolyCom adds its r + 1 scalars per layer on top)
            settings = {'n_layer': size['n_layer'], 'n_embd': size['n_embd'], 'n_head': size['n_head'],
                        'ffn_hidden': 0, 'expert_hidden': 0}
            counts = model_counts(dict(self.train, **settings, activation=self.baseline))
            if per_param > 0:
                max_iters = max(1, math.ceil(per_param * counts['non_embedding_params'] / tokens_per_iter))
                settings.update(max_iters=max_iters, lr_decay_iters=max_iters)
            else:
                max_iters = int(self.train['max_iters'])
            levels.append(dict(name=size['name'], settings=settings, max_iters=max_iters,
                               tokens=max_iters * tokens_per_iter, **counts))
        return levels

    def lr_settings(self, lr):
        """A tuned peak rate keeps the schedule's shape: min_lr stays the same fraction of it."""
        return {} if lr is None else {'learning_rate': lr, 'min_lr': lr * self.min_lr_ratio}

    def tuning(self, level):
        """Read the tuning runs of one level from disk: {'seed', 'runs': {act: [entries]}, 'chosen', 'edges'}."""
        if not self.rates:
            return None
        runs, chosen, edges = {}, {}, {}
        for act in self.acts:
            entries = []
            for lr in self.rates:
                run_dir = run_dir_of(act, self.tune_seed, level['name'], lr, tune=True)
                state = run_state(run_dir, level['max_iters'])
                summary = read_json(run_dir / 'summary.json') or {}
                status = {'done': 'done', 'diverged': 'diverged', 'resume': 'partial',
                          'scratch': 'partial' if (run_dir / 'log.csv').exists() else 'missing'}[state]
                loss = summary.get('final_val_loss') if status == 'done' else None
                if status == 'done' and (loss is None or not math.isfinite(loss)):
                    status = 'diverged'
                entries.append({'lr': lr, 'status': status, 'final_val_loss': loss, 'dir': str(run_dir)})
            runs[act] = entries
            done = [e for e in entries if e['status'] == 'done']
            if done and len(done) + sum(e['status'] == 'diverged' for e in entries) == len(entries):
                best = min(done, key=lambda e: (e['final_val_loss'], e['lr']))
                chosen[act] = best['lr']
                if len(self.rates) > 1 and best['lr'] in (self.rates[0], self.rates[-1]):
                    edges[act] = 'lowest' if best['lr'] == self.rates[0] else 'highest'
        return {'seed': self.tune_seed, 'runs': runs, 'chosen': chosen, 'edges': edges}

    def group(self, level):
        """What report.py needs to report one level: its runs' folders, rates, baseline and tuning."""
        tuning = self.tuning(level)
        lrs = {a: (tuning['chosen'].get(a) if tuning else None) for a in self.acts}
        run_dirs = {(a, s): run_dir_of(a, s, level['name'], lrs[a]) for a in self.acts for s in self.seeds}
        shared = None if self.rates else float(self.train['learning_rate'])
        return {'dir': Path(out_dir) / level['name'] if level['name'] else Path(out_dir), 'acts': self.acts,
                'seeds': self.seeds, 'baseline': self.baseline, 'run_dirs': run_dirs, 'tuning': tuning,
                'lrs': {a: lrs[a] if self.rates else shared for a in self.acts},
                'expected_iters': level['max_iters'], 'level': level}


def model_counts(conf):
    """Non-embedding parameters and training FLOPs per token of the model train.py would build from conf."""
    import dataclasses
    import torch
    from model import GPT, GPTConfig
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    args = {k: v for k, v in conf.items() if k in fields}
    args['vocab_size'] = dataset_vocab(conf)
    with torch.random.fork_rng():
        model = GPT(GPTConfig(**args), verbose=False)
    return {'non_embedding_params': model.num_params(non_embedding=True),
            'flops_per_token': model.flops_per_token(), 'model_args': args}


def dataset_vocab(conf):
    """The model's vocabulary as train.py computes it (BPE padded to a multiple of 64)."""
    from data.dataset import load_meta
    name = conf.get('dataset', 'shakespeare_char')
    data_dir = name if os.sep in name else os.path.join(HERE, 'data', name)
    try:
        meta = load_meta(data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise CompareError(str(e)) from None
    return meta['vocab_size'] if meta['tokenizer'] == 'char' else -(-meta['vocab_size'] // 64) * 64


def seconds_per_iter(model_args, conf):
    """Time 2 training steps (after 1 warm-up) of the model in this process: the basis of the duration estimate."""
    import torch
    from model import GPT, GPTConfig
    device = str(conf.get('device', 'auto'))
    device = ('cuda' if torch.cuda.is_available() else 'cpu') if device == 'auto' else device
    model = GPT(GPTConfig(**model_args), verbose=False).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, block, accumulation = conf['batch_size'], conf['block_size'], conf['gradient_accumulation_steps']
    x = torch.randint(model_args['vocab_size'], (batch, block), device=device)
    autocast = torch.autocast('cuda', dtype=torch.bfloat16) if device.startswith('cuda') else None

    def step():
        for _ in range(accumulation):
            if autocast:
                with autocast:
                    loss = model(x, x)[1]
            else:
                loss = model(x, x)[1]
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith('cuda'):
            torch.cuda.synchronize()
    step()
    start = time.perf_counter()
    for _ in range(2):
        step()
    return (time.perf_counter() - start) / 2


def print_size_plan(plan):
    """Before a sweep starts: each size's parameters, tokens, and an estimate of the whole sweep's duration."""
    conf = plan.train
    runs_per_level = len(plan.acts) * (len(plan.seeds) + len(plan.rates))
    print(f"sweep: {len(plan.levels)} sizes x {len(plan.acts)} activations x ({len(plan.seeds)} seeds"
          + (f" + {len(plan.rates)} tuning rates" if plan.rates else '') + f") = {runs_per_level * len(plan.levels)} runs")
    total = 0.0
    for level in plan.levels:
        per_iter = seconds_per_iter(level['model_args'], dict(conf, **level['settings']))
        evals = level['max_iters'] // conf['eval_interval'] + 1
        # an evaluation batch is a forward pass, about a third of a training step per micro-batch
        run_s = level['max_iters'] * per_iter + evals * conf['eval_iters'] * per_iter / 3 / conf['gradient_accumulation_steps']
        total += run_s * runs_per_level
        print(f"  {level['name']:>8}: {level['non_embedding_params'] / 1e6:7.3f}M non-embedding params, "
              f"{level['tokens'] / 1e6:8.2f}M tokens ({level['max_iters']} iters), "
              f"~{run_s / 60:.1f} min per run (timed: {per_iter * 1000:.0f} ms/iter)")
    print(f"estimated total: {total / 3600:.1f} h ({total / 60:.0f} min), runs one after another on this machine; "
          f"finished runs are skipped")


def train_all(plan, train_args):
    """Tuning runs first (they decide each activation's rate), then the comparison runs, seed-major, per size."""
    slots = run_slots(plan.train)
    total = len(plan.levels) * len(plan.acts) * (len(plan.rates) + len(plan.seeds))
    counter = iter(range(1, total + 1))

    def jobs_for(entries):
        jobs = []
        for level, act, seed, lr, tune in entries:
            run_dir = run_dir_of(act, seed, level['name'], lr, tune)
            settings = dict(level['settings'], **plan.lr_settings(lr), activation=act, seed=seed)
            check_same_settings(run_dir, dict(plan_settings(plan), **settings))
            state = run_state(run_dir, level['max_iters'])
            where = f"{level['name']}/" if level['name'] else ''
            tag = f"{next(counter)}/{total} {where}{'tune/' if tune else ''}{run_dir.name}"
            if state in ('done', 'diverged'):
                print(f'=== [{tag}] {"finished" if state == "done" else "diverged"} earlier, skipping ({run_dir})')
                continue
            record_settings(run_dir, dict(plan_settings(plan), **settings))
            jobs.append(make_job(tag, run_dir, settings, train_args, state, tune))
        return jobs

    def run(jobs):
        failures = launch(jobs, slots) if jobs else []
        if failures:
            lines = '\n'.join(f'  {name}: {cmd}' for name, cmd in failures)
            raise SystemExit(f'train.py failed for:\n{lines}\nfix the error printed above and rerun the same command '
                             f'(finished runs are skipped, interrupted ones resume)')

    if plan.rates:
        run(jobs_for([(lv, a, plan.tune_seed, r, True) for lv in plan.levels for a in plan.acts for r in plan.rates]))
    entries = []
    for level in plan.levels:
        tuning = plan.tuning(level)
        for act in plan.acts:
            if tuning and act not in tuning['chosen']:
                raise CompareError(f"every tuning rate diverged for {act}"
                                   f"{' at ' + level['name'] if level['name'] else ''}; add lower rates to --tune_lr")
        for seed in plan.seeds:
            for act in plan.acts:
                entries.append((level, act, seed, tuning['chosen'][act] if tuning else None, False))
        if tuning:
            announce_tuning(level, tuning)
    run(jobs_for(entries))


def plan_settings(plan):
    """The train.py settings every run of this comparison shares (recorded beside each run to detect changes)."""
    return dict(plan.explicit_train)


def announce_tuning(level, tuning):
    where = f" at {level['name']}" if level['name'] else ''
    chosen = ', '.join(f'{a} {r:g}' for a, r in tuning['chosen'].items())
    print(f"=== tuned learning rates{where}: {chosen}")
    for act, edge in tuning['edges'].items():
        print(f"WARNING: {act}'s best rate{where} ({tuning['chosen'][act]:g}) is the {edge} rate of --tune_lr: its "
              f"optimum may lie beyond the grid; extend --tune_lr past it")


# ----------------------------------------------------------------------------- main
def write_reports(plan, command):
    groups = [plan.group(level) for level in plan.levels]
    rows = [report.report_comparison(g, command, analysis_batch_size) for g in groups]
    if not any(r is not None for r in rows) and not any(g['tuning'] for g in groups):
        raise CompareError(f'no finished run under {out_dir}; train first (drop --replot) or point --out_dir at an '
                           f'existing comparison')
    for group in groups:
        if group['tuning']:
            announce_tuning(group['level'], group['tuning'])
    if sizes:
        report.report_scaling(groups, rows, Path(out_dir), command)


def main(argv):
    train_args, train_settings, command_line = parse_args(argv)
    plan = Plan(train_settings, command_line)
    # the command that trains these runs (a --replot of them re-reads what that command wrote)
    command = ' '.join(['python compare.py', *(a for a in argv if a.split('=')[0] not in ('--replot', '--plot_only'))])
    if replot or plot_only:
        write_reports(plan, command)
        return
    from model import ACTIVATIONS                                           # fail before any run on a typo
    unknown = [a for a in plan.acts if a not in ACTIVATIONS]
    if unknown:
        raise CompareError(f'unknown activation(s) {unknown}; choose from {sorted(ACTIVATIONS)}')
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with out_dir_lock():
        if sizes:
            print_size_plan(plan)
        train_all(plan, train_args)
        write_reports(plan, command)


def out_dir_lock():
    """One compare.py per out_dir: a second one would train every run a second time beside the first."""
    import checkpoint
    try:
        return checkpoint.lock_dir(out_dir, 'compare.py')
    except checkpoint.LockError as e:
        raise CompareError(str(e)) from None


def progress_line():
    """What is finished under out_dir, for the Ctrl-C message."""
    done = sum(1 for p in Path(out_dir).rglob('summary.json') if (read_json(p) or {}).get('finished'))
    return f'{done} run(s) under {out_dir} are finished'


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except CompareError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        stop_running()
        print(f'\ninterrupted: {progress_line()}; rerun the same command to continue (finished runs are skipped, '
              f'the interrupted one resumes from its last checkpoint)', file=sys.stderr)
        sys.exit(130)
