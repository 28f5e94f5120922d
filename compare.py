"""
Compare FFN activations, or variants of them, fairly: train one run per (variant, seed) with train.py, each variant at
its own tuned learning rate if asked, optionally at several model sizes; then lab/report.py draws and tabulates them.

    python compare.py config/compare_shakespeare_char.py                       # the default 4-way comparison, 1 seed
    python compare.py config/compare_shakespeare_char.py --seeds=1,2,3 --tune_lr=1e-3,2e-3,4e-3,8e-3   # a verdict
    python compare.py config/compare_shakespeare_char.py --variants=polynorm,polynorm:poly_order=2 --seeds=1,2,3
    python compare.py config/compare_shakespeare_char.py --n_expert=8 --top_k=2 --out_dir=out-compare-moe   # MoE
    python compare.py config/scaling_shakespeare_char.py                       # the same at several model sizes
    python compare.py config/compare_shakespeare_char.py --replot              # figures + tables from the logs only

Every --key=value that is not one of the settings below goes to train.py; it is checked against train.py's own
defaults (read from its source) before anything runs, so a typo fails at once, in the line train.py would print.
A config file may set both kinds.

Variants: --variants=ITEM,ITEM,... where ITEM is [NAME=]ACTIVATION[:key=value[:key=value...]], the key=value being
train.py settings of that variant alone, e.g. --variants=gelu,swiglu,polynorm:poly_order=2,r5=polynorm:poly_order=5.
Its NAME (run folders, legends, tables, CSVs) is NAME if given, else the activation followed by -<key><value> for each
setting except learning_rate (polynorm:poly_order=2 -> polynorm-poly_order2). A variant that sets learning_rate keeps
that rate and is not tuned (its folders carry -lr<rate>, as tuned runs do), so "each at its tuned rate" is one command:
--variants=gelu:learning_rate=8e-3,polynorm:learning_rate=4e-3. --activations=a,b is --variants=a,b.

What makes the runs comparable:
- the same `seed` for every variant of a seed: train.py draws its batches from (seed, step), so the data order is
  identical; init_seed = seed, and model.py seeds each parameter from (init_seed, parameter name), so every non-FFN
  weight starts identical. lab/report.py pairs runs by seed for its intervals;
- parameter-matched FFNs (model.py's hidden-width rule: SwiGLU has three matrices, so it gets 2/3 of the width);
- with --tune_lr, each variant at the learning rate that is best FOR IT: every rate trains on every tuning seed
  (--tune_seeds, none of them a comparison seed, so the reported losses are not the lucky draws the choice was made
  on) and the lowest mean final val loss wins (one seed's noise decides less than with one tuning seed).

Where runs land: see lab/runs.py. A run whose summary.json says finished is skipped; a run that diverged (train.py's exit
code 3) or did not learn (status 4: its final val loss not below the unigram entropy of the training tokens) is
recorded as such, never retrained, and left out of every number, and compare.py exits with status 1 when every run
of a variant failed that way; a run with a ckpt.pt but no finished summary is resumed (--init_from=resume), so Ctrl-C
and rerunning the same command is safe. Raising --max_iters extends finished runs at the end of their schedule (lr
stays at min_lr past lr_decay_iters); for a longer schedule use a new --out_dir. Each finished run's final checkpoint
is then scored on eval.py's multiple-choice items (--eval, default continuation: about 8% of a default run's training
time; --eval= turns it off), kept in its folder as eval_<task>.json.
"""
import ast
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import configurator
from data.dataset import dataset_dir
from lab import analysis, downstream, report, runs, stats
from lab.runs import read_json


# -----------------------------------------------------------------------------
@dataclasses.dataclass
class Settings:
    """compare.py's own settings; everything else on the command line is a train.py setting."""
    out_dir: str = 'out-compare'
    activations: str = 'gelu,swiglu,polyrelu,polynorm'   # comma-separated names from model.ACTIVATIONS
    variants: str = ''                 # instead of activations: NAME=ACTIVATION:key=value,... (see the docstring)
    seeds: str = '1'                   # comma-separated; each seed = one data order + one init
    baseline: str = ''                 # Δ and verdicts are against this variant ('' = the first one)
    tune_lr: str = ''                  # comma-separated peak learning rates to tune over ('' = no tuning: every
                                       # variant trains at train.py's learning_rate, or its own)
    tune_seeds: str = '0,1000'         # comma-separated seeds every tuning rate trains on (the lowest mean wins);
                                       # none may be a comparison seed (far from 1, 2, 3, ... so they rarely are)
    sizes: str = ''                    # comma-separated LAYERSxWIDTH model sizes, e.g. '2x64,4x128,6x192'
                                       # ('' = the one model given by the train.py settings)
    head_size: int = 32                # with sizes: n_head = width / head_size
    tokens_per_param: float = 0.0      # with sizes: training tokens per non-embedding parameter
                                       # (0 = every size trains max_iters iterations)
    replot: bool = False               # True: no training, only re-read the logs and redraw
    plot_only: bool = False            # alias of replot
    parallel: int = 0                  # runs at once: GPUs, one run each (0 = all visible); on CPU, N runs share
                                       # the cores, cores/N threads each (0 = one at a time)
    analysis_batch_size: int = 8       # validation sequences for the hidden-state analyses
    eval: str = 'continuation'         # score every finished run's final checkpoint as eval.py does ('continuation',
                                       # 'hellaswag'; '' = off): its accuracy and the paired Δ in summary.md/.csv
    eval_items: int = 0                # eval.py's settings of these names (0 = eval.py's defaults)
    eval_context_tokens: int = 0
    eval_choice_tokens: int = 0


COMPARE_KEYS = [f.name for f in dataclasses.fields(Settings)]
# compare.py sets these per run; a user value would silently break the pairing, so it is refused with a hint
RESERVED = {'activation': '--variants=a,b,... (or --activations)', 'seed': '--seeds=1,2,...',
            'init_seed': '--seeds=1,2,...', 'init_from': 'nothing: compare.py resumes interrupted runs by itself',
            'out_dir': None, 'wandb_run_name': 'nothing: with --wandb_log=True compare.py names each run after its '
                                               'folder, <variant>[-lr<rate>]-s<seed>'}
# set per size by --sizes (refused on the command line and in a variant together with it)
SIZE_KEYS = ('n_layer', 'n_embd', 'n_head', 'ffn_hidden', 'expert_hidden')
# changing these between two invocations does not change what a run computes (max_iters extends a run)
HARMLESS_CHANGES = {'max_iters', 'compile', 'log_interval', 'device', 'always_save_checkpoint', 'overwrite',
                    'check_learned', 'wandb_log', 'wandb_project'}
RENAMED = {'tune_seed': 'tune_seeds'}   # old compare.py settings: refused with the new name, never silently reread
HERE = Path(__file__).resolve().parent
NAME_CHARS = r'[A-Za-z0-9_.+-]+'       # a variant's name is a folder name on every OS
# -----------------------------------------------------------------------------


class CompareError(ValueError):
    """A mistake in how compare.py was called: printed as one line, no traceback."""


# ----------------------------------------------------------------------------- command line
def as_argument(key, value):
    """A setting as train.py's --key=value (strings raw: train.py keeps the text of a str setting)."""
    return f'--{key}={value}' if isinstance(value, str) else f'--{key}={value!r}'


def train_defaults():
    """train.py's knobs and their defaults, read from its source (importing train.py would start training): the
    literal bool, int, float and str assignments above its configure(globals()) call, as configurator takes them."""
    tree = ast.parse((HERE / 'train.py').read_text())
    defaults = {}
    for node in tree.body:
        if any(isinstance(n, ast.Call) and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == 'configure'
               for n in ast.walk(node)):
            break                                  # everything below is set by train.py, not by the user
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, (bool, int, float, str)) and not node.targets[0].id.startswith('_'):
                defaults.setdefault(node.targets[0].id, value)
    return defaults


def parse_args(argv):
    """Config files and --key=value (in order, so the command line wins) -> (settings, train_settings,
    command_line): compare.py's Settings, the train.py settings given {key: value} (checked by configurator against
    train.py's defaults: names and types, the same message train.py gives), and the keys set on the command line."""
    argv = [f'{a}=True' if a in ('--replot', '--plot_only') else a for a in argv]   # a bare --replot
    command_line = set()
    for arg in argv:
        if arg.startswith('--'):
            key = arg[2:].partition('=')[0]
            if key in RESERVED and key not in COMPARE_KEYS:
                raise CompareError(f"--{key} is set by compare.py for every run; use {RESERVED[key]}")
            command_line.add(key)
    defaults = dict(train_defaults(), **dataclasses.asdict(Settings()), tune_seed=0)   # out_dir is compare.py's
    try:
        config, explicit = configurator.parse_config(argv, defaults)
    except configurator.ConfigError as e:
        raise CompareError(str(e)) from None
    for old, new in RENAMED.items():
        if old in explicit:
            raise CompareError(f"--{old} is now --{new}, a list: every tuning rate trains on each of its seeds and the "
                               f"lowest mean wins; write --{new}={config[old]} for one tuning seed (default: "
                               f"--{new}={Settings.tune_seeds})")
    settings = Settings(**{k: config[k] for k in COMPARE_KEYS})
    # a train config reused as is may set activation or seed: compare.py sets those per run
    train_settings = {k: config[k] for k in sorted(explicit) if k not in COMPARE_KEYS and k not in RESERVED
                      and k not in RENAMED}
    return settings, train_settings, command_line


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


# ----------------------------------------------------------------------------- variants
@dataclasses.dataclass
class Variant:
    """One contender: an activation plus train.py settings of its own. lr: its fixed peak rate (None: tuned or
    train.py's learning_rate)."""
    name: str
    activation: str
    settings: dict
    spec: str
    lr: float = None


def setting_text(value):
    return f'{value:g}' if isinstance(value, float) else str(value)


def parse_variants(text, defaults, sizes=False, what='variants'):
    """--variants text -> [Variant] (what: the setting it came from, for the messages). Malformed items, unknown keys,
    wrong types, settings compare.py owns and two variants with one name are refused in one line."""
    variants = []
    for item in as_list(text, str, what):
        head, *pairs = item.split(':')
        name, _, activation = head.rpartition('=')
        if not activation or not all('=' in p and p.partition('=')[0] for p in pairs):
            raise CompareError(f"--variants: {item!r} must look like [NAME=]ACTIVATION[:key=value...], e.g. "
                               f"polynorm:poly_order=2 or r2=polynorm:poly_order=2")
        settings = {}
        for pair in pairs:
            key, _, raw = pair.partition('=')
            if key in RESERVED:
                raise CompareError(f"--variants: {item!r} sets {key}, which compare.py sets for every run")
            if sizes and key in SIZE_KEYS:
                raise CompareError(f"--variants: {item!r} sets {key}, which --sizes sets for every size")
            try:
                settings[key] = configurator.parse_config([f'--{key}={raw}'], defaults)[0][key]
            except configurator.ConfigError as e:
                raise CompareError(f"--variants: {item!r}: {e}") from None
        named = {k: v for k, v in settings.items() if k != 'learning_rate'}
        name = name or activation + ''.join(f'-{k}{setting_text(v)}' for k, v in named.items())
        if not re.fullmatch(NAME_CHARS, name):
            raise CompareError(f"--variants: the name {name!r} of {item!r} must be letters, digits and . _ + - "
                               f"(it names folders); give it one: NAME={item}")
        lr = settings.pop('learning_rate', None)
        if lr is not None and not (lr > 0 and math.isfinite(lr)):
            raise CompareError(f"--variants: {item!r}: learning_rate must be a positive number")
        variants.append(Variant(name, activation, settings, item, lr))
    names = [v.name for v in variants]
    for name in dict.fromkeys(n for n in names if names.count(n) > 1):
        specs = ' and '.join(repr(v.spec) for v in variants if v.name == name)
        raise CompareError(f"--variants: {specs} both get the name {name!r}; name one: NAME=ACTIVATION:key=value")
    return variants


def check_activations(variants):
    """Fail before any run on an activation model.py does not know."""
    from model import ACTIVATIONS
    unknown = [v.activation for v in variants if v.activation not in ACTIVATIONS]
    if unknown:
        raise CompareError(f'unknown activation(s) {unknown}; choose from {sorted(ACTIVATIONS)}')


def check_numbers(settings):
    """Ranges train.py's type check cannot see."""
    if settings.eval and settings.eval not in downstream.TASKS:
        raise CompareError(f"--eval={settings.eval}: expected one of {', '.join(downstream.TASKS)}, or --eval= (off)")
    for key, low in (('parallel', 0), ('analysis_batch_size', 1), ('eval_items', 0), ('eval_context_tokens', 0),
                     ('eval_choice_tokens', 0)):
        if getattr(settings, key) < low:
            raise CompareError(f"--{key}={getattr(settings, key)} must be >= {low}")
    if settings.head_size < 2 or settings.head_size % 2:
        raise CompareError(f"--head_size={settings.head_size} must be an even number >= 2 (RoPE rotates pairs of "
                           f"channels)")
    if settings.tokens_per_param < 0 or not math.isfinite(settings.tokens_per_param):
        raise CompareError(f"--tokens_per_param={settings.tokens_per_param} must be >= 0 (0 = max_iters at every "
                           f"size)")


def make_job(tag, run_dir, settings, train_args, state, wandb_name=None):
    """The train.py command of one run. Settings that differ from the shared train_args come last (they win).
    wandb_name (with --wandb_log=True): the run's name in wandb."""
    overrides = [as_argument(k, v) for k, v in settings.items() if k not in ('activation', 'seed')]
    act, seed = settings['activation'], settings['seed']
    cmd = [sys.executable, str(HERE / 'train.py'), *train_args, *overrides,
           f'--activation={act}', f'--seed={seed}', f'--init_seed={seed}', f'--out_dir={run_dir}',
           f'--init_from={"resume" if state == "resume" else "scratch"}']
    if wandb_name:
        cmd.append(f'--wandb_run_name={wandb_name}')
    if state == 'scratch':
        cmd.append('--overwrite=True')      # what an earlier attempt left before its first checkpoint is worth nothing
    return dict(name=run_dir.name, tag=tag, cmd=cmd, run_dir=run_dir,
                state='resuming from ckpt.pt' if state == 'resume' else 'training')


# ----------------------------------------------------------------------------- the plan: sizes, rates, runs
class Plan:
    """Everything compare.py will train, in the order it trains it, and where each run lives.

    variants: {name: Variant}; acts: their names in order. levels: one per model size (or a single level without
    --sizes) = {'name', 'settings' (train.py overrides of that size), 'max_iters', 'non_embedding_params', 'tokens',
    'flops_per_token'}."""

    def __init__(self, settings, train_settings, command_line):
        check_numbers(settings)
        self.settings, self.out_dir = settings, settings.out_dir
        defaults = train_defaults()
        # --variants replaces a config file's activations; both on the command line is one too many
        if settings.variants and 'activations' in command_line:
            raise CompareError('--activations and --variants both name the contenders; give one of them '
                               '(--variants=gelu,polynorm is --activations=gelu,polynorm)')
        what = 'variants' if settings.variants else 'activations'
        variants = parse_variants(getattr(settings, what), defaults, bool(settings.sizes), what)
        self.variants = {v.name: v for v in variants}
        self.acts = list(self.variants)
        self.seeds = as_list(settings.seeds, int, 'seeds')
        if not self.acts or not self.seeds:
            raise CompareError('need at least one activation and one seed, e.g. --activations=gelu,polynorm --seeds=1')
        self.baseline = settings.baseline or self.acts[0]
        if self.baseline not in self.acts:
            raise CompareError(f"--baseline={self.baseline!r} is not one of the variants: {', '.join(self.acts)}")
        self.rates = sorted(as_list(settings.tune_lr, float, 'tune_lr'))
        if any(not (r > 0 and math.isfinite(r)) for r in self.rates):
            raise CompareError(f"--tune_lr={settings.tune_lr!r}: every rate must be a positive number")
        self.tune_seeds = as_list(settings.tune_seeds, int, 'tune_seeds')
        overlap = [s for s in self.tune_seeds if s in self.seeds]
        if self.rates and overlap:
            raise CompareError(f"--tune_seeds={settings.tune_seeds} shares {', '.join(map(str, overlap))} with --seeds; "
                               f"tuning on a seed that is then reported would pick each variant's lucky draw: use "
                               f"tuning seeds not in --seeds")
        if self.rates and not self.tune_seeds:
            raise CompareError('--tune_lr needs at least one tuning seed, e.g. --tune_seeds=0,1000')
        if any(s < 0 for s in self.seeds + self.tune_seeds):
            raise CompareError('every seed must be >= 0 (--seeds, --tune_seeds)')
        self.tuned = [a for a in self.acts if self.rates and self.variants[a].lr is None]
        self.explicit_train = dict(train_settings)
        self.train = dict(defaults, **train_settings)
        base_lr, base_min = float(self.train['learning_rate']), float(self.train['min_lr'])
        self.min_lr_ratio = base_min / base_lr if base_lr > 0 else 0.1
        self.levels = self.make_levels(train_settings, command_line)
        self.eval = downstream.Spec(settings.eval, settings.eval_items, 0, settings.eval_context_tokens,
                                    settings.eval_choice_tokens) if settings.eval else None

    def make_levels(self, train_settings, command_line):
        settings = self.settings
        if not settings.sizes:
            if settings.tokens_per_param:
                raise CompareError('--tokens_per_param needs --sizes (it sets each size\'s training length)')
            return [{'name': None, 'settings': {}, 'max_iters': train_settings.get('max_iters')}]
        size_list = parse_sizes(settings.sizes, settings.head_size)
        clash = sorted(set(SIZE_KEYS) & command_line)
        if clash:
            raise CompareError(f"--{clash[0]} cannot be combined with --sizes, which sets {', '.join(SIZE_KEYS)} for "
                               f"every size; drop it (or drop --sizes)")
        train = self.train
        tokens_per_iter = train['batch_size'] * train['block_size'] * train['gradient_accumulation_steps']
        levels = []
        for size in size_list:
            # ffn_hidden = 0: model.py's width rule, which matches the FFN parameters of gated and non-gated
            # activations exactly at every width (PolyCom adds its r + 1 scalars per layer on top)
            level_settings = {'n_layer': size['n_layer'], 'n_embd': size['n_embd'], 'n_head': size['n_head'],
                              'ffn_hidden': 0, 'expert_hidden': 0}
            conf = self.run_config(self.baseline, level_settings)
            counts = analysis.model_counts(conf, dataset_vocab(conf))
            if settings.tokens_per_param > 0:
                max_iters = max(1, math.ceil(settings.tokens_per_param * counts['non_embedding_params']
                                             / tokens_per_iter))
                level_settings.update(max_iters=max_iters, lr_decay_iters=max_iters)
            else:
                max_iters = int(self.train['max_iters'])
            levels.append(dict(name=size['name'], settings=level_settings, max_iters=max_iters,
                               tokens=max_iters * tokens_per_iter, **counts))
        return levels

    def run_config(self, name, level_settings):
        """The train.py settings a run of variant `name` trains with at one level (before its learning rate)."""
        variant = self.variants[name]
        return dict(self.train, **level_settings, **variant.settings, activation=variant.activation)

    def lr_settings(self, lr, name=None):
        """A tuned or fixed peak rate keeps the schedule's shape: min_lr stays the same fraction of it (the one home
        of this rule), unless the variant sets its own min_lr."""
        if lr is None:
            return {}
        own_min = name is not None and 'min_lr' in self.variants[name].settings
        return {'learning_rate': lr} if own_min else {'learning_rate': lr, 'min_lr': lr * self.min_lr_ratio}

    def run_settings(self, level, name, seed, lr):
        """What one run sets on top of the shared train.py settings (recorded beside it, handed to train.py)."""
        variant = self.variants[name]
        return dict(level['settings'], **variant.settings, **self.lr_settings(lr, name),
                    activation=variant.activation, seed=seed)

    def run_dir(self, name, seed, level, lr, tune=False):
        return runs.run_dir_of(self.out_dir, name, seed, level['name'], lr, tune)

    def tuning(self, level):
        """Read the tuning runs of one level from disk: {'seeds', 'runs': {name: [one entry per rate]}, 'chosen',
        'choices', 'edges', 'all_failed', 'fixed'}. An entry: {'lr', 'status', 'final_val_loss' (mean over the tuning
        seeds), 'seeds': {seed: {'status', 'final_val_loss', 'dir'}}}. A rate is 'done' when every tuning seed
        finished and learned, failed ('diverged' / 'did not learn') when one of them did that, else 'partial' or
        'missing'. A variant's rate is chosen once every rate is done or failed and one is done: the lowest mean
        (stats.choose_rate, which also gives the margin to the runner-up). A failed rate is never chosen."""
        if not self.rates:
            return None
        tuning = {'seeds': self.tune_seeds, 'runs': {}, 'chosen': {}, 'choices': {}, 'edges': {}, 'all_failed': [],
                  'fixed': {a: self.variants[a].lr for a in self.acts if self.variants[a].lr is not None}}
        for act in self.tuned:
            entries = [self.tuning_entry(act, lr, level) for lr in self.rates]
            tuning['runs'][act] = entries
            if any(e['status'] in ('partial', 'missing') for e in entries):
                continue                                   # not settled yet
            choice = stats.choose_rate({e['lr']: {s: r['final_val_loss'] for s, r in e['seeds'].items()}
                                        for e in entries if e['status'] == 'done'})
            if choice is None:
                tuning['all_failed'].append(act)
                continue
            tuning['chosen'][act], tuning['choices'][act] = choice['rate'], choice
            if len(self.rates) > 1 and choice['rate'] in (self.rates[0], self.rates[-1]):
                tuning['edges'][act] = 'lowest' if choice['rate'] == self.rates[0] else 'highest'
        return tuning

    def tuning_entry(self, act, lr, level):
        """One rate of one variant's sweep, over every tuning seed (see tuning)."""
        seeds = {}
        for seed in self.tune_seeds:
            run_dir = self.run_dir(act, seed, level, lr, tune=True)
            status = runs.run_outcome(run_dir, level['max_iters'])
            loss = (read_json(run_dir / 'summary.json') or {}).get('final_val_loss') if status != 'missing' else None
            seeds[seed] = {'status': status, 'final_val_loss': loss, 'dir': str(run_dir)}
        statuses = [r['status'] for r in seeds.values()]
        status = next((f for f in runs.FAILED if f in statuses), None) or \
            ('done' if all(x == 'finished' for x in statuses) else
             'partial' if any(x != 'missing' for x in statuses) else 'missing')
        mean = sum(r['final_val_loss'] for r in seeds.values()) / len(seeds) if status == 'done' else None
        return {'lr': lr, 'status': status, 'final_val_loss': mean, 'seeds': seeds}

    def rate_of(self, act, tuning):
        """The peak rate of act's comparison runs: fixed by its variant, tuned, or None (train.py's learning_rate)."""
        if self.variants[act].lr is not None:
            return self.variants[act].lr
        return tuning['chosen'].get(act) if tuning else None

    def group(self, level):
        """What report.py needs to report one level: its runs' folders, rates, baseline, tuning and costs."""
        tuning = self.tuning(level)
        lrs = {a: self.rate_of(a, tuning) for a in self.acts}
        run_dirs = {(a, s): self.run_dir(a, s, level, lrs[a]) for a in self.acts for s in self.seeds}
        shared = float(self.train['learning_rate'])
        return {'dir': Path(self.out_dir) / level['name'] if level['name'] else Path(self.out_dir), 'acts': self.acts,
                'seeds': self.seeds, 'baseline': self.baseline, 'run_dirs': run_dirs, 'tuning': tuning,
                'lrs': {a: lrs[a] if lrs[a] is not None or a in self.tuned else shared for a in self.acts},
                'specs': {a: self.variants[a].spec for a in self.acts},
                'expected_iters': level['max_iters'], 'level': level, 'eval': self.eval,
                'eval_data': dataset_dir(self.train['dataset'])}


def dataset_vocab(conf):
    """The model's vocabulary as train.py computes it (data.dataset's rules)."""
    from data.dataset import load_meta, model_vocab_size
    try:
        return model_vocab_size(load_meta(dataset_dir(conf.get('dataset', 'shakespeare_char'))))
    except (FileNotFoundError, ValueError) as e:
        raise CompareError(str(e)) from None


def variant_costs(plan, level, group_dir):
    """{name: parameters and step time} of every variant at one level, cached in <group_dir>/costs.json (a --replot
    reuses it; a changed model is measured again)."""
    cache_path = Path(group_dir) / 'costs.json'
    cache, costs = read_json(cache_path) or {}, {}
    for name in plan.acts:
        conf = dict(plan.run_config(name, level['settings']), **plan.lr_settings(plan.variants[name].lr, name))
        model, args = analysis.build_model(conf, dataset_vocab(conf))
        key = json.dumps(args, sort_keys=True, default=repr)
        if cache.get(name, {}).get('model') == key:
            costs[name] = cache[name]
            continue
        costs[name] = {'spec': plan.variants[name].spec, 'model': key, 'total_params': model.num_params(),
                       'ffn_params': model.num_ffn_params(),
                       'activation_params': sum(p.numel() for m in model.activations() for p in m.parameters()),
                       'step_ms': 1000 * analysis.step_seconds(model, conf)}
    Path(group_dir).mkdir(parents=True, exist_ok=True)
    cache_path.write_text(json.dumps(costs, indent=1))
    return costs


def print_size_plan(plan):
    """Before a sweep starts: each size's parameters, tokens, and an estimate of the whole sweep's duration."""
    conf = plan.train
    runs_per_level = len(plan.acts) * len(plan.seeds) + len(plan.tuned) * len(plan.rates) * len(plan.tune_seeds)
    tuning = f" + {len(plan.rates)} tuning rates x {len(plan.tune_seeds)} tuning seeds" if plan.rates else ''
    print(f"sweep: {len(plan.levels)} sizes x {len(plan.acts)} variants x ({len(plan.seeds)} seeds{tuning}) = "
          f"{runs_per_level * len(plan.levels)} runs")
    total = 0.0
    for level in plan.levels:
        level_conf = plan.run_config(plan.baseline, level['settings'])
        per_iter = analysis.step_seconds(analysis.build_model(level_conf, dataset_vocab(level_conf))[0], level_conf, 2)
        evals = level['max_iters'] // conf['eval_interval'] + 1
        # an evaluation batch is a forward pass, about a third of a training step per micro-batch
        eval_s = evals * conf['eval_iters'] * per_iter / 3 / conf['gradient_accumulation_steps']
        run_s = level['max_iters'] * per_iter + eval_s
        total += run_s * runs_per_level
        print(f"  {level['name']:>8}: {level['non_embedding_params'] / 1e6:7.3f}M non-embedding params, "
              f"{level['tokens'] / 1e6:8.2f}M tokens ({level['max_iters']} iters), "
              f"~{run_s / 60:.1f} min per run (timed: {per_iter * 1000:.0f} ms/iter)")
    print(f"estimated total: {total / 3600:.1f} h ({total / 60:.0f} min), runs one after another on this machine; "
          f"finished runs are skipped")


def train_all(plan, train_args):
    """Tuning runs first (they decide each variant's rate), then the comparison runs, seed-major, per size."""
    slots = runs.run_slots(plan.train, plan.settings.parallel)
    total = len(plan.levels) * (len(plan.tuned) * len(plan.rates) * len(plan.tune_seeds) +
                                len(plan.acts) * len(plan.seeds))
    counter = iter(range(1, total + 1))

    def jobs_for(entries):
        jobs = []
        for level, act, seed, lr, tune in entries:
            run_dir = plan.run_dir(act, seed, level, lr, tune)
            settings = dict(plan.explicit_train, **plan.run_settings(level, act, seed, lr))
            changes = runs.settings_changes(run_dir, settings, HARMLESS_CHANGES)
            if changes:
                raise CompareError(f"{run_dir} was trained with other settings ({', '.join(changes)}); use a new "
                                   f"--out_dir, delete {run_dir}, or add --replot to only redraw the existing runs")
            state = runs.run_state(run_dir, level['max_iters'])
            where = f"{level['name']}/" if level['name'] else ''
            tag = f"{next(counter)}/{total} {where}{'tune/' if tune else ''}{run_dir.name}"
            if state in ('done', 'diverged'):
                print(f'=== [{tag}] {"finished" if state == "done" else "diverged"} earlier, skipping ({run_dir})')
                continue
            runs.record_settings(run_dir, settings)
            # wandb: the run's folder under out_dir names it, e.g. polynorm-s1, tune/polynorm-lr0.002-s0, 4x128/gelu-s2
            wandb_name = run_dir.relative_to(plan.out_dir).as_posix() if settings.get('wandb_log') else None
            jobs.append(make_job(tag, run_dir, plan.run_settings(level, act, seed, lr), train_args, state, wandb_name))
        return jobs

    def run(jobs):
        failures = runs.launch(jobs, slots) if jobs else []
        if failures:
            lines = '\n'.join(f'  {name}: {cmd}' for name, cmd in failures)
            raise SystemExit(f'train.py failed for:\n{lines}\nfix the error printed above and rerun the same command '
                             f'(finished runs are skipped, interrupted ones resume)')

    if plan.rates:
        run(jobs_for([(lv, a, seed, r, True) for lv in plan.levels for seed in plan.tune_seeds for a in plan.tuned
                      for r in plan.rates]))
    entries = []
    for level in plan.levels:
        tuning = plan.tuning(level)
        if tuning:
            announce_tuning(level, tuning)
        for seed in plan.seeds:
            for act in plan.acts:
                if tuning and act in plan.tuned and act not in tuning['chosen']:
                    continue                        # every rate failed: said above, no comparison run
                entries.append((level, act, seed, plan.rate_of(act, tuning), False))
    run(jobs_for(entries))


def announce_tuning(level, tuning):
    where = f" at {level['name']}" if level['name'] else ''
    chosen = ', '.join(f'{a} {r:g}' for a, r in tuning['chosen'].items())
    seeds = ', '.join(map(str, tuning['seeds']))
    print(f"=== tuned learning rates{where} (lowest mean over tuning seeds {seeds}): {chosen or 'none'}")
    for act, edge in tuning['edges'].items():
        print(f"WARNING: {act}'s best rate{where} ({tuning['chosen'][act]:g}) is the {edge} rate of --tune_lr: its "
              f"optimum may lie beyond the grid; extend --tune_lr past it")
    rates = sorted({t['lr'] for entries in tuning['runs'].values() for t in entries})
    for act in tuning['all_failed']:
        print(f"WARNING{where}: {report.all_failed_line(act, rates)}")


# ----------------------------------------------------------------------------- main
def write_reports(plan, command):
    groups = [plan.group(level) for level in plan.levels]
    for group in groups:
        try:
            group['costs'] = variant_costs(plan, group['level'], group['dir'])
        except CompareError as e:                 # e.g. a --replot where the dataset is gone: the costs need it
            print(f'note: no cost table ({e})')
    rows = [report.report_comparison(g, command, plan.settings.analysis_batch_size) for g in groups]
    if not any(r is not None for r in rows) and not any(g['tuning'] for g in groups):
        raise CompareError(f'no finished run under {plan.out_dir}; train first (drop --replot) or point --out_dir at '
                           f'an existing comparison')
    for group in groups:
        if group['tuning']:
            announce_tuning(group['level'], group['tuning'])
    if plan.settings.sizes:
        report.report_scaling(groups, rows, Path(plan.out_dir), command)
    return failed_variants(groups, rows)


def failed_variants(groups, rows_per_group):
    """['polynorm (every run diverged)', ...]: the variants with no result at some level, every comparison run (or
    every tuning rate) having diverged or learned nothing."""
    failed = []
    for group, rows in zip(groups, rows_per_group):
        where = f" at {group['level']['name']}" if group['level']['name'] else ''
        tuning = group['tuning'] or {}
        for act in tuning.get('all_failed', []):
            failed.append(f"{act}{where} (every tuning rate diverged or did not learn)")
        for row in rows or []:
            if row['verdict'] in report.FAILED_VERDICTS:
                failed.append(f"{row['activation']}{where} (every run: {row['verdict']})")
    return failed


def check_train_settings(plan):
    """Every run's settings as train.py will check them (its settings.problem and model.GPTConfig's rules), and its
    dataset, before anything is recorded or trained: a mistake is one line now, not a failed run later."""
    from model import GPTConfig
    from training.settings import problem
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    for level in plan.levels:
        for name in plan.acts:
            for lr in (plan.rates if name in plan.tuned else [plan.variants[name].lr]):
                conf = dict(plan.run_config(name, level['settings']), **plan.lr_settings(lr, name),
                            seed=plan.seeds[0], init_seed=plan.seeds[0], init_from='scratch', overwrite=False)
                where = f"variant {name}" + (f" at {level['name']}" if level['name'] else '') + \
                        (f", lr {lr:g}" if lr is not None else '')
                if problem(conf):
                    raise CompareError(f"{where}: {problem(conf)}")
                try:
                    GPTConfig(**{k: v for k, v in conf.items() if k in fields})
                except ValueError as e:
                    raise CompareError(f"{where}: {e}") from None
                dataset_vocab(conf)


def check_eval(plan):
    """The downstream items (--eval) can be made and fit every run's block_size, before anything trains."""
    if plan.eval is not None:
        block_sizes = {plan.run_config(a, level['settings'])['block_size'] for level in plan.levels for a in plan.acts}
        try:
            downstream.check_spec(plan.eval, dataset_dir(plan.train['dataset']), block_sizes)
        except (FileNotFoundError, ValueError) as e:
            raise CompareError(f"--eval={plan.eval.task}: {e} (or turn the scoring off: --eval=)") from None


def main(argv):
    settings, train_settings, command_line = parse_args(argv)
    plan = Plan(settings, train_settings, command_line)
    # the command that trains these runs (a --replot of them re-reads what that command wrote)
    command = ' '.join(['python compare.py', *(a for a in argv if a.split('=')[0] not in ('--replot', '--plot_only'))])
    if settings.replot or settings.plot_only:
        exit_if_failed(write_reports(plan, command), plan)
        return
    check_activations(plan.variants.values())
    check_train_settings(plan)
    check_eval(plan)
    train_args = [as_argument(k, v) for k, v in train_settings.items()]
    Path(plan.out_dir).mkdir(parents=True, exist_ok=True)
    try:
        with out_dir_lock(plan.out_dir):
            if settings.sizes:
                print_size_plan(plan)
            train_all(plan, train_args)
            failed = write_reports(plan, command)
        exit_if_failed(failed, plan)
    except KeyboardInterrupt:
        runs.stop_running()
        print(f'\ninterrupted: {progress_line(plan.out_dir)}; rerun the same command to continue (finished runs are '
              f'skipped, the interrupted one resumes from its last checkpoint)', file=sys.stderr)
        sys.exit(130)


def exit_if_failed(failed, plan):
    """Exit status 1, one line, when a variant has no result: a comparison without it answers nothing about it."""
    if failed:
        print(f"error: no result for {'; '.join(failed)}; see {Path(plan.out_dir) / 'summary.md'}. Lower the learning "
              f"rate (or tune it: --tune_lr) or train longer", file=sys.stderr)
        sys.exit(1)


def out_dir_lock(out_dir):
    """One compare.py per out_dir: a second one would train every run a second time beside the first."""
    from training import checkpoint
    try:
        return checkpoint.lock_dir(out_dir, 'compare.py')
    except checkpoint.LockError as e:
        raise CompareError(str(e)) from None


def progress_line(out_dir):
    """What is finished under out_dir, for the Ctrl-C message."""
    done = sum(1 for p in Path(out_dir).rglob('summary.json') if (read_json(p) or {}).get('finished'))
    return f'{done} run(s) under {out_dir} are finished'


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except CompareError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.filename is None:
            raise
        print(f"error: cannot write {e.filename}: {e.strerror}; compare.py keeps its runs and reports under "
              f"--out_dir: choose a folder you can write to", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('\ninterrupted before any run started', file=sys.stderr)
        sys.exit(130)
