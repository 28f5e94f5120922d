"""
compare.py: what a user relies on when comparing activations. CPU only, tiny model, a few iterations per run.

One small comparison (gelu vs polynorm, 1 seed, 4 iterations) is trained once per module; the tests that change a
comparison (resume, replot) work on copies of it.
"""
import csv
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import compare
from data.dataset import char_vocabulary, write_token_dataset
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4', '--eval_iters=2',
        '--eval_interval=2', '--log_interval=1', '--warmup_iters=1', '--learning_rate=3e-3', '--device=cpu',
        '--dtype=float32', '--compile=False']
FIGURES = ['loss_curves.png', 'effective_rank.png', 'layer_cosine.png', 'poly_coefficients.png', 'activation_curves.png']


def make_dataset(data_dir):
    """~10k characters of seeded pseudo-text written with the data package's writer (train.py's input format)."""
    rng = random.Random(0)
    words = ['to', 'be', 'or', 'not', 'that', 'is', 'the', 'question', 'whether', 'tis', 'nobler', 'mind']
    text = '\n'.join(' '.join(rng.choice(words) for _ in range(rng.randint(3, 8))) for _ in range(400)) + '\n'
    chars = char_vocabulary([text])
    ids = np.array([chars.index(c) for c in text], dtype=np.uint32)
    write_token_dataset(data_dir, [ids], tokenizer='char', vocab_size=len(chars), source='tests', chars=chars)
    return str(data_dir)


def run_compare(*args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')   # 2 shared cores: one thread per process
    done = subprocess.run([sys.executable, 'compare.py', *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"compare.py {' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def read_rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def assert_png(path):
    """A real, non-empty PNG that matplotlib can read back."""
    import matplotlib.image
    assert os.path.getsize(path) > 0, path
    with open(path, 'rb') as f:
        assert f.read(8) == PNG_SIGNATURE, path
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 50 and width > 50, (path, height, width)


@pytest.fixture(scope='module')
def comparison(tmp_path_factory):
    """(out_dir, the arguments that produced it): gelu and polynorm, seed 1, 4 iterations each."""
    root = tmp_path_factory.mktemp('compare')
    data_dir = make_dataset(root / 'tiny_char')
    args = [*TINY, f'--dataset={data_dir}', '--max_iters=4', '--activations=gelu,polynorm', '--seeds=1']
    run_compare(*args, f'--out_dir={root / "out"}')
    return root / 'out', args


def copy_of(comparison, tmp_path):
    out_dir, args = comparison
    copy = tmp_path / 'out'
    shutil.copytree(out_dir, copy)
    return copy, args + [f'--out_dir={copy}']


def test_comparison_writes_figures_and_one_summary_row_per_activation(comparison):
    out_dir, _ = comparison
    for name in FIGURES:
        assert_png(out_dir / name)
    rows = read_rows(out_dir / 'summary.csv')
    assert [r['activation'] for r in rows] == ['gelu', 'polynorm']
    for row in rows:
        assert row['n_seeds'] == '1'
        assert 0 < float(row['final_val_loss']) < 10
        assert float(row['best_val_loss']) <= float(row['final_val_loss'])
        assert float(row['tokens_per_sec']) > 0
        assert float(row['mean_effective_rank']) >= 1
        assert -1 <= float(row['mean_layer_cosine']) <= 1
    # parameter-matched FFNs: gelu and polynorm have the same two matrices (polynorm adds 4 scalars per layer)
    assert abs(int(float(rows[0]['ffn_params'])) - int(float(rows[1]['ffn_params']))) == 2 * 4
    markdown = (out_dir / 'summary.md').read_text()
    assert '| gelu |' in markdown and '| polynorm |' in markdown
    for run in ('gelu-s1', 'polynorm-s1'):
        summary = json.loads((out_dir / run / 'summary.json').read_text())
        assert summary['finished'] and summary['iter'] == 4


def test_runs_of_one_seed_share_data_order_and_non_ffn_init(comparison):
    out_dir, _ = comparison
    ckpts = {a: torch.load(out_dir / f'{a}-s1' / 'ckpt.pt', weights_only=True) for a in ('gelu', 'polynorm')}
    assert ckpts['gelu']['config']['seed'] == ckpts['polynorm']['config']['seed'] == 1
    assert ckpts['gelu']['model_args']['init_seed'] == ckpts['polynorm']['model_args']['init_seed'] == 1
    # the same initial weights outside the FFN: rebuild both models at init from the saved model_args
    models = {a: GPT(GPTConfig(**c['model_args']), verbose=False).state_dict() for a, c in ckpts.items()}
    shared = [k for k in models['gelu'] if '.mlp.' not in k]
    assert shared and all(torch.equal(models['gelu'][k], models['polynorm'][k]) for k in shared)


def test_rerun_skips_finished_runs(comparison, tmp_path):
    out_dir, args = copy_of(comparison, tmp_path)
    before = (out_dir / 'gelu-s1' / 'log.csv').read_bytes()
    done = run_compare(*args)
    assert done.stdout.count('finished earlier, skipping') == 2
    assert 'train.py' not in done.stdout
    assert (out_dir / 'gelu-s1' / 'log.csv').read_bytes() == before


def test_interrupted_and_extended_runs_resume_instead_of_restarting(comparison, tmp_path):
    out_dir, args = copy_of(comparison, tmp_path)
    logs_before = {a: read_rows(out_dir / f'{a}-s1' / 'log.csv') for a in ('gelu', 'polynorm')}
    # gelu: killed after its last checkpoint (no summary.json yet); polynorm: finished, but we now ask for more
    (out_dir / 'gelu-s1' / 'summary.json').unlink()
    done = run_compare(*[a for a in args if not a.startswith('--max_iters')], '--max_iters=6')
    assert done.stdout.count('resuming from ckpt.pt') == 2, done.stdout
    assert done.stdout.count('--init_from=resume') == 2
    for act, before in logs_before.items():
        after = read_rows(out_dir / f'{act}-s1' / 'log.csv')
        # rows up to the checkpoint are kept as they were (a restart would rewrite them with new timings)
        assert after[:len(before)] == before
        assert [int(r['iter']) for r in after][-2:] == [5, 6]
        assert json.loads((out_dir / f'{act}-s1' / 'summary.json').read_text())['iter'] == 6


def test_replot_works_from_the_logs_alone(comparison, tmp_path):
    out_dir, args = copy_of(comparison, tmp_path)
    for run in ('gelu-s1', 'polynorm-s1'):
        (out_dir / run / 'ckpt.pt').unlink()             # no checkpoint: the analyses come from analysis.json
    (out_dir / 'polynorm-s1' / 'analysis.json').unlink()  # and one run has not even that
    for name in FIGURES + ['summary.csv', 'summary.md']:
        (out_dir / name).unlink()
    done = run_compare(*args, '--replot')
    assert 'train.py' not in done.stdout
    for name in FIGURES:
        assert_png(out_dir / name)
    rows = read_rows(out_dir / 'summary.csv')
    assert [r['activation'] for r in rows] == ['gelu', 'polynorm']
    assert rows[1]['mean_effective_rank'] == 'nan' and float(rows[0]['mean_effective_rank']) >= 1


def test_changed_settings_in_the_same_out_dir_are_refused(comparison, tmp_path):
    out_dir, args = copy_of(comparison, tmp_path)
    done = run_compare(*args, '--n_embd=64', check=False)   # the finished runs would be skipped and mixed in
    assert done.returncode != 0
    assert 'n_embd: 32 -> 64' in done.stderr and 'new --out_dir' in done.stderr


def test_flags_that_would_break_the_pairing_are_refused():
    for flag, hint in [('--seed=3', '--seeds'), ('--activation=gelu', '--activations'), ('--init_seed=2', '--seeds')]:
        with pytest.raises(ValueError, match=hint):
            compare.parse_args([flag])


def test_effective_rank_of_identity_is_n_and_of_rank_one_is_1():
    assert compare.effective_rank(torch.eye(16, dtype=torch.float64)) == pytest.approx(16, abs=1e-9)
    u, v = torch.randn(24, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    assert compare.effective_rank(torch.outer(u, v)) == pytest.approx(1, abs=1e-6)
    assert compare.effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))) == pytest.approx(2, abs=1e-9)
    assert compare.effective_rank(torch.zeros(3, 5)) == 0.0


def test_layer_cosine_matrix():
    h = torch.randn(2, 5, 8)
    cos = compare.layer_cosine_matrix([h, 3 * h, -h])      # same direction, scaled, and opposite
    assert torch.allclose(cos, torch.tensor([[1., 1, -1], [1, 1, -1], [-1, -1, 1]]), atol=1e-5)


def test_activation_curves_are_lines_for_pointwise_and_scatter_for_polynorm():
    idx = torch.randint(0, 20, (2, 16))
    for activation, pointwise in [('gelu', True), ('swiglu', True), ('polyrelu', True), ('polynorm', False)]:
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=20, activation=activation),
                    verbose=False)
        with torch.no_grad():
            curves = compare.activation_curves(model, idx)
        assert len(curves) == 2
        for entry in curves:
            assert entry['pointwise'] is pointwise
            assert len(entry['x']) == len(entry['y']) > 0           # real pre-activations from the batch
            assert ('grid_x' in entry) is pointwise


def test_with_several_gpus_each_run_gets_its_own(capsys):
    """Simulated: two slots = two GPU ids; each child must see only its GPU and both must run at the same time."""
    import time
    code = "import os, time; print('sees', os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(1)"
    jobs = [dict(name=f'job{i}', tag=f'{i + 1}/2 job{i}', state='training', cmd=[sys.executable, '-c', code])
            for i in range(2)]
    start = time.time()
    assert compare.launch(jobs, ['3', '5']) == []
    assert time.time() - start < 1.9                     # in parallel, not one after the other
    out = capsys.readouterr().out
    assert '[1/2 job0] sees 3' in out and '[2/2 job1] sees 5' in out
    failing = [dict(name='bad', tag='1/1 bad', state='training', cmd=[sys.executable, '-c', 'raise SystemExit(3)'])]
    assert [name for name, _ in compare.launch(failing, [None])] == ['bad']
