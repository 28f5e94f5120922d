"""
Train a nanoPoly GPT on a CPU, one GPU, or several GPUs/processes with DDP.

One device:       python train.py config/train_shakespeare_char.py --activation=polynorm
Several (DDP):    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small.py
Resume:           python train.py --out_dir=out-shakespeare-char --init_from=resume
                  (the checkpoint's settings are the defaults; flags you pass win, except for the architecture)

Every knob is a global below with its default; a config file (plain Python) and --key=value flags override them
(configurator.py). Every setting is checked before torch is imported, so a wrong one costs a fraction of a second
and one error line naming it. Outputs in out_dir: ckpt.pt (the latest good checkpoint: resume continues from it),
ckpt_best.pt (the one with the best val loss), log.csv, coeffs.csv (PolyCom coefficients), moe.csv (MoE only),
summary.json, and .lock while a run holds the folder (a second train.py on it is refused). A scratch run refuses an
out_dir that holds a run unless --overwrite=True. Ctrl-C stops after the current iteration and saves a checkpoint
(a second Ctrl-C stops at once, without saving).

Reproducibility: micro-batch positions are a pure function of (seed, step, global micro-step index) (data/dataset.py),
so a resumed run sees exactly the batches an uninterrupted one would, and N ranks with G/N micro-steps each see the
same G micro-batches as one process with G. On CPU in float32 a resumed run is bitwise identical to a straight one.
"""
import csv
import importlib.util
import json
import math
import os
import shlex
import signal
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import checkpoint
from configurator import configure, device_name_problem, device_problem

# -----------------------------------------------------------------------------
# default config values: a small character-level model that trains on a laptop CPU in minutes
# I/O
out_dir = 'out'
eval_interval = 250         # evaluate (and maybe checkpoint) every this many iterations, at iter 0 and at the end
eval_iters = 20             # validation batches per evaluation (the same batches every time, split across ranks)
log_interval = 10           # print and write a log.csv row every this many iterations
eval_only = False           # evaluate once and exit
always_save_checkpoint = True   # if False, checkpoint only when val loss improves (and at the end)
init_from = 'scratch'       # 'scratch' or 'resume' (from out_dir/ckpt.pt)
overwrite = False           # a scratch run into an out_dir that holds a run replaces it only when True
# wandb logging (off by default; wandb is imported only when on)
wandb_log = False
wandb_project = 'nanopoly'
wandb_run_name = 'run'
# data
dataset = 'shakespeare_char'    # a folder name under data/ (prepared by data/<name>/prepare.py) or a path to one
gradient_accumulation_steps = 1 # micro-steps per optimizer step in total over all ranks (nanoGPT's meaning)
batch_size = 12                 # sequences per micro-step per rank
block_size = 64                 # context length
# model: every GPTConfig field (model.py); vocab_size comes from the dataset's meta.json
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
activation = 'gelu'         # relu, gelu, silu, relu2, swiglu, polyrelu, polygelu, polysilu, polynorm (model.ACTIVATIONS)
poly_order = 3
ffn_hidden = 0              # 0 = auto (4*n_embd; 2/3 of it for gated activations)
arch = 'modern'             # 'modern' (RMSNorm + RoPE) or 'gpt2' (LayerNorm + learned positions)
tie_weights = True
norm_eps = 0.0              # 0 = auto (RMSNorm 1e-6, LayerNorm 1e-5); the paper's models: 1e-5
qk_norm = False             # norm over the whole q and k projections before RoPE (OLMoE: True)
rope_theta = 10000.0
init_seed = 1337            # weight init; independent of `seed` so the data order can vary with the same init
init_std = 0.02             # std of the weight matrices (the paper's dense model: 0.013975)
init_residual_scale = True  # residual projections get init_std/sqrt(2*n_layer) (OLMoE: False)
init_cutoff = 0.0           # > 0: truncate the init normal at +-init_cutoff std (OLMoE: 3)
n_expert = 0                # 0 = dense; > 0 = mixture of experts
top_k = 2
moe_every = 1
expert_hidden = 0
norm_topk = False           # renormalise the top-k router weights to sum to 1 (Mixtral: True; OLMoE: False)
aux_loss_weight = 0.01
z_loss_weight = 0.001
z_loss_scaling = 'st-moe'   # 'st-moe' (mean over tokens of logsumexp^2) or 'megablocks' (that / top_k)
shared_expert = False
per_expert_poly = False
# AdamW optimizer
learning_rate = 1e-3
max_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0             # clip gradients at this global norm, 0 = off
# learning rate schedule: linear warmup, then cosine decay to min_lr
decay_lr = True
warmup_iters = 100
lr_decay_iters = -1         # -1 = max_iters: a run shortened with --max_iters still decays to min_lr
min_lr = 1e-4
# system
device = 'auto'             # 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'
dtype = 'auto'              # 'auto' (bf16 on CUDA if supported, else fp16; fp32 elsewhere), 'float32', 'bfloat16', 'float16'
compile = False             # torch.compile the model (needs a working compiler toolchain; big win on GPU)
seed = 1337                 # data order and dropout
# -----------------------------------------------------------------------------
config, explicit = configure(globals())   # config file and --key=value overrides; `explicit` = keys the user set
# -----------------------------------------------------------------------------
# torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; only the master process prints, logs and writes files
ddp = int(os.environ.get('RANK', -1)) != -1
rank, local_rank, world_size = ((int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE']))
                                if ddp else (0, 0, 1))
master = rank == 0
command_line_keys = {arg[2:].partition('=')[0] for arg in sys.argv[1:] if arg.startswith('--')}
RUN_FILES = ('ckpt.pt', 'ckpt_best.pt', 'log.csv', 'coeffs.csv', 'moe.csv', 'summary.json')   # what makes a run
ckpt_path, best_path = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'ckpt_best.pt')


def say(message):
    if master:
        print(message, flush=True)


def fail(message, code=2):
    """One clear line for a person, then exit (2 = bad configuration, 1 = the run went wrong)."""
    distributed = sys.modules.get('torch.distributed')
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()
    if master:   # every rank fails the same way; one message is enough
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


# Ctrl-C before the training loop (or a second one inside it) raises KeyboardInterrupt wherever it lands; a person
# pressed it, so one line saying what was kept replaces the traceback (Python then exits with the SIGINT status).
training_started = False


def report_interrupt(kind, value, tb):
    if not issubclass(kind, KeyboardInterrupt):
        return sys.__excepthook__(kind, value, tb)
    if master and not training_started:
        print("interrupted before training started; nothing in out_dir was changed", file=sys.stderr)
    elif master:
        if last_saved_iter is not None:   # the logs end where the checkpoint does, as a resumed run expects
            for path, header in logs:
                cut_csv(path, header, last_saved_iter)
        print(f"interrupted at iter {iter_num}, stopped without saving: {kept_checkpoints()}"
              f"{' (the logs were cut back to it)' if last_saved_iter is not None else ''}. {how_to_continue()}",
              file=sys.stderr)


sys.excepthook = report_interrupt


def setting_problem():
    """The first thing wrong with the settings as one line naming the key, or None. No torch needed: a wrong flag
    fails in a fraction of a second. model.GPTConfig adds the architecture's own rules (activation, poly_order, ...)."""
    g = globals()
    for key in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters',
                'log_interval', 'n_layer', 'n_head', 'n_embd'):
        if g[key] < 1:
            return f"{key} must be >= 1, got {g[key]}"
    if max_iters < 1:
        return f"max_iters must be >= 1, got {max_iters} (to only evaluate a checkpoint: --eval_only=True)"
    if n_embd % n_head:
        closest = min((h for h in range(1, n_embd + 1) if n_embd % h == 0), key=lambda h: abs(h - n_head))
        return f"n_embd ({n_embd}) must be divisible by n_head ({n_head}); e.g. --n_head={closest}"
    for key in ('ffn_hidden', 'expert_hidden', 'n_expert', 'warmup_iters'):
        if g[key] < 0:
            return f"{key} must be >= 0, got {g[key]}"
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        return f"learning_rate must be a number > 0, got {learning_rate}"
    if not 0 <= min_lr <= learning_rate:
        return f"min_lr must be between 0 and learning_rate ({learning_rate:g}), got {min_lr:g}"
    for key in ('weight_decay', 'grad_clip', 'aux_loss_weight', 'z_loss_weight'):
        if not (g[key] >= 0 and math.isfinite(g[key])):
            return f"{key} must be a number >= 0{' (0 = off)' if key == 'grad_clip' else ''}, got {g[key]}"
    for key in ('beta1', 'beta2', 'dropout'):
        if not 0 <= g[key] < 1:
            return f"{key} must be in [0, 1), got {g[key]}"
    if not (rope_theta > 0 and math.isfinite(rope_theta)):
        return f"rope_theta must be a number > 0, got {rope_theta}"
    if lr_decay_iters != -1 and lr_decay_iters < 1:
        return f"lr_decay_iters must be -1 (= max_iters) or >= 1, got {lr_decay_iters}"
    for key in ('seed', 'init_seed'):
        if not 0 <= g[key] < 2 ** 31:
            return f"{key} must be in 0 .. 2**31 - 1, got {g[key]}"
    if init_from not in ('scratch', 'resume'):
        return f"init_from must be 'scratch' or 'resume', got {init_from!r}"
    if overwrite and init_from == 'resume':
        return "overwrite=True starts a new run over the old one; it cannot be combined with --init_from=resume"
    if dtype not in ('auto', 'float32', 'bfloat16', 'float16'):
        return f"dtype must be one of auto, float32, bfloat16, float16, got {dtype!r}"
    if device_name_problem(device):
        return device_name_problem(device)
    if not out_dir.strip():
        return "out_dir must not be empty"
    if not dataset.strip():
        return "dataset must not be empty: a folder name under data/ or a path"
    if wandb_log and importlib.util.find_spec('wandb') is None:   # found now, not after an old run was replaced
        return "wandb_log=True needs the wandb package: pip install wandb (or run with --wandb_log=False)"
    return None


if setting_problem():
    fail(setting_problem())
if init_from == 'resume':   # a missing or visibly damaged checkpoint is refused before anything else happens
    try:
        checkpoint.check_file(ckpt_path)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        fail(str(e))

# numpy comes only now (~0.3 s), after the settings: the data checks need it, torch not yet
from data.dataset import TokenDataset, check_token_ids, check_vocab, load_meta  # noqa: E402


def open_dataset():
    """(data_dir, meta, train split, val split), checked: meta.json readable and complete, both splits present, a
    window of block_size + 1 tokens fits, every token id has a row in the embedding. No torch needed, so a scratch
    run checks this before importing it; a resumed one after the checkpoint has supplied dataset and block_size."""
    path = dataset if os.sep in dataset else os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', dataset)
    try:
        meta_ = load_meta(path)
        splits = TokenDataset(path, 'train'), TokenDataset(path, 'val')
        for split in splits:
            split.check_block_size(block_size)
        check_token_ids(path, meta_)
    except (FileNotFoundError, ValueError) as e:   # not prepared, or damaged: the message names the prepare command
        fail(str(e))
    return (path, meta_) + splits


if init_from == 'scratch':
    data_dir, meta, train_data, val_data = open_dataset()

# ---- out_dir: one process at a time (the lock), and never over another run unless asked. Nothing in the folder is
# changed here: an existing run's files are replaced only once the new run has started (after its first evaluation).
previous_run = []
if master and not eval_only:
    try:
        lock = checkpoint.lock_dir(out_dir, 'train.py')
    except checkpoint.LockError as e:
        fail(str(e))
    if lock.note:
        say(f"note: {out_dir}: {lock.note}")
    removed = checkpoint.remove_stale_temp_files(out_dir)
    if removed:
        say(f"note: removed {len(removed)} unfinished checkpoint file(s) of a killed save: {', '.join(removed)}")
    previous_run = [name for name in RUN_FILES if os.path.exists(os.path.join(out_dir, name))]
    if init_from == 'scratch' and previous_run and not overwrite:
        fail(f"{out_dir} already holds a run ({', '.join(previous_run)}); continue it with --init_from=resume, "
             f"replace it with --overwrite=True, or use another --out_dir")

# torch comes only now (1-2 s): everything above fails fast
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from model import GPT, GPTConfig, MoE, upgrade_model_args  # noqa: E402
import peak_flops  # noqa: E402

# resume: the checkpoint's config is the default for every knob the user did not set; the architecture must match
RESUME_KEYS = ('model', 'optimizer', 'model_args', 'config', 'iter_num', 'tokens', 'best_val_loss', 'rng')
resume = None
if init_from == 'resume':
    try:
        resume = checkpoint.load(ckpt_path, required=RESUME_KEYS)
    except (FileNotFoundError, checkpoint.CheckpointError) as e:
        fail(str(e))
    for key, value in resume['config'].items():
        if key in config and key not in explicit and key not in ('init_from', 'out_dir', 'overwrite'):
            config[key] = globals()[key] = value
    # a schedule that followed max_iters keeps the length it was trained with: a resume with a larger --max_iters
    # extends the run at min_lr instead of stretching the cosine (which would raise the rate mid-run)
    if lr_decay_iters == -1 and 'lr_decay_iters' not in explicit and resume['config'].get('max_iters', 0) > 0:
        config['lr_decay_iters'] = lr_decay_iters = resume['config']['max_iters']
    # dropout and the MoE loss weights may change on resume; everything else in GPTConfig defines the weights
    for key, value in upgrade_model_args(resume['model_args']).items():   # older checkpoints: their widths spelled out
        if key in ('dropout', 'aux_loss_weight', 'z_loss_weight') or key not in config:
            continue
        if key in explicit and config[key] != value:
            fail(f"{key}={config[key]!r} does not match the checkpoint being resumed ({key}={value!r}); the "
                 f"architecture comes from {ckpt_path}: drop that setting or start a new run in another --out_dir")
        config[key] = globals()[key] = value
    if setting_problem():   # the checkpoint's settings with the new flags
        fail(setting_problem())

# devices and processes
if device_problem(device):
    fail(device_problem(device))
if device == 'auto':
    device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
if ddp and device.startswith('cuda'):
    device = f'cuda:{local_rank}'
if device.startswith('cuda'):
    torch.cuda.set_device(device)   # the current device: bare .cuda() calls and the CUDA RNG state refer to it
device_type = 'cuda' if device.startswith('cuda') else device
if gradient_accumulation_steps % world_size != 0:
    # it counts micro-steps over all ranks (nanoGPT's meaning). A value the user typed, or one a resumed run depends
    # on, is never changed behind their back; one from a config file or the default is rounded up, with a note.
    fixed = -(-gradient_accumulation_steps // world_size) * world_size
    if 'gradient_accumulation_steps' in command_line_keys or resume is not None:
        fail(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the number of "
             f"processes ({world_size}): it counts micro-steps over all ranks; pass "
             f"--gradient_accumulation_steps={fixed} (or another multiple of {world_size})")
    say(f"note: gradient_accumulation_steps {gradient_accumulation_steps} rounded up to {fixed}, a multiple of the "
        f"{world_size} processes (global batch: {fixed} x {batch_size} x {block_size} tokens); pass "
        f"--gradient_accumulation_steps to choose it")
    gradient_accumulation_steps = config['gradient_accumulation_steps'] = fixed
if ddp:
    dist.init_process_group(backend='nccl' if device_type == 'cuda' else 'gloo')
micro_steps = gradient_accumulation_steps // world_size   # micro-steps on this rank per optimizer step
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
if dtype == 'auto':
    dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if device_type == 'cuda' else 'float32'
if dtype == 'bfloat16' and device_type == 'cuda' and not torch.cuda.is_bf16_supported():
    fail(f"dtype='bfloat16' is not supported by {torch.cuda.get_device_name()}; use --dtype=float16 (or auto)")
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
# float32 autocast would be a no-op, so skip it; bf16/fp16 autocast keeps fp32 master weights
ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
torch.backends.cuda.matmul.allow_tf32 = True   # on Ampere+ "float32" matmuls run in TF32 (as nanoGPT does)
torch.backends.cudnn.allow_tf32 = True
checkpoint.seed_everything(seed + rank)        # dropout masks differ per rank; batches do not depend on this

if init_from == 'resume':   # the dataset and block_size may have come from the checkpoint
    data_dir, meta, train_data, val_data = open_dataset()
# char vocabularies stay as they are; BPE ones are padded to a multiple of 64 (GPT-2: 50257 -> 50304) for faster
# matmuls; the padding rows are never targets, so training pushes their logits down
vocab_size = meta['vocab_size'] if meta['tokenizer'] == 'char' else -(-meta['vocab_size'] // 64) * 64


def vocabulary(m):
    """What a token id means: the tokenizer and, for characters, the table (sample.py decodes with it)."""
    return (m.get('tokenizer'), m.get('vocab_size'), m.get('chars'))


if resume is not None and resume.get('meta') and vocabulary(resume['meta']) != vocabulary(meta):
    old, old_dataset = resume['meta'], resume['config'].get('dataset') or resume['meta'].get('name')
    fail(f"dataset {dataset!r} ({meta['tokenizer']}, {meta['vocab_size']} tokens) has another vocabulary than the "
         f"checkpoint's dataset {old_dataset!r} ({old.get('tokenizer')}, {old.get('vocab_size')} tokens"
         f"{', another character table' if old.get('vocab_size') == meta['vocab_size'] else ''}): its token ids "
         f"would mean other text. Resume with --dataset={old_dataset} or start a new run in another --out_dir")


def get_batch(data, step, micro_step, rank=0, micro_steps_per_rank=1):
    """(B, T) int64 inputs and targets on the device, keyed by (seed, split, step, rank*micro_steps_per_rank+micro_step)"""
    x, y = data.get_batch(batch_size, block_size, seed, step=step, micro_step=micro_step, rank=rank,
                          micro_steps_per_rank=micro_steps_per_rank)
    if device_type == 'cuda':   # pinned memory lets the copy run asynchronously
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# model
model_args = {f.name: globals()[f.name] for f in fields(GPTConfig) if f.name in globals()}
model_args['vocab_size'] = vocab_size
if resume is not None:
    model_args['vocab_size'] = resume['model_args']['vocab_size']
try:
    check_vocab(meta, model_args['vocab_size'])   # a resumed model must have a row for every token of the data
    gptconf = GPTConfig(**model_args)
except ValueError as e:
    fail(str(e))
raw_model = GPT(gptconf, verbose=master)   # the plain module: its state_dict has no compile/DDP prefixes
if resume is not None:
    try:
        raw_model.load_state_dict(resume['model'])
    except RuntimeError as e:   # missing/unexpected keys or shapes: written by another version of model.py
        first = str(e).strip().splitlines()[0]
        fail(f"the weights in {ckpt_path} do not fit this model.py ({first}); it was written by another version of "
             f"the code: train a new run in another --out_dir")
raw_model.to(device)
optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))   # fp16 needs loss scaling, bf16 does not
iter_num, tokens, best_val_loss, final_val_loss, elapsed_s = 0, 0, float('inf'), None, 0.0
best_iter = None   # the iteration of ckpt_best.pt
if resume is not None:
    optimizer.load_state_dict(resume['optimizer'])
    if scaler.is_enabled() and resume.get('scaler'):
        scaler.load_state_dict(resume['scaler'])
    iter_num, tokens, best_val_loss = resume['iter_num'], resume['tokens'], resume['best_val_loss']
    final_val_loss, elapsed_s = resume.get('val_loss'), resume.get('elapsed_s', 0.0)
    best_iter = resume.get('best_iter')
    if len(resume['rng']) == world_size:
        checkpoint.set_rng_state(resume['rng'][rank])
    else:
        say(f"note: checkpoint saved with {len(resume['rng'])} processes, now {world_size}: dropout masks are "
            f"re-seeded, so the run is not a bitwise continuation (batches still are)")
    say(f"resuming from {ckpt_path} at iter {iter_num} ({tokens:,} tokens seen)")
    resume = None   # free the memory
start_iter = iter_num
last_saved_iter, last_saved_val = (start_iter, final_val_loss) if start_iter > 0 else (None, None)
saved_best = (best_iter, best_val_loss) if best_iter is not None else None   # what ckpt_best.pt holds
if start_iter >= max_iters and not eval_only:
    # a finished run resumed with the same max_iters: nothing to train (compare.py may do this after a kill between
    # the last checkpoint and summary.json); make sure summary.json exists, change nothing else
    summary_path = os.path.join(out_dir, 'summary.json')
    if master and not os.path.exists(summary_path):
        with open(summary_path, 'w') as f:
            json.dump({'finished': True, 'iter': iter_num, 'tokens': tokens, 'final_val_loss': final_val_loss,
                       'best_val_loss': best_val_loss, 'best_iter': best_iter, 'tokens_per_sec': None,
                       'ms_per_iter': None, 'mfu': None, 'other_load_cores': None}, f, indent=2)
    say(f"nothing to train: {ckpt_path} is at iter {iter_num} and max_iters is {max_iters}; pass a larger "
        f"--max_iters to continue")
    if ddp:
        dist.destroy_process_group()
    sys.exit(0)
model = torch.compile(raw_model) if compile else raw_model   # evaluation uses this one (never the DDP wrapper)
train_model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None) if ddp else model


def kept_checkpoints():
    """Which checkpoints a stopped run leaves, for the last line it prints."""
    if last_saved_iter is None:
        return "no checkpoint was saved yet"
    text = f"{ckpt_path} holds iter {last_saved_iter}"
    if last_saved_val is not None:
        text += f" (val loss {last_saved_val:.4f})"
    if saved_best is not None and saved_best[0] != last_saved_iter and os.path.exists(best_path):
        text += f", {best_path} iter {saved_best[0]} (val loss {saved_best[1]:.4f})"
    return text


def divergence_advice():
    """What to change after a run blew up; --grad_clip=1.0 only when clipping is off (it is the default)."""
    advice = [f"a lower --learning_rate (now {learning_rate:g})", f"a longer --warmup_iters (now {warmup_iters})"]
    if grad_clip == 0:
        advice.append("--grad_clip=1.0 (clipping is off)")
    elif grad_clip > 1:
        advice.append(f"a smaller --grad_clip (now {grad_clip:g})")
    if dtype == 'float16':
        advice.append("--dtype=bfloat16 instead of float16, where the device supports it")
    return ', '.join(advice)


# A checkpoint is "good" only while the run is not diverging. A blowing-up run often passes through moderate-looking
# losses before the NaN (seen: 6.7e9, then exactly ln(vocab), i.e. uniform predictions from weights around 2e12), so
# one far-off loss marks the run as diverged until a val loss clearly beats both the best seen and chance level.
chance_loss = math.log(meta['vocab_size'])   # the loss of predicting every token as equally likely
diverged = False


def is_diverging(loss):
    """Far above the best val loss seen (or chance level, whichever is lower), or back at chance level after the run
    had learned something."""
    reference = min(best_val_loss, chance_loss)
    learned = best_val_loss < 0.95 * chance_loss
    return not math.isfinite(loss) or loss > 2 * reference or (learned and loss >= chance_loss)


def has_recovered(loss):
    """After a divergence: a new best that is clearly better than uniform predictions (a blown-up model sits at
    chance level, which can look like a 'best' early in a run)."""
    return loss < best_val_loss and loss < 0.98 * chance_loss


def how_to_continue():
    """The sentence that tells a stopped run's user what to type next."""
    if last_saved_iter is None:
        return "Nothing to resume from: start again with the same command and --overwrite=True"
    return f"Resume with: {resume_command()}"


def resume_command():
    """The command that continues this run: the same script, out_dir and the flags the user typed (minus init_from
    and overwrite); the checkpoint supplies every other setting."""
    flags = [a for a in sys.argv[1:] if a.startswith('--') and a.partition('=')[0][2:]
             not in ('init_from', 'out_dir', 'overwrite')]
    launcher = f"torchrun --standalone --nproc_per_node={world_size} " if ddp else "python "
    return launcher + shlex.join(['train.py', f'--out_dir={out_dir}', '--init_from=resume'] + flags)


def get_lr(it):
    """Learning rate for the optimizer step that takes the model from iteration it to it + 1."""
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    decay_iters = lr_decay_iters if lr_decay_iters > 0 else max_iters
    if it >= decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


@torch.no_grad()
def evaluate():
    """Mean validation loss over eval_iters fixed batches (keyed by step 0, so every evaluation and every world size
    sees the same set); rank r takes batches r, r + world_size, ...; sums are all-reduced."""
    model.eval()
    total = torch.zeros(2, device=device)   # (sum of batch mean losses, number of batches)
    for k in range(rank, eval_iters, world_size):
        x, y = get_batch(val_data, step=0, micro_step=k, micro_steps_per_rank=eval_iters)
        with ctx:
            _, loss = model(x, y)
        total += torch.stack([loss.float(), torch.ones((), device=device)])
    if ddp:
        dist.all_reduce(total)
    model.train()
    return (total[0] / total[1]).item()


def save_checkpoint(best):
    """Collective (every rank passes its RNG state); rank 0 writes out_dir/ckpt.pt atomically and, when best, makes
    ckpt_best.pt the same file (a hard link: no second write; the next save replaces ckpt.pt, not the link).
    last_saved_iter/val and saved_best follow each file as soon as it is in place, so a failure message names
    exactly what is on disk."""
    global last_saved_iter, last_saved_val, saved_best
    rng = [None] * world_size
    if ddp:
        dist.all_gather_object(rng, checkpoint.get_rng_state())
    else:
        rng[0] = checkpoint.get_rng_state()
    if not master:
        last_saved_iter, last_saved_val, saved_best = iter_num, final_val_loss, (iter_num, final_val_loss)
        return
    try:
        checkpoint.save_atomic({
            'model': checkpoint.clean_state_dict(raw_model.state_dict()),
            'optimizer': optimizer.state_dict(),
            'scaler': scaler.state_dict(),
            'model_args': asdict(gptconf),
            'config': config,
            'iter_num': iter_num,
            'tokens': tokens,
            'best_val_loss': best_val_loss,
            'best_iter': best_iter,
            'val_loss': final_val_loss,   # of these weights
            'elapsed_s': elapsed_s,
            'rng': rng,   # one state per rank
            # batches are keyed by (seed, step, micro-step): the iteration is the data position
            'data_position': {'iter': iter_num, 'seed': seed, 'gradient_accumulation_steps': gradient_accumulation_steps},
            'meta': meta,
            'torch_version': str(torch.__version__),
        }, ckpt_path)
        last_saved_iter, last_saved_val = iter_num, final_val_loss
        if best:
            link_best_checkpoint()
            saved_best = (iter_num, final_val_loss)
    except checkpoint.CheckpointError:   # disk full while writing ckpt.pt; save_atomic removed its temp file
        fail_disk_full(ckpt_path)
    except OSError as e:
        if checkpoint.disk_full(e):
            fail_disk_full(best_path)
        raise


def link_best_checkpoint():
    """ckpt_best.pt := ckpt.pt, atomically: a link (or copy) under a temp name, then renamed over the old best."""
    link = checkpoint.temp_path(best_path)
    try:
        try:
            os.link(ckpt_path, link)
        except OSError as e:   # a filesystem without hard links: copy
            if checkpoint.disk_full(e):
                raise
            import shutil
            shutil.copyfile(ckpt_path, link)
        os.replace(link, best_path)
    finally:
        if os.path.exists(link):
            os.remove(link)


def fail_disk_full(path):
    """One line: the disk is full, where, which checkpoint is kept, and how to go on."""
    fail(f"disk full: no space left in {os.path.abspath(out_dir)} to write {os.path.basename(path)} at iter "
         f"{iter_num}; the last good checkpoint is kept ({kept_checkpoints()}). Free some space there. "
         f"{how_to_continue()}", code=1)


# ---- CSV logs (master only). On resume, rows after the checkpoint's iteration are dropped: a run killed after its last
# checkpoint wrote them, and the resumed run writes them again.
LOG_COLUMNS = ['iter', 'tokens', 'train_loss', 'val_loss', 'lr', 'ms_per_iter', 'tokens_per_sec', 'mfu', 'elapsed_s',
               'balance_loss', 'z_loss', 'expert_cv']


def cut_csv(path, header, last_iter):
    """Rewrite path with header and the old rows up to last_iter (matched by column name, so a log written with other
    columns keeps its data). Atomic: a temp file renamed over the old one."""
    rows = []
    if last_iter is not None and os.path.exists(path):
        with open(path, newline='') as f:
            for row in csv.DictReader(f):
                try:
                    if int(row.get('iter') or -1) <= last_iter:
                        rows.append([row.get(name) or '' for name in header])
                except ValueError:
                    continue   # a damaged line
    tmp = checkpoint.temp_path(path)   # .log.csv.<pid>.tmp: a kill -9 leftover is cleaned up at the next start
    with open(tmp, 'w', newline='') as f:
        csv.writer(f).writerows([header] + rows)
    os.replace(tmp, path)


def append_csv(path, row):
    try:
        with open(path, 'a', newline='') as f:
            csv.writer(f).writerow(['' if v is None else v for v in row])
    except OSError as e:
        if checkpoint.disk_full(e):
            fail(f"disk full: cannot append to {path}; {kept_checkpoints()}. Free some space. "
                 f"{how_to_continue()}", code=1)
        raise


def number(value, spec=None):
    """Text for a CSV cell: '' for missing, full precision (repr) by default so curves compare exactly."""
    if value is None:
        return ''
    return format(value, spec) if spec else repr(float(value))


def shared_cpu_peak(remeasure=False):
    """Float32 matmul peak of the CPU this run uses. Under DDP every rank measures at the same time and the
    throughputs add up: processes sharing one CPU share its peak. Collective under DDP; cached per layout, highest
    value kept."""
    known = peak_flops.cached_cpu_peak(world_size) if master and not remeasure else None
    value = torch.tensor([known or 0.0], dtype=torch.float64)
    if ddp:
        dist.broadcast(value, 0)
    if value.item() == 0.0:
        if ddp:
            dist.barrier()   # start together, so each rank measures while the others do
        value = torch.tensor([peak_flops.measure_cpu_matmul_flops()], dtype=torch.float64)
        if ddp:
            dist.all_reduce(value)
        value = torch.tensor([peak_flops.store_cpu_peak(value.item(), world_size) if master else value.item()],
                             dtype=torch.float64)
        if ddp:
            dist.broadcast(value, 0)
    return value.item()


coefficient_names = list(raw_model.poly_coefficients())
n_moe_layers = sum(isinstance(block.mlp, MoE) for block in raw_model.transformer.h)
log_path, coeffs_path, moe_path = (os.path.join(out_dir, name) for name in ('log.csv', 'coeffs.csv', 'moe.csv'))
flops_per_token = raw_model.flops_per_token()
peak, peak_devices, peak_note = None, world_size, f"no peak known for device '{device}', MFU left empty"
if not eval_only:
    if device_type == 'cpu':
        peak, peak_devices = shared_cpu_peak(), 1
        peak_note = (f"CPU float32 matmul peak measured here: {peak / 1e9:.1f} GFLOP/s"
                     f"{f' for {world_size} processes' if world_size > 1 else ''} (cached in "
                     f"{peak_flops.cpu_peak_cache_path()})")
    elif master:
        peak, peak_note = peak_flops.device_peak_flops(device)
say(f"tokens per iteration: {tokens_per_iter:,} ({gradient_accumulation_steps} micro-steps x {batch_size} x "
    f"{block_size}, {world_size} process(es)); device {device}, dtype {dtype}; {peak_note}")
if not eval_only:
    state = ('resuming the run there' if start_iter else 'a new run') if not previous_run or init_from == 'resume' \
        else f"replacing the run there ({', '.join(previous_run)}; --overwrite=True)"
    say(f"out_dir: {os.path.abspath(out_dir)} ({state})")
    if decay_lr and warmup_iters >= (lr_decay_iters if lr_decay_iters > 0 else max_iters):
        say(f"note: warmup_iters ({warmup_iters}) >= the decay length ({lr_decay_iters if lr_decay_iters > 0 else max_iters}"
            f"): the learning rate never reaches {learning_rate:g}")
# -----------------------------------------------------------------------------
# training loop. iter_num counts finished optimizer steps: a log row for iter i has the loss of the step that produced
# weights i (computed with weights i-1) and the val loss of weights i; the schedule's lr for that step is get_lr(i-1).
if iter_num == 0 or eval_only:
    try:
        val_loss = evaluate()
    except Exception as e:   # the first forward is where torch.compile builds its kernels (needs a C compiler)
        if not compile:
            raise
        fail(f"torch.compile failed ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
             f"run with --compile=False", code=1)
    say(f"iter {iter_num}: val loss {val_loss:.4f}")
    if iter_num == 0:
        best_val_loss = final_val_loss = val_loss
if eval_only:
    if ddp:
        dist.destroy_process_group()
    sys.exit(0)
# the run has started: only now are the old run's files replaced (--overwrite=True) or the log cut to the checkpoint
logs = [(log_path, LOG_COLUMNS)]
if coefficient_names:
    logs.append((coeffs_path, ['iter'] + coefficient_names))
if n_moe_layers:
    logs.append((moe_path, ['iter'] + [f'layer{i}_cv' for i in range(n_moe_layers)]))
training_started = True
if master:
    if init_from == 'scratch':
        for name in previous_run:
            os.remove(os.path.join(out_dir, name))
    for path, header in logs:
        cut_csv(path, header, iter_num if init_from == 'resume' else None)
    if iter_num == 0:
        append_csv(log_path, [iter_num, tokens, '', number(val_loss)] + [''] * (len(LOG_COLUMNS) - 4))
    if wandb_log:
        try:
            import wandb
        except ImportError:
            fail("wandb_log=True needs the wandb package: pip install wandb (or run with --wandb_log=False)")
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)

# Ctrl-C (SIGINT) or SIGTERM: finish the current iteration, evaluate, save a checkpoint, exit. Under DDP the ranks agree
# at the next log point (the flag rides on the all-reduce there). A second signal stops at once without saving.
stop_requested = False


def request_stop(signum, frame):
    global stop_requested
    if stop_requested:
        raise KeyboardInterrupt
    stop_requested = True
    if master:
        print(f"\n{signal.Signals(signum).name}: stopping after this iteration and saving a checkpoint (press Ctrl-C "
              f"again to stop at once without saving)", file=sys.stderr, flush=True)


signal.signal(signal.SIGINT, request_stop)
signal.signal(signal.SIGTERM, request_stop)

stopping = False
timings = []        # (first iteration of the logged period, ms/iter, tokens/s, mfu) for summary.json
mfu_note_shown, peak_remeasured = False, False
t_last, iters_since_log = time.time(), 0
load_start, loop_start = peak_flops.cpu_seconds(), time.time()
nonfinite = torch.zeros((), device=device)   # count of steps with a non-finite loss since the last log row
x, y = get_batch(train_data, iter_num, 0, rank, micro_steps)
while iter_num < max_iters:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr

    # forward/backward over this rank's micro-steps; sums stay on the device (no .item(): that would sync every step)
    loss_sum = torch.zeros((), device=device)
    balance_sum, z_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    load_sum = torch.zeros((n_moe_layers, n_expert), device=device)
    for micro_step in range(micro_steps):
        # DDP all-reduces gradients in backward; skip that on all but the last micro-step (no_sync covers fwd + bwd)
        sync_context = train_model.no_sync() if ddp and micro_step < micro_steps - 1 else nullcontext()
        with sync_context:
            with ctx:
                _, loss, aux = train_model(x, y, return_aux=True)
                # objective = cross-entropy + MoE aux terms; / micro_steps: grads sum over micro-steps, DDP averages
                # over ranks, so the total is the mean over the global batch
                objective = (loss + aux['aux_total']) / micro_steps
            if micro_step + 1 < micro_steps:   # fetch the next micro-batch while the device works on this one
                x, y = get_batch(train_data, iter_num, micro_step + 1, rank, micro_steps)
            scaler.scale(objective).backward()
        loss_sum += loss.detach().float()
        balance_sum += aux['balance_loss'].detach().float()
        z_sum += aux['z_loss'].detach().float()
        if n_moe_layers:
            load_sum += aux['expert_load'].float()
    if grad_clip > 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    nonfinite += (~torch.isfinite(loss_sum)).float()
    iter_num += 1
    tokens += tokens_per_iter
    iters_since_log += 1
    if iter_num < max_iters:
        x, y = get_batch(train_data, iter_num, 0, rank, micro_steps)

    log_now = iter_num % log_interval == 0 or iter_num == max_iters or (stop_requested and not ddp)
    eval_now = iter_num % eval_interval == 0 or iter_num == max_iters
    if not (log_now or eval_now):
        continue

    # one all-reduce for the step's statistics, this rank's stop request and its seconds per iteration;
    # .tolist() is the sync point (waits for this step's device work)
    now = time.time()
    stats = torch.cat([torch.stack([loss_sum, balance_sum, z_sum, nonfinite]),
                       torch.tensor([float(stop_requested), (now - t_last) / iters_since_log], device=device),
                       load_sum.flatten()])
    if ddp:
        dist.all_reduce(stats)
    stats = stats.tolist()
    dt = stats[5] / world_size   # the ranks' mean: every rank then takes the same decisions below
    stopping = stats[4] > 0
    eval_now = eval_now or stopping
    elapsed_s += now - t_last   # training time only: evaluation and checkpointing are excluded
    train_loss, balance_loss, z_loss = (s / gradient_accumulation_steps for s in stats[:3])  # mean over global batch
    if stats[3] > 0 or not math.isfinite(train_loss):
        fail(f"non-finite training loss (train_loss={train_loss}) in the iterations up to {iter_num} at lr {lr:.3g}; "
             f"stopping. Last good checkpoint kept: {kept_checkpoints()}. Try {divergence_advice()}", code=1)
    if is_diverging(train_loss) and not diverged:
        diverged = True
        say(f"warning: train loss {train_loss:.4g} at iter {iter_num} is far above the best val loss "
            f"({best_val_loss:.4f}): the run is diverging; no checkpoint is saved until it recovers")
    tokens_per_sec = tokens_per_iter / dt
    mfu = peak_flops.mfu(flops_per_token, tokens_per_sec, peak, peak_devices)
    if mfu is not None and mfu > 1 and device_type == 'cpu' and not peak_remeasured:
        # faster than the cached peak allows: it was measured on a busy machine. Measure again (all ranks), keep the
        # highest value ever seen
        peak, peak_remeasured = shared_cpu_peak(remeasure=True), True
        mfu = peak_flops.mfu(flops_per_token, tokens_per_sec, peak, peak_devices)
        say(f"note: the run went faster than the cached CPU peak; re-measured it: {peak / 1e9:.1f} GFLOP/s")
    if mfu is not None and mfu > 1:   # the peak is still wrong: an MFU above 100% would be a number that lies
        if not mfu_note_shown:
            fix = (f"other work loaded the CPU while it was measured; delete {peak_flops.cpu_peak_cache_path()} to "
                   f"measure it again on a quiet machine" if device_type == 'cpu' else "fix the peak in peak_flops.py")
            say(f"note: MFU would be {mfu:.0%} against a peak of {peak / 1e12:.3g} TFLOP/s, so that peak is wrong for "
                f"this machine; MFU is left empty ({fix})")
            mfu_note_shown = True
        mfu = None
    timings.append((iter_num - iters_since_log, dt * 1000, tokens_per_sec, mfu))
    expert_cv, layer_cv = None, []
    if n_moe_layers:
        load = torch.tensor(stats[6:]).view(n_moe_layers, n_expert)        # summed fractions per layer and expert
        layer_cv = (load.std(dim=1, unbiased=False) / load.mean(dim=1)).tolist()   # coefficient of variation
        expert_cv = sum(layer_cv) / n_moe_layers

    val_loss = None
    if eval_now:
        val_loss = final_val_loss = evaluate()
        if not math.isfinite(val_loss):
            fail(f"non-finite validation loss ({val_loss}) at iter {iter_num}; stopping without saving. Last good "
                 f"checkpoint kept: {kept_checkpoints()}. Try {divergence_advice()}", code=1)
    if master:
        mfu_text = f", mfu {mfu * 100:.2f}%" if mfu is not None else ""
        print(f"iter {iter_num}: loss {train_loss:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
              f"{tokens_per_sec:,.0f} tok/s{mfu_text}" + (f", val loss {val_loss:.4f}" if val_loss is not None else ""),
              flush=True)
        row = [iter_num, tokens, number(train_loss), number(val_loss), number(lr), number(dt * 1000, '.3f'),
               number(tokens_per_sec, '.1f'), number(mfu, '.6f'), number(elapsed_s, '.3f'),
               number(balance_loss) if n_moe_layers else '', number(z_loss) if n_moe_layers else '',
               number(expert_cv)]
        append_csv(log_path, row)
        if coefficient_names:
            coefficients = raw_model.poly_coefficients()
            append_csv(coeffs_path, [iter_num] + [number(coefficients[name]) for name in coefficient_names])
        if n_moe_layers:
            append_csv(moe_path, [iter_num] + [number(cv) for cv in layer_cv])
        if wandb_log:
            wandb.log({name: float(value) for name, value in zip(LOG_COLUMNS, row) if value != ''}, step=iter_num)
    if eval_now:
        # a diverging run must not replace the last good ckpt.pt (nor ckpt_best.pt) before it turns into NaN
        if is_diverging(val_loss):
            diverged = True
        elif diverged and has_recovered(val_loss):
            diverged = False
            say(f"note: val loss {val_loss:.4f} is a new best: the run has recovered; checkpoints are saved again")
        improved = not diverged and val_loss < best_val_loss
        if improved:
            best_val_loss, best_iter = val_loss, iter_num
        if diverged:
            say(f"warning: val loss {val_loss:.4f} at iter {iter_num} (best {best_val_loss:.4f}): the run is "
                f"diverging; not saved, {kept_checkpoints()}")
        elif always_save_checkpoint or improved or iter_num == max_iters or stopping:
            save_checkpoint(best=improved)
            say(f"iter {iter_num}: saved {ckpt_path}" + (f" (also {best_path}: best so far)" if improved else ""))
    if stopping:
        break
    nonfinite.zero_()
    t_last, iters_since_log = time.time(), 0

# -----------------------------------------------------------------------------
# summary.json: medians skip the first 5 iterations of this process (torch.compile, allocator and cache warm-up).
# other_load_cores: CPU cores that OTHER processes kept busy during the loop, on average (speed figures taken while
# it is well above 0 are not comparable with those of a quiet machine); None without /proc/stat.
load_end, loop_seconds = peak_flops.cpu_seconds(), time.time() - loop_start
own_cpu = torch.tensor([load_end[1] - load_start[1] if load_start and load_end else 0.0], device=device)
if ddp:
    dist.all_reduce(own_cpu)   # the other ranks are this run, not "other processes"
other_load_cores = None
if load_start and load_end and loop_seconds > 0:
    other_load_cores = round(max(0.0, (load_end[0] - load_start[0] - own_cpu.item()) / loop_seconds), 3)
finished = not stopping or iter_num >= max_iters
if master:
    steady = [t for t in timings if t[0] >= start_iter + 5] or timings
    if device_type == 'cuda':
        peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        import resource   # ru_maxrss is in KB on Linux, bytes on macOS
        peak_mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == 'darwin' else 1024)
    mfus = [t[3] for t in steady if t[3] is not None]
    summary = {
        'finished': finished, 'iter': iter_num, 'tokens': tokens,
        'final_val_loss': final_val_loss, 'best_val_loss': best_val_loss, 'best_iter': best_iter,
        'tokens_per_sec': statistics.median(t[2] for t in steady) if steady else None,
        'ms_per_iter': statistics.median(t[1] for t in steady) if steady else None,
        'mfu': statistics.median(mfus) if mfus else None,
        'other_load_cores': other_load_cores,
        'diverged': diverged,   # True: the last evaluations were not saved (see ckpt.pt's iteration)
        'peak_mem_mb': peak_mem_mb,
        'total_params': raw_model.num_params(), 'active_params': raw_model.num_active_params(),
        'elapsed_s': elapsed_s, 'device': device, 'dtype': dtype, 'world_size': world_size,
    }
    try:
        with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=2)
    except OSError as e:
        if not checkpoint.disk_full(e):
            raise
        fail(f"disk full: cannot write summary.json in {out_dir}; {kept_checkpoints()}", code=1)
    if finished:
        print(f"done: {iter_num} iterations, best val loss {best_val_loss:.4f}")
    else:
        print(f"stopped at iter {iter_num}: {kept_checkpoints()}. {how_to_continue()}", file=sys.stderr)
if ddp:
    # every rank waits here while rank 0 writes summary.json: a rank tearing gloo down while another still talks to
    # it can abort the process at exit ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()
    if not finished:
        sys.exit(130)
if not finished:   # exit as an interrupted program does (status 130 in a shell), so a loop of runs stops too
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.excepthook = lambda *exc: None
    raise KeyboardInterrupt
