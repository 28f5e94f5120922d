"""
train.py's settings checked, and the rules that combine them with a checkpoint being resumed, with the dataset and with
the number of processes. Each check is one line naming the key and what to do. Nothing here imports torch (numpy only
for the dataset), so a wrong flag fails in a fraction of a second; model.GPTConfig adds the architecture's own rules
(activation, poly_order, ...).
"""
import importlib.util
import math
import sys
from collections import namedtuple

from configurator import device_name_problem
from training.processes import fail, say

AT_LEAST_ONE = ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters',
                'log_interval', 'n_layer', 'n_head', 'n_embd')


def problem(c):
    """The first thing wrong with the settings c ({knob: value}) as one line naming the key, or None."""
    for key in AT_LEAST_ONE:
        if c[key] < 1:
            return f"{key} must be >= 1, got {c[key]}"
    if c['max_iters'] < 1:
        return f"max_iters must be >= 1, got {c['max_iters']} (to only evaluate a checkpoint: --eval_only=True)"
    if c['n_embd'] % c['n_head']:
        n_embd, n_head = c['n_embd'], c['n_head']
        closest = min((h for h in range(1, n_embd + 1) if n_embd % h == 0), key=lambda h: abs(h - n_head))
        return f"n_embd ({n_embd}) must be divisible by n_head ({n_head}); e.g. --n_head={closest}"
    for key in ('ffn_hidden', 'expert_hidden', 'n_expert', 'warmup_iters'):
        if c[key] < 0:
            return f"{key} must be >= 0, got {c[key]}"
    if not (c['learning_rate'] > 0 and math.isfinite(c['learning_rate'])):
        return f"learning_rate must be a number > 0, got {c['learning_rate']}"
    if not 0 <= c['min_lr'] <= c['learning_rate']:
        return f"min_lr must be between 0 and learning_rate ({c['learning_rate']:g}), got {c['min_lr']:g}"
    if c['lr_decay_iters'] != -1 and c['lr_decay_iters'] < 1:
        return f"lr_decay_iters must be -1 (= max_iters) or >= 1, got {c['lr_decay_iters']}"
    for key in ('weight_decay', 'grad_clip', 'aux_loss_weight', 'z_loss_weight'):
        if not (c[key] >= 0 and math.isfinite(c[key])):
            return f"{key} must be a number >= 0{' (0 = off)' if key == 'grad_clip' else ''}, got {c[key]}"
    for key in ('beta1', 'beta2', 'dropout'):
        if not 0 <= c[key] < 1:
            return f"{key} must be in [0, 1), got {c[key]}"
    if not (c['rope_theta'] > 0 and math.isfinite(c['rope_theta'])):
        return f"rope_theta must be a number > 0, got {c['rope_theta']}"
    if not (c['ddp_timeout'] > 0 and math.isfinite(c['ddp_timeout'])):
        return f"ddp_timeout must be a number of seconds > 0, got {c['ddp_timeout']}"
    for key in ('seed', 'init_seed'):
        if not 0 <= c[key] < 2 ** 31:
            return f"{key} must be in 0 .. 2**31 - 1, got {c[key]}"
    if c['init_from'] not in ('scratch', 'resume'):
        return f"init_from must be 'scratch' or 'resume', got {c['init_from']!r}"
    if c['overwrite'] and c['init_from'] == 'resume':
        return "overwrite=True starts a new run over the old one; it cannot be combined with --init_from=resume"
    if c['eval_only'] and c['init_from'] != 'resume':
        return ("eval_only=True evaluates a trained checkpoint: add --init_from=resume and the --out_dir of the run "
                "(a model from scratch would only show the untrained loss)")
    if c['dtype'] not in ('auto', 'float32', 'bfloat16', 'float16'):
        return f"dtype must be one of auto, float32, bfloat16, float16, got {c['dtype']!r}"
    if device_name_problem(c['device']):
        return device_name_problem(c['device'])
    if not c['out_dir'].strip():
        return "out_dir must not be empty"
    if not c['dataset'].strip():
        return "dataset must not be empty: a folder name under data/ or a path"
    if c['wandb_log'] and importlib.util.find_spec('wandb') is None:   # found now, not after an old run was replaced
        return "wandb_log=True needs the wandb package: pip install wandb (or run with --wandb_log=False)"
    return None


def check(c):
    if problem(c):
        fail(problem(c))


Data = namedtuple('Data', 'dir meta train val')


def unigram_floor(config, train_split):
    """The unigram entropy (nats/token) of the training tokens when check_learned is on, else None: what a model
    that knows only how often each token occurs reaches, so a run that ends at or above it learned nothing."""
    if not config['check_learned']:
        return None
    from data.dataset import unigram_entropy
    return unigram_entropy(train_split.data_dir, train_split.meta)[0]


def open_dataset(dataset, block_size):
    """The dataset, checked: meta.json readable and complete, both splits present, a window of block_size + 1 tokens
    fits, every token id has a row in the embedding. Not prepared or damaged: one line naming the prepare command."""
    from data.dataset import TokenDataset, check_token_ids, dataset_dir, load_meta
    path = dataset_dir(dataset)
    try:
        meta = load_meta(path)
        splits = TokenDataset(path, 'train'), TokenDataset(path, 'val')
        for split in splits:
            split.check_block_size(block_size)
        check_token_ids(path, meta)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    return Data(path, meta, *splits)


# ----------------------------------------------------------------------------- resume
# dropout and the MoE loss weights may change on resume; every other GPTConfig field defines the weights
FREE_ON_RESUME = ('dropout', 'aux_loss_weight', 'z_loss_weight')
NOT_INHERITED = ('init_from', 'out_dir', 'overwrite', 'eval_only')


def resumed_config(config, explicit, ckpt, ckpt_path):
    """The settings of a resumed run: the checkpoint's config is the default for every knob the user did not set; an
    architecture setting that contradicts the checkpoint fails. Returns the new config dict."""
    from model import upgrade_model_args   # older checkpoints: their widths spelled out
    config = dict(config)
    for key, value in ckpt['config'].items():
        if key in config and key not in explicit and key not in NOT_INHERITED:
            config[key] = value
    # a schedule that followed max_iters keeps the length it was trained with: a resume with a larger --max_iters
    # extends the run at min_lr instead of stretching the cosine (which would raise the rate mid-run)
    if config['lr_decay_iters'] == -1 and 'lr_decay_iters' not in explicit and ckpt['config'].get('max_iters', 0) > 0:
        config['lr_decay_iters'] = ckpt['config']['max_iters']
    for key, value in upgrade_model_args(ckpt['model_args']).items():
        if key in FREE_ON_RESUME or key not in config:
            continue
        if key in explicit and config[key] != value:
            fail(f"{key}={config[key]!r} does not match the checkpoint being resumed ({key}={value!r}); the "
                 f"architecture comes from {ckpt_path}: drop that setting or start a new run in another --out_dir")
        config[key] = value
    check(config)   # the checkpoint's settings with the new flags
    return config


def vocabulary(meta):
    """What a token id means: the tokenizer and, for characters, the table (sample.py decodes with it)."""
    return (meta.get('tokenizer'), meta.get('vocab_size'), meta.get('chars'))


def same_data(a, b):
    """Whether two meta.json describe the same prepared data: the same source and split sizes (fields missing from
    an old checkpoint's copy are not compared)."""
    return all(a.get(key) == b.get(key) for key in ('source', 'train_tokens', 'val_tokens')
               if a.get(key) is not None and b.get(key) is not None)


def check_resumed_dataset(ckpt, meta, dataset, explicit):
    """A resumed run continues on the data it trained on. Another vocabulary always fails (its ids mean other text).
    Other data with the same vocabulary fails unless --dataset was given: then it is announced, and the best val
    loss starts again (val losses on two datasets do not compare). Returns True when the best must be reset."""
    old = ckpt.get('meta')
    if not old:
        return False
    old_dataset = ckpt['config'].get('dataset') or old.get('name')
    if vocabulary(old) != vocabulary(meta):
        fail(f"dataset {dataset!r} ({meta['tokenizer']}, {meta['vocab_size']} tokens) has another vocabulary than the "
             f"checkpoint's dataset {old_dataset!r} ({old.get('tokenizer')}, {old.get('vocab_size')} tokens"
             f"{', another character table' if old.get('vocab_size') == meta['vocab_size'] else ''}): its token ids "
             f"would mean other text. Resume with --dataset={old_dataset} or start a new run in another --out_dir")
    if same_data(old, meta):
        return False
    described = (f"source {meta.get('source')!r}, {meta.get('train_tokens')}/{meta.get('val_tokens')} train/val "
                 f"tokens; the run trained on source {old.get('source')!r}, {old.get('train_tokens')}/"
                 f"{old.get('val_tokens')}")
    if 'dataset' not in explicit:
        fail(f"the dataset at {dataset!r} is not the data this run trained on ({described}): it was prepared again. "
             f"Pass --dataset={dataset} to continue on the new data on purpose, or start a new run in another "
             f"--out_dir")
    say(f"note: RESUMING ON OTHER DATA: {dataset!r} ({described}); val losses from here on are on its val split, "
        f"so the best val loss starts again (ckpt_best.pt is replaced at the next evaluation)")
    return True


def fit_accumulation(config, world_size, resumed):
    """gradient_accumulation_steps counts micro-steps over all ranks (nanoGPT's meaning), so it must divide by the
    number of processes. A value typed on the command line, or one a resumed run depends on, is never changed behind
    the user's back; one from a config file or the default is rounded up, with a note. Returns the value to use."""
    steps, batch_size, block_size = config['gradient_accumulation_steps'], config['batch_size'], config['block_size']
    if steps % world_size == 0:
        return steps
    fixed = -(-steps // world_size) * world_size
    typed = any(arg.startswith('--gradient_accumulation_steps=') for arg in sys.argv[1:])
    if typed or resumed:
        fail(f"gradient_accumulation_steps ({steps}) must be divisible by the number of processes ({world_size}): it "
             f"counts micro-steps over all ranks; pass --gradient_accumulation_steps={fixed} (or another multiple of "
             f"{world_size})")
    say(f"note: gradient_accumulation_steps {steps} rounded up to {fixed}, a multiple of the {world_size} processes "
        f"(global batch: {fixed} x {batch_size} x {block_size} tokens); pass --gradient_accumulation_steps to "
        f"choose it")
    return fixed


def model_config(config, vocab_size, meta):
    """model.GPTConfig from the settings (every GPTConfig field is a knob) and the vocabulary, checked: its own rules
    (activation, poly_order, ...) and a row in the embedding for every token id of the data."""
    from dataclasses import fields
    from data.dataset import check_vocab
    from model import GPTConfig
    try:
        check_vocab(meta, vocab_size)
        return GPTConfig(**{f.name: config[f.name] for f in fields(GPTConfig) if f.name in config},
                         vocab_size=vocab_size)
    except ValueError as e:
        fail(str(e))


def first_forward(evaluate, compiled):
    """The first evaluation, where torch.compile builds its kernels (it needs a C compiler): a failure there is one
    line saying how to run without it."""
    try:
        return evaluate()
    except Exception as e:
        if not compiled:
            raise
        fail(f"torch.compile failed ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}); run with "
             f"--compile=False", code=1)
