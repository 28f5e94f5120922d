"""
The paper's analyses of a trained run, computed from its checkpoint: the effective rank of the FFN matrices, the
cosine similarity between the layers' hidden states, and the learned activation curves f(x). report.py caches the
result of each run in analysis.json beside its checkpoint, so `compare.py --replot` needs no checkpoint.
At the end, what a model costs before it trains: its parameters and the time of one training step.
"""
import json
import math
import re

import numpy as np


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
    from data.dataset import TokenDataset, dataset_dir
    val = TokenDataset(dataset_dir(train_config.get('dataset', 'shakespeare_char')), 'val')
    x, _ = val.get_batch(batch_size, block_size, seed=0, step=0, micro_step=0)
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
    from training import checkpoint
    from model import ACTIVATIONS, GPTConfig, GPT, upgrade_model_args
    ckpt = checkpoint.load(str(run_dir / 'ckpt.pt'), map_location='cpu', required=('model', 'model_args'))
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
    """Compute analysis.json for runs that have a checkpoint newer than their cached analysis. A damaged checkpoint
    costs that run its analyses (said in one line), not the report: its losses come from the logs."""
    from training import checkpoint
    for act_runs in runs.values():
        for run in act_runs:
            ckpt, cached = run['dir'] / 'ckpt.pt', run['dir'] / 'analysis.json'
            if not ckpt.exists():
                continue                                                   # --replot from logs: keep the cache
            if cached.exists() and cached.stat().st_mtime >= ckpt.stat().st_mtime:
                continue
            print(f"analysing {run['dir']} (effective rank, layer cosine, activation curves)")
            try:
                run['analysis'] = analyze_run(run['dir'], batch_size)
            except checkpoint.CheckpointError as e:
                print(f"WARNING: {e}; its analyses are left out")
                continue
            cached.write_text(json.dumps(run['analysis']))


# ----------------------------------------------------------------------------- what a model costs
def model_counts(conf, vocab_size):
    """Non-embedding parameters and training FLOPs per token of the model train.py would build from conf."""
    model, args = build_model(conf, vocab_size)
    return {'non_embedding_params': model.num_params(non_embedding=True),
            'flops_per_token': model.flops_per_token(), 'model_args': args}


def build_model(conf, vocab_size):
    """The GPT train.py would build from the settings conf (on CPU, the global RNG untouched) and its arguments."""
    import dataclasses
    import torch
    from model import GPT, GPTConfig
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    args = dict({k: v for k, v in conf.items() if k in fields}, vocab_size=vocab_size)
    with torch.random.fork_rng():
        return GPT(GPTConfig(**args), verbose=False), args


def step_seconds(model, conf, steps=3):
    """Mean wall seconds of one training step of `model` in this process (one warm-up first), as train.py takes it:
    bench.py's shared timing step and model.py's optimizer builder, train.py's batch shape and precision."""
    import contextlib
    import torch
    device = str(conf.get('device', 'auto'))
    device = ('cuda' if torch.cuda.is_available() else 'cpu') if device == 'auto' else device
    model = model.to(device)
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    optimizer = model.configure_optimizers(conf['weight_decay'], conf['learning_rate'], (conf['beta1'], conf['beta2']),
                                           device_type)
    x = torch.randint(model.config.vocab_size, (conf['batch_size'], conf['block_size']), device=device)
    dtype = conf.get('dtype', 'auto')
    dtype = ('bfloat16' if device_type == 'cuda' else 'float32') if dtype == 'auto' else dtype   # train.py's rule
    ctx = (torch.autocast(device_type, dtype=getattr(torch, dtype)) if device_type == 'cuda' and dtype != 'float32'
           else contextlib.nullcontext())

    def step():
        train_step(model, optimizer, x, x, ctx, micro_steps=conf['gradient_accumulation_steps'])
    step()
    return mean_step_seconds(step, steps, device)


# -----------------------------------------------------------------------------
# The timing step: one home for bench.py and step_seconds above (compare.py's duration estimate)


def train_step(model, optimizer, x, y, ctx, micro_steps=1):
    """One optimizer step as train.py takes it, without gradient clipping: micro_steps forward + backward passes on
    the (B, T) batch x -> targets y, each objective (cross-entropy + MoE aux losses, 0 for dense) divided by
    micro_steps so the gradients add up to their mean, then the optimizer step and zero_grad. ctx is the autocast
    context (or nullcontext) the forward runs in."""
    for _ in range(micro_steps):
        with ctx:
            _, loss, aux = model(x, y, return_aux=True)
            objective = (loss + aux['aux_total']) / micro_steps
        objective.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def mean_step_seconds(step, n, device):
    """Mean wall seconds of n calls of step() (a no-argument callable). CUDA runs asynchronously: synchronize before
    starting and before stopping the clock, so the time is the work's, not the launch's."""
    import time
    import torch
    device = str(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith('cuda') else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return (time.perf_counter() - t0) / n
