"""Shared by test_train.py and test_sample.py: a tiny char dataset and a way to run train.py/sample.py as a user would."""
import csv
import os
import random
import subprocess
import sys

import numpy as np

from data.dataset import char_vocabulary, write_token_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ['speak', 'citizen', 'first', 'the', 'people', 'hear', 'me', 'proceed', 'further', 'all', 'famish', 'die']

# a model small enough that a few iterations take well under a second on one core (a few iterations learn nothing:
# check_learned off, or every such run would end with train.py's "did not learn", exit status 4)
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4', '--eval_iters=3',
        '--log_interval=1', '--warmup_iters=2', '--lr_decay_iters=8', '--learning_rate=3e-3', '--check_learned=False']


def make_char_dataset(data_dir):
    """~20k characters of seeded pseudo-English, written with the data package's own writer."""
    rng = random.Random(0)
    lines = [' '.join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))).capitalize() + '.' for _ in range(600)]
    text = '\n'.join(lines) + '\n'
    chars = char_vocabulary([text])
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint32)
    write_token_dataset(data_dir, [ids], tokenizer='char', vocab_size=len(chars), source='tests', chars=chars)
    return str(data_dir)


def env():
    # one thread per process: the test machine has 2 shared cores, and thread count changes float results
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONHASHSEED='0')


def run_script(args, check=True, launcher=None, extra_env=None):
    """Run [launcher...] script args in the repo root; returns the CompletedProcess (text output)."""
    cmd = (launcher or [sys.executable]) + args
    done = subprocess.run(cmd, cwd=REPO, env=dict(env(), **(extra_env or {})), capture_output=True, text=True,
                          timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def train(*args, check=True, extra_env=None):
    return run_script(['train.py', *TINY, *args], check=check, extra_env=extra_env)


def torchrun_train(nproc, *args):
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}']
    return run_script(['train.py', *TINY, *args], launcher=launcher)


def read_log(out_dir, name='log.csv'):
    with open(os.path.join(out_dir, name), newline='') as f:
        return list(csv.DictReader(f))


def free_port():
    """A TCP port nobody listens on right now (for a rendezvous on localhost)."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
