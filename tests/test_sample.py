"""sample.py turns a checkpoint into text on CPU, with the dataset's own tokenizer."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from train_helpers import make_char_dataset, run_script, train  # noqa: E402


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('sample')
    data_dir = make_char_dataset(root / 'tiny_char')
    out = str(root / 'out')
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=2', '--eval_interval=2')
    return out


def test_sample_prints_text_that_continues_the_prompt(trained, tmp_path):
    done = run_script(['sample.py', f'--out_dir={trained}', '--start=The people', '--num_samples=2',
                       '--max_new_tokens=25', '--device=cpu'])
    samples = done.stdout.split('---------------\n')
    assert len(samples) == 3 and samples[-1] == ''
    for text in samples[:2]:
        assert text.startswith('The people') and len(text.rstrip('\n')) >= len('The people') + 20

    prompt = tmp_path / 'prompt.txt'
    prompt.write_text('Hear me')
    greedy = ['sample.py', f'--out_dir={trained}', f'--start=FILE:{prompt}', '--num_samples=1', '--max_new_tokens=10',
              '--temperature=0']
    first, second = run_script(greedy).stdout, run_script(greedy).stdout
    assert first.startswith('Hear me') and first == second   # greedy decoding is deterministic


def test_sample_rejects_characters_outside_the_vocabulary(trained):
    done = run_script(['sample.py', f'--out_dir={trained}', '--start=@#'], check=False)
    assert done.returncode == 2 and 'cannot encode the prompt' in done.stderr


def test_checkpoints_of_the_older_width_rule_still_sample_and_resume(tmp_path):
    """A checkpoint written before model.py had norm_topk (auto FFN width 4·n_embd, renormalised top-k) has
    model_args with ffn_hidden = 0 and no norm_topk: sample.py and a resume must rebuild its 4·n_embd FFN."""
    import torch
    data_dir = make_char_dataset(tmp_path / 'tiny_char')
    out = tmp_path / 'old'
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--max_iters=2', '--eval_interval=2', '--n_embd=32',
          '--ffn_hidden=128')                                     # 4 x 32: the old rule's auto width
    ckpt = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    args = dict(ckpt['model_args'], ffn_hidden=0, expert_hidden=0)
    del args['norm_topk']
    ckpt['model_args'] = args
    for key in ('ffn_hidden', 'expert_hidden'):
        ckpt['config'].pop(key, None)
    torch.save(ckpt, out / 'ckpt.pt')
    done = run_script(['sample.py', f'--out_dir={out}', '--start=The', '--num_samples=1', '--max_new_tokens=5'])
    assert done.stdout.startswith('The')
    train(f'--dataset={data_dir}', f'--out_dir={out}', '--init_from=resume', '--max_iters=3', '--eval_interval=3')
    assert torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)['model_args']['ffn_hidden'] == 128


# ---- --kv_cache: the same text with and without the cache


def test_sample_py_prints_the_same_text_with_and_without_the_cache_past_block_size(trained):
    # block_size 16 (train_helpers.TINY): 40 new tokens run past it, through the refills
    args = ['sample.py', f'--out_dir={trained}', '--start=The people', '--num_samples=2', '--max_new_tokens=40']
    for extra in (['--temperature=0'], ['--seed=7']):                    # greedy, and sampled from one seed
        cached = run_script(args + extra).stdout                             # --kv_cache=True is the default
        assert run_script(args + extra + ['--kv_cache=False']).stdout == cached
        assert cached.startswith('The people') and len(cached.split('---------------\n')[0]) > 40


def test_sample_py_rejects_a_kv_cache_that_is_not_a_bool_in_one_line(trained):
    done = run_script(['sample.py', f'--out_dir={trained}', '--kv_cache=maybe'], check=False)
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr.strip().splitlines() == ["error: config key 'kv_cache' (from the command line) expects bool, "
                                                "got 'maybe' (str)"]
