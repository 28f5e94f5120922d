"""
The numbers users act on, recomputed by hand from hand-built run folders (summary.json and log.csv written here, no
training): the learning rate the tuning picks, the mean ± std, train-loss, Student-t and ordering columns of
summary.csv / summary.md, scaling.csv and the gap-vs-size slope, and how diverged runs are marked and left out.
Every report is made the user's way: `compare.py ... --replot` (in-process) over the folders.
"""
import csv
import json
import math

import numpy as np
import pytest
from matplotlib.figure import Figure

import compare
from lab import figures, report, runs
from test_compare import make_dataset

# two-sided 95% Student t quantiles t(0.975, df) from a printed table
T975 = {1: 12.7062, 2: 4.3027, 4: 2.7764}
N_LOG = 20                                   # logged iterations per hand-built run


def write_run(run_dir, final_val, train_tail=None, finished=True, diverged=None, outcome=None, iters=N_LOG):
    """A run folder as train.py leaves it: log.csv (iter, tokens, train/val loss, time) and summary.json. The train
    loss falls linearly to train_tail (the last logged value); diverged/outcome None leave the key out (old files)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    train_tail = final_val - 0.05 if train_tail is None else train_tail
    train = np.linspace(train_tail + 1.0, train_tail, iters)
    with open(run_dir / 'log.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['iter', 'tokens', 'train_loss', 'val_loss', 'elapsed_s'])
        for i in range(1, iters + 1):
            writer.writerow([i, 64 * i, f'{train[i - 1]:.6f}', f'{final_val:.6f}' if i == iters else '', 0.1 * i])
    summary = {'finished': finished, 'iter': iters, 'tokens': 64 * iters, 'final_val_loss': final_val,
               'best_val_loss': final_val, 'tokens_per_sec': 1000.0, 'ms_per_iter': 64.0, 'other_load_cores': 0.0,
               'total_params': 20000, 'active_params': 20000}
    if diverged is not None:
        summary['diverged'] = diverged
    if outcome is not None:
        summary['outcome'] = outcome
    (run_dir / 'summary.json').write_text(json.dumps(summary))
    return train


def read_rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / 'tiny_char')


def replot(out, data, *args):
    """compare.py --replot over hand-built folders, with the tiny dataset (the cost table builds each model)."""
    compare.main(['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4', '--device=cpu',
                  f'--dataset={data}', f'--out_dir={out}', *args, '--replot'])


@pytest.fixture
def legends(monkeypatch):
    """Every legend text of every figure saved while the test runs."""
    texts = []
    save = Figure.savefig

    def spy(fig, *args, **kwargs):
        texts.extend(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        return save(fig, *args, **kwargs)
    monkeypatch.setattr(Figure, 'savefig', spy)
    return texts


# ----------------------------------------------------------------------------- the tuning's choice
def tuning_of(out, data, rates, losses, act='gelu', seeds=(0,)):
    """Hand-built tuning runs of one activation (losses: per rate a number, 'diverged', 'diverged-old',
    'diverged-json', 'did-not-learn' or 'unfinished', or with several tuning seeds a list of those, one per seed)
    and the tuning compare.py reads from them."""
    for lr, per_rate in zip(rates, losses):
        for seed, loss in zip(seeds, per_rate if isinstance(per_rate, list) else [per_rate]):
            write_tuning_run(out / 'tune' / f'{act}-lr{lr:g}-s{seed}', loss)
    settings, train, typed = compare.parse_args([f'--dataset={data}', f'--out_dir={out}', f'--activations={act}',
                                                 '--seeds=1', '--tune_lr=' + ','.join(f'{r:g}' for r in rates),
                                                 '--tune_seeds=' + ','.join(map(str, seeds))])
    plan = compare.Plan(settings, train, typed)
    return plan.tuning(plan.levels[0])


def write_tuning_run(run, loss):
    """One tuning run folder in the form `loss` names (see tuning_of)."""
    if loss == 'diverged':                    # train.py now: exit code 3, outcome diverged
        write_run(run, 9.0, finished=False, diverged=True, outcome='diverged')
    elif loss == 'diverged-old':              # older train.py: finished, with a tempting (untrained) loss
        write_run(run, 1.0, finished=True, diverged=True)
    elif loss == 'diverged-json':             # older compare.py's mark beside a run that died non-finite
        write_run(run, 1.0, finished=False)
        (run / 'diverged.json').write_text(json.dumps({'diverged': True}))
    elif loss == 'did-not-learn':             # train.py's exit code 4 (a tempting loss here: the outcome decides)
        write_run(run, 1.0, outcome='did_not_learn')
    elif loss == 'unfinished':
        write_run(run, 1.0, finished=False)
        (run / 'ckpt.pt').write_bytes(b'')    # resumable: not done, not missing
    else:
        write_run(run, loss)


def test_tuning_picks_the_minimum_in_the_middle_and_warns_of_no_edge(tmp_path, data, capsys):
    tuning = tuning_of(tmp_path / 'out', data, [1e-3, 2e-3, 4e-3, 8e-3], [1.95, 1.80, 1.85, 1.99])
    assert tuning['chosen'] == {'gelu': 2e-3}
    assert tuning['edges'] == {}
    compare.announce_tuning({'name': None}, tuning)
    assert 'WARNING' not in capsys.readouterr().out
    lines = '\n'.join(report.tuning_lines(tuning))
    assert 'WARNING' not in lines and '**1.8000**' in lines


def test_the_edge_warning_names_the_edge(tmp_path, data, capsys):
    tuning = tuning_of(tmp_path / 'out', data, [1e-3, 2e-3, 4e-3], [1.95, 1.90, 1.85])
    assert tuning['chosen'] == {'gelu': 4e-3} and tuning['edges'] == {'gelu': 'highest'}
    compare.announce_tuning({'name': None}, tuning)
    assert "WARNING: gelu's best rate (0.004) is the highest rate" in capsys.readouterr().out


@pytest.mark.parametrize('form', ['diverged', 'diverged-old', 'diverged-json'])
def test_a_diverged_rate_is_a_failed_rate_never_chosen(tmp_path, data, form, legends):
    # the diverged rate's summary (old forms) even claims the lowest loss: it must not win
    out = tmp_path / 'out'
    tuning = tuning_of(out, data, [1e-3, 2e-3, 4e-3], [1.95, 1.80, form])
    assert tuning['chosen'] == {'gelu': 2e-3}
    assert [e['status'] for e in tuning['runs']['gelu']] == ['done', 'done', 'diverged']
    assert '| gelu | 1.9500 | **1.8000** | diverged | 0.002 | +0.1500 over 0.001 |' in report.tuning_lines(tuning)
    replot(out, data, '--activations=gelu', '--seeds=1', '--tune_lr=1e-3,2e-3,4e-3', '--tune_seeds=0')
    assert (out / 'lr_sweep.png').exists() and 'gelu (1 rate failed)' in legends


def test_an_unfinished_rate_holds_the_choice_back(tmp_path, data):
    tuning = tuning_of(tmp_path / 'out', data, [1e-3, 2e-3, 4e-3], [1.95, 'unfinished', 1.99])
    assert tuning['chosen'] == {} and tuning['all_failed'] == []
    assert '| gelu | 1.9500 | unfinished | 1.9900 | – | – |' in report.tuning_lines(tuning)


def test_two_tuning_seeds_choose_the_lowest_mean_where_the_seeds_disagree(tmp_path, data, capsys):
    """Seed 0 alone would pick 4e-3 (1.80 < 1.82); seed 1000 prefers 2e-3 (1.84 < 1.90): the means (1.96, 1.83,
    1.85) put the choice in the middle of the grid, 0.02 ahead of 4e-3, and the paired interval over the two tuning
    seeds (differences -0.02 and +0.06, 1 degree of freedom) says how little two seeds settle."""
    out = tmp_path / 'out'
    tuning = tuning_of(out, data, [1e-3, 2e-3, 4e-3], [[1.95, 1.97], [1.82, 1.84], [1.80, 1.90]], seeds=(0, 1000))
    assert tuning['chosen'] == {'gelu': 2e-3} and tuning['edges'] == {}
    choice = tuning['choices']['gelu']
    half = T975[1] * np.std([-0.02, 0.06], ddof=1) / math.sqrt(2)          # 12.7062 x 0.0566 / 1.414 = 0.5082
    assert choice['runner_up'] == 4e-3 and choice['margin'] == pytest.approx(0.02, abs=1e-12)
    assert choice['low'] == pytest.approx(0.02 - half, abs=1e-5) and choice['high'] == pytest.approx(0.02 + half, abs=1e-5)
    table = '\n'.join(report.tuning_lines(tuning))
    assert '| gelu | 1.9600 | **1.8300** | 1.8500 | 0.002 | +0.0200 over 0.004 [−0.4882, +0.5282] |' in table
    assert 'tuning seeds 0, 1000' in table
    replot(out, data, '--activations=gelu', '--seeds=1', '--tune_lr=1e-3,2e-3,4e-3', '--tune_seeds=0,1000')
    rows = read_rows(out / 'tuning.csv')
    assert list(rows[0]) == ['variant', 'learning_rate', 'seed', 'final_val_loss', 'chosen', 'outcome']
    assert len(rows) == 6 and {(r['learning_rate'], r['seed'], r['final_val_loss'], r['chosen']) for r in rows} == {
        ('0.001', '0', '1.95', 'False'), ('0.001', '1000', '1.97', 'False'), ('0.002', '0', '1.82', 'True'),
        ('0.002', '1000', '1.84', 'True'), ('0.004', '0', '1.8', 'False'), ('0.004', '1000', '1.9', 'False')}
    assert '+0.0200 over 0.004' in (out / 'summary.md').read_text()


def test_a_rate_that_did_not_learn_on_one_tuning_seed_is_a_failed_rate(tmp_path, data):
    tuning = tuning_of(tmp_path / 'out', data, [1e-3, 2e-3], [[1.90, 1.92], ['did-not-learn', 1.50]], seeds=(0, 1000))
    assert tuning['chosen'] == {'gelu': 1e-3}
    assert [e['status'] for e in tuning['runs']['gelu']] == ['done', 'did not learn']
    assert '| gelu | **1.9100** | did not learn (s0 did not learn) | 0.001 | no other rate finished |' in \
        report.tuning_lines(tuning)


def test_a_tie_goes_to_the_lower_rate(tmp_path, data):
    tuning = tuning_of(tmp_path / 'out', data, [1e-3, 2e-3, 4e-3], [1.95, 1.80, 1.80])
    assert tuning['chosen'] == {'gelu': 2e-3}


def test_every_rate_diverged_is_said_in_one_line_and_the_others_go_on(tmp_path, data, capsys, legends):
    out = tmp_path / 'out'
    tuning_of(out, data, [1e-3, 2e-3], ['diverged', 'diverged-old'], act='polynorm')
    tuning = tuning_of(out, data, [1e-3, 2e-3], [1.9, 1.8], act='gelu')
    settings, train, typed = compare.parse_args([f'--dataset={data}', f'--out_dir={out}', '--tune_lr=1e-3,2e-3',
                                                 '--activations=gelu,polynorm', '--seeds=1', '--tune_seeds=0'])
    plan = compare.Plan(settings, train, typed)
    tuning = plan.tuning(plan.levels[0])
    assert tuning['all_failed'] == ['polynorm'] and tuning['chosen'] == {'gelu': 2e-3}
    capsys.readouterr()
    compare.announce_tuning(plan.levels[0], tuning)
    said = [line for line in capsys.readouterr().out.splitlines() if 'every tuning rate of polynorm diverged' in line]
    assert len(said) == 1 and '--tune_lr' in said[0]
    assert '| polynorm | diverged | diverged | every rate failed | – |' in report.tuning_lines(tuning)
    with pytest.raises(SystemExit) as exit_:            # polynorm has no result: compare.py says so and fails
        replot(out, data, '--activations=gelu,polynorm', '--seeds=1', '--tune_lr=1e-3,2e-3', '--tune_seeds=0')
    assert exit_.value.code == 1
    assert 'polynorm (every rate failed)' in legends


def test_only_a_run_that_ended_diverged_counts_as_diverged(tmp_path):
    """outcome 'diverged' (exit code 3) is a result; a run stopped by Ctrl-C while its loss was off (outcome 'stopped',
    diverged true) may still recover, so it resumes; a summary of an older train.py (no outcome) says it with
    diverged: true."""
    cases = {'ended': ('diverged', True, 'diverged'), 'stopped': ('stopped', True, 'resume'),
             'old': (None, True, 'diverged'), 'fine': ('finished', False, 'done')}
    for name, (outcome, diverged, state) in cases.items():
        write_run(tmp_path / name, 2.0, finished=outcome in ('finished', None), diverged=diverged, outcome=outcome)
        (tmp_path / name / 'ckpt.pt').write_bytes(b'')
        assert runs.run_state(tmp_path / name, N_LOG) == state, name
        assert runs.run_diverged(tmp_path / name) is (state == 'diverged'), name


# ----------------------------------------------------------------------------- summary numbers from the logs
# three activations x three seeds: swiglu and polyrelu below gelu on every seed, not told apart from each other
FINALS = {'gelu': [2.00, 2.02, 2.05], 'swiglu': [1.90, 1.95, 1.91], 'polyrelu': [1.89, 1.96, 1.915]}
TAILS = {'gelu': [1.9, 1.93, 1.95], 'swiglu': [1.8, 1.86, 1.82], 'polyrelu': [1.79, 1.85, 1.81]}


@pytest.fixture(scope='module')
def three_by_three(tmp_path_factory):
    root = tmp_path_factory.mktemp('three_by_three')
    data, out = make_dataset(root / 'tiny_char'), root / 'out'
    trains = {}
    for act, finals in FINALS.items():
        for seed, (final, tail) in enumerate(zip(finals, TAILS[act]), start=1):
            trains[act, seed] = write_run(out / f'{act}-s{seed}', final, tail)
    replot(out, data, '--activations=gelu,swiglu,polyrelu', '--seeds=1,2,3')
    return out, trains


def test_mean_std_and_train_loss_columns_are_the_per_seed_numbers(three_by_three):
    out, trains = three_by_three
    rows = {r['activation']: r for r in read_rows(out / 'summary.csv')}
    for act, finals in FINALS.items():
        assert float(rows[act]['final_val_loss']) == pytest.approx(sum(finals) / 3, abs=1e-12)
        mean = sum(finals) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in finals) / 2)                 # sample std: n - 1
        assert float(rows[act]['final_val_loss_std']) == pytest.approx(std, abs=1e-12)
        # train loss: the mean of the last 10% of the logged iterations (2 of 20), averaged over seeds
        tails = [float(np.mean(trains[act, s][-2:])) for s in (1, 2, 3)]
        assert float(rows[act]['final_train_loss']) == pytest.approx(np.mean(tails), abs=1e-6)
        assert rows[act]['diverged'] == '' and rows[act]['n_seeds'] == '3'
    # runs.csv: one row per run, the very numbers written above
    per_run = {(r['variant'], int(r['seed'])): r for r in read_rows(out / 'runs.csv')}
    assert set(per_run) == {(act, s) for act in FINALS for s in (1, 2, 3)}
    for (act, seed), r in per_run.items():
        assert float(r['final_val_loss']) == FINALS[act][seed - 1] and r['outcome'] == 'finished'
        assert float(r['final_train_loss']) == pytest.approx(np.mean(trains[act, seed][-2:]), abs=1e-6)
    markdown = (out / 'summary.md').read_text()
    mean, std = np.mean(FINALS['swiglu']), np.std(FINALS['swiglu'], ddof=1)
    assert f'| {mean:.4f} ± {std:.4f} |' in markdown


def test_interval_bounds_are_student_t_on_the_paired_differences(three_by_three):
    out, _ = three_by_three
    rows = {r['activation']: r for r in read_rows(out / 'summary.csv')}
    for act in ('swiglu', 'polyrelu'):
        d = [a - b for a, b in zip(FINALS[act], FINALS['gelu'])]
        mean = sum(d) / 3
        std = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
        half = T975[2] * std / math.sqrt(3)
        assert float(rows[act]['delta_val_mean']) == pytest.approx(mean, abs=1e-12)
        assert float(rows[act]['delta_val_std']) == pytest.approx(std, abs=1e-12)
        assert float(rows[act]['delta_val_ci95_low']) == pytest.approx(mean - half, abs=1e-4)
        assert float(rows[act]['delta_val_ci95_high']) == pytest.approx(mean + half, abs=1e-4)
        assert rows[act]['verdict'] == ('better' if mean + half < 0 else 'not resolved')


def test_the_ordering_line_groups_what_the_paired_intervals_do_not_separate(three_by_three):
    out, _ = three_by_three
    markdown = (out / 'summary.md').read_text()
    m = {a: np.mean(v) for a, v in FINALS.items()}
    # polyrelu - swiglu: differences -0.01, +0.01, +0.005 include 0 -> one group; both below gelu on every seed
    line = f"{{swiglu ({m['swiglu']:.4f}), polyrelu ({m['polyrelu']:.4f})}} < gelu ({m['gelu']:.4f})"
    assert f'Final val loss, lowest first (braces: not ordered by the paired 95% intervals): {line}' in markdown


def test_with_three_seeds_the_summary_says_the_widths_are_uncertain(three_by_three):
    markdown = (three_by_three[0] / 'summary.md').read_text()
    # sigma / s for 2 degrees of freedom: sqrt(2 / chi2(0.975, 2) = 7.3778) .. sqrt(2 / chi2(0.025, 2) = 0.0506)
    assert '**With 3 seeds the widths of these intervals are themselves uncertain**' in markdown
    assert 'from 0.52 to 6.3 times the observed one' in markdown


def test_the_cost_table_counts_each_variants_parameters_and_times_a_step(three_by_three):
    markdown = (three_by_three[0] / 'summary.md').read_text()
    costs = json.loads((three_by_three[0] / 'costs.json').read_text())
    assert costs['gelu']['activation_params'] == 0 and costs['gelu']['step_ms'] > 0
    assert costs['polyrelu']['activation_params'] == 3 + 1          # order 3: r + 1 scalars, one layer
    assert costs['polyrelu']['total_params'] == costs['gelu']['total_params'] + 4
    assert '| polyrelu | polyrelu |' in markdown and '## Cost of each variant' in markdown


# ----------------------------------------------------------------------------- diverged comparison runs
def test_a_diverged_run_is_marked_everywhere_and_left_out_of_every_number(tmp_path, data, legends):
    out = tmp_path / 'out'
    for seed, (g, p) in enumerate(zip([2.00, 2.02, 2.05], [1.90, 1.95, 1.91]), start=1):
        write_run(out / f'gelu-s{seed}', g)
        if seed == 2:    # old train.py: finished, diverged, and a low loss that must not count
            write_run(out / f'polynorm-s{seed}', 0.5, finished=True, diverged=True)
        else:
            write_run(out / f'polynorm-s{seed}', p)
    for seed in (1, 2, 3):                        # swiglu: every seed diverged (train.py now)
        write_run(out / f'swiglu-s{seed}', 9.0, finished=False, diverged=True, outcome='diverged')
    with pytest.raises(SystemExit) as exit_:      # swiglu has no result: the report is written, then status 1
        replot(out, data, '--activations=gelu,polynorm,swiglu', '--seeds=1,2,3')
    assert exit_.value.code == 1
    rows = {r['activation']: r for r in read_rows(out / 'summary.csv')}
    assert rows['polynorm']['diverged'] == '2' and rows['polynorm']['n_seeds'] == '2'
    assert float(rows['polynorm']['final_val_loss']) == pytest.approx((1.90 + 1.91) / 2, abs=1e-12)
    d = [1.90 - 2.00, 1.91 - 2.05]                 # paired on seeds 1 and 3 only
    assert float(rows['polynorm']['delta_val_mean']) == pytest.approx(np.mean(d), abs=1e-12)
    assert rows['polynorm']['n_pairs'] == '2'
    assert rows['swiglu']['diverged'] == '1,2,3' and rows['swiglu']['n_seeds'] == '0'
    assert rows['swiglu']['verdict'] == 'diverged' and rows['swiglu']['final_val_loss'] == 'nan'
    outcomes = {(r['variant'], int(r['seed'])): (r['outcome'], r['final_val_loss']) for r in read_rows(out / 'runs.csv')}
    assert outcomes[('polynorm', 2)] == ('diverged', '') and outcomes[('swiglu', 3)] == ('diverged', '')
    assert outcomes[('polynorm', 3)] == ('finished', '1.91') and len(outcomes) == 9
    markdown = (out / 'summary.md').read_text()
    assert ('**Diverged runs, left out of every mean, interval and verdict below: polynorm-s2 (iter 20), '
            'swiglu-s1 (iter 20), swiglu-s2 (iter 20), swiglu-s3 (iter 20).**') in markdown
    assert '| polynorm | 0.001 | 2 (s2 diverged) |' in markdown
    assert '| swiglu | 0.001 | 0 (s1, s2, s3 diverged) |' in markdown and '| diverged | diverged |' in markdown
    assert '0.5000' not in markdown
    ordering = next(line for line in markdown.splitlines() if line.startswith('Final val loss, lowest first'))
    assert 'swiglu' not in ordering
    assert any(t.startswith('polynorm (val') and t.endswith('; s2 diverged)') for t in legends), legends
    assert 'swiglu: no result (s1, s2, s3 diverged)' in legends


def test_a_run_that_did_not_learn_is_marked_and_left_out_and_a_variant_with_none_fails(tmp_path, data, legends,
                                                                                     capsys):
    out = tmp_path / 'out'
    for seed, g in enumerate([2.00, 2.02, 2.05], start=1):
        write_run(out / f'gelu-s{seed}', g)
        write_run(out / f'polynorm-s{seed}', 3.6 if seed == 3 else g - 0.1,
                  outcome='did_not_learn' if seed == 3 else 'finished')
        write_run(out / f'swiglu-s{seed}', 3.9, outcome='did_not_learn')    # e.g. --learning_rate=3
    with pytest.raises(SystemExit) as exit_:
        replot(out, data, '--activations=gelu,polynorm,swiglu', '--seeds=1,2,3')
    assert exit_.value.code == 1
    said = capsys.readouterr().err.strip()
    assert said.startswith('error: no result for swiglu (every run: did not learn)') and '\n' not in said
    rows = {r['activation']: r for r in read_rows(out / 'summary.csv')}
    assert rows['polynorm']['did_not_learn'] == '3' and rows['polynorm']['n_seeds'] == '2'
    assert float(rows['polynorm']['delta_val_mean']) == pytest.approx(-0.1, abs=1e-12)   # seeds 1 and 2 only
    assert rows['swiglu']['verdict'] == 'did not learn' and rows['swiglu']['final_val_loss'] == 'nan'
    outcomes = {(r['variant'], int(r['seed'])): (r['outcome'], r['final_val_loss']) for r in read_rows(out / 'runs.csv')}
    assert outcomes[('polynorm', 3)] == ('did not learn', '3.6') and outcomes[('swiglu', 1)] == ('did not learn', '3.9')
    markdown = (out / 'summary.md').read_text()
    assert '**Runs that did not learn (final val loss not below the unigram entropy of the training tokens), left ' \
           'out of every mean, interval and verdict below: polynorm-s3' in markdown
    assert '| polynorm | 0.001 | 2 (s3 did not learn) |' in markdown
    assert '| swiglu | 0.001 | 0 (s1, s2, s3 did not learn) |' in markdown
    ordering = next(line for line in markdown.splitlines() if line.startswith('Final val loss, lowest first'))
    assert 'swiglu' not in ordering
    assert any(t.startswith('polynorm (val') and t.endswith('; s3 did not learn)') for t in legends), legends
    assert 'swiglu: no result (s1, s2, s3 did not learn)' in legends


def test_the_paired_differences_figure_draws_each_seed_its_mean_and_interval(tmp_path, data, monkeypatch):
    # the picture of the verdicts must show the same numbers as the table: the per-seed differences to the baseline,
    # their mean and the Student-t interval; a diverged seed draws nothing, and one seed draws no figure at all
    drawn = {}
    save = Figure.savefig

    def spy(fig, *args, **kwargs):
        for ax in fig.axes:
            if ax.get_title().startswith('paired differences to gelu'):
                drawn['dots'] = sorted(x for line in ax.get_lines() if line.get_marker() == 'o'
                                       for x in line.get_xdata())
                drawn['means'] = sorted(x for line in ax.get_lines() if line.get_marker() == 'D'
                                        for x in line.get_xdata())
                drawn['labels'] = [t.get_text() for t in ax.get_yticklabels()]
        return save(fig, *args, **kwargs)
    monkeypatch.setattr(Figure, 'savefig', spy)
    out = tmp_path / 'out'
    for seed, (g, p, s) in enumerate(zip([2.00, 2.02, 2.05], [1.90, 1.95, 1.91], [2.01, 2.00, 2.04]), start=1):
        write_run(out / f'gelu-s{seed}', g)
        write_run(out / f'polynorm-s{seed}', p)
        if seed == 3:
            write_run(out / f'swiglu-s{seed}', 9.0, finished=False, diverged=True, outcome='diverged')
        else:
            write_run(out / f'swiglu-s{seed}', s)
    replot(out, data, '--activations=gelu,polynorm,swiglu', '--seeds=1,2,3')
    d_poly, d_swi = [1.90 - 2.00, 1.95 - 2.02, 1.91 - 2.05], [2.01 - 2.00, 2.00 - 2.02]
    assert drawn['dots'] == pytest.approx(sorted(d_poly + d_swi), abs=1e-12)
    assert drawn['means'] == pytest.approx(sorted([np.mean(d_poly), np.mean(d_swi)]), abs=1e-12)
    assert drawn['labels'] == ['swiglu', 'polynorm'] and (out / 'paired_deltas.png').exists()
    one = tmp_path / 'one'
    write_run(one / 'gelu-s1', 2.0)
    write_run(one / 'polynorm-s1', 1.9)
    replot(one, data, '--activations=gelu,polynorm', '--seeds=1')
    assert not (one / 'paired_deltas.png').exists()


def write_val_log(run_dir, val_by_iter):
    """A finished run whose log.csv has a val loss at each given iteration (every 10th: 64 tokens per iteration)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / 'log.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['iter', 'tokens', 'train_loss', 'val_loss', 'elapsed_s'])
        for i in range(0, max(val_by_iter) + 1):
            writer.writerow([i, 64 * i, '3.0', val_by_iter.get(i, ''), 0.1 * i])
    last = val_by_iter[max(val_by_iter)]
    (run_dir / 'summary.json').write_text(json.dumps({'outcome': 'finished', 'finished': True, 'iter': max(val_by_iter),
                                                      'final_val_loss': last, 'best_val_loss': last}))


def test_the_difference_panel_is_the_paired_difference_of_the_per_seed_logs(tmp_path, data, monkeypatch):
    """Panel (d) of loss_curves.png: at every evaluation, the mean over seeds of polynorm's val loss minus gelu's on
    the same seed, and its Student-t 95% interval (2 degrees of freedom), recomputed here from the logs by hand."""
    gelu = {1: {0: 4.0, 10: 2.50, 20: 2.00}, 2: {0: 4.0, 10: 2.60, 20: 2.05}, 3: {0: 4.0, 10: 2.55, 20: 2.02}}
    poly = {1: {0: 4.0, 10: 2.40, 20: 1.93}, 2: {0: 4.0, 10: 2.44, 20: 1.95}, 3: {0: 4.0, 10: 2.47, 20: 1.97}}
    out = tmp_path / 'out'
    for seed in (1, 2, 3):
        write_val_log(out / f'gelu-s{seed}', gelu[seed])
        write_val_log(out / f'polynorm-s{seed}', poly[seed])
    drawn = {}
    real = figures.draw_paired_differences
    monkeypatch.setattr(figures, 'draw_paired_differences',
                        lambda ax, differences, *args: drawn.update(differences) or real(ax, differences, *args))
    replot(out, data, '--activations=gelu,polynorm', '--seeds=1,2,3')
    band = drawn['polynorm']
    assert list(band['iter']) == [0, 10, 20] and list(band['tokens']) == [0, 640, 1280] and band['n'] == 3
    for k, it in enumerate((0, 10, 20)):
        d = [poly[s][it] - gelu[s][it] for s in (1, 2, 3)]                # at 10: -0.10, -0.16, -0.08
        half = T975[2] * np.std(d, ddof=1) / math.sqrt(3) if it else 0.0
        assert band['mean'][k] == pytest.approx(np.mean(d), abs=1e-12)
        if it:
            assert band['low'][k] == pytest.approx(np.mean(d) - half, abs=1e-4)
            assert band['high'][k] == pytest.approx(np.mean(d) + half, abs=1e-4)
    assert set(drawn) == {'polynorm'}                                      # the baseline has no difference to itself


def test_every_activation_keeps_its_colour_whatever_the_order():
    a, b = figures.colors_for(['gelu', 'polynorm', 'swiglu']), figures.colors_for(['swiglu', 'polynorm', 'gelu'])
    assert a == b and len(set(a.values())) == 3
    assert a['polynorm'] == figures.ACTIVATION_COLORS['polynorm']
    variants = ['polynorm', 'polynorm-poly_order2', 'r5', 'r6', 'gated']  # names outside the table: spare colours
    colors = figures.colors_for(variants)
    assert len(set(colors.values())) == len(variants)
    assert colors == figures.colors_for(list(reversed(variants)))


# ----------------------------------------------------------------------------- model-size sweeps
SWEEP = {'1x32': {'gelu': [2.10, 2.13, 2.12], 'polynorm': [1.95, 1.99, 1.96]},
         '2x64': {'gelu': [1.90, 1.93, 1.92], 'polynorm': [1.82, 1.84, 1.85]}}
PARAMS = {'1x32': 1 * (4 * 32 * 32 + 2 * 32 * 192 + 2 * 32) + 32,          # by hand, as in test_compare.py
          '2x64': 2 * (4 * 64 * 64 + 2 * 64 * 288 + 2 * 64) + 64}


def test_scaling_csv_and_the_gap_slope_are_the_per_seed_numbers(tmp_path, data):
    out = tmp_path / 'out'
    for size, finals in SWEEP.items():
        for act, values in finals.items():
            for seed, value in enumerate(values, start=1):
                write_run(out / size / f'{act}-s{seed}', value)
    compare.main(['--block_size=16', '--batch_size=4', '--device=cpu', f'--dataset={data}', f'--out_dir={out}',
                  f'--max_iters={N_LOG}', '--activations=gelu,polynorm', '--seeds=1,2,3', '--sizes=1x32,2x64',
                  '--head_size=16', '--replot'])
    rows = read_rows(out / 'scaling.csv')
    assert [(r['size'], r['activation']) for r in rows] == [
        ('1x32', 'gelu'), ('1x32', 'polynorm'), ('2x64', 'gelu'), ('2x64', 'polynorm')]
    for row in rows:
        values = SWEEP[row['size']][row['activation']]
        assert int(row['non_embedding_params']) == PARAMS[row['size']]
        assert float(row['final_val_loss_mean']) == pytest.approx(np.mean(values), abs=1e-12)
        assert float(row['final_val_loss_std']) == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        if row['activation'] == 'polynorm':
            d = np.subtract(values, SWEEP[row['size']]['gelu'])
            half = T975[2] * np.std(d, ddof=1) / math.sqrt(3)
            assert float(row['delta_val_mean']) == pytest.approx(d.mean(), abs=1e-12)
            assert float(row['delta_val_ci95_low']) == pytest.approx(d.mean() - half, abs=1e-4)
            assert float(row['delta_val_ci95_high']) == pytest.approx(d.mean() + half, abs=1e-4)
    # the slope of the 6 per-seed differences against log10 N, by the textbook formulas, t with 6 - 2 = 4 df
    x = np.array([math.log10(PARAMS[s]) for s in SWEEP for _ in range(3)])
    y = np.concatenate([np.subtract(SWEEP[s]['polynorm'], SWEEP[s]['gelu']) for s in SWEEP])
    sxx = ((x - x.mean()) ** 2).sum()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    residuals = y - (y.mean() + slope * (x - x.mean()))
    half = T975[4] * math.sqrt((residuals ** 2).sum() / 4 / sxx)
    signed = report.signed
    line = (f'- polynorm − gelu: {signed(slope)} per 10x parameters, 95% CI [{signed(slope - half)}, '
            f'{signed(slope + half)}] (6 paired runs)')
    assert line in (out / 'summary.md').read_text()
