"""
Train a nanoPoly GPT on a CPU, one GPU, or several GPUs/processes with DDP.

One device:       python train.py config/train_shakespeare_char.py --activation=polynorm
Several (DDP):    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small.py
Resume:           python train.py --out_dir=out-shakespeare-char --init_from=resume
                  (the checkpoint's settings are the defaults; flags you pass win, except for the architecture)

Every knob is a global below with its default; a config file (plain Python) and --key=value flags override them
(configurator.py). Outputs in out_dir: ckpt.pt, log.csv, coeffs.csv (PolyCom coefficients), moe.csv (MoE only),
summary.json.

Reproducibility: micro-batch positions are a pure function of (seed, step, global micro-step index) (data/dataset.py),
so a resumed run sees exactly the batches an uninterrupted one would, and N ranks with G/N micro-steps each see the
same G micro-batches as one process with G. On CPU in float32 a resumed run is bitwise identical to a straight one.
"""
import csv
import json
import math
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
from configurator import configure
from data.dataset import TokenDataset, check_vocab, load_meta
from model import GPT, GPTConfig, MoE
from peak_flops import device_peak_flops, mfu as model_flops_utilization

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
rope_theta = 10000.0
init_seed = 1337            # weight init; independent of `seed` so the data order can vary with the same init
n_expert = 0                # 0 = dense; > 0 = mixture of experts
top_k = 2
moe_every = 1
expert_hidden = 0
aux_loss_weight = 0.01
z_loss_weight = 0.001
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
lr_decay_iters = -1         # -1 = max_iters
min_lr = 1e-4
# system
device = 'auto'             # 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'
dtype = 'auto'              # 'auto' (bf16 on CUDA if supported, else fp16; fp32 elsewhere), 'float32', 'bfloat16', 'float16'
compile = False             # torch.compile the model (needs a working compiler toolchain; big win on GPU)
seed = 1337                 # data order and dropout
# -----------------------------------------------------------------------------
config, explicit = configure(globals())   # config file and --key=value overrides; `explicit` = keys the user set
# -----------------------------------------------------------------------------


def fail(message, code=2):
    """One clear line for a person, then exit (2 = bad configuration, 1 = the run went wrong)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get('RANK', 0)) == 0:   # every rank fails the same way; one message is enough
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


if init_from not in ('scratch', 'resume'):
    fail(f"init_from must be 'scratch' or 'resume', got {init_from!r}")
if dtype not in ('auto', 'float32', 'bfloat16', 'float16'):
    fail(f"dtype must be one of auto, float32, bfloat16, float16, got {dtype!r}")
for key in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters', 'log_interval'):
    if globals()[key] < 1:
        fail(f"{key} must be >= 1, got {globals()[key]}")

# resume: the checkpoint's config is the default for every knob the user did not set; the architecture must match
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
resume = None
if init_from == 'resume':
    try:
        resume = checkpoint.load(ckpt_path)
    except FileNotFoundError as e:
        fail(str(e))
    for key, value in resume['config'].items():
        if key in config and key not in explicit and key not in ('init_from', 'out_dir'):
            config[key] = globals()[key] = value
    # dropout and the MoE loss weights may change on resume; everything else in GPTConfig defines the weights
    for key, value in resume['model_args'].items():
        if key in ('dropout', 'aux_loss_weight', 'z_loss_weight') or key not in config:
            continue
        if key in explicit and config[key] != value:
            fail(f"{key}={config[key]!r} does not match the checkpoint being resumed ({key}={value!r}); the "
                 f"architecture comes from {ckpt_path}: drop that setting or start a new run in another --out_dir")
        config[key] = globals()[key] = value

# distributed setup: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE
ddp = int(os.environ.get('RANK', -1)) != -1
rank, local_rank, world_size = ((int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE']))
                                if ddp else (0, 0, 1))
master = rank == 0   # only the master process prints, logs and writes files
if device == 'auto':
    device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
if device.startswith('cuda') and not torch.cuda.is_available():
    fail(f"device={device!r} but torch.cuda.is_available() is False; use --device=cpu (or auto)")
if device == 'mps' and not torch.backends.mps.is_available():
    fail("device='mps' but torch.backends.mps.is_available() is False; use --device=cpu (or auto)")
if ddp and device.startswith('cuda'):
    device = f'cuda:{local_rank}'
if device.startswith('cuda'):
    torch.cuda.set_device(device)   # the current device: bare .cuda() calls and the CUDA RNG state refer to it
device_type = 'cuda' if device.startswith('cuda') else device
if gradient_accumulation_steps % world_size != 0:
    fail(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the number of processes "
         f"({world_size}): it counts micro-steps over all ranks")
if ddp:
    dist.init_process_group(backend='nccl' if device_type == 'cuda' else 'gloo')
micro_steps = gradient_accumulation_steps // world_size   # micro-steps on this rank per optimizer step
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
if dtype == 'auto':
    dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if device_type == 'cuda' else 'float32'
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
# float32 autocast would be a no-op, so skip it; bf16/fp16 autocast keeps fp32 master weights
ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
torch.backends.cuda.matmul.allow_tf32 = True   # on Ampere+ "float32" matmuls run in TF32 (as nanoGPT does)
torch.backends.cudnn.allow_tf32 = True
checkpoint.seed_everything(seed + rank)        # dropout masks differ per rank; batches do not depend on this

# data
data_dir = dataset if os.sep in dataset else os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', dataset)
try:
    meta = load_meta(data_dir)
    train_data, val_data = TokenDataset(data_dir, 'train'), TokenDataset(data_dir, 'val')
except (FileNotFoundError, ValueError) as e:   # not prepared, or damaged: the message names the prepare command
    fail(str(e))
# char vocabularies stay as they are; BPE ones are padded to a multiple of 64 (GPT-2: 50257 -> 50304) for faster
# matmuls; the padding rows are never targets, so training pushes their logits down
vocab_size = meta['vocab_size'] if meta['tokenizer'] == 'char' else -(-meta['vocab_size'] // 64) * 64


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
    raw_model.load_state_dict(resume['model'])
raw_model.to(device)
optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))   # fp16 needs loss scaling, bf16 does not
iter_num, tokens, best_val_loss, final_val_loss, elapsed_s = 0, 0, float('inf'), None, 0.0
if resume is not None:
    optimizer.load_state_dict(resume['optimizer'])
    if scaler.is_enabled() and resume['scaler']:
        scaler.load_state_dict(resume['scaler'])
    iter_num, tokens, best_val_loss, final_val_loss, elapsed_s = (
        resume['iter_num'], resume['tokens'], resume['best_val_loss'], resume['val_loss'], resume['elapsed_s'])
    if len(resume['rng']) == world_size:
        checkpoint.set_rng_state(resume['rng'][rank])
    elif master:
        print(f"note: checkpoint saved with {len(resume['rng'])} processes, now {world_size}: dropout masks are "
              f"re-seeded, so the run is not a bitwise continuation (batches still are)")
    if master:
        print(f"resuming from {ckpt_path} at iter {iter_num} ({tokens:,} tokens seen)")
    resume = None   # free the memory
start_iter = iter_num
model = torch.compile(raw_model) if compile else raw_model   # evaluation uses this one (never the DDP wrapper)
train_model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None) if ddp else model


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


def save_checkpoint():
    """Collective (every rank passes its RNG state); rank 0 writes out_dir/ckpt.pt atomically."""
    rng = [None] * world_size
    if ddp:
        dist.all_gather_object(rng, checkpoint.get_rng_state())
    else:
        rng[0] = checkpoint.get_rng_state()
    if master:
        checkpoint.save_atomic({
            'model': checkpoint.clean_state_dict(raw_model.state_dict()),
            'optimizer': optimizer.state_dict(),
            'scaler': scaler.state_dict(),
            'model_args': asdict(gptconf),
            'config': config,
            'iter_num': iter_num,
            'tokens': tokens,
            'best_val_loss': best_val_loss,
            'val_loss': final_val_loss,   # of these weights
            'elapsed_s': elapsed_s,
            'rng': rng,   # one state per rank
            # batches are keyed by (seed, step, micro-step): the iteration is the data position
            'data_position': {'iter': iter_num, 'seed': seed, 'gradient_accumulation_steps': gradient_accumulation_steps},
            'meta': meta,
            'torch_version': str(torch.__version__),
        }, ckpt_path)


# ---- CSV logs (master only). On resume, rows after the checkpoint's iteration are dropped: a run killed after its last
# checkpoint wrote them, and the resumed run writes them again.
LOG_COLUMNS = ['iter', 'tokens', 'train_loss', 'val_loss', 'lr', 'ms_per_iter', 'tokens_per_sec', 'mfu', 'elapsed_s',
               'balance_loss', 'z_loss', 'expert_cv']


def start_csv(path, header):
    rows = []
    if init_from == 'resume' and os.path.exists(path):
        with open(path, newline='') as f:
            old = list(csv.reader(f))
        if old and old[0] == header:
            rows = [row for row in old[1:] if row and int(row[0]) <= iter_num]
    tmp = path + '.tmp'
    with open(tmp, 'w', newline='') as f:
        csv.writer(f).writerows([header] + rows)
    os.replace(tmp, path)


def append_csv(path, row):
    with open(path, 'a', newline='') as f:
        csv.writer(f).writerow(['' if v is None else v for v in row])


def number(value, spec=None):
    """Text for a CSV cell: '' for missing, full precision (repr) by default so curves compare exactly."""
    if value is None:
        return ''
    return format(value, spec) if spec else repr(float(value))


coefficient_names = list(raw_model.poly_coefficients())
n_moe_layers = sum(isinstance(block.mlp, MoE) for block in raw_model.transformer.h)
log_path, coeffs_path, moe_path = (os.path.join(out_dir, name) for name in ('log.csv', 'coeffs.csv', 'moe.csv'))
flops_per_token = raw_model.flops_per_token()
peak_flops = None
if master and not eval_only:
    os.makedirs(out_dir, exist_ok=True)
    start_csv(log_path, LOG_COLUMNS)
    if coefficient_names:
        start_csv(coeffs_path, ['iter'] + coefficient_names)
    if n_moe_layers:
        start_csv(moe_path, ['iter'] + [f'layer{i}_cv' for i in range(n_moe_layers)])
    peak_flops, peak_note = device_peak_flops(device)   # on CPU: a matmul benchmark, measured once and cached
    print(f"tokens per iteration: {tokens_per_iter:,} ({gradient_accumulation_steps} micro-steps x {batch_size} x "
          f"{block_size}, {world_size} process(es)); device {device}, dtype {dtype}; {peak_note}")
    if wandb_log:
        try:
            import wandb
        except ImportError:
            fail("wandb_log=True needs the wandb package: pip install wandb (or run with --wandb_log=False)")
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)

# -----------------------------------------------------------------------------
# training loop. iter_num counts finished optimizer steps: a log row for iter i has the loss of the step that produced
# weights i (computed with weights i-1) and the val loss of weights i; the schedule's lr for that step is get_lr(i-1).
if iter_num == 0 or eval_only:
    val_loss = evaluate()
    if master:
        print(f"iter {iter_num}: val loss {val_loss:.4f}")
        if not eval_only:
            append_csv(log_path, [iter_num, tokens, '', number(val_loss)] + [''] * (len(LOG_COLUMNS) - 4))
    if iter_num == 0:
        best_val_loss = final_val_loss = val_loss
if eval_only:
    if ddp:
        dist.destroy_process_group()
    sys.exit(0)

timings = []        # (first iteration of the logged period, ms/iter, tokens/s, mfu) for summary.json
last_saved_iter = start_iter if start_iter > 0 else None
t_last, iters_since_log = time.time(), 0
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

    log_now = iter_num % log_interval == 0 or iter_num == max_iters
    eval_now = iter_num % eval_interval == 0 or iter_num == max_iters
    if not (log_now or eval_now):
        continue

    # one all-reduce for the step's statistics; .tolist() is the sync point (waits for this step's device work)
    stats = torch.cat([torch.stack([loss_sum, balance_sum, z_sum, nonfinite]), load_sum.flatten()])
    if ddp:
        dist.all_reduce(stats)
    stats = stats.tolist()
    now = time.time()
    dt = (now - t_last) / iters_since_log
    elapsed_s += now - t_last   # training time only: evaluation and checkpointing are excluded
    train_loss, balance_loss, z_loss = (s / gradient_accumulation_steps for s in stats[:3])  # mean over global batch
    if stats[3] > 0 or not math.isfinite(train_loss):
        last = f"{ckpt_path} (iter {last_saved_iter})" if last_saved_iter is not None else "no checkpoint (none saved)"
        fail(f"non-finite training loss (train_loss={train_loss}) in the iterations up to {iter_num} at lr {lr:.3g}; "
             f"stopping. Last good checkpoint kept: {last}. Try a lower --learning_rate, a longer --warmup_iters, "
             f"--grad_clip=1.0, or --dtype=bfloat16 instead of float16", code=1)
    tokens_per_sec = tokens_per_iter / dt
    mfu = model_flops_utilization(flops_per_token, tokens_per_sec, peak_flops, world_size)
    timings.append((iter_num - iters_since_log, dt * 1000, tokens_per_sec, mfu))
    expert_cv, layer_cv = None, []
    if n_moe_layers:
        load = torch.tensor(stats[4:]).view(n_moe_layers, n_expert)        # summed fractions per layer and expert
        layer_cv = (load.std(dim=1, unbiased=False) / load.mean(dim=1)).tolist()   # coefficient of variation
        expert_cv = sum(layer_cv) / n_moe_layers

    val_loss = None
    if eval_now:
        val_loss = final_val_loss = evaluate()
        if not math.isfinite(val_loss):
            fail(f"non-finite validation loss ({val_loss}) at iter {iter_num}; stopping without saving. Last good "
                 f"checkpoint kept: {ckpt_path} (iter {last_saved_iter}). Try a lower --learning_rate", code=1)
    if master:
        mfu_text = f", mfu {mfu * 100:.2f}%" if mfu is not None else ""
        print(f"iter {iter_num}: loss {train_loss:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
              f"{tokens_per_sec:,.0f} tok/s{mfu_text}" + (f", val loss {val_loss:.4f}" if val_loss is not None else ""))
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
        improved = val_loss < best_val_loss
        best_val_loss = min(best_val_loss, val_loss)
        if always_save_checkpoint or improved or iter_num == max_iters:
            save_checkpoint()
            last_saved_iter = iter_num
            if master:
                print(f"iter {iter_num}: saved {ckpt_path}")
    nonfinite.zero_()
    t_last, iters_since_log = time.time(), 0

# -----------------------------------------------------------------------------
# summary.json: medians skip the first 5 iterations of this process (torch.compile, allocator and cache warm-up)
if master:
    steady = [t for t in timings if t[0] >= start_iter + 5] or timings
    if device_type == 'cuda':
        peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        import resource   # ru_maxrss is in KB on Linux, bytes on macOS
        peak_mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == 'darwin' else 1024)
    mfus = [t[3] for t in steady if t[3] is not None]
    summary = {
        'finished': True, 'iter': iter_num, 'tokens': tokens,
        'final_val_loss': final_val_loss, 'best_val_loss': best_val_loss,
        'tokens_per_sec': statistics.median(t[2] for t in steady) if steady else None,
        'ms_per_iter': statistics.median(t[1] for t in steady) if steady else None,
        'mfu': statistics.median(mfus) if mfus else None,
        'peak_mem_mb': peak_mem_mb,
        'total_params': raw_model.num_params(), 'active_params': raw_model.num_active_params(),
        'elapsed_s': elapsed_s, 'device': device, 'dtype': dtype, 'world_size': world_size,
    }
    with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    print(f"done: {iter_num} iterations, best val loss {best_val_loss:.4f}")
if ddp:
    dist.destroy_process_group()
