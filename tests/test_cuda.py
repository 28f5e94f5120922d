"""
Every CUDA path of nanoPoly: the PolyCom autograd Functions in fp32 and under bf16 autocast, gradcheck in float64,
the MoE's grouped matmul (bf16, SM >= 80) and its per-expert loop fallback, torch.compile(fullgraph=True) of every
activation and of the MoE, train.py with bf16 + compile + fused AdamW, its resume, fp16 + GradScaler, sample.py on
the GPU and a GPU checkpoint sampled on the CPU, torchrun with nccl, the GPT-2-small config, and the peak memory of
PolyNorm against GELU.

Skipped as a whole where torch sees no CUDA GPU (CI is CPU-only). On a GPU: `python gpu_check.py` runs this file and
then the GPU benchmark, or `python -m pytest -q tests/test_cuda.py` alone (~2-3 minutes on an H200, compiles included).
Tolerances are stated where they are set, with the reason: each is the rounding the path is expected to add.
"""
import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False); "
                                       "run python gpu_check.py on a machine with one")

import model  # noqa: E402
from model import ACTIVATIONS, GPT, GPTConfig, MoE, build_activation, grouped_matmul  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from training import checkpoint  # noqa: E402
from train_helpers import REPO, TINY, env, make_char_dataset, read_log  # noqa: E402

DEVICE = 'cuda'
POLY_ACTIVATIONS = [name for name in ACTIVATIONS if name.startswith('poly')]   # every PolyCom form, new ones too
BF16_ROUNDING = 2 ** -8   # bf16 keeps 8 significant bits: rounding to nearest errs by at most 2^-8 relative


def older_than_ampere():
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 8


# -----------------------------------------------------------------------------
# PolyCom activations against float64 formulas

def randomized(name, order=3, seed=0):
    """The activation `name` with random coefficients (the paper's init 1/r, 0 would hide a swapped index)."""
    torch.manual_seed(seed)
    act = build_activation(name, order)
    with torch.no_grad():
        for p in act.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
    return act


def values_and_grads(act, x, upstream):
    """y, dL/dx and dL/dparam for every parameter of act, with L = <y, upstream>."""
    x = x.detach().clone().requires_grad_(True)
    y = act(x)
    y.backward(upstream)
    return [y.detach(), x.grad] + [p.grad for p in act.parameters()]


def reference_values_and_grads(act, x, upstream):
    """The same in float64 on the CPU, by plain autograd through PolyCom.formula(): the paper's formula written as it
    stands (tests/test_model.py checks it against the paper), independent of the closed-form Functions under test."""
    ref = copy.deepcopy(act).double().cpu()
    x = x.detach().double().cpu().requires_grad_(True)
    y = ref.formula(x)
    y.backward(upstream.double().cpu())
    return [y.detach(), x.grad] + [p.grad for p in ref.parameters()]


def problem(shape=(64, 256), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 1.5, torch.randn(shape, generator=g)


@pytest.mark.parametrize('name', POLY_ACTIVATIONS)
def test_polycom_fp32_forward_and_backward_on_cuda_equal_float64_formula(name):
    """fp32 on CUDA against float64 on the same (fp32) inputs: rtol = atol = 1e-4, i.e. fp32's 6e-8 per operation
    over ~20 operations, amplified where the two terms of PolyNorm's dx cancel."""
    act = randomized(name)
    x, upstream = problem()
    ours = values_and_grads(copy.deepcopy(act).to(DEVICE), x.to(DEVICE), upstream.to(DEVICE))
    ref = reference_values_and_grads(act, x, upstream)
    assert ours[0].dtype == torch.float32
    for what, a, b in zip(['y', 'dx'] + [f'd{n}' for n, _ in act.named_parameters()], ours, ref):
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-4, atol=1e-4, msg=f"{name} fp32 CUDA: {what}")


@pytest.mark.parametrize('name', POLY_ACTIVATIONS)
def test_polycom_under_bf16_autocast_rounds_only_its_output(name):
    """Under bf16 autocast the FFN hands the activation bf16 values; powers and norms are computed in fp32 and only
    y and dx are rounded to bf16 at the end. So against the float64 formula on the same bf16 values, y and dx may
    differ by one bf16 rounding (relative 2^-8) plus fp32 error (atol 1e-4), and the fp32 parameter gradients (sums
    of fp32 products) by fp32 error alone (rtol 1e-4). Powers taken in bf16 would miss this by far at x^3 already."""
    act = randomized(name)
    x, upstream = (t.to(torch.bfloat16) for t in problem())
    with torch.autocast(device_type=DEVICE, dtype=torch.bfloat16):
        ours = values_and_grads(copy.deepcopy(act).to(DEVICE), x.to(DEVICE), upstream.to(DEVICE))
    ref = reference_values_and_grads(act, x, upstream)
    assert ours[0].dtype == torch.bfloat16 and ours[1].dtype == torch.bfloat16
    for what, a, b in zip(['y', 'dx'], ours, ref):
        torch.testing.assert_close(a.double().cpu(), b, rtol=BF16_ROUNDING, atol=1e-4, msg=f"{name} bf16: {what}")
    for (pname, p), a, b in zip(act.named_parameters(), ours[2:], ref[2:]):
        assert a.dtype == p.dtype == torch.float32
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-4, atol=1e-4, msg=f"{name} bf16: d{pname}")


@pytest.mark.parametrize('name', POLY_ACTIVATIONS)
def test_polycom_gradcheck_on_cuda_in_float64(name):
    act = randomized(name).double().to(DEVICE)
    names = [n for n, _ in act.named_parameters()]
    x = (torch.randn(4, 24, dtype=torch.float64) * 1.5).to(DEVICE)

    def fn(x, *params):
        return torch.func.functional_call(act, dict(zip(names, params)), (x,))

    inputs = (x, *(p.detach().clone() for p in act.parameters()))
    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_(True) for t in inputs), eps=1e-6, atol=1e-6)


# -----------------------------------------------------------------------------
# MoE: grouped matmul (bf16, SM >= 80) and its per-expert loop fallback

def grouped_problem(dtype, seed=0):
    """a: (M, K) rows sorted by expert, b: (E, K, N), offsets: (E,) group ends, with one expert that gets no rows."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([40, 0, 72, 16])
    a = torch.randn(int(counts.sum()), 64, generator=g).to(DEVICE, dtype)
    b = (torch.randn(4, 64, 48, generator=g) / 8).to(DEVICE, dtype)
    upstream = torch.randn(a.shape[0], 48, generator=g).to(DEVICE, dtype)
    return a, b, counts.cumsum(0).to(torch.int32).to(DEVICE), upstream


def per_expert_loop(a, b, offsets, upstream):
    """out, da, db by one fp32 matmul per expert on the same values: the reference for both paths."""
    a, b = a.detach().float().requires_grad_(True), b.detach().float().requires_grad_(True)
    ends = offsets.tolist()
    out = torch.cat([a[s:e] @ b[g] for g, (s, e) in enumerate(zip([0] + ends[:-1], ends))])
    out.backward(upstream.float())
    return out.detach(), a.grad, b.grad


def check_grouped_against_loop(a, b, offsets, upstream, rtol, atol):
    a, b = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
    out = grouped_matmul(a, b, offsets)
    out.backward(upstream)
    for what, ours, ref in zip(('out', 'da', 'db'), (out, a.grad, b.grad), per_expert_loop(a, b, offsets, upstream)):
        assert ours.dtype == a.dtype, what
        torch.testing.assert_close(ours.float(), ref, rtol=rtol, atol=atol, msg=f"grouped matmul {what}")
    assert b.grad[1].abs().sum() == 0   # the expert without rows gets a zero gradient


@pytest.mark.skipif(older_than_ampere(), reason="the bf16 grouped matmul needs compute capability >= 8.0")
def test_grouped_matmul_bf16_fast_path_forward_and_backward_equal_the_per_expert_loop():
    """grouped_mm accumulates in fp32 and rounds its bf16 output once (2^-8 relative); rtol 2^-7 leaves room for the
    other summation order, atol 1e-2 for sums near 0 (K = 64 terms of size ~1)."""
    a, b, offsets, upstream = grouped_problem(torch.bfloat16)
    assert model._usable_grouped_mm(a, b) is not None, "bf16 on SM >= 80 should take the grouped kernel"
    check_grouped_against_loop(a, b, offsets, upstream, rtol=2 * BF16_ROUNDING, atol=1e-2)


def test_grouped_matmul_loop_fallback_on_cuda(monkeypatch):
    """fp32 on CUDA has no grouped kernel: the per-expert loop runs (TF32 off, so fp32 error only); bf16 with the
    kernel hidden takes the same loop and meets the bf16 tolerance of the fast path."""
    a, b, offsets, upstream = grouped_problem(torch.float32)
    assert model._usable_grouped_mm(a, b) is None
    check_grouped_against_loop(a, b, offsets, upstream, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(model, '_usable_grouped_mm', lambda a, b: None)
    a, b, offsets, upstream = grouped_problem(torch.bfloat16)
    check_grouped_against_loop(a, b, offsets, upstream, rtol=2 * BF16_ROUNDING, atol=1e-2)


def moe_layer(activation='polynorm', **overrides):
    settings = dict(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=64, activation=activation, n_expert=4,
                    top_k=2, expert_hidden=128)
    settings.update(overrides)
    torch.manual_seed(0)
    moe = MoE(GPTConfig(**settings))
    with torch.no_grad():   # MoE leaves its matrices to GPT.init_parameters: draw them here
        for p in moe.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    return moe.to(DEVICE)


@pytest.mark.parametrize('activation', ['polynorm', 'swiglu'])
def test_moe_layer_under_bf16_autocast_equals_its_loop_fallback(activation, monkeypatch):
    """The whole MoE layer, forward and backward, grouped kernel vs per-expert loop, both bf16 with fp32 accumulation:
    intermediate values may round to neighbouring bf16 numbers, so outputs and gradients agree to a few bf16 roundings
    (rtol 2e-2, atol 2e-2 of the largest value). The router runs in fp32 in both, so both choose the same experts."""
    moe = moe_layer(activation)
    x = torch.randn(4, 32, 64, device=DEVICE)

    def run():
        moe.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with torch.autocast(device_type=DEVICE, dtype=torch.bfloat16):
            y, (balance, z, load) = moe(xi)
        (y.float().square().mean() + balance + z).backward()
        return [y.detach().float(), xi.grad, load] + [p.grad.float() for p in moe.parameters()]

    grouped = run()
    monkeypatch.setattr(model, '_usable_grouped_mm', lambda a, b: None)
    loop = run()
    torch.testing.assert_close(grouped[2], loop[2], rtol=0, atol=0, msg="the two paths routed differently")
    names = ['y', 'dx', 'load'] + [f'd{n}' for n, _ in moe.named_parameters()]
    for what, a, b in zip(names, grouped, loop):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item(), msg=f"MoE {activation}: {what}")


# -----------------------------------------------------------------------------
# Peak memory: PolyNorm's autograd Function against GELU, at the benchmark's size

def peak_training_step_bytes(activation):
    """Peak CUDA bytes of one bf16 training step of a GPT-2-small model (B = 8, T = 1024, as config/bench_gpu.py),
    after a first step has created the AdamW state; parameters, gradients and optimizer state included."""
    config = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, activation=activation)
    gpt = GPT(config, verbose=False).to(DEVICE)
    optimizer = gpt.configure_optimizers(weight_decay=0.1, learning_rate=1e-4, betas=(0.9, 0.95), device_type=DEVICE)
    idx = torch.randint(50304, (8, 1024), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))

    def step():
        with torch.autocast(device_type=DEVICE, dtype=torch.bfloat16):
            _, loss = gpt(idx, idx)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del gpt, optimizer
    torch.cuda.empty_cache()
    return peak


def test_polynorm_model_peak_memory_is_within_2_percent_of_gelu():
    gelu, polynorm = peak_training_step_bytes('gelu'), peak_training_step_bytes('polynorm')
    print(f"peak MiB: gelu {gelu / 2 ** 20:,.0f}, polynorm {polynorm / 2 ** 20:,.0f}, ratio {polynorm / gelu:.4f}")
    assert polynorm <= 1.02 * gelu, f"PolyNorm peak {polynorm / gelu:.3f}x GELU's (limit 1.02x)"


# -----------------------------------------------------------------------------
# train.py, sample.py and torchrun on the GPU (subprocesses, as a user runs them)

def run(args, launcher=None, extra_env=None, check=True):
    cmd = (launcher or [sys.executable]) + args
    done = subprocess.run(cmd, cwd=REPO, env=dict(env(), **(extra_env or {})), capture_output=True, text=True,
                          timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}")
    return done


def train(*args, **kwargs):
    return run(['train.py', *TINY, *args], **kwargs)


def losses(out_dir, column='train_loss'):
    return [float(r[column]) for r in read_log(out_dir) if r[column]]


def summary(out_dir):
    with open(os.path.join(out_dir, 'summary.json')) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp('data') / 'tiny_char')


GPU_RUN = [f'--device={DEVICE}', '--dtype=bfloat16', '--compile=True', '--activation=polynorm', '--batch_size=8',
           '--eval_interval=6']


@pytest.fixture(scope='module')
def gpu_run(data_dir, tmp_path_factory):
    """12 iterations with bf16 autocast + torch.compile + fused AdamW: the run the tests below continue and sample."""
    out = str(tmp_path_factory.mktemp('gpu_run'))
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=12', *GPU_RUN)
    return out


def test_train_py_with_bf16_compile_and_fused_adamw_lowers_the_loss(gpu_run):
    s = summary(gpu_run)
    assert s['finished'] is True and s['device'].startswith(DEVICE) and s['dtype'] == 'bfloat16'
    train_losses, val_losses = losses(gpu_run), losses(gpu_run, 'val_loss')
    assert all(math.isfinite(v) for v in train_losses + val_losses)
    assert train_losses[-1] < train_losses[0] - 0.1 and val_losses[-1] < val_losses[0] - 0.1, (train_losses, val_losses)
    ckpt = checkpoint.load(os.path.join(gpu_run, 'ckpt.pt'))
    assert all(group['fused'] for group in ckpt['optimizer']['param_groups'])   # fused AdamW on CUDA
    assert s['peak_mem_mb'] > 0


def test_resume_on_cuda_continues_the_run_to_within_atomics_noise(gpu_run, data_dir, tmp_path):
    """Not bitwise, unlike CPU float32: flash attention's backward adds dq with atomics, so gradients differ in their
    last fp32 bits from run to run, and bf16 autocast turns such differences into rounding flips of activations.
    Batches, lr schedule and token counts are exact; losses agree to 1e-3 relative after 6 resumed steps (a resume
    that restarts AdamW's moments or the schedule misses by more)."""
    out = str(tmp_path / 'resumed')
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=6', *GPU_RUN)
    run_out = train(f'--out_dir={out}', '--init_from=resume', '--max_iters=12', *GPU_RUN).stdout
    assert 'iter 7:' in run_out and 'iter 0:' not in run_out
    straight, resumed = read_log(gpu_run), read_log(out)
    for column in ('iter', 'tokens', 'lr'):
        assert [r[column] for r in straight] == [r[column] for r in resumed], column
    for column in ('train_loss', 'val_loss'):
        a, b = losses(gpu_run, column), losses(out, column)
        assert len(a) == len(b) and a == pytest.approx(b, rel=1e-3), column


def test_a_gpu_checkpoint_samples_on_cpu_and_on_cuda(gpu_run):
    greedy = ['sample.py', f'--out_dir={gpu_run}', '--start=The people', '--num_samples=1', '--max_new_tokens=20',
              '--temperature=0']
    on_cpu = run(greedy + ['--device=cpu']).stdout
    assert on_cpu.startswith('The people') and len(on_cpu.split('---------------')[0]) == len('The people') + 20 + 1
    on_cuda = [run(greedy + [f'--device={DEVICE}']).stdout for _ in range(2)]
    assert on_cuda[0].startswith('The people') and on_cuda[0] == on_cuda[1]   # greedy on CUDA is repeatable
    sampled = run(['sample.py', f'--out_dir={gpu_run}', '--start=The', '--num_samples=2', '--max_new_tokens=20',
                   f'--device={DEVICE}', '--dtype=bfloat16']).stdout
    assert sampled.count('---------------') == 2


def test_fp16_with_grad_scaler_trains(data_dir, tmp_path):
    out = str(tmp_path)
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=12', f'--device={DEVICE}', '--dtype=float16',
          '--activation=polyrelu', '--batch_size=8', '--eval_interval=6')
    assert summary(out)['dtype'] == 'float16'
    train_losses = losses(out)
    assert all(math.isfinite(v) for v in train_losses) and train_losses[-1] < train_losses[0] - 0.1, train_losses
    scaler = checkpoint.load(os.path.join(out, 'ckpt.pt'))['scaler']
    assert scaler and scaler['scale'] > 0          # the GradScaler ran and saved its scale for a resume


def test_torchrun_one_process_with_nccl_equals_one_plain_process(data_dir, tmp_path):
    """DDP over one nccl rank: the all-reduce of one gradient is a copy, so the run equals the plain process up to
    fp32 atomics noise (TF32 matmuls are deterministic): rel 1e-4."""
    common = [f'--dataset={data_dir}', '--max_iters=6', '--eval_interval=3', f'--device={DEVICE}', '--dtype=float32',
              '--activation=polynorm']
    plain, ddp = str(tmp_path / 'plain'), str(tmp_path / 'ddp')
    train(*common, f'--out_dir={plain}')
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1']
    done = train(*common, f'--out_dir={ddp}', launcher=launcher, extra_env={'NCCL_DEBUG': 'INFO'})
    assert 'NCCL INFO' in done.stdout + done.stderr, "no NCCL communicator was created"
    assert summary(ddp)['world_size'] == 1 and summary(ddp)['device'].startswith(DEVICE)
    assert losses(ddp) == pytest.approx(losses(plain), rel=1e-4)
    assert losses(ddp, 'val_loss') == pytest.approx(losses(plain, 'val_loss'), rel=1e-4)


def test_the_gpt2_small_gpu_config_trains(data_dir, tmp_path):
    """config/train_gpt2_small.py (124M, T = 1024, bf16) for 2 iterations, eager (its compile is the benchmark's)."""
    out = str(tmp_path)
    run(['train.py', 'config/train_gpt2_small.py', f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=2',
         '--eval_iters=1', '--eval_interval=2', '--log_interval=1', '--batch_size=2', '--gradient_accumulation_steps=1',
         '--warmup_iters=1', '--compile=False', f'--device={DEVICE}', '--check_learned=False'])
    s = summary(out)
    assert s['finished'] is True and s['dtype'] == 'bfloat16' and s['total_params'] > 80e6
    assert all(math.isfinite(v) for v in losses(out) + losses(out, 'val_loss'))


# -----------------------------------------------------------------------------
# torch.compile(fullgraph=True) on CUDA: no graph breaks, and the compiled model computes what the eager one does

def tiny_gpt(activation, **overrides):
    settings = dict(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=64, activation=activation)
    settings.update(overrides)
    return GPT(GPTConfig(**settings), verbose=False).to(DEVICE)


def eager_and_compiled(gpt, idx, autocast):
    """(logits, loss, gradients) of the eager model and of torch.compile(fullgraph=True) of it."""
    ctx = torch.autocast(device_type=DEVICE, dtype=torch.bfloat16, enabled=autocast)
    torch._dynamo.reset()   # a fresh cache per model: one test's recompilations never count against another's
    results = []
    for fn in (gpt, torch.compile(gpt, fullgraph=True)):
        gpt.zero_grad(set_to_none=True)
        with ctx:
            logits, loss, aux = fn(idx, idx, return_aux=True)
        (loss + aux['aux_total']).backward()
        results.append((logits.float(), loss.float(), [p.grad.float() for p in gpt.parameters()]))
    return results


@pytest.mark.parametrize('activation', list(ACTIVATIONS))
def test_every_activation_compiles_on_cuda_and_matches_eager(activation):
    """fp32, TF32 off: inductor fuses the elementwise passes and may reorder sums, fp32 error only (rtol 1e-4)."""
    idx = torch.randint(64, (4, 32), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    (logits, loss, grads), (c_logits, c_loss, c_grads) = eager_and_compiled(tiny_gpt(activation), idx, False)
    torch.testing.assert_close(c_logits, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=1e-5)
    for g, c in zip(grads, c_grads):
        torch.testing.assert_close(c, g, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('activation', ['polynorm', 'swiglu'])
def test_moe_compiles_on_cuda_under_bf16_and_matches_eager(activation):
    """bf16 autocast, where the grouped kernel serves the experts: compiled and eager round some intermediate values
    to neighbouring bf16 numbers, so logits agree to a few bf16 roundings (2e-2) and the loss to 1e-2 relative."""
    idx = torch.randint(64, (4, 32), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    gpt = tiny_gpt(activation, n_expert=4, top_k=2, expert_hidden=128)
    (logits, loss, grads), (c_logits, c_loss, c_grads) = eager_and_compiled(gpt, idx, True)
    torch.testing.assert_close(c_logits, logits, rtol=2e-2, atol=2e-2 * logits.abs().max().item())
    torch.testing.assert_close(c_loss, loss, rtol=1e-2, atol=0)
    assert all(torch.isfinite(c).all() for c in c_grads)
    w_fc = [n for n, _ in gpt.named_parameters()].index('transformer.h.0.mlp.w_fc')
    torch.testing.assert_close(c_grads[w_fc], grads[w_fc], rtol=5e-2, atol=5e-2 * grads[w_fc].abs().max().item())
