"""
Train a nanoPoly GPT on a CPU, one GPU, or several GPUs, processes or nodes with DDP.

One device:       python train.py config/train_shakespeare_char.py --activation=polynorm
Several (DDP):    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small.py
Several nodes:    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=IP --master_port=PORT train.py ...
                  (the same with --node_rank=1 on the other node; the dataset on every node, out_dir on rank 0's)
Resume:           python train.py --out_dir=out-shakespeare-char --init_from=resume
                  (the checkpoint's settings are the defaults; flags you pass win, except for the architecture)

Every knob is a global below with its default; config files and --key=value flags override them (configurator.py),
training/settings.py checks them before torch is imported. out_dir (training/run_folder.py): ckpt.pt, ckpt_best.pt,
log.csv, coeffs.csv, moe.csv, summary.json, .lock. Ctrl-C / SIGTERM stops after this iteration with a checkpoint (a
second Ctrl-C at once, unsaved). Exit status: 0 finished, 1 went wrong (disk full, ...), 2 bad settings, 3 diverged
(training/divergence.py), 4 did not learn (check_learned), 130 stopped.

Reproducibility: micro-batch positions are a pure function of (seed, step, global micro-step index) (data/dataset.py),
so a resumed run sees exactly the batches an uninterrupted one would, and N ranks with G/N micro-steps each see the
same G micro-batches as one process with G. On CPU in float32 a resumed run is bitwise identical to a straight one.
"""
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

from configurator import configure
from training import checkpoint, settings
from training.processes import StopRequest, say, torchrun_env
from training.run_folder import RunFolder, open_wandb_run, outcome_at_the_end, resume_command

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
check_learned = True        # a final val loss not below the unigram entropy of train.bin is no result (exit 4)
# wandb logging (off by default; imported only when on): every row of log.csv, coeffs.csv and moe.csv, step = iter
wandb_log = False
wandb_project = 'nanopoly'
wandb_run_name = 'run'      # compare.py names each of its runs after its folder: <variant>[-lr<rate>]-s<seed>
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
ddp_timeout = 600.0         # seconds DDP processes wait for one another (the start, each collective), then give up
# -----------------------------------------------------------------------------
config, explicit = configure(globals())   # config file and --key=value overrides; `explicit` = keys the user set
# -----------------------------------------------------------------------------
# checks that need no torch come first: a wrong setting, dataset or out_dir costs a fraction of a second
ddp, rank, local_rank, world_size, nodes = torchrun_env()   # (False, 0, 0, 1, 1) without torchrun
master = rank == 0   # the GLOBAL rank 0 prints, logs and writes out_dir (every node has a LOCAL_RANK 0)
settings.check(config)
run = RunFolder(out_dir, master, resume_command(sys.argv[1:], out_dir, world_size, nodes))
if init_from == 'resume':
    run.check_checkpoint()   # a missing or visibly damaged checkpoint is refused before anything else happens
else:
    data = settings.open_dataset(dataset, block_size)
if not eval_only:
    run.claim(init_from, overwrite)   # the lock, and an old run is never replaced unless --overwrite=True

# torch comes only now (1-2 s): everything above fails fast
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from training import peak_flops  # noqa: E402
from data.dataset import model_vocab_size  # noqa: E402
from training.divergence import DivergenceGuard, advice  # noqa: E402
from model import GPT, MoE  # noqa: E402
from training.processes import choose_device, init_process_group, leave  # noqa: E402

resume = run.load_checkpoint() if init_from == 'resume' else None
if resume is not None:   # the checkpoint's config is the default for every knob the user did not set
    config = settings.resumed_config(config, explicit, resume, run.ckpt_path)
    globals().update(config)
device, device_type, dtype, ctx = choose_device(device, dtype, local_rank if ddp else None)
gradient_accumulation_steps = settings.fit_accumulation(config, world_size, resume is not None)   # % world_size == 0
config['gradient_accumulation_steps'] = gradient_accumulation_steps
if ddp:
    init_process_group(device_type, world_size, ddp_timeout)
micro_steps = gradient_accumulation_steps // world_size   # micro-steps on this rank per optimizer step
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
checkpoint.seed_everything(seed + rank)        # dropout masks differ per rank; batches do not depend on this
if resume is not None:   # the dataset and block_size may have come from the checkpoint
    data = settings.open_dataset(dataset, block_size)
other_data = resume is not None and settings.check_resumed_dataset(resume, data.meta, dataset, explicit)
meta, train_data, val_data = data.meta, data.train, data.val
unigram_loss = settings.unigram_floor(config, train_data)   # the run must end below it (None: check_learned off)


def get_batch(split, step, micro_step, rank=0, micro_steps_per_rank=1):
    """(B, T) int64 inputs and targets on the device, keyed by (seed, split, step, rank*micro_steps_per_rank+micro_step)"""
    x, y = split.get_batch(batch_size, block_size, seed, step=step, micro_step=micro_step, rank=rank,
                           micro_steps_per_rank=micro_steps_per_rank)
    if device_type == 'cuda':   # pinned memory lets the copy run asynchronously
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# model (a resumed one keeps its vocabulary size) and optimizer
vocab_size = resume['model_args']['vocab_size'] if resume is not None else model_vocab_size(meta)
gptconf = settings.model_config(config, vocab_size, meta)
raw_model = GPT(gptconf, verbose=master)   # the plain module: its state_dict has no compile/DDP prefixes
if resume is not None:
    checkpoint.load_weights(raw_model, resume['model'], run.ckpt_path)
raw_model.to(device)
optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))   # fp16 needs loss scaling, bf16 does not
iter_num, tokens, best_val_loss, best_iter, final_val_loss, elapsed_s = (0, 0, math.inf, None, None, 0.0) \
    if resume is None else checkpoint.restore_training(resume, optimizer, scaler, rank, world_size, say)
if resume is not None:
    run.last_saved, run.saved_best = (iter_num, final_val_loss), (best_iter, best_val_loss) if best_iter is not None \
        else None
    if other_data:   # val losses on two datasets do not compare: the best starts again
        best_val_loss, best_iter = math.inf, None
    say(f"resuming from {run.ckpt_path} at iter {iter_num} ({tokens:,} tokens seen)")
    resume = None   # free the memory
start_iter = iter_num
if start_iter >= max_iters and not eval_only:   # a finished run resumed with the same max_iters: nothing to train
    run.nothing_to_train(max_iters, unigram_loss, iter=iter_num, tokens=tokens, final_val_loss=final_val_loss,
                         best_iter=best_iter, best_val_loss=best_val_loss)
    leave(0)
model = torch.compile(raw_model) if compile else raw_model   # evaluation uses this one (never the DDP wrapper)
train_model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None) if ddp else model
guard = DivergenceGuard(meta['vocab_size'], best_val_loss, say)   # decides which evaluations may be saved
n_moe_layers = sum(isinstance(block.mlp, MoE) for block in raw_model.transformer.h)


def get_lr(it):
    """Learning rate for the optimizer step that takes the model from iteration it to it + 1: linear warmup, then
    cosine decay to min_lr over lr_decay_iters (-1: max_iters; a resume keeps the length it started with)."""
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
    sees the same set), in eval mode (no dropout); rank r takes batches r, r + world_size, ...; sums are all-reduced."""
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
    """Collective (every rank passes its RNG state); rank 0 writes out_dir/ckpt.pt (and links ckpt_best.pt)."""
    rng = [None] * world_size
    if ddp:
        dist.all_gather_object(rng, checkpoint.get_rng_state())
    else:
        rng[0] = checkpoint.get_rng_state()
    run.save_checkpoint({
        'model': checkpoint.clean_state_dict(raw_model.state_dict()), 'optimizer': optimizer.state_dict(),
        'scaler': scaler.state_dict(), 'model_args': asdict(gptconf), 'config': config, 'iter_num': iter_num,
        'tokens': tokens, 'best_val_loss': guard.best_val_loss, 'best_iter': best_iter,
        'val_loss': final_val_loss, 'elapsed_s': elapsed_s, 'rng': rng,   # val_loss: of these weights; rng: per rank
        # batches are keyed by (seed, step, micro-step): the iteration is the data position
        'data_position': {'iter': iter_num, 'seed': seed, 'gradient_accumulation_steps': gradient_accumulation_steps},
        'meta': meta, 'torch_version': str(torch.__version__)}, best)
    say(f"iter {iter_num}: saved {run.ckpt_path}" + (f" (also {run.best_path}: best so far)" if best else ""))


speed = None if eval_only else peak_flops.Speedometer(raw_model.flops_per_token(), tokens_per_iter, device, world_size,
                                                      nodes, dist if ddp else None, say)   # tokens/s, MFU
say(f"tokens per iteration: {tokens_per_iter:,} ({gradient_accumulation_steps} micro-steps x {batch_size} x "
    f"{block_size}, {world_size} process(es){f' on {nodes} nodes' if nodes > 1 else ''}); device {device}, dtype "
    f"{dtype}{'; ' + speed.peak_note if speed else ''}")
if not eval_only:
    say(f"out_dir: {os.path.abspath(out_dir)} ({run.state(init_from, start_iter)})")
    if max(get_lr(it) for it in range(start_iter, max_iters)) < learning_rate:
        say(f"note: the schedule (get_lr) never reaches learning_rate ({learning_rate:g}) in this run")
# -----------------------------------------------------------------------------
# iter_num counts finished optimizer steps: a log row for iter i has the loss of the step that produced weights i
# (computed with weights i-1) and the val loss of weights i; the schedule's lr for that step is get_lr(i-1).
if iter_num == 0 or eval_only:
    val_loss = settings.first_forward(evaluate, compile)   # a torch.compile failure is one line there
    say(f"iter {iter_num}: val loss {val_loss:.4f}")
    if iter_num == 0:
        final_val_loss = guard.best_val_loss = val_loss
if eval_only:
    leave(0)
wandb_run = open_wandb_run(config) if master and wandb_log else None   # every log row from iter 0 on goes there too
run.start(init_from, iter_num, final_val_loss, list(raw_model.poly_coefficients()), n_moe_layers,   # old files go now
          wandb_run)
stop = StopRequest()   # Ctrl-C/SIGTERM: finish this iteration, evaluate, save, exit (the flag rides on the all-reduce)
diverged_because = None   # set when the loss became non-finite: the run stops without saving
t_last, iters_since_log = time.time(), 0
load_start, loop_start = peak_flops.cpu_seconds(), time.time()
nonfinite = torch.zeros((), device=device)   # count of steps with a non-finite loss since the last log row
x, y = get_batch(train_data, iter_num, 0, rank, micro_steps)
while iter_num < max_iters:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr

    # forward/backward over this rank's micro-steps; sums stay on the device (no .item(): that would sync every step)
    sums = torch.zeros(3 + n_moe_layers * n_expert, device=device)   # loss, balance, z, expert loads (layer, expert)
    for micro_step in range(micro_steps):
        # DDP all-reduces gradients in backward; skip that on all but the last micro-step (no_sync covers fwd + bwd)
        with train_model.no_sync() if ddp and micro_step < micro_steps - 1 else nullcontext():
            with ctx:
                _, loss, aux = train_model(x, y, return_aux=True)
                # objective = cross-entropy + MoE aux terms; / micro_steps: grads sum over micro-steps, DDP averages
                # over ranks, so the total is the mean over the global batch
                objective = (loss + aux['aux_total']) / micro_steps
            if micro_step + 1 < micro_steps:   # fetch the next micro-batch while the device works on this one
                x, y = get_batch(train_data, iter_num, micro_step + 1, rank, micro_steps)
            scaler.scale(objective).backward()
        sums += torch.cat([torch.stack([loss.float(), aux['balance_loss'].float(), aux['z_loss'].float()]).detach(),
                           aux['expert_load'].float().flatten() if n_moe_layers else sums[3:]])
    scaler.unscale_(optimizer)   # fp16: the true gradients, for the norm and the clip (a no-op otherwise)
    grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    nonfinite += (~torch.isfinite(sums[0])).float()
    iter_num += 1
    tokens += tokens_per_iter
    iters_since_log += 1
    if iter_num < max_iters:
        x, y = get_batch(train_data, iter_num, 0, rank, micro_steps)

    log_now = iter_num % log_interval == 0 or iter_num == max_iters or (stop.requested and not ddp)
    eval_now = iter_num % eval_interval == 0 or iter_num == max_iters
    if not (log_now or eval_now):
        continue

    # one all-reduce for the step's statistics, this rank's stop request and its seconds per iteration;
    # .tolist() is the sync point (waits for this step's device work)
    now = time.time()
    stats = torch.cat([sums, torch.stack([nonfinite, grad_norm.float()]) / world_size,
                       torch.tensor([float(stop.requested), (now - t_last) / iters_since_log / world_size],
                                    device=device)])
    if ddp:
        dist.all_reduce(stats)
    stats = stats.tolist()
    train_loss, balance_loss, z_loss = (s / gradient_accumulation_steps for s in stats[:3])  # mean over global batch
    nonfinite_steps, grad_norm, stopping, dt = stats[-4], stats[-3], stats[-2] > 0, stats[-1]   # dt: ranks' mean
    eval_now = eval_now or stopping
    elapsed_s += now - t_last   # training time only: evaluation and checkpointing are excluded
    if nonfinite_steps > 0 or not math.isfinite(train_loss):
        diverged_because = f"non-finite training loss (train_loss={train_loss}) up to iter {iter_num} at lr {lr:.3g}"
        break
    guard.watch_train_loss(train_loss, iter_num)
    tokens_per_sec, mfu = speed.period(dt, iter_num - iters_since_log, iter_num)   # MFU > 100% -> None

    val_loss = None
    if eval_now:
        val_loss = final_val_loss = evaluate()
        if not math.isfinite(val_loss):
            diverged_because = f"non-finite validation loss ({val_loss}) at iter {iter_num}"
            break
    row = dict(iter=iter_num, tokens=tokens, train_loss=train_loss, val_loss=val_loss, lr=lr, ms_per_iter=dt * 1000,
               tokens_per_sec=tokens_per_sec, mfu=mfu, elapsed_s=elapsed_s, grad_norm=grad_norm)
    if n_moe_layers:   # coefficient of variation of each layer's expert load (summed fractions per expert)
        load = torch.tensor(stats[3:-4]).view(n_moe_layers, n_expert)
        layer_cv = (load.std(dim=1, unbiased=False) / load.mean(dim=1)).tolist()
        row.update(balance_loss=balance_loss, z_loss=z_loss, expert_cv=sum(layer_cv) / n_moe_layers)
    run.log_iteration(row, layer_cv if n_moe_layers else (), raw_model.poly_coefficients())   # and to wandb_run
    if eval_now:
        good, improved = guard.judge_val_loss(val_loss, iter_num, run.kept())   # a diverging run is not saved
        best_iter = iter_num if improved else best_iter
        if good and (always_save_checkpoint or improved or iter_num == max_iters or stopping):
            save_checkpoint(best=improved)
    if stopping:
        break
    nonfinite.zero_()
    t_last, iters_since_log = time.time(), 0

# -----------------------------------------------------------------------------
# how the run ended: finished, diverged (no result: exit status 3), did not learn (no result: status 4) or stopped
# (Ctrl-C / SIGTERM: status 130)
if diverged_because is None and guard.diverged and iter_num >= max_iters:
    diverged_because = (f"the run diverged at iter {guard.since} and had not recovered by iter {iter_num} (last val "
                        f"loss {final_val_loss:.4f})")
outcome = ('diverged' if diverged_because else 'stopped' if iter_num < max_iters else
           outcome_at_the_end(final_val_loss, unigram_loss))
speed_figures = speed.summary(start_iter)   # medians after the warm-up; collective on CPU (a peak re-measure)
other_load_cores = peak_flops.other_load_cores(load_start, loop_start, dist if ddp else None, device)
if master:
    run.write_summary(outcome=outcome, diverged=guard.diverged, iter=iter_num, tokens=tokens,
                      final_val_loss=final_val_loss, best_val_loss=guard.best_val_loss, best_iter=best_iter,
                      other_load_cores=other_load_cores, peak_mem_mb=peak_flops.peak_memory_mb(device),
                      total_params=raw_model.num_params(), active_params=raw_model.num_active_params(),
                      elapsed_s=elapsed_s, device=device, dtype=dtype, world_size=world_size,
                      unigram_entropy=unigram_loss, **speed_figures)
if outcome == 'diverged':
    leave(3, f"diverged: {diverged_because}; it has no result. Last good checkpoint kept: {run.kept()}. Try "
             f"{advice(config)}")
if outcome == 'did_not_learn':
    leave(4, f"did not learn: final val loss {final_val_loss:.4f} is not below {unigram_loss:.4f}, the unigram entropy "
             f"of the training tokens (what token frequencies alone give); it has no result. Try {advice(config)}, "
             f"or more iterations")
if outcome == 'stopped':
    stop.exit_interrupted(f"stopped at iter {iter_num}: {run.kept()}. {run.how_to_continue()}", leave)
leave(0, f"done: {iter_num} iterations, " + (f"best val loss {guard.best_val_loss:.4f} (iter {best_iter})" if best_iter
                                             else f"no evaluation beat the first one ({guard.best_val_loss:.4f})"))
