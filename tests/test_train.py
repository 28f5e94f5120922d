"""
What users of train.py rely on: exact resume, DDP = one process, honest train_loss, a checkpoint that survives crashes
and NaNs, clear errors for bad flags. Everything runs on CPU in float32 with tiny models (train.py as a subprocess,
exactly as a user runs it).
"""
import json
import math
import os
import shutil
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from configurator import ConfigError, parse_config  # noqa: E402
from data.dataset import TokenDataset  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from training import checkpoint, peak_flops  # noqa: E402
from training.run_folder import resume_command  # noqa: E402
from train_helpers import make_char_dataset, read_log, run_script, torchrun_train, train  # noqa: E402


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp('data') / 'tiny_char')


@pytest.fixture(scope='module')
def single_run(data_dir, tmp_path_factory):
    """One process, 4 micro-steps per iteration, 8 iterations: the reference for the DDP and train_loss tests."""
    out = str(tmp_path_factory.mktemp('single'))
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--gradient_accumulation_steps=4', '--max_iters=8',
          '--eval_interval=4', '--activation=polynorm')
    return out


def load_state(out_dir):
    return checkpoint.load(os.path.join(out_dir, 'ckpt.pt'))


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_run_that_learned_nothing_is_no_result_exit_4_and_one_line(data_dir, tmp_path):
    """4 iterations leave the val loss (~3.2) above what letter frequencies alone give (the unigram entropy of the
    train split, ~2.90 here, counted below by hand from train.bin): train.py says so in one line and exits 4."""
    out = str(tmp_path / 'out')
    done = train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=4', '--check_learned=True', check=False)
    assert done.returncode == 4, done.stdout + done.stderr
    line = done.stderr.strip()
    assert '\n' not in line and line.startswith('did not learn: final val loss') and '--learning_rate' in line
    tokens = np.fromfile(os.path.join(data_dir, 'train.bin'), dtype=np.uint16)
    p = np.bincount(tokens) / len(tokens)
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    summary = json.load(open(os.path.join(out, 'summary.json')))
    assert summary['outcome'] == 'did_not_learn' and summary['finished'] is True
    assert summary['unigram_entropy'] == pytest.approx(entropy, abs=1e-9)
    assert summary['final_val_loss'] >= entropy and f"is not below {entropy:.4f}" in line


def test_a_run_that_learned_passes_the_check(data_dir, tmp_path):
    out = str(tmp_path / 'out')
    done = train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=40', '--eval_interval=40',
                 '--learning_rate=1e-2', '--lr_decay_iters=-1', '--check_learned=True')
    summary = json.load(open(os.path.join(out, 'summary.json')))
    assert summary['outcome'] == 'finished' and summary['final_val_loss'] < summary['unigram_entropy']
    assert done.stdout.strip().splitlines()[-1].startswith('done: 40 iterations')


def test_resume_is_bitwise_exact_and_drops_rows_of_a_killed_run(data_dir, tmp_path):
    # dropout on: resume must restore the RNG too, not only weights, optimizer and data position
    common = [f'--dataset={data_dir}', '--gradient_accumulation_steps=2', '--eval_interval=4', '--dropout=0.1',
              '--activation=polynorm']
    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    train(*common, f'--out_dir={straight}', '--max_iters=8')

    train(*common, f'--out_dir={resumed}', '--max_iters=4')            # checkpoint at iter 4
    shutil.copy(os.path.join(resumed, 'ckpt.pt'), tmp_path / 'ckpt4.pt')
    train(f'--out_dir={resumed}', '--init_from=resume', '--max_iters=6')  # logs rows 5, 6, saves ckpt at 6 ...
    shutil.copy(tmp_path / 'ckpt4.pt', os.path.join(resumed, 'ckpt.pt'))  # ... which a kill "lost": back to iter 4
    # resume needs no other flag: the checkpoint's config is the default
    out = train(f'--out_dir={resumed}', '--init_from=resume', '--max_iters=8').stdout
    assert 'iter 5:' in out and 'iter 0:' not in out

    a, b = read_log(straight), read_log(resumed)
    assert [r['iter'] for r in b] == [str(i) for i in range(9)]        # rows 5, 6 of the lost run are not duplicated
    for column in ('iter', 'tokens', 'train_loss', 'val_loss', 'lr'):
        assert [r[column] for r in a] == [r[column] for r in b], column   # same text = same float, bitwise
    assert read_log(straight, 'coeffs.csv') == read_log(resumed, 'coeffs.csv')
    sa, sb = load_state(straight), load_state(resumed)
    assert_same_tensors(sa['model'], sb['model'])
    for pa, pb in zip(sa['optimizer']['state'].values(), sb['optimizer']['state'].values()):
        assert_same_tensors(pa, pb)
    assert float(b[-1]['elapsed_s']) > float(b[4]['elapsed_s'])      # elapsed time continues across the resume


def test_checkpoint_is_clean_and_complete(single_run):
    ckpt = load_state(single_run)
    assert not any(k.startswith(('_orig_mod.', 'module.')) for k in ckpt['model'])
    for key in ('optimizer', 'scaler', 'model_args', 'config', 'iter_num', 'tokens', 'best_val_loss', 'rng',
                'elapsed_s', 'data_position', 'meta'):
        assert key in ckpt, key
    assert ckpt['iter_num'] == ckpt['data_position']['iter'] == 8
    assert ckpt['tokens'] == 8 * 4 * 4 * 16
    GPT(GPTConfig(**ckpt['model_args']), verbose=False).load_state_dict(ckpt['model'])   # loads into a fresh model

    summary = json.load(open(os.path.join(single_run, 'summary.json')))
    assert summary['finished'] is True and summary['iter'] == 8
    assert summary['final_val_loss'] == pytest.approx(float(read_log(single_run)[-1]['val_loss']))
    assert summary['tokens_per_sec'] > 0 and summary['ms_per_iter'] > 0 and 0 < summary['mfu']
    assert summary['peak_mem_mb'] > 0 and summary['total_params'] == summary['active_params'] > 0


def test_log_columns(single_run):
    rows = read_log(single_run)
    assert list(rows[0]) == ['iter', 'tokens', 'train_loss', 'val_loss', 'lr', 'ms_per_iter', 'tokens_per_sec', 'mfu',
                             'elapsed_s', 'balance_loss', 'z_loss', 'expert_cv', 'grad_norm']
    assert rows[0]['iter'] == '0' and rows[0]['train_loss'] == '' and rows[0]['val_loss'] != ''  # eval at iter 0
    assert [r['iter'] for r in rows if r['val_loss']] == ['0', '4', '8']   # every eval_interval and the last
    assert all(r['expert_cv'] == '' for r in rows)                            # dense model
    coeffs = read_log(single_run, 'coeffs.csv')
    assert list(coeffs[0]) == ['iter'] + [f'layer{i}.a{p}' for i in range(2) for p in (3, 2, 1, 0)]


def test_train_loss_is_the_mean_over_all_micro_steps(single_run, data_dir):
    """The iter-1 train_loss equals the mean cross-entropy of the initial model over the 4 micro-batches of step 0,
    recomputed here by hand, and not the loss of the first micro-batch alone."""
    ckpt = load_state(single_run)
    model = GPT(GPTConfig(**ckpt['model_args']), verbose=False)   # init depends only on init_seed: = the run's start
    data, seed = TokenDataset(data_dir, 'train'), ckpt['config']['seed']
    with torch.no_grad():
        losses = [model(*data.get_batch(4, 16, seed, step=0, micro_step=k, micro_steps_per_rank=4))[1].item()
                  for k in range(4)]
    logged = float(read_log(single_run)[1]['train_loss'])
    assert logged == pytest.approx(sum(losses) / 4, rel=1e-6)
    assert abs(logged - losses[0]) > 1e-4


def test_ddp_two_processes_match_one_process(single_run, tmp_path):
    """torchrun with 2 gloo ranks x 2 micro-steps = one process x 4 micro-steps (same global batch). Not bitwise: the
    gradient all-reduce and the eval all-reduce add in another order than one process's accumulation (float32
    rounding, ~1e-7 relative per step), so losses agree to rel 1e-5 over 8 steps."""
    ddp = str(tmp_path / 'ddp')
    ckpt = load_state(single_run)
    torchrun_train(2, f"--dataset={ckpt['config']['dataset']}", f'--out_dir={ddp}', '--gradient_accumulation_steps=4',
                   '--max_iters=8', '--eval_interval=4', '--activation=polynorm')
    a, b = read_log(single_run), read_log(ddp)
    assert [r['iter'] for r in a] == [r['iter'] for r in b]
    # AdamW divides by sqrt(v), so a constant gradient-scale error would largely cancel in the losses: the first
    # step's gradient norm (before clipping) and the weights after the run must agree as well as the losses
    assert float(b[1]['grad_norm']) == pytest.approx(float(a[1]['grad_norm']), rel=1e-5)
    for key, weight in ckpt['model'].items():
        torch.testing.assert_close(load_state(ddp)['model'][key], weight, rtol=1e-4, atol=1e-6, msg=key)
    for column in ('train_loss', 'val_loss'):
        for ra, rb in zip(a, b):
            if ra[column]:
                assert float(rb[column]) == pytest.approx(float(ra[column]), rel=1e-5), (column, ra['iter'])
    assert load_state(ddp)['data_position']['iter'] == 8


def test_plain_cuda_is_the_current_device_and_cuda_n_is_set(monkeypatch):
    """torch 2.11 refuses torch.cuda.set_device('cuda') (no index): on an H200 every train.py run with device=cuda
    failed there. Plain 'cuda' is left as the current device; DDP's cuda:LOCAL_RANK is set."""
    from training import processes
    calls = []

    def set_device(device):
        if torch.device(device).index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        calls.append(str(device))
    for name, value in {'is_available': lambda: True, 'device_count': lambda: 2, 'set_device': set_device,
                        'is_bf16_supported': lambda *a, **k: True}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', torch.backends.cuda.matmul.allow_tf32)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', torch.backends.cudnn.allow_tf32)
    assert processes.choose_device('cuda', 'float32', None)[:3] == ('cuda', 'cuda', 'float32') and calls == []
    assert processes.choose_device('cuda', 'float32', 1)[:2] == ('cuda:1', 'cuda') and calls == ['cuda:1']


def test_gradient_accumulation_must_divide_across_ranks(data_dir, tmp_path, monkeypatch):
    # the check runs before any process group exists, so torchrun's variables alone are enough to trigger it
    for name, value in {'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '2', 'MASTER_ADDR': '127.0.0.1',
                        'MASTER_PORT': '29500'}.items():
        monkeypatch.setenv(name, value)
    done = train(f'--dataset={data_dir}', f'--out_dir={tmp_path}', '--gradient_accumulation_steps=3', check=False)
    assert done.returncode == 2 and 'must be divisible by the number of processes (2)' in done.stderr


def test_resume_refuses_a_different_architecture(single_run, tmp_path):
    out = str(tmp_path / 'copy')
    shutil.copytree(single_run, out)
    done = train(f'--out_dir={out}', '--init_from=resume', '--n_layer=3', check=False)
    assert done.returncode == 2
    assert 'n_layer=3 does not match the checkpoint' in done.stderr.strip().splitlines()[-1]


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    out = str(tmp_path)
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=2', '--eval_interval=1')
    # an absurd learning rate blows the weights up within a few steps; eval_interval=1 tries to save after every step
    done = train(f'--out_dir={out}', '--init_from=resume', '--max_iters=40', '--learning_rate=1e9',
                 '--decay_lr=False', check=False)
    assert done.returncode == 3   # diverged: no result (contracts.md item 3)
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith('diverged: non-finite') and 'Last good checkpoint kept' in message
    ckpt = load_state(out)
    assert 2 <= ckpt['iter_num'] < 40
    assert all(torch.isfinite(t).all() for t in ckpt['model'].values())
    assert all(math.isfinite(float(r['train_loss'] or 0)) for r in read_log(out))


def test_failed_checkpoint_write_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    path = str(tmp_path / 'ckpt.pt')
    good = {'model': {'w': torch.arange(1000.0)}, 'iter_num': 4}
    checkpoint.save_atomic(good, path)
    before = open(path, 'rb').read()

    def crash_mid_write(obj, f, *args, **kwargs):
        f.write(b'half a checkpoint')   # some bytes reach the file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({'model': {'w': torch.zeros(1000)}, 'iter_num': 8}, path)
    monkeypatch.undo()
    assert open(path, 'rb').read() == before
    assert checkpoint.load(path)['iter_num'] == 4
    assert os.listdir(tmp_path) == ['ckpt.pt']   # no temp file left behind


def test_bad_config_key_or_type_is_one_clear_line(tmp_path):
    done = run_script(['train.py', '--n_layers=3'], check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: unknown config key 'n_layers' (from the command line); "
                                                "did you mean 'n_layer'?"]
    defaults = {'n_layer': 4, 'learning_rate': 1e-3, 'compile': False, 'activation': 'gelu'}
    for arg, expected in [('--n_layer=2.5', "'n_layer' (from the command line) expects int, got 2.5 (float)"),
                          ('--compile=1', "'compile' (from the command line) expects bool, got 1 (int)"),
                          ('--learning_rate=fast', "'learning_rate' (from the command line) expects float"),
                          ('--n_layer', "must look like --key=value")]:
        with pytest.raises(ConfigError, match=expected.replace('(', r'\(').replace(')', r'\)')):
            parse_config([arg], defaults)
    config_file = tmp_path / 'conf.py'
    config_file.write_text("import math\nn_layer = 6\nlearning_rate = 3\nactivation = 'polynorm'\n")
    config, explicit = parse_config([str(config_file), '--n_layer=8', '--compile=True'], defaults)
    assert config == {'n_layer': 8, 'learning_rate': 3.0, 'compile': True, 'activation': 'polynorm'}
    assert explicit == {'n_layer', 'learning_rate', 'compile', 'activation'}
    config_file.write_text("n_layers = 6\n")
    with pytest.raises(ConfigError, match="unknown config key 'n_layers'"):
        parse_config([str(config_file)], defaults)


def test_moe_run_logs_aux_losses_and_expert_load(data_dir, tmp_path):
    out = str(tmp_path)
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=3', '--eval_interval=3', '--n_expert=4',
          '--top_k=2', '--gradient_accumulation_steps=2')
    rows = [r for r in read_log(out) if r['train_loss']]
    assert len(rows) == 3
    for r in rows:
        assert float(r['balance_loss']) > 0.5 and float(r['z_loss']) > 0 and float(r['expert_cv']) >= 0
    moe = read_log(out, 'moe.csv')
    assert list(moe[0]) == ['iter', 'layer0_cv', 'layer1_cv'] and len(moe) == 3
    summary = json.load(open(os.path.join(out, 'summary.json')))
    assert summary['active_params'] < summary['total_params']


def test_gpu_peak_table_and_cpu_peak_cache(tmp_path, monkeypatch):
    assert peak_flops.gpu_peak_flops('NVIDIA H100 80GB HBM3') == 989e12
    assert peak_flops.gpu_peak_flops('NVIDIA H100 PCIe') == 756e12
    assert peak_flops.gpu_peak_flops('NVIDIA A100-SXM4-80GB') == 312e12
    assert peak_flops.gpu_peak_flops('NVIDIA A10') == 125e12
    assert peak_flops.gpu_peak_flops('NVIDIA A10G') is None          # unverified: MFU left empty, not wrong
    assert peak_flops.gpu_peak_flops('NVIDIA L4') == 121e12
    assert peak_flops.mfu(1e6, 1e3, None) is None
    assert peak_flops.mfu(6e6, 1e4, 1e12, num_devices=2) == pytest.approx(0.03)
    calls = []
    monkeypatch.setattr(peak_flops, 'measure_cpu_matmul_flops', lambda: calls.append(1) or 5e10)
    cache = str(tmp_path / 'cpu_peak.json')
    assert peak_flops.cpu_peak_flops(cache) == peak_flops.cpu_peak_flops(cache) == 5e10
    assert calls == [1]   # measured once, then read from the cache


def test_a_schedule_that_follows_max_iters_keeps_its_length_when_a_resume_extends_the_run(data_dir, tmp_path):
    """lr_decay_iters = -1 follows max_iters; raising --max_iters on resume continues at min_lr, it does not stretch
    the cosine of iterations already trained (which would raise the rate mid-run)."""
    out = str(tmp_path / 'out')
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=4', '--lr_decay_iters=-1', '--min_lr=1e-4',
          '--eval_interval=4')
    run_script(['train.py', f'--out_dir={out}', '--init_from=resume', '--max_iters=6', '--eval_interval=6'])
    lrs = {int(r['iter']): float(r['lr']) for r in read_log(out) if r['lr']}
    # the row of iteration k logs the rate of the step k-1 -> k: the steps after iteration 4 run at min_lr
    assert lrs[4] > 1e-4 and lrs[5] == pytest.approx(1e-4) and lrs[6] == pytest.approx(1e-4), lrs


@pytest.fixture(scope='module')
def dropout_run(data_dir, tmp_path_factory):
    """4 iterations with dropout 0.2, evaluated at 2 and 4 (4 logged periods: all in the warm-up)."""
    out = str(tmp_path_factory.mktemp('dropout'))
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=4', '--eval_interval=2', '--dropout=0.2')
    return out


def test_val_loss_is_the_mean_cross_entropy_of_the_saved_weights_in_eval_mode(dropout_run, data_dir):
    """Every verdict rests on val_loss. Rebuilt from the final checkpoint, the mean cross-entropy over the evaluation
    batches (the val split, step 0, micro-steps 0 .. eval_iters-1) in eval mode is the logged value; with dropout on,
    an evaluation in train mode or on the train split gives another number."""
    ckpt = load_state(dropout_run)
    model = GPT(GPTConfig(**ckpt['model_args']), verbose=False)
    model.load_state_dict(ckpt['model'])
    assert model.config.dropout == 0.2
    val, train_split, seed = TokenDataset(data_dir, 'val'), TokenDataset(data_dir, 'train'), ckpt['config']['seed']

    def mean_loss(split):
        with torch.no_grad():
            return sum(model(*split.get_batch(4, 16, seed, step=0, micro_step=k, micro_steps_per_rank=3))[1].item()
                       for k in range(3)) / 3

    logged = float(read_log(dropout_run)[-1]['val_loss'])
    model.eval()
    assert logged == pytest.approx(mean_loss(val), rel=1e-6)
    assert json.load(open(os.path.join(dropout_run, 'summary.json')))['final_val_loss'] == pytest.approx(logged)
    assert ckpt['val_loss'] == pytest.approx(logged)
    assert abs(mean_loss(train_split) - logged) > 1e-4   # the negative controls: the wrong split, train mode
    model.train()
    assert abs(mean_loss(val) - logged) > 1e-4


def test_summary_speed_figures_describe_the_same_iterations(dropout_run, single_run):
    """tokens_per_sec and ms_per_iter come from the same logged periods (tokens/s = tokens per iteration / s per
    iteration), and summary.json says which iterations they cover and whether the warm-up had to be included."""
    for run, tokens_per_iter, iters, warmup in [(dropout_run, 4 * 16, [1, 4], True), (single_run, 4 * 4 * 16, [6, 8],
                                                                                       False)]:
        summary = json.load(open(os.path.join(run, 'summary.json')))
        assert summary['tokens_per_sec'] * summary['ms_per_iter'] / 1000 == pytest.approx(tokens_per_iter, rel=1e-9)
        assert summary['speed_iters'] == iters and summary['speed_includes_warmup'] is warmup
        assert summary['outcome'] == 'finished' and summary['finished'] is True and summary['diverged'] is False


def test_lr_schedule_matches_hand_computed_values(data_dir, tmp_path):
    """learning_rate 1e-3, min_lr 1e-4, warmup_iters 2, lr_decay_iters 6, 9 iterations. The row of iteration k logs
    the rate of the step k-1 -> k, i.e. get_lr(k - 1)."""
    out = str(tmp_path)
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=9', '--eval_interval=9', '--learning_rate=1e-3',
          '--min_lr=1e-4', '--warmup_iters=2', '--lr_decay_iters=6')
    lrs = {int(r['iter']) - 1: float(r['lr']) for r in read_log(out) if r['lr']}
    expected = {0: 3.3333333e-4, 1: 6.6666667e-4,   # warmup: 1e-3 * (it + 1) / 3
                2: 1e-3,                              # the cosine starts at the peak ...
                3: 8.6819805e-4,                      # 1e-4 + 9e-4 * (1 + cos(pi/4)) / 2
                4: 5.5e-4,                            # mid-cosine: half way between peak and min_lr
                5: 2.3180195e-4,                      # 1e-4 + 9e-4 * (1 + cos(3pi/4)) / 2
                6: 1e-4, 7: 1e-4, 8: 1e-4}            # the end (lr_decay_iters) and past it: min_lr
    assert lrs == pytest.approx(expected, rel=1e-6)


# torch.compile on CPU builds C++ kernels: measured on the shared 2-core machine, ~9 min for the first compiled
# 4-iteration run and ~1.5 min with the kernel cache warm, so the compiled case is opt-in (NANOPOLY_COMPILE_TESTS=1)
COMPILE_TESTS = os.environ.get('NANOPOLY_COMPILE_TESTS') == '1'


@pytest.mark.parametrize('kind', ['moe', pytest.param('compiled', marks=pytest.mark.skipif(
    not COMPILE_TESTS, reason='torch.compile on CPU takes minutes per run; set NANOPOLY_COMPILE_TESTS=1'))])
def test_resume_of_moe_and_compiled_runs_is_bitwise_exact(kind, data_dir, tmp_path):
    flags = {'moe': ['--n_expert=4', '--top_k=2', '--gradient_accumulation_steps=2'], 'compiled': ['--compile=True']}
    common = [f'--dataset={data_dir}', '--eval_interval=2', '--dropout=0.1', *flags[kind]]
    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    train(*common, f'--out_dir={straight}', '--max_iters=4')
    train(*common, f'--out_dir={resumed}', '--max_iters=2')
    train(f'--out_dir={resumed}', '--init_from=resume', '--max_iters=4')
    a, b = read_log(straight), read_log(resumed)
    columns = ('iter', 'train_loss', 'val_loss', 'grad_norm') + (('balance_loss', 'z_loss', 'expert_cv')
                                                                 if kind == 'moe' else ())
    for column in columns:
        assert [r[column] for r in a] == [r[column] for r in b], column   # same text = same float, bitwise
    sa, sb = load_state(straight), load_state(resumed)
    assert_same_tensors(sa['model'], sb['model'])
    for pa, pb in zip(sa['optimizer']['state'].values(), sb['optimizer']['state'].values()):
        assert_same_tensors(pa, pb)


def test_the_resume_command_names_each_flag_once():
    """The last line of a stopped run: each flag the user typed once, with its last value (the one that counted)."""
    argv = ['config/x.py', '--max_iters=4', '--n_layer=2', '--out_dir=old', '--init_from=resume', '--max_iters=8']
    assert resume_command(argv, 'out', 1, 1) == 'python train.py --out_dir=out --init_from=resume --n_layer=2 ' \
                                                '--max_iters=8'
    assert resume_command(argv, 'out', 4, 1).startswith('torchrun --standalone --nproc_per_node=4 train.py')
    assert resume_command(argv, 'out', 4, 2).startswith('torchrun --nnodes=2 --nproc_per_node=2 ')


# ---- wandb (--wandb_log=True): the real package, offline


def wandb_history(wandb_dir):
    """{step: {key: value}} of the one offline run under wandb_dir, and its run record (name, project), read from its
    run-<id>.wandb file: wandb's LevelDB-log framing (a 7-byte file header, 32 KiB blocks, records with a 7-byte
    header: crc32, length, type FULL/FIRST/MIDDLE/LAST) around protobuf Records. No wandb-summary.json is written
    offline, and wandb has no public reader of this file."""
    from pathlib import Path

    from wandb.proto import wandb_internal_pb2
    [path] = Path(wandb_dir, 'wandb').glob('offline-run-*/run-*.wandb')
    data = path.read_bytes()
    assert data[:4] == b':W&B'
    block, pos, pending, history, run = 32768, 7, b'', {}, None
    while pos + 7 <= len(data):
        if block - pos % block < 7:                       # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], 'little'), data[pos + 6]
        if kind == 0:                                     # zeros: the end of what was written
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                                # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b''
            if record.HasField('history'):
                items = {item.key or '.'.join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                history.setdefault(items.pop('_step'), {}).update(
                    {k: v for k, v in items.items() if k not in ('_timestamp', '_runtime')})
            elif record.HasField('run'):
                run = record.run
    return history, run


def test_wandb_gets_every_row_of_log_csv_coeffs_csv_and_moe_csv(data_dir, tmp_path):
    pytest.importorskip('wandb')
    from training.run_folder import CSV_FORMATS, number
    out = tmp_path / 'out'
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=4', '--eval_interval=2', '--activation=polynorm',
          '--n_expert=4', '--top_k=2', '--wandb_log=True', '--wandb_project=tests', '--wandb_run_name=polynorm-s1',
          extra_env=dict(WANDB_MODE='offline', WANDB_DIR=str(tmp_path), WANDB_SILENT='true'))
    history, run = wandb_history(tmp_path)
    assert (run.display_name, run.project) == ('polynorm-s1', 'tests')
    expected = {}          # the CSV logs as wandb should hold them: {iter: {key: cell text}}
    for name, prefix in (('log.csv', ''), ('coeffs.csv', 'coeffs/'), ('moe.csv', 'moe/')):
        for row in read_log(out, name):
            cells = {prefix + k: v for k, v in row.items() if v != '' and (name == 'log.csv' or k != 'iter')}
            expected.setdefault(int(row['iter']), {}).update(cells)
    assert sorted(history) == sorted(expected) == [0, 1, 2, 3, 4]     # the iteration-0 evaluation included
    assert {'val_loss', 'coeffs/layer1.a3', 'moe/layer1_cv', 'expert_cv', 'grad_norm'} <= set(history[2])
    for step, cells in expected.items():
        assert set(history[step]) == set(cells), step
        for key, text in cells.items():   # the same number: wandb's at full precision, formatted as log.csv does
            assert number(history[step][key], CSV_FORMATS.get(key)) == text, (step, key)


def test_wandb_log_without_the_package_is_one_line(data_dir, tmp_path):
    # whether or not wandb is installed here: train.py runs with it hidden (sys.modules[name] = None: not findable)
    hide = ("import runpy, sys; sys.modules['wandb'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path('train.py', run_name='__main__')")
    done = run_script(['-c', hide, 'train.py', f'--dataset={data_dir}', f'--out_dir={tmp_path}', '--max_iters=2',
                       '--wandb_log=True'], check=False)
    assert done.returncode == 2 and not os.listdir(tmp_path)
    assert done.stderr.strip().splitlines() == ["error: wandb_log=True needs the wandb package: pip install wandb (or "
                                                "run with --wandb_log=False)"]
