"""
Beyond one machine: train.py launched as two "nodes" on localhost (two torchrun agents, --nnodes=2, one process each,
gloo). Every process then has LOCAL_RANK 0, so anything that uses the local rank where the global one is meant
(printing, writing out_dir, the data shard, the RNG seed) shows up: the run must equal the single-process run, as the
2-process DDP test in test_train.py does, and only the global rank 0 writes.
"""
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from training import checkpoint  # noqa: E402
from train_helpers import REPO, TINY, env, free_port, make_char_dataset, read_log, train  # noqa: E402

# no dropout: its masks are seeded per rank (seed + rank), so they differ from one process's by design
SETTINGS = ['--gradient_accumulation_steps=4', '--max_iters=6', '--eval_interval=3', '--activation=polynorm']


def torchrun_two_nodes(out_dir, data_dir):
    """Node 0 and node 1 as two torchrun agents meeting at 127.0.0.1; returns their CompletedProcess-like results."""
    port = free_port()
    agents = [subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', '--nproc_per_node=1',
                                f'--node_rank={node}', '--master_addr=127.0.0.1', f'--master_port={port}', 'train.py',
                                *TINY, *SETTINGS, f'--dataset={data_dir}', f'--out_dir={out_dir}'],
                               cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for node in (0, 1)]
    results = []
    for agent in agents:
        stdout, stderr = agent.communicate(timeout=600)
        results.append((agent.returncode, stdout, stderr))
    return results


def test_two_nodes_match_one_process(tmp_path):
    data_dir = make_char_dataset(tmp_path / 'tiny_char')
    single, nodes = str(tmp_path / 'single'), str(tmp_path / 'nodes')
    train(f'--dataset={data_dir}', f'--out_dir={single}', *SETTINGS)
    (code0, out0, err0), (code1, out1, err1) = torchrun_two_nodes(nodes, data_dir)
    assert code0 == 0 and code1 == 0, err0[-3000:] + err1[-3000:]
    assert '2 process(es) on 2 nodes' in out0
    assert 'iter 6:' not in out1   # only the global rank 0 speaks, though node 1's process has LOCAL_RANK 0 as well

    a, b = read_log(single), read_log(nodes)
    assert [r['iter'] for r in a] == [r['iter'] for r in b]
    for column in ('train_loss', 'val_loss', 'grad_norm'):
        for ra, rb in zip(a, b):
            if ra[column]:
                assert float(rb[column]) == pytest.approx(float(ra[column]), rel=1e-5), (column, ra['iter'])
    sa = checkpoint.load(os.path.join(single, 'ckpt.pt'))
    sb = checkpoint.load(os.path.join(nodes, 'ckpt.pt'))
    for key, weight in sa['model'].items():
        torch.testing.assert_close(sb['model'][key], weight, rtol=1e-4, atol=1e-6, msg=key)
    assert len(sb['rng']) == 2 and not torch.equal(sb['rng'][0]['torch'], sb['rng'][1]['torch'])   # seeds per rank
    assert sorted(os.listdir(nodes)) == sorted(['ckpt.pt', 'ckpt_best.pt', 'log.csv', 'coeffs.csv', 'summary.json'])
