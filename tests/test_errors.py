"""
What a user's mistake or a fault costs: one line naming what was wrong (the key or the file) and what to do, a non-zero
exit status and never a traceback; and never a lost or mixed-up run or dataset.

The walk runs each script as a user would, in a subprocess (data/text/prepare.py in-process, so that it writes under
a temporary data root instead of the repo's data/). Most cases fail before torch is imported, in a fraction of a
second of CPU; the subprocesses run concurrently, since on a shared machine they mostly wait for a core. The faults
that need a running training (disk full, Ctrl-C, divergence) use a one-layer model for a few iterations.
"""
import errno
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from data.dataset import load_meta
from training import checkpoint, peak_flops

sys.path.insert(0, os.path.dirname(__file__))
from test_data import run_text_prepare  # noqa: E402
from data.dataset import write_token_dataset  # noqa: E402
from train_helpers import REPO, env, free_port, make_char_dataset, read_log, run_script  # noqa: E402

# the smallest useful run; the walk's flags come after these, so they win
TINY = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4', '--max_iters=2',
        '--eval_interval=2', '--eval_iters=2', '--log_interval=1', '--warmup_iters=1', '--device=cpu',
        '--compile=False', '--check_learned=False']   # 2 iterations learn nothing: no "did not learn" exit


def train_args(paths, *args):
    return ['train.py', *TINY, f"--dataset={paths['data']}", f"--out_dir={paths['fresh']}", *args]


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Everything the cases point at: good and broken datasets, a finished run, broken files of every kind."""
    root = tmp_path_factory.mktemp('errors')
    paths = {'root': str(root), 'data': make_char_dataset(root / 'data')}
    paths.update(broken_datasets(root, paths['data']))
    paths['run'] = str(root / 'run')
    run_script(train_args(dict(paths, fresh=paths['run'])))   # a finished 2-iteration run
    damaged = root / 'damaged'
    damaged.mkdir()
    (damaged / 'ckpt.pt').write_bytes(open(os.path.join(paths['run'], 'ckpt.pt'), 'rb').read()[:5000])
    paths['damaged'] = str(damaged)
    paths['run_copy'] = str(root / 'run_copy')   # resumed with another vocabulary: must stay as it is
    shutil.copytree(paths['run'], paths['run_copy'])
    (root / 'empty').mkdir()
    paths['empty'] = str(root / 'empty')
    paths['file'] = str(root / 'a_file.txt')
    (root / 'a_file.txt').write_text('not a folder\n')
    paths['latin1'] = str(root / 'latin1.txt')
    (root / 'latin1.txt').write_bytes('caf\xe9\n'.encode('latin-1'))
    paths['syntax_error_config'] = str(root / 'syntax_error.py')
    (root / 'syntax_error.py').write_text("n_layer = 1\nlearning_rate = = 3\n")
    paths['crashing_config'] = str(root / 'crashing.py')
    (root / 'crashing.py').write_text("n_layer = 1\nn_embd = 32 // 0\n")
    paths['exiting_config'] = str(root / 'exiting.py')   # would end train.py with status 0, having done nothing
    (root / 'exiting.py').write_text("import sys\nn_layer = 1\nsys.exit(0)\n")
    paths['bye_config'] = str(root / 'bye.py')
    (root / 'bye.py').write_text("n_layer = 1\nraise SystemExit('bye')\n")
    return paths


def broken_datasets(root, good):
    """Copies of the good dataset with a damaged meta.json, a vocabulary smaller than the token ids (recorded at
    prepare time, and old data without the record), and another character table of the same size."""
    def copy(name, change_meta):
        shutil.copytree(good, root / name)
        path = root / name / 'meta.json'
        meta = json.loads(path.read_text())
        text = change_meta(meta)
        path.write_text(text if isinstance(text, str) else json.dumps(meta))
        return str(root / name)

    def smaller_vocab(meta, keep_record):
        meta['vocab_size'], meta['chars'] = 10, meta['chars'][:10]
        if not keep_record:
            del meta['max_token_id']

    def other_chars(meta):
        meta['chars'] = meta['chars'][1:] + meta['chars'][0]

    return {'bad_json': copy('bad_json', lambda meta: '{"tokenizer": "char", '),
            'small_vocab': copy('small_vocab', lambda meta: smaller_vocab(meta, keep_record=True)),
            'small_vocab_old': copy('small_vocab_old', lambda meta: smaller_vocab(meta, keep_record=False)),
            'other_chars': copy('other_chars', other_chars)}


# ----------------------------------------------------------------------------- the walk
# (script, arguments, words the error must contain). '{name}' is a path from the world fixture; {fresh} is an out_dir
# that does not exist yet. train.py cases get TINY, a dataset and a fresh out_dir first.
CASES = [
    # train.py: settings refused up front, the key named (issue 14's list first)
    ('train', ['--learning_rate=-1'], ['learning_rate']),
    ('train', ['--learning_rate=0'], ['learning_rate']),
    ('train', ['--n_head=0'], ['n_head']),
    ('train', ['--max_iters=-1'], ['max_iters']),
    ('train', ['--min_lr=0.1'], ['min_lr', 'learning_rate']),
    ('train', ['--warmup_iters=-1'], ['warmup_iters']),
    ('train', ['--weight_decay=-0.1'], ['weight_decay']),
    ('train', ['--grad_clip=-1'], ['grad_clip']),
    ('train', ['--device=gpu'], ['device', 'cuda']),
    ('train', ['--out_dir={file}'], ['{file}', 'file']),
    ('train', ['--block_size=100000'], ['block_size', '--block_size=']),
    ('train', ['{syntax_error_config}'], ['{syntax_error_config}:2']),
    # train.py: files it reads
    ('train', ['--dataset={bad_json}'], ['{bad_json}', 'meta.json']),
    ('train', ['--dataset={small_vocab}'], ['{small_vocab}', 'max_token_id', 'vocab_size']),
    ('train', ['--dataset={small_vocab_old}'], ['{small_vocab_old}', 'token id 29', 'vocab_size 10']),
    ('train', ['--init_from=resume', '--out_dir={damaged}'], ['{damaged}/ckpt.pt', 'damaged']),
    ('train', ['--init_from=resume', '--out_dir={run_copy}', '--max_iters=4', '--dataset={other_chars}'],
     ['another vocabulary', '{other_chars}', '--dataset={data}']),
    # train.py: beyond issue 14's list
    ('train', ['--out_dir={file}/sub'], ['{file}/sub']),
    ('train', ['--out_dir='], ['out_dir']),
    ('train', ['--dataset={root}/nowhere'], ['nowhere', 'prepare.py']),
    ('train', ['--init_from=resume', '--out_dir={empty}'], ['{empty}/ckpt.pt']),
    ('train', ['--init_from=resum'], ['init_from']),
    ('train', ['--init_from=resume', '--overwrite=True'], ['overwrite']),
    ('train', ['--n_embd=30', '--n_head=4'], ['n_embd', 'n_head', '--n_head=']),
    ('train', ['--batch_size=0'], ['batch_size']),
    ('train', ['--eval_interval=0'], ['eval_interval']),
    ('train', ['--beta2=1.5'], ['beta2']),
    ('train', ['--dropout=1.0'], ['dropout']),
    ('train', ['--lr_decay_iters=0'], ['lr_decay_iters']),
    ('train', ['--aux_loss_weight=-1'], ['aux_loss_weight']),
    ('train', ['--rope_theta=0'], ['rope_theta']),
    ('train', ['--seed=-1'], ['seed']),
    ('train', ['--dtype=fp16'], ['dtype']),
    ('train', ['--device=cuda:x'], ['device']),
    ('train', ['--activation=gleu'], ['activation', 'gelu']),
    ('train', ['{crashing_config}'], ['{crashing_config}:2', 'ZeroDivisionError']),
    ('train', ['{root}/no_such_config.py'], ['no_such_config.py']),
    ('train', ['{exiting_config}'], ['{exiting_config}:3', 'sys.exit', 'SystemExit(0)']),
    ('train', ['{bye_config}'], ['{bye_config}:2', "SystemExit('bye')"]),
    ('train', ['--eval_only=True'], ['eval_only=True', '--init_from=resume']),   # an untrained model's loss
    # sample.py (issue 14's list first)
    ('sample', ['--out_dir={run}', '--start=FILE:{root}/missing.txt'], ['missing.txt']),
    ('sample', ['--out_dir={run}', '--temperature=-1'], ['temperature']),
    ('sample', ['--out_dir={run}', '--top_k=-5'], ['top_k']),
    ('sample', ['--out_dir={run}', '--num_samples=0'], ['num_samples']),
    ('sample', ['--out_dir={damaged}'], ['{damaged}/ckpt.pt', 'damaged']),
    ('sample', ['--out_dir={root}/nowhere'], ['{root}/nowhere']),
    ('sample', ['--out_dir={run}', '--start=FILE:{latin1}'], ['{latin1}', 'UTF-8']),
    ('sample', ['--out_dir={run}', '--max_new_tokens=0'], ['max_new_tokens']),
    ('sample', ['--out_dir={run}', '--start='], ['--start']),
    ('sample', ['--out_dir={run}', '--device=gpu'], ['device']),
    ('sample', ['--out_dir={empty}'], ['{empty}/ckpt.pt']),
    ('sample', ['--out_dir={run}', '--dtype=half'], ['dtype']),
    # data/text/prepare.py (run in-process under a temporary data root)
    ('prepare', ['{root}/bad.jsonl', '--name=web'], ['bad.jsonl:2', '--skip_bad_lines']),
    ('prepare', ['{latin1}', '--name=web'], ['{latin1}', 'UTF-8']),
    ('prepare', ['{root}/empty.txt', '--name=web'], ['empty.txt', 'more text']),
    ('prepare', ['{root}/missing.txt', '--name=web'], ['missing.txt']),
    ('prepare', ['{root}/good.txt', '--name=../web'], ['--name']),
    ('prepare', ['{root}/good.txt', '--name=web', '--val_fraction=2'], ['--val_fraction']),
    ('prepare', ['{root}/good.txt', '--name=web', '--shard_tokens=-1'], ['--shard_tokens']),
    # compare.py: duplicates (the other compare.py mistakes are walked in test_compare.py)
    ('compare', ['--activations=gelu,gelu'], ['--activations', 'gelu']),
]

if importlib.util.find_spec('wandb') is None:   # with wandb installed, this flag is no mistake
    CASES.append(('train', ['--wandb_log=True'], ['wandb_log', 'pip install wandb']))
if not torch.cuda.is_available():   # a device name that exists, but not on this machine: the valid ones are listed
    CASES.append(('train', ['--device=cuda'], ["device='cuda' is not available here",
                                               'valid on this machine: auto, cpu']))


def case_id(case):
    script, args, _ = case
    return f"{script}:{' '.join(args)}".replace('{', '').replace('}', '')


def fill(text, paths):
    return text.format(**paths)


def run_prepare(args, data_root, monkeypatch, capsys):
    """data/text/prepare.py on character level, as test_data.run_text_prepare runs it: (exit status, stdout, stderr)."""
    return run_text_prepare([*args, '--tokenizer=char'], data_root, monkeypatch, capsys)


@pytest.fixture(scope='module')
def prepare_inputs(world):
    root = world['root']
    with open(os.path.join(root, 'bad.jsonl'), 'w') as f:
        f.write('{"text": "a fine line"}\n{"text": broken\n')
    open(os.path.join(root, 'empty.txt'), 'w').close()
    with open(os.path.join(root, 'good.txt'), 'w') as f:
        f.write('some good text\n' * 40)


def case_paths(world, index):
    return dict(world, fresh=os.path.join(world['root'], 'fresh', str(index)))


def case_command(case, paths):
    script, args, _ = case
    args = [fill(a, paths) for a in args]
    if script == 'train':
        return train_args(paths, *args)
    return [f'{script}.py', *args] + ([f"--out_dir={paths['fresh']}"] if script == 'compare' else [])


@pytest.fixture(scope='module')
def walk(world):
    """{case index: CompletedProcess} for every case that runs as a subprocess, run 6 at a time."""
    indices = [i for i, case in enumerate(CASES) if case[0] != 'prepare']
    with ThreadPoolExecutor(max_workers=6) as pool:
        done = pool.map(lambda i: run_script(case_command(CASES[i], case_paths(world, i)), check=False), indices)
        return dict(zip(indices, done))


@pytest.mark.parametrize('index', range(len(CASES)), ids=[case_id(c) for c in CASES])
def test_a_mistake_is_one_line_naming_it(index, world, walk, prepare_inputs, tmp_path, monkeypatch, capsys):
    script, args, words = CASES[index]
    paths = case_paths(world, index)
    if script == 'prepare':
        code, out, err = run_prepare([fill(a, paths) for a in args], tmp_path / 'data_root', monkeypatch, capsys)
    else:
        code, out, err = walk[index].returncode, walk[index].stdout, walk[index].stderr
    assert code != 0, out + err
    assert 'Traceback' not in out + err, out + err
    last = err.strip().splitlines()[-1]
    assert 'error: ' in last, err
    for word in words:
        assert fill(word, paths) in last, (word, last)
    assert not os.path.exists(paths['fresh']), "a refused run must leave no out_dir behind"


@pytest.mark.skipif(os.name != 'posix' or os.geteuid() == 0, reason='root may write anywhere')
def test_an_out_dir_that_cannot_be_written_is_refused(world, tmp_path):
    out = tmp_path / 'read_only'
    out.mkdir()
    out.chmod(0o555)
    done = run_script(train_args(dict(world, fresh=str(out))), check=False)
    out.chmod(0o755)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert f'out_dir {out} is not writable' in done.stderr


NOT_WRITABLE = """
import os, runpy, sys
out = os.path.abspath(sys.argv.pop(1))
real_access = os.access
def access(path, mode, *args, **kwargs):   # what the kernel answers a non-root user, or anyone on a read-only mount
    if os.path.abspath(path) == out and mode & os.W_OK:
        return False
    return real_access(path, mode, *args, **kwargs)
os.access = access
sys.argv = sys.argv[1:]
sys.path.insert(0, '.')
runpy.run_path('train.py', run_name='__main__')
"""


def test_an_out_dir_that_cannot_be_written_is_refused_whoever_runs_it(world, tmp_path):
    """The case above for every user, root included (CI runs as root, where chmod cannot take the right away): the
    folder is reported not writable, as for another user's folder or a read-only mount."""
    out = tmp_path / 'not_writable'
    out.mkdir()
    wrapper = tmp_path / 'not_writable.py'
    wrapper.write_text(NOT_WRITABLE)
    done = run_script([str(wrapper), str(out), *train_args(dict(world, fresh=str(out)))], check=False)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert done.stderr.strip().splitlines() == [f'error: out_dir {out} is not writable by this user; pick another '
                                                f'--out_dir']
    assert os.listdir(out) == []


@pytest.mark.parametrize('variables, words', [
    ({'RANK': '0'}, ['RANK=0', 'missing LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT', 'torchrun', 'unset RANK']),
    ({'RANK': '1', 'WORLD_SIZE': '2'}, ['missing LOCAL_RANK, MASTER_ADDR, MASTER_PORT']),   # printed by rank 1 too
    ({'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '2', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': 'free'},
     ['2 processes did not all meet at 127.0.0.1:', 'ddp_timeout=3', 'start every process']),
], ids=['rank-only', 'rank-1-and-world-size', 'one-of-two-processes'])
def test_stray_torchrun_variables_are_one_line(variables, words, world, tmp_path):
    """Left in a shell by an earlier torchrun job: a partial set is named; a complete one without the other processes
    gives up after ddp_timeout seconds instead of hanging."""
    variables = {k: str(free_port()) if v == 'free' else v for k, v in variables.items()}
    out = str(tmp_path / 'out')
    done = run_script(train_args(dict(world, fresh=out), '--ddp_timeout=3', '--gradient_accumulation_steps=2'),
                      check=False, extra_env=variables)
    assert done.returncode == 2 and 'Traceback' not in done.stdout + done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and all(word in last for word in words), last
    assert not os.path.exists(out)


@pytest.mark.parametrize('flags, cause', [
    (['--learning_rate=3', '--min_lr=0', '--max_iters=8'], 'had not recovered by iter 8'),   # blows up, stays finite
    (['--learning_rate=1e9', '--decay_lr=False', '--max_iters=40', '--eval_interval=1'], 'non-finite'),
], ids=['finite-blow-up', 'non-finite-loss'])
def test_a_run_that_diverged_has_no_result(flags, cause, world, tmp_path):
    """Exit status 3 and a last line 'diverged: ...' (contracts.md item 3); summary.json says so and reports no best
    val loss that no checkpoint holds (here: the untrained model's first evaluation); no 'done' line."""
    out = str(tmp_path / 'out')
    done = run_script(train_args(dict(world, fresh=out), *flags), check=False)
    assert done.returncode == 3 and 'Traceback' not in done.stdout + done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith('diverged: ') and cause in last and 'no result' in last and '--learning_rate' in last
    assert 'done:' not in done.stdout   # no 'done: ..., best val loss ...' as if the run had a result
    summary = json.load(open(os.path.join(out, 'summary.json')))
    assert (summary['outcome'], summary['finished'], summary['diverged']) == ('diverged', False, True)
    assert summary['best_val_loss'] is None and summary['best_iter'] is None


def test_rerunning_a_run_that_diverged_before_any_checkpoint_does_not_advise_resuming(world, tmp_path):
    """Every loss non-finite, no checkpoint saved: the rerun is refused (the failed run is kept), and its one line
    says there is nothing to resume: a new out_dir (or --overwrite=True) and a lower learning rate."""
    out = str(tmp_path / 'out')
    flags = ['--learning_rate=1e9', '--decay_lr=False', '--max_iters=40', '--eval_interval=1']
    assert run_script(train_args(dict(world, fresh=out), *flags), check=False).returncode == 3
    assert not os.path.exists(os.path.join(out, 'ckpt.pt'))
    done = run_script(train_args(dict(world, fresh=out), *flags), check=False)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    line = done.stderr.strip()
    assert '\n' not in line and line.startswith('error: ') and 'diverged before saving a checkpoint' in line
    assert 'nothing to resume' in line and '--out_dir' in line and 'lower --learning_rate' in line
    assert '--init_from=resume' not in line


def other_text_same_vocabulary(data_dir, into):
    """The dataset at data_dir, re-prepared from other text with the same characters (as a user's own text prepared
    under the same name would be): built beside it, then swapped in."""
    meta = load_meta(data_dir)
    ids = np.fromfile(os.path.join(data_dir, 'train.bin'), dtype=meta['dtype'])[::-1][:-500].astype(np.uint32)
    write_token_dataset(into, [ids], tokenizer='char', vocab_size=meta['vocab_size'], source='other text',
                        chars=meta['chars'])


def test_a_resume_on_other_data_is_refused_unless_asked_and_then_announced(world, tmp_path):
    data = str(tmp_path / 'data')
    shutil.copytree(world['data'], data)
    out = str(tmp_path / 'run')
    run_script(train_args(dict(world, data=data, fresh=out)))   # trained on data, 2 iterations
    shutil.rmtree(data)
    other_text_same_vocabulary(world['data'], data)
    before = snapshot(out)
    done = run_script(['train.py', f'--out_dir={out}', '--init_from=resume', '--max_iters=4'], check=False)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert 'not the data this run trained on' in last and f'--dataset={data}' in last and "'other text'" in last
    assert snapshot(out) == before
    # asked for explicitly: said loudly, and the best val loss starts again (no comparison across datasets)
    done = run_script(['train.py', f'--out_dir={out}', '--init_from=resume', '--max_iters=4', f'--dataset={data}'])
    assert 'RESUMING ON OTHER DATA' in done.stdout
    assert 'iter 4: saved' in done.stdout and 'best so far' in done.stdout.split('iter 4: saved')[1].splitlines()[0]
    summary = json.load(open(os.path.join(out, 'summary.json')))
    assert summary['best_iter'] == 4 and summary['best_val_loss'] == summary['final_val_loss']


# ----------------------------------------------------------------------------- nothing lost


def snapshot(folder):
    """{file name: bytes} of a folder, to show that a refused command changed nothing."""
    return {name: open(os.path.join(folder, name), 'rb').read() for name in sorted(os.listdir(folder))}


def test_reprepare_with_bad_input_keeps_the_old_dataset(world, prepare_inputs, tmp_path, monkeypatch, capsys):
    data_root = tmp_path / 'data_root'
    good = os.path.join(world['root'], 'good.txt')
    assert run_prepare([good, '--name=small'], data_root, monkeypatch, capsys)[0] == 0
    before = snapshot(data_root / 'small')
    # --overwrite=True: replacing a dataset of another source is allowed here, so what refuses these is the bad input
    for bad in ('bad.jsonl', 'empty.txt'):
        code, _, err = run_prepare([os.path.join(world['root'], bad), '--name=small', '--overwrite=True'], data_root,
                                   monkeypatch, capsys)
        assert code != 0 and bad in err
        assert snapshot(data_root / 'small') == before   # no build folder left either
    # --skip_bad_lines skips and counts the bad line instead
    with open(os.path.join(world['root'], 'mixed.jsonl'), 'w') as f:
        f.write('{"text": "%s"}\n{"text": broken\n' % ('a fine line ' * 20))
    code, _, err = run_prepare([os.path.join(world['root'], 'mixed.jsonl'), '--name=small', '--skip_bad_lines',
                                '--overwrite=True'], data_root, monkeypatch, capsys)
    assert code == 0 and 'skipped 1 bad .jsonl line' in err and 'mixed.jsonl:2' in err
    assert load_meta(data_root / 'small')['max_token_id'] == load_meta(data_root / 'small')['vocab_size'] - 1


def test_a_locked_out_dir_is_refused_naming_the_other_process(world, tmp_path):
    out = tmp_path / 'busy'
    with checkpoint.lock_dir(str(out), 'train.py'):   # held by this (live) pytest process, as a running train.py would
        done = run_script(train_args(dict(world, fresh=str(out))), check=False)
        assert os.listdir(out) == ['.lock']
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    line = done.stderr.strip()
    assert line.startswith('error: ') and '\n' not in line
    assert f'pid {os.getpid()}' in line and 'in use by another train.py' in line
    assert not out.exists()   # the lock leaves nothing behind: the folder it created is gone with it


def test_a_lock_left_by_a_killed_run_is_taken_over_with_its_temp_files(world, tmp_path):
    out = tmp_path / 'run'
    shutil.copytree(world['run'], out)
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; from training import checkpoint; '
                               'checkpoint.lock_dir(sys.argv[1], "train.py"); print("locked", flush=True); '
                               'time.sleep(600)', str(out)],
                              cwd=REPO, env=env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'locked'
    (out / f'.ckpt.pt.{holder.pid}.tmp').write_bytes(b'half a checkpoint')   # a save that kill -9 cut short
    holder.kill()
    holder.wait()
    assert (out / '.lock').exists()
    before = snapshot(out)
    done = run_script(train_args(dict(world, fresh=str(out))), check=False)
    # the stale lock does not block: the run gets as far as the next check (the folder holds a run)
    assert done.returncode == 2 and 'already holds a run' in done.stderr
    assert f'took over the stale lock of pid {holder.pid}' in done.stdout
    assert f'.ckpt.pt.{holder.pid}.tmp' in done.stdout
    after = snapshot(out)
    assert set(before) - set(after) == {'.lock', f'.ckpt.pt.{holder.pid}.tmp'}
    assert all(after[name] == before[name] for name in after)


def test_a_scratch_run_never_replaces_a_finished_run_unless_asked(world, tmp_path):
    out = str(tmp_path / 'run')
    shutil.copytree(world['run'], out)
    before = snapshot(out)
    done = run_script(train_args(dict(world, fresh=out)), check=False)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    assert out in done.stderr and '--overwrite=True' in done.stderr and '--init_from=resume' in done.stderr
    # with --overwrite=True but a run that cannot start, the old files are not touched either
    done = run_script(train_args(dict(world, fresh=out), f"--dataset={world['bad_json']}", '--overwrite=True'),
                      check=False)
    assert done.returncode == 2 and 'meta.json' in done.stderr
    assert snapshot(out) == before


def test_refused_resumes_leave_the_run_as_it_was(world, walk):
    """The walk resumed run_copy with another vocabulary (refused): its files are those of the run it copies."""
    assert snapshot(world['run_copy']) == snapshot(world['run'])


DISK_FILLS_UP = """
import errno, runpy, sys
import torch
real_save, saves = torch.save, []
def save_until_the_disk_is_full(obj, f, *args, **kwargs):
    saves.append(1)
    if len(saves) == 1:
        return real_save(obj, f, *args, **kwargs)
    f.write(b'part of a checkpoint')   # as torch's writer fails: a RuntimeError with the OSError inside
    raise RuntimeError('[enforce fail at inline_container.cc:626] . unexpected pos 64') from OSError(
        errno.ENOSPC, 'No space left on device')
torch.save = save_until_the_disk_is_full
sys.argv = sys.argv[1:]
sys.path.insert(0, '.')
runpy.run_path('train.py', run_name='__main__')
"""


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(world, tmp_path):
    out = str(tmp_path / 'out')
    wrapper = tmp_path / 'disk_fills_up.py'
    wrapper.write_text(DISK_FILLS_UP)
    done = run_script([str(wrapper), *train_args(dict(world, fresh=out), '--max_iters=4')], check=False)
    assert done.returncode == 1 and 'Traceback' not in done.stdout + done.stderr
    line = done.stderr.strip()
    assert '\n' not in line and line.startswith('error: disk full')
    assert os.path.abspath(out) in line and 'ckpt.pt holds iter 2' in line and '--init_from=resume' in line
    assert checkpoint.load(os.path.join(out, 'ckpt.pt'))['iter_num'] == 2
    assert not [name for name in os.listdir(out) if name.endswith('.tmp')]


CPU_PEAK_TOO_LOW = """
import runpy, sys
sys.path.insert(0, '.')
from training import peak_flops
peak_flops.measure_cpu_matmul_flops = lambda: 1e3   # as if measured on a machine busy with other work, every time
sys.argv = sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
"""


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(world, tmp_path):
    """Also: an MFU above 100% is never shown (the CPU peak is measured far too low here, twice)."""
    out = str(tmp_path / 'out')
    wrapper = tmp_path / 'cpu_peak_too_low.py'
    wrapper.write_text(CPU_PEAK_TOO_LOW)
    run = subprocess.Popen([sys.executable, str(wrapper), *train_args(dict(world, fresh=out), '--max_iters=100000',
                                                                      '--eval_interval=1000')],
                           cwd=REPO, env=dict(env(), NANOPOLY_CACHE=str(tmp_path / 'cache')),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    head = []   # stdout up to the third iteration; communicate() returns the rest
    for line in run.stdout:
        head.append(line)
        if line.startswith('iter 3:'):
            break
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    stdout = ''.join(head) + stdout
    # the status of a program stopped by Ctrl-C (130 in a shell): a loop of runs in a script stops too
    assert run.returncode in (130, -signal.SIGINT) and 'Traceback' not in stdout + stderr
    last = stderr.strip().splitlines()[-1]
    stopped = checkpoint.load(os.path.join(out, 'ckpt.pt'))['iter_num']
    assert last.startswith(f'stopped at iter {stopped}:') and 'Resume with: python train.py' in last
    assert f'--out_dir={out} --init_from=resume' in last
    assert f'out_dir: {os.path.abspath(out)} (a new run)' in stdout   # where it writes, said at the start
    assert int(read_log(out)[-1]['iter']) == stopped   # the log ends where the checkpoint does
    summary = json.load(open(os.path.join(out, 'summary.json')))
    assert summary['finished'] is False and summary['iter'] == stopped
    # the run went faster than the cached peak: measured again (still too low here), so MFU is left empty
    assert 're-measured it' in stdout and 'MFU is left empty' in stdout and 'mfu' not in stdout.split('iter 1:')[1]
    assert all(row['mfu'] == '' for row in read_log(out)) and summary['mfu'] is None


def test_cpu_peak_cache_keeps_the_highest_value_per_process_count(tmp_path, monkeypatch):
    cache = str(tmp_path / 'cpu_peak.json')
    assert peak_flops.store_cpu_peak(5e10, 1, cache) == 5e10
    assert peak_flops.store_cpu_peak(3e10, 1, cache) == 5e10          # a measurement on a busy machine is lower
    monkeypatch.setattr(peak_flops, 'measure_cpu_matmul_flops', lambda: 8e10)
    assert peak_flops.cpu_peak_flops(cache, remeasure=True) == 8e10   # a quieter one replaces it
    assert peak_flops.cached_cpu_peak(1, cache) == 8e10
    assert peak_flops.cached_cpu_peak(2, cache) is None   # 2 DDP processes sharing the CPU: measured together


def test_a_diverging_run_keeps_its_good_checkpoints_and_gives_fitting_advice(world, tmp_path):
    out = str(tmp_path / 'run')
    shutil.copytree(world['run'], out)
    done = run_script(train_args(dict(world, fresh=out), '--init_from=resume', '--max_iters=40', '--eval_interval=1',
                                 '--learning_rate=1e3', '--decay_lr=False'), check=False)
    assert done.returncode == 3 and 'Traceback' not in done.stderr   # diverged: no result (contracts.md item 3)
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith('diverged: ') and 'non-finite' in line and 'Last good checkpoint kept' in line
    assert '--grad_clip=1.0' not in line   # it is already the default
    best = checkpoint.load(os.path.join(out, 'ckpt_best.pt'))
    for name in ('ckpt.pt', 'ckpt_best.pt'):
        ckpt = checkpoint.load(os.path.join(out, name))
        largest = max(t.abs().max().item() for t in ckpt['model'].values())
        assert math.isfinite(largest) and largest < 100, (name, largest)   # weights that did not blow up
        assert ckpt['val_loss'] <= 2 * best['val_loss']


def test_leftover_temp_files_belong_to_dead_processes_only(tmp_path):
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    names = [f'.ckpt.pt.{dead_pid}.tmp', f'.ckpt.pt.{os.getpid()}.tmp', f'.log.csv.{dead_pid}.tmp', 'ckpt.pt']
    for name in names:
        (tmp_path / name).write_bytes(b'x')
    removed = checkpoint.remove_stale_temp_files(str(tmp_path))
    assert sorted(removed) == sorted([names[0], names[2]])
    assert sorted(os.listdir(tmp_path)) == sorted(names[1::2])


def test_a_failed_save_removes_its_temp_file(tmp_path, monkeypatch):
    def disk_full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(checkpoint.CheckpointError, match='disk full'):
        checkpoint.save_atomic({'model': {}}, str(tmp_path / 'ckpt.pt'))
    assert os.listdir(tmp_path) == []
