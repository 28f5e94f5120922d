"""
compare.py: what a user relies on when comparing activations. CPU only, tiny model, a few iterations per run.

One small comparison (gelu vs polynorm, 1 seed, 4 iterations) is trained once per module; the tests that change a
comparison (resume, replot) work on copies of it.
"""
import csv
import json
import math
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
from lab import analysis, runs
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4', '--eval_iters=2',
        '--eval_interval=2', '--log_interval=1', '--warmup_iters=1', '--learning_rate=3e-3', '--device=cpu',
        '--dtype=float32', '--compile=False', '--check_learned=False',   # 4 iterations learn nothing
        '--eval_items=40', '--eval_context_tokens=8', '--eval_choice_tokens=4']   # items that fit block_size 16
TINY_NO_SIZE = [a for a in TINY if not a.startswith(('--n_layer', '--n_embd', '--n_head'))]   # for --sizes runs
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


def compare_in_new_folder(tmp_path_factory, name, *args):
    """A module fixture's comparison: a fresh folder with the tiny dataset, compare.py run there with args.
    Returns (out_dir, the full argument list, the finished process)."""
    root = tmp_path_factory.mktemp(name)
    args = [*args, f'--dataset={make_dataset(root / "tiny_char")}', f'--out_dir={root / "out"}']
    return root / 'out', args, run_compare(*args)


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
    assert 'One seed: this gives no verdict' in markdown and '--seeds=1,2,3 --tune_lr=' in markdown   # and how to get one
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
        assert json.loads((out_dir / f'{act}-s1' / 'eval_continuation.json').read_text())['iter_num'] == 6   # rescored


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


def test_every_finished_run_is_scored_on_the_same_items_and_reported(comparison):
    out_dir, _ = comparison
    results = {a: json.loads((out_dir / f'{a}-s1' / 'eval_continuation.json').read_text())
               for a in ('gelu', 'polynorm')}
    assert results['gelu']['items'] == results['polynorm']['items']            # one fingerprint: item by item
    assert results['gelu']['items']['n_items'] == 40 and all(r['iter_num'] == 4 for r in results.values())
    rows = {r['activation']: r for r in read_rows(out_dir / 'summary.csv')}
    for act, result in results.items():
        assert float(rows[act]['eval_accuracy']) == pytest.approx(result['accuracy'])
    assert rows['gelu']['eval_verdict'] == 'baseline' and rows['polynorm']['eval_verdict'] == 'one seed: no verdict'
    assert float(rows['polynorm']['delta_eval_accuracy_mean']) == pytest.approx(
        results['polynorm']['accuracy'] - results['gelu']['accuracy'])
    assert {r['variant']: float(r['eval_accuracy']) for r in read_rows(out_dir / 'runs.csv')} == pytest.approx(
        {a: r['accuracy'] for a, r in results.items()})
    markdown = (out_dir / 'summary.md').read_text()
    assert '## Downstream: continuation accuracy' in markdown and 'Every run answered the same items' in markdown


def test_a_replot_reuses_the_scores_and_eval_off_scores_nothing(comparison, tmp_path):
    out_dir, args = copy_of(comparison, tmp_path)
    scores = {run: (out_dir / run / 'eval_continuation.json').read_bytes() for run in ('gelu-s1', 'polynorm-s1')}
    done = run_compare(*args, '--replot')
    assert 'scoring' not in done.stdout
    assert all((out_dir / run / 'eval_continuation.json').read_bytes() == b for run, b in scores.items())
    for run in scores:
        (out_dir / run / 'eval_continuation.json').unlink()
    done = run_compare(*args, '--replot', '--eval=')
    assert not list(out_dir.rglob('eval_*.json')) and 'eval_accuracy' not in read_rows(out_dir / 'summary.csv')[0]
    assert 'Downstream' not in (out_dir / 'summary.md').read_text()


def test_items_that_do_not_fit_the_runs_are_refused_before_training(tmp_path):
    done = run_compare(*TINY, f'--dataset={make_dataset(tmp_path / "tiny_char")}', '--max_iters=2',
                       '--activations=gelu', '--eval_choice_tokens=32', f'--out_dir={tmp_path / "out"}', check=False)
    line = done.stderr.strip()
    assert done.returncode == 2 and '\n' not in line and 'Traceback' not in done.stdout + line, done.stdout + line
    assert line.startswith('error: --eval=continuation: ') and 'block_size 16' in line and '--eval=' in line
    assert not list(tmp_path.rglob('compare_settings.json'))


def test_changed_settings_in_the_same_out_dir_are_refused(comparison, tmp_path):
    out_dir, args = copy_of(comparison, tmp_path)
    done = run_compare(*args, '--n_embd=64', check=False)   # the finished runs would be skipped and mixed in
    assert done.returncode != 0
    assert 'n_embd: 32 -> 64' in done.stderr and 'new --out_dir' in done.stderr


def test_flags_that_would_break_the_pairing_are_refused():
    for flag, hint in [('--seed=3', '--seeds'), ('--activation=gelu', '--activations'), ('--init_seed=2', '--seeds')]:
        with pytest.raises(ValueError, match=hint):
            compare.parse_args([flag])


def test_with_wandb_log_each_run_is_named_after_its_folder(tmp_path, monkeypatch):
    """--wandb_log=True: every train.py command gets --wandb_run_name=<its folder under out_dir> (variant, seed, and
    the rate of a tuning run); without it, no name is passed; and the name is compare.py's to set."""
    pytest.importorskip('wandb')                                 # compare.py checks train.py's settings first
    launched = []
    monkeypatch.setattr(runs, 'launch', lambda jobs, slots: launched.extend(jobs) or [])   # nothing trains
    monkeypatch.setattr(compare, 'write_reports', lambda plan, command: None)
    common = [*TINY, f'--dataset={make_dataset(tmp_path / "tiny_char")}', '--max_iters=4',
              '--activations=gelu,polynorm', '--seeds=1,2']

    def names(*args):
        launched.clear()
        compare.main([*common, *args])
        return [a.split('=', 1)[1] for job in launched for a in job['cmd'] if a.startswith('--wandb_run_name=')]

    assert names(f'--out_dir={tmp_path / "a"}') == [] and len(launched) == 4
    assert names(f'--out_dir={tmp_path / "b"}', '--wandb_log=True') == ['gelu-s1', 'polynorm-s1', 'gelu-s2',
                                                                         'polynorm-s2']
    # tuning runs first (none finishes here, so no comparison run follows)
    assert names(f'--out_dir={tmp_path / "c"}', '--wandb_log=True', '--tune_lr=1e-3,3e-3', '--tune_seeds=0') == \
        ['tune/gelu-lr0.001-s0', 'tune/gelu-lr0.003-s0', 'tune/polynorm-lr0.001-s0', 'tune/polynorm-lr0.003-s0']
    with pytest.raises(ValueError, match='--wandb_run_name is set by compare.py for every run'):
        compare.parse_args(['--wandb_run_name=mine'])


def test_effective_rank_of_identity_is_n_and_of_rank_one_is_1():
    assert analysis.effective_rank(torch.eye(16, dtype=torch.float64)) == pytest.approx(16, abs=1e-9)
    u, v = torch.randn(24, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    assert analysis.effective_rank(torch.outer(u, v)) == pytest.approx(1, abs=1e-6)
    assert analysis.effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))) == pytest.approx(2, abs=1e-9)
    assert analysis.effective_rank(torch.zeros(3, 5)) == 0.0


def test_layer_cosine_matrix():
    h = torch.randn(2, 5, 8)
    cos = analysis.layer_cosine_matrix([h, 3 * h, -h])      # same direction, scaled, and opposite
    assert torch.allclose(cos, torch.tensor([[1., 1, -1], [1, 1, -1], [-1, -1, 1]]), atol=1e-5)


def test_activation_curves_are_lines_for_pointwise_and_scatter_for_polynorm():
    idx = torch.randint(0, 20, (2, 16))
    for activation, pointwise in [('gelu', True), ('swiglu', True), ('polyrelu', True), ('polynorm', False)]:
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=20, activation=activation),
                    verbose=False)
        with torch.no_grad():
            curves = analysis.activation_curves(model, idx)
        assert len(curves) == 2
        for entry in curves:
            assert entry['pointwise'] is pointwise
            assert len(entry['x']) == len(entry['y']) > 0           # real pre-activations from the batch
            assert ('grid_x' in entry) is pointwise


def test_with_several_gpus_each_run_gets_its_own(capsys, tmp_path):
    """Simulated: two slots = two GPU ids; each child must see only its GPU and both must run at the same time.
    'At the same time' without a clock: each child waits (up to 60 s) for the other's start file, which only a
    concurrent sibling can have written; one after the other, the first would give up and fail."""
    code = ("import os, sys, time, pathlib; d = pathlib.Path(sys.argv[1]); (d / sys.argv[2]).touch(); "
            "print('sees', os.environ['CUDA_VISIBLE_DEVICES']); end = time.time() + 60\n"
            "while not (d / sys.argv[3]).exists():\n"
            "    time.sleep(0.05)\n"
            "    if time.time() > end: sys.exit(1)")
    jobs = [dict(name=f'job{i}', tag=f'{i + 1}/2 job{i}', state='training',
                 cmd=[sys.executable, '-c', code, str(tmp_path), f'start{i}', f'start{1 - i}']) for i in range(2)]
    assert runs.launch(jobs, ['3', '5']) == []          # in parallel, not one after the other
    out = capsys.readouterr().out
    assert '[1/2 job0] sees 3' in out and '[2/2 job1] sees 5' in out
    failing = [dict(name='bad', tag='1/1 bad', state='training', cmd=[sys.executable, '-c', 'raise SystemExit(1)'])]
    assert [name for name, _ in runs.launch(failing, [None])] == ['bad']


def test_a_run_that_diverges_is_recorded_and_the_others_go_on(tmp_path, capsys):
    """train.py's exit code 3 (diverged) is a result: recorded beside the run, not a failure, later jobs still start."""
    diverging, later = tmp_path / 'a-s1', tmp_path / 'b-s1'
    diverging.mkdir()
    jobs = [dict(name='a-s1', tag='1/2 a-s1', state='training', run_dir=diverging,
                 cmd=[sys.executable, '-c', "print('diverged: loss 57.1 at iter 6'); raise SystemExit(3)"]),
            dict(name='b-s1', tag='2/2 b-s1', state='training', run_dir=later,
                 cmd=[sys.executable, '-c', "print('trained')"])]
    assert runs.launch(jobs, [None]) == []
    assert runs.run_diverged(diverging) and not runs.run_diverged(later)
    assert json.loads((diverging / 'diverged.json').read_text())['message'] == 'diverged: loss 57.1 at iter 6'
    assert runs.run_state(diverging, 8) == 'diverged'          # never retrained by a rerun
    assert '[2/2 b-s1] trained' in capsys.readouterr().out


# ----------------------------------------------------------------------------- learning-rate tuning
@pytest.fixture(scope='module')
def tuned(tmp_path_factory):
    """gelu and polynorm, 2 tuning rates on the default tuning seeds 0 and 1000, then seeds 1 and 2 at each one's best
    rate; 4 iterations."""
    return compare_in_new_folder(tmp_path_factory, 'tuned', *TINY, '--max_iters=4', '--activations=gelu,polynorm',
                                 '--seeds=1,2', '--tune_lr=3e-4,3e-2', '--min_lr=1e-4')


def test_tuning_picks_each_activations_lowest_mean_final_val_loss_over_the_tuning_seeds(tuned):
    out_dir, _, done = tuned
    tuning_rows = read_rows(out_dir / 'tuning.csv')
    assert len(tuning_rows) == 2 * 2 * 2                                # variants x rates x tuning seeds
    for act in ('gelu', 'polynorm'):
        losses = {}
        for lr in (3e-4, 3e-2):
            for seed in (0, 1000):
                run = out_dir / 'tune' / f'{act}-lr{lr:g}-s{seed}'
                ckpt = torch.load(run / 'ckpt.pt', weights_only=True)
                assert ckpt['config']['seed'] == seed and ckpt['model_args']['init_seed'] == seed   # not compared
                assert ckpt['config']['learning_rate'] == lr
                assert ckpt['config']['min_lr'] == pytest.approx(lr * 1e-4 / 3e-3)           # schedule shape kept
                losses[lr, seed] = json.loads((run / 'summary.json').read_text())['final_val_loss']
                row = next(r for r in tuning_rows if (r['variant'], float(r['learning_rate']), int(r['seed'])) ==
                           (act, lr, seed))
                assert float(row['final_val_loss']) == losses[lr, seed] and row['outcome'] == 'finished'
        means = {lr: (losses[lr, 0] + losses[lr, 1000]) / 2 for lr in (3e-4, 3e-2)}
        best = min(means, key=means.get)
        assert {float(r['learning_rate']) for r in tuning_rows if r['variant'] == act and r['chosen'] == 'True'} == \
            {best}
        for seed in (1, 2):
            ckpt = torch.load(out_dir / f'{act}-lr{best:g}-s{seed}' / 'ckpt.pt', weights_only=True)
            assert ckpt['config']['learning_rate'] == best and ckpt['config']['seed'] == seed
        row = next(r for r in read_rows(out_dir / 'summary.csv') if r['activation'] == act)
        assert float(row['lr']) == best
        # with two rates the best is always at an edge of the grid: said on stdout and in summary.md
        assert f"{act}'s best rate" in done.stdout
        assert f"WARNING: {act}'s best rate" in (out_dir / 'summary.md').read_text()
    assert_png(out_dir / 'lr_sweep.png')
    assert not (out_dir / 'tune' / 'gelu-lr0.0003-s1').exists()


def test_summary_csv_has_the_paired_statistics_columns(tuned):
    out_dir = tuned[0]
    rows = read_rows(out_dir / 'summary.csv')
    for column in ('lr', 'delta_val_mean', 'delta_val_ci95_low', 'delta_val_ci95_high', 'verdict'):
        assert column in rows[0], column
    gelu, polynorm = rows
    assert gelu['verdict'] == 'baseline'
    low, mean, high = (float(polynorm[k]) for k in ('delta_val_ci95_low', 'delta_val_mean', 'delta_val_ci95_high'))
    assert low <= mean <= high
    expected = 'better' if high < 0 else 'worse' if low > 0 else 'not resolved'
    assert polynorm['verdict'] == expected
    # the mean of the paired differences, recomputed from the runs themselves
    finals = {(a, s): json.loads((out_dir / f"{a}-lr{float(r['lr']):g}-s{s}" / 'summary.json').read_text())
              ['final_val_loss'] for a, r in (('gelu', gelu), ('polynorm', polynorm)) for s in (1, 2)}
    assert mean == pytest.approx(np.mean([finals['polynorm', s] - finals['gelu', s] for s in (1, 2)]), abs=1e-9)


def test_rerun_reuses_finished_tuning_and_comparison_runs(tuned, tmp_path):
    out_dir, args, _ = tuned
    copy = tmp_path / 'out'
    shutil.copytree(out_dir, copy)
    done = run_compare(*[a for a in args if not a.startswith('--out_dir')], f'--out_dir={copy}')
    assert done.stdout.count('finished earlier, skipping') == 8 + 4
    # nothing was trained again: no run started (training or resuming) and no train.py command was echoed
    assert '] training:' not in done.stdout and '] resuming from ckpt.pt:' not in done.stdout
    assert 'train.py' not in done.stdout


def test_a_partial_run_is_left_out_of_every_number(tuned, tmp_path):
    out_dir, args, _ = tuned
    copy = tmp_path / 'out'
    shutil.copytree(out_dir, copy)
    rows = read_rows(copy / 'summary.csv')
    lr = float(rows[1]['lr'])
    (copy / f'polynorm-lr{lr:g}-s2' / 'summary.json').unlink()          # as if stopped before the end
    done = run_compare(*[a for a in args if not a.startswith('--out_dir')], f'--out_dir={copy}', '--replot')
    polynorm = read_rows(copy / 'summary.csv')[1]
    assert polynorm['n_seeds'] == '1' and polynorm['verdict'] == 'one seed: no verdict'
    assert 'not finished' in done.stdout
    assert 'Unfinished runs, left out' in (copy / 'summary.md').read_text()


# ----------------------------------------------------------------------------- mistakes in how compare.py is called
@pytest.mark.parametrize('args, words', [
    (['--activations=gelu,gelu'], ['--activations', 'gelu', 'more than once']),
    (['--seeds=1,1'], ['--seeds', 'more than once']),
    (['--seeds=abc'], ['--seeds', 'integer']),
    (['--seeds=1,2', '--tune_lr=1e-3,2e-3', '--tune_seeds=2,1000'], ['--tune_seeds=2,1000', 'shares 2', '--seeds']),
    (['--tune_lr=1e-3,2e-3', '--tune_seeds=0,0'], ['--tune_seeds', 'more than once']),
    (['--tune_lr=1e-3,2e-3', '--tune_seeds='], ['--tune_lr', 'tuning seed']),
    (['--tune_lr=1e-3,2e-3', '--tune_seeds=0,-3'], ['>= 0', '--tune_seeds']),
    # the old single tuning seed is refused with the new key's name, not silently reread
    (['--tune_lr=1e-3,2e-3', '--tune_seed=7'], ['--tune_seed', '--tune_seeds=7']),
    (['--tune_lr=1e-3,-2e-3'], ['--tune_lr', 'positive']),
    (['--tune_lr=fast'], ['--tune_lr', 'number']),
    (['--baseline=relu'], ['--baseline', 'relu']),
    (['--sizes=4x130'], ['4x130', 'head_size']),
    (['--sizes=abc'], ['abc', 'LAYERSxWIDTH']),
    (['--sizes=2x64', '--n_embd=64'], ['--n_embd', '--sizes']),
    (['--tokens_per_param=20'], ['--tokens_per_param', '--sizes']),
    (['--activations=gelu,nosuch'], ['nosuch']),
    # compare.py's own settings and the handed-on train.py settings are checked as train.py checks them
    (['--parallel=two'], ['parallel', 'expects int', "'two'"]),
    (['--learning_rate=abc'], ['learning_rate', 'expects float', "'abc'"]),
    (['--sizes=1x32', '--batch_size=abc'], ['batch_size', 'expects int']),
    (['--bogus_key=3'], ['bogus_key']),
    (['--replot=maybe'], ['replot', 'expects bool']),
    (['--parallel=-1'], ['--parallel=-1', '>= 0']),
    (['--max_iters=0'], ['max_iters must be >= 1']),
    (['--min_lr=1.0'], ['min_lr', 'learning_rate']),
    (['--device=gpu'], ['gpu', 'device']),
    (['--dataset=no_such_dataset'], ['no_such_dataset']),
    (['--eval=mmlu'], ['--eval', 'mmlu', 'continuation, hellaswag']),
    (['--eval_items=-1'], ['--eval_items=-1', '>= 0']),
    # variants: malformed, two with one name, settings compare.py owns, wrong types, rules of the model
    (['--variants=polynorm:poly_order'], ['--variants', 'polynorm:poly_order', 'key=value']),
    (['--variants=:poly_order=2'], ['--variants', 'ACTIVATION']),
    (['--variants=a=gelu,a=polynorm'], ['--variants', "'a=gelu' and 'a=polynorm'", "name 'a'"]),
    (['--variants=polynorm:seed=3'], ['seed', 'compare.py sets']),
    (['--variants=polynorm:poly_order=abc'], ['polynorm:poly_order=abc', 'poly_order', 'expects int']),
    (['--variants=polynorm:poly_order=99'], ['polynorm-poly_order99', 'poly_order']),
    (['--variants=polynorm:dataset=a/b'], ['a/b', 'NAME=']),
    (['--variants=polynorm:learning_rate=-1.0'], ['learning_rate', 'positive']),
    (['--variants=gelu', '--activations=gelu'], ['--activations', '--variants']),
    (['--variants=gelu,polynorm', '--baseline=relu'], ['--baseline', 'relu']),
    (['--variants=gelu,nosuch:poly_order=2'], ['nosuch']),
])
def test_mistakes_get_one_line_and_no_traceback(args, words, tmp_path):
    done = run_compare(*TINY_NO_SIZE, f'--out_dir={tmp_path / "out"}', *args, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'Traceback' not in done.stderr + done.stdout
    line = done.stderr.strip()
    assert line.startswith('error: ') and '\n' not in line, line
    for word in words:
        assert word in line, (word, line)


def test_an_out_dir_that_cannot_be_written_is_one_line(tmp_path):
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    places = [a_file / 'out']                                  # under a file: no folder can be made there
    if os.path.isdir('/sys/kernel'):
        places.append('/sys/kernel/nanopoly-out')              # sysfs refuses mkdir even to root: read-only
    data_dir = make_dataset(tmp_path / 'tiny_char')            # a fresh clone has no prepared dataset
    for place in places:
        done = run_compare(*TINY, f'--dataset={data_dir}', '--max_iters=2', '--activations=gelu',
                           f'--out_dir={place}', check=False)
        assert done.returncode == 2, done.stdout + done.stderr
        assert 'Traceback' not in done.stdout + done.stderr
        line = done.stderr.strip()
        assert line.startswith(f'error: cannot write {place}') and '\n' not in line and '--out_dir' in line, line


def test_a_typo_does_not_lock_the_out_dir(tmp_path):
    """A mistake fails before anything is recorded, so the corrected command is accepted; and a folder that holds
    only the settings of an attempt whose train.py stopped at its own checks holds no result: it does not lock."""
    args = [*TINY, f'--dataset={make_dataset(tmp_path / "tiny_char")}', '--max_iters=2', '--activations=gelu',
            '--seeds=1', f'--out_dir={tmp_path / "out"}']
    done = run_compare(*args, '--bogus_key=3', check=False)
    assert done.returncode == 2 and 'bogus_key' in done.stderr
    assert not list(tmp_path.rglob('compare_settings.json'))
    run = tmp_path / 'out' / 'gelu-s1'
    run.mkdir(parents=True)                                   # as an attempt whose train.py refused its settings
    (run / 'compare_settings.json').write_text(json.dumps({'bogus_key': 3}))
    run_compare(*args)
    assert json.loads((run / 'summary.json').read_text())['finished']
    assert 'bogus_key' not in json.loads((run / 'compare_settings.json').read_text())


def test_a_config_file_with_a_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / 'bad_config.py'
    bad.write_text("n_layer = 2\nlearning_rate = = 3\n")
    done = run_compare(str(bad), check=False)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert f'{bad}:2:' in done.stderr


# ----------------------------------------------------------------------------- variants
def test_variant_names_follow_the_naming_rule():
    defaults = compare.train_defaults()
    variants = compare.parse_variants('gelu,polynorm:poly_order=2,r5=polynorm:poly_order=5:dropout=0.1,'
                                      'polyrelu:learning_rate=2e-3:poly_order=4', defaults)
    assert [v.name for v in variants] == ['gelu', 'polynorm-poly_order2', 'r5', 'polyrelu-poly_order4']
    assert [v.activation for v in variants] == ['gelu', 'polynorm', 'polynorm', 'polyrelu']
    assert variants[2].settings == {'poly_order': 5, 'dropout': 0.1} and variants[2].lr is None
    assert variants[3].settings == {'poly_order': 4} and variants[3].lr == 2e-3     # its rate: fixed, not in the name
    assert variants[1].spec == 'polynorm:poly_order=2'


@pytest.fixture(scope='module')
def variants(tmp_path_factory):
    """polynorm tuned over 2 rates and r2 = PolyNorm of order 2 at a fixed rate of its own, seed 1, 2 iterations."""
    return compare_in_new_folder(tmp_path_factory, 'variants', *TINY, '--max_iters=2', '--seeds=1',
                                 '--variants=polynorm,r2=polynorm:poly_order=2:learning_rate=1e-2',
                                 '--tune_lr=1e-3,3e-3', '--tune_seeds=0')   # one tuning seed: the default's 2 in 'tuned'


def test_a_variant_trains_with_its_own_settings_paired_by_seed(variants):
    out_dir, _, done = variants
    assert sorted(p.name for p in (out_dir / 'tune').iterdir()) == ['polynorm-lr0.001-s0', 'polynorm-lr0.003-s0']
    chosen = float(next(r for r in read_rows(out_dir / 'summary.csv') if r['activation'] == 'polynorm')['lr'])
    ckpts = {name: torch.load(out_dir / folder / 'ckpt.pt', weights_only=True)
             for name, folder in (('polynorm', f'polynorm-lr{chosen:g}-s1'), ('r2', 'r2-lr0.01-s1'))}
    assert ckpts['polynorm']['model_args']['poly_order'] == 3 and ckpts['r2']['model_args']['poly_order'] == 2
    assert ckpts['r2']['config']['learning_rate'] == 1e-2                     # fixed: not tuned
    assert ckpts['r2']['config']['min_lr'] == pytest.approx(1e-2 * 1e-4 / 3e-3)   # the schedule's ratio kept
    models = {a: GPT(GPTConfig(**c['model_args']), verbose=False).state_dict() for a, c in ckpts.items()}
    shared = [k for k in models['polynorm'] if '.mlp.' not in k]
    assert shared and all(torch.equal(models['polynorm'][k], models['r2'][k]) for k in shared)
    rows = {r['activation']: r for r in read_rows(out_dir / 'summary.csv')}
    assert rows['r2']['settings'] == 'r2=polynorm:poly_order=2:learning_rate=1e-2' and float(rows['r2']['lr']) == 1e-2
    markdown = (out_dir / 'summary.md').read_text()
    assert '| r2 | r2=polynorm:poly_order=2:learning_rate=1e-2 |' in markdown
    assert 'r2: not tuned, its variant fixes learning_rate = 0.01.' in markdown
    costs = json.loads((out_dir / 'costs.json').read_text())
    # 2 layers: order 3 has 3 + 1 scalars per layer, order 2 has 2 + 1
    assert costs['polynorm']['activation_params'] == 8 and costs['r2']['activation_params'] == 6
    assert costs['polynorm']['total_params'] - costs['r2']['total_params'] == 2


# ----------------------------------------------------------------------------- model-size sweeps
def test_sizes_parse_into_layers_heads_and_widths():
    assert compare.parse_sizes('2x64,4x128, 6x192', 32) == [
        {'name': '2x64', 'n_layer': 2, 'n_embd': 64, 'n_head': 2},
        {'name': '4x128', 'n_layer': 4, 'n_embd': 128, 'n_head': 4},
        {'name': '6x192', 'n_layer': 6, 'n_embd': 192, 'n_head': 6}]
    assert compare.parse_sizes('12x768', 64)[0]['n_head'] == 12
    for bad in ('4x130', 'abc', '4x', '0x64', '2x64,2x64'):
        with pytest.raises(compare.CompareError):
            compare.parse_sizes(bad, 32)


@pytest.mark.parametrize('n_embd', [64, 96, 128, 160, 192, 256, 384, 512, 640, 768])
def test_ffn_parameters_match_within_one_percent_at_every_size(n_embd):
    """ffn_hidden = 0 at every size of a sweep: every activation's FFN has the same weights as GELU's (1%)."""
    from model import ACTIVATIONS
    counts = {}
    for act in ACTIVATIONS:
        model = GPT(GPTConfig(n_layer=1, n_head=n_embd // 32, n_embd=n_embd, block_size=8, vocab_size=16,
                              activation=act), verbose=False)
        counts[act] = model.num_ffn_params()
    for act, n in counts.items():
        assert abs(n / counts['gelu'] - 1) <= 0.01, (act, n, counts['gelu'])


@pytest.fixture(scope='module')
def sweep(tmp_path_factory):
    return compare_in_new_folder(tmp_path_factory, 'sweep', *TINY_NO_SIZE, '--max_iters=3',
                                 '--activations=gelu,polynorm', '--seeds=1', '--sizes=1x32,2x64', '--head_size=16')


def test_a_sweep_trains_every_size_and_writes_scaling_outputs(sweep):
    out_dir, _, done = sweep
    assert 'non-embedding params' in done.stdout and 'estimated total' in done.stdout
    for size, (n_layer, n_embd) in {'1x32': (1, 32), '2x64': (2, 64)}.items():
        for act in ('gelu', 'polynorm'):
            args = torch.load(out_dir / size / f'{act}-s1' / 'ckpt.pt', weights_only=True)['model_args']
            assert (args['n_layer'], args['n_embd'], args['n_head']) == (n_layer, n_embd, n_embd // 16)
        assert (out_dir / size / 'summary.md').exists()
    assert_png(out_dir / 'scaling.png')
    rows = read_rows(out_dir / 'scaling.csv')
    assert [(r['size'], r['activation']) for r in rows] == [
        ('1x32', 'gelu'), ('1x32', 'polynorm'), ('2x64', 'gelu'), ('2x64', 'polynorm')]
    assert int(rows[2]['non_embedding_params']) > int(rows[0]['non_embedding_params'])
    assert float(rows[0]['flops']) > 0 and rows[1]['verdict'] == 'one seed: no verdict'
    summary = (out_dir / 'summary.md').read_text()
    assert 'needs at least 4 sizes' in summary            # no power-law fit from 2 sizes


def test_a_sweep_rerun_skips_finished_runs_and_replots(sweep, tmp_path):
    out_dir, args, _ = sweep
    copy = tmp_path / 'out'
    shutil.copytree(out_dir, copy)
    (copy / 'scaling.png').unlink()
    done = run_compare(*[a for a in args if not a.startswith('--out_dir')], f'--out_dir={copy}')
    assert done.stdout.count('finished earlier, skipping') == 4
    assert_png(copy / 'scaling.png')
    (copy / 'scaling.csv').unlink()
    run_compare(*[a for a in args if not a.startswith('--out_dir')], f'--out_dir={copy}', '--replot')
    assert len(read_rows(copy / 'scaling.csv')) == 4


def test_tokens_per_param_sets_each_sizes_training_length(tmp_path):
    data_dir = make_dataset(tmp_path / 'tiny_char')
    settings = compare.Settings(sizes='1x32,2x64', tokens_per_param=0.5, activations='gelu', seeds='1')
    plan = compare.Plan(settings, {'dataset': data_dir, 'batch_size': 4, 'block_size': 16}, set())
    # non-embedding parameters by hand (modern arch: RMSNorm gains, no biases, RoPE, head tied to the embedding):
    # per layer 4 C^2 (q, k, v, o) + 2 C H (GELU's two FFN matrices) + 2 C (two norm gains); + C (final norm).
    # H from the paper's width rule: the gated width ceil(8 C / 3 / 64) * 64 (128 at C = 32, 192 at C = 64), x 1.5
    for level, (n_layer, C, H) in zip(plan.levels, [(1, 32, 192), (2, 64, 288)]):
        by_hand = n_layer * (4 * C * C + 2 * C * H + 2 * C) + C
        assert level['non_embedding_params'] == by_hand
        assert level['max_iters'] == math.ceil(0.5 * by_hand / 64)       # 64 tokens per iteration (4 x 16)
        assert level['settings']['lr_decay_iters'] == level['max_iters']
    assert plan.levels[1]['max_iters'] > plan.levels[0]['max_iters']


def test_a_second_compare_on_a_busy_out_dir_is_refused_naming_the_holder(tmp_path):
    """Two compare.py on one out_dir would train every run twice: the second stops in one line naming the first."""
    from training import checkpoint
    out = tmp_path / 'out'
    with checkpoint.lock_dir(str(out), 'compare.py'):        # held by this (live) pytest process
        done = run_compare(*TINY, f'--dataset={make_dataset(tmp_path / "tiny_char")}', '--max_iters=2',
                           '--activations=gelu', '--seeds=1', f'--out_dir={out}', check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'Traceback' not in done.stdout + done.stderr
    assert str(os.getpid()) in done.stderr, done.stderr
    assert not (out / 'gelu-s1').exists()                    # nothing was trained
    done = run_compare(*TINY, f'--dataset={tmp_path / "tiny_char"}', '--max_iters=2', '--activations=gelu',
                       '--seeds=1', f'--out_dir={out}')     # released: now it runs
    assert (out / 'gelu-s1' / 'summary.json').exists()


def test_ctrl_c_stops_the_runs_with_one_line_that_says_how_to_continue(tmp_path):
    """SIGINT while a run trains: exit 130, no traceback, one line on how to continue, the run not marked finished."""
    import signal
    import time
    data_dir = make_dataset(tmp_path / 'tiny_char')
    args = [*TINY, f'--dataset={data_dir}', '--activations=gelu', '--seeds=1', f'--out_dir={tmp_path / "out"}']
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    # a shell runs background jobs with SIGINT ignored, and children inherit that: restore the default, as a terminal has
    proc = subprocess.Popen([sys.executable, 'compare.py', *args, '--max_iters=100000'], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / 'out' / 'gelu-s1' / 'log.csv'
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and len(read_rows(log)) >= 3):
        time.sleep(0.5)                                       # wait until the run is training and has saved
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert 'Traceback' not in stdout + stderr, stderr[-3000:]
    assert 'rerun the same command' in stderr
    summary = json.loads((tmp_path / 'out' / 'gelu-s1' / 'summary.json').read_text()) \
        if (tmp_path / 'out' / 'gelu-s1' / 'summary.json').exists() else {}
    assert not summary.get('finished')
