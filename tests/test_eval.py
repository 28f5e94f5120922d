"""
eval.py and lab/downstream.py: the items are fixed by the dataset and the seed, the log-likelihoods are the model's,
a context too long for the model is cropped from the left (never the choice), a trained model beats chance and a random
one does not, HellaSwag is read from its file (a fixture here: the tests never use the network), and every bad input is
one error line with nothing overwritten.
"""
import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data import sources
from data.dataset import TokenDataset, char_vocabulary, load_meta, write_token_dataset
from lab import downstream, stats
from model import GPT, GPTConfig
from train_helpers import make_char_dataset, run_script, train
from training import checkpoint

# a model that learns the tiny dataset in ~10 s on one core: 200 iterations, block 32 (the items: N 16, M 8)
LEARNS = ['--block_size=32', '--batch_size=16', '--max_iters=200', '--eval_interval=100', '--eval_iters=5',
          '--log_interval=50', '--learning_rate=1e-2', '--warmup_iters=10', '--lr_decay_iters=200']
SMALL_ITEMS = ['--eval_items=200', '--eval_context_tokens=16', '--eval_choice_tokens=8']
needs_gpt2 = pytest.mark.skipif(not sources.gpt2_ranks_path().exists(),
                                reason='GPT-2 ranks not cached (run: python -m data.sources fetch-gpt2)')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp('eval') / 'tiny_char')


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data):
    out = tmp_path_factory.mktemp('trained') / 'run'
    train(f'--dataset={data}', f'--out_dir={out}', *LEARNS)
    return out


def tiny_model(vocab_size, block_size=32):
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=vocab_size),
               verbose=False).eval()


def save_untrained(out, data, block_size=32):
    """A checkpoint of a randomly initialised model in train.py's format (iteration 0)."""
    meta = load_meta(data)
    model = tiny_model(meta['vocab_size'], block_size)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save_atomic({'model': model.state_dict(), 'model_args': asdict(model.config), 'iter_num': 0,
                            'config': {'dataset': str(data)}, 'meta': meta, 'val_loss': None}, out / 'ckpt.pt')
    return out


def evaluate(out, *args, check=True):
    return run_script(['eval.py', f'--out_dir={out}', *args], check=check)


# ----------------------------------------------------------------------------- the items
def test_items_are_fixed_by_the_dataset_and_the_seed_alone(data, tmp_path):
    first = downstream.continuation_items(data, 50, 16, 8, 4, seed=0)
    assert downstream.continuation_items(data, 50, 16, 8, 4, seed=0) == first
    copy = shutil.copytree(data, tmp_path / 'elsewhere')             # the same tokens in another folder
    assert downstream.continuation_items(copy, 50, 16, 8, 4, seed=0) == first
    other = downstream.continuation_items(data, 50, 16, 8, 4, seed=1)
    assert downstream.fingerprint(other) != downstream.fingerprint(first)
    assert downstream.fingerprint(first) == downstream.fingerprint(downstream.continuation_items(data, 50, 16, 8))


def test_an_item_is_a_context_its_true_continuation_and_distractors_from_elsewhere(data):
    val = np.fromfile(f'{data}/val.bin', dtype=np.uint16).astype(np.int64).tolist()
    items = downstream.continuation_items(data, 100, 16, 8, 4, seed=0)
    labels = [item.label for item in items]
    assert set(labels) == {0, 1, 2, 3}                                # the right answer's place is drawn too
    for item in items:
        assert len(item.context) == 16 and [len(c) for c in item.choices] == [8] * 4
        start = next(i for i in range(len(val)) if val[i:i + 24] == item.context + item.choices[item.label])
        window = set(range(start, start + 24))
        for k, choice in enumerate(item.choices):
            if k == item.label:
                continue
            # a distractor is text of the split, outside the item's window, unlike the other choices
            starts = [i for i in range(len(val) - 7) if val[i:i + 8] == choice]
            assert starts and any(not window & set(range(i, i + 8)) for i in starts)
            assert sum(choice == other for other in item.choices) == 1


def test_items_of_a_sharded_split_lie_inside_one_shard(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, 3000).astype(np.uint32)
    data = tmp_path / 'sharded'
    write_token_dataset(data, [ids], tokenizer='char', vocab_size=50, source='tests', chars=char_vocabulary(
        [''.join(chr(65 + i) for i in range(49))]), val_tokens=1000, shard_tokens=300)
    val = TokenDataset(data, 'val')
    assert len(val.paths) > 1
    shards = [np.fromfile(p, dtype=np.uint16).astype(np.int64).tolist() for p in val.paths]
    for item in downstream.continuation_items(data, 40, 10, 5, 4, seed=3):
        text = item.context + item.choices[item.label]
        assert any(shard[i:i + 15] == text for shard in shards for i in range(len(shard) - 14))


def test_a_split_too_small_for_the_items_is_one_line(data):
    with pytest.raises(ValueError, match='lower --eval_items'):
        downstream.continuation_items(data, 100_000, 16, 8)


# ----------------------------------------------------------------------------- the scores
def reference_log_likelihood(model, context, choice):
    """sum log p(choice | context) from forward()'s full logits, cropped as the docs say: choice whole, context
    cropped from the left so that the inputs fit block_size."""
    keep = model.config.block_size + 1 - len(choice)
    ids = torch.tensor(context[-keep:] + choice)
    logits, _ = model(ids[None, :-1], ids[None, 1:])
    logp = F.log_softmax(logits[0].double(), dim=-1)
    first = len(ids) - 1 - len(choice)
    return sum(logp[first + j, token].item() for j, token in enumerate(choice))


def test_log_likelihoods_are_the_models_with_the_context_cropped_from_the_left():
    torch.manual_seed(0)
    model = tiny_model(40, block_size=16)
    # choices of different lengths in one batch (padded on the right); contexts longer than the block
    items = [downstream.Item(torch.randint(40, (30,)).tolist(), [torch.randint(40, (n,)).tolist() for n in (3, 7, 16)],
                             0) for _ in range(3)]
    sums, counts = downstream.choice_log_likelihoods(model, items, batch_size=4)
    assert counts.tolist() == [[3, 7, 16]] * 3
    for i, item in enumerate(items):
        for k, choice in enumerate(item.choices):
            assert sums[i, k] == pytest.approx(reference_log_likelihood(model, item.context, choice), abs=1e-4)
    seq, start = downstream.sequences(items[:1], 16)[2]                 # the 16-token choice: one context token
    assert len(seq) == 17 and start == 0 and seq[1:] == items[0].choices[2]


def test_a_choice_longer_than_the_block_is_refused_not_cropped():
    item = downstream.Item([1, 2, 3], [[1] * 17, [2] * 17], 0)
    with pytest.raises(ValueError, match='does not fit the model.s block_size 16.*--eval_choice_tokens=4'):
        downstream.choice_log_likelihoods(tiny_model(8, block_size=16), [item])


def test_accuracy_sums_the_log_likelihood_and_accuracy_norm_divides_by_the_choice_s_tokens(monkeypatch):
    # item 0: the long right ending has the larger total, but the short wrong one the larger mean per token
    sums = np.array([[-10.0, -4.0], [-3.0, -6.0]])
    counts = np.array([[10, 2], [3, 3]])
    monkeypatch.setattr(downstream, 'choice_log_likelihoods', lambda *a, **k: (sums, counts))
    items = [downstream.Item([0], [[0] * 10, [0] * 2], 0), downstream.Item([0], [[0] * 3, [0] * 3], 0)]
    items[0] = items[0]._replace(label=1)                                # right: ending 1 (total -4 > -10)
    result = downstream.score(None, items)
    assert result['accuracy'] == 1.0 and result['correct'] == '11'
    assert result['accuracy_norm'] == 0.5 and result['correct_norm'] == '01'   # -1.0 per token beats -2.0
    assert result['accuracy_ci95'] == pytest.approx(stats.wilson_interval(2, 2))


def test_wilson_interval_matches_the_formula_and_stays_inside_0_1():
    assert stats.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert stats.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)


# ----------------------------------------------------------------------------- trained and untrained
def test_a_trained_model_beats_chance_clearly(trained, data):
    done = evaluate(trained, *SMALL_ITEMS)
    path = trained / 'eval_continuation.json'
    result = json.loads(path.read_text())
    assert done.stdout.strip().splitlines()[-1].startswith('eval continuation: accuracy')
    assert str(path) in done.stdout
    assert result['task'] == 'continuation' and result['n_items'] == 200 and result['n_choices'] == 4
    assert result['iter_num'] == 200 and result['chance'] == 0.25
    assert result['accuracy'] > 0.6 and result['accuracy_ci95'][0] > 0.25   # far above chance, interval excludes it
    assert result['accuracy_norm'] == result['accuracy']                  # equal lengths: the same ranking
    assert result['items'] == {'dataset': 'tiny_char', 'seed': 0, 'n_items': 200, 'context_tokens': 16,
                               'choice_tokens': 8, 'n_choices': 4, 'fingerprint': result['items']['fingerprint']}
    assert len(result['correct']) == 200 and result['correct'].count('1') == round(200 * result['accuracy'])


def test_random_models_sit_at_chance(data):
    """Untrained models as train.py builds them, four initialisations pooled: one random model carries its own random
    preferences between the few letter pairs of this 12-word text, which move its accuracy by ±0.03 from one init to
    the next; pooled, they sit at chance."""
    items = downstream.continuation_items(data, 200, 16, 8, 4, seed=0)
    right = 0
    for init_seed in range(1, 5):
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=load_meta(data)['vocab_size'],
                              init_seed=init_seed), verbose=False)
        right += downstream.score(model, items)['correct'].count('1')
    low, high = stats.wilson_interval(right, 4 * len(items))
    assert low < 0.25 < high, (right, low, high)


def test_two_runs_answer_the_same_items(trained, tmp_path, data):
    out = save_untrained(tmp_path / 'untrained', data)
    copy = shutil.copytree(data, tmp_path / 'copy')                     # the same dataset in another folder
    evaluate(trained, *SMALL_ITEMS)
    evaluate(out, *SMALL_ITEMS, f'--dataset={copy}')
    a, b = (json.loads((d / 'eval_continuation.json').read_text()) for d in (trained, out))
    assert a['items'] == b['items']                                      # same fingerprint: compare item by item


def test_a_model_with_a_short_block_is_scored_with_its_context_cropped(tmp_path, data):
    out = save_untrained(tmp_path / 'short', data, block_size=8)
    done = evaluate(out, '--eval_items=20', '--eval_context_tokens=30', '--eval_choice_tokens=8')
    assert json.loads((out / 'eval_continuation.json').read_text())['n_items'] == 20, done.stdout


# ----------------------------------------------------------------------------- HellaSwag
def write_hellaswag_fixture(path, n=6):
    """n items in the format of hellaswag_val.jsonl (the fields eval.py reads, plus the others of the real file)."""
    rows = []
    for i in range(n):
        endings = ['puts the dog in the car.', 'eats the moon with a spoon slowly.', 'sings.', 'walks the dog home.']
        rows.append({'ind': i, 'activity_label': 'Walking the dog', 'ctx_a': 'A man walks a dog in a park.',
                     'ctx_b': 'he', 'ctx': 'A man walks a dog in a park. he', 'split': 'val',
                     'split_type': 'indomain', 'label': i % 4, 'endings': endings, 'source_id': f'fixture~{i}'})
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return path


@pytest.fixture(scope='module')
def gpt2_run(tmp_path_factory):
    """A randomly initialised model with GPT-2's vocabulary, as a train.py checkpoint."""
    out = tmp_path_factory.mktemp('gpt2') / 'run'
    out.mkdir()
    meta = {'name': 'bpe', 'tokenizer': 'gpt2', 'vocab_size': 50257, 'dtype': 'uint16', 'train_files': [],
            'val_files': []}
    model = tiny_model(50304, block_size=64)
    checkpoint.save_atomic({'model': model.state_dict(), 'model_args': asdict(model.config), 'iter_num': 7,
                            'config': {'dataset': 'bpe'}, 'meta': meta}, out / 'ckpt.pt')
    return out


@needs_gpt2
def test_hellaswag_is_scored_from_its_file_with_space_joined_endings(gpt2_run, tmp_path):
    fixture = write_hellaswag_fixture(tmp_path / 'hellaswag_val.jsonl')
    done = evaluate(gpt2_run, '--task=hellaswag', f'--hellaswag_path={fixture}')
    result = json.loads((gpt2_run / 'eval_hellaswag.json').read_text())
    assert result['task'] == 'hellaswag' and result['n_items'] == 6 and result['n_choices'] == 4
    assert result['iter_num'] == 7 and result['items']['official'] is False
    assert done.stdout.strip().splitlines()[-1].startswith('eval hellaswag: accuracy')
    encode = sources.gpt2_encoding().encode
    items = downstream.hellaswag_items(fixture, encode, limit=2)
    assert len(items) == 2 and items[1].label == 1
    assert items[0].context == encode('A man walks a dog in a park. he')
    assert items[0].choices[2] == encode(' sings.')


def test_hellaswag_offline_without_the_file_says_how_to_get_it(tmp_path, monkeypatch):
    def offline(url, path, timeout=15):
        raise OSError('network unreachable')
    monkeypatch.setattr(sources, 'download_url', offline)
    with pytest.raises(ValueError) as e:
        downstream.hellaswag_file(folder=tmp_path)
    message = str(e.value)
    assert 'network unreachable' in message and downstream.HELLASWAG_URL in message
    assert downstream.HELLASWAG_SHA256 in message and '--hellaswag_path=FILE' in message
    assert not list(tmp_path.iterdir())


def test_a_hellaswag_download_is_kept_only_with_the_published_checksum(tmp_path, monkeypatch):
    fixture = write_hellaswag_fixture(tmp_path / 'fixture.jsonl')
    monkeypatch.setattr(sources, 'download_url', lambda url, path, timeout=15: shutil.copyfile(fixture, path))
    folder = tmp_path / 'hellaswag'
    folder.mkdir()
    with pytest.raises(ValueError, match='another sha256'):
        downstream.hellaswag_file(folder=folder)                        # not the real file: refused, not kept
    assert not list(folder.iterdir())
    monkeypatch.setattr(downstream, 'HELLASWAG_SHA256', downstream.sha256_of(fixture))
    assert downstream.hellaswag_file(folder=folder) == (folder / 'hellaswag_val.jsonl', True)
    (folder / 'hellaswag_val.jsonl').write_text('changed\n')
    with pytest.raises(ValueError, match='not the official HellaSwag'):
        downstream.hellaswag_file(folder=folder)


@pytest.mark.parametrize('line, words', [
    ('not json', ['not a JSON line']),
    ('{"ctx": "a", "endings": ["b"], "label": 0}', ["'endings'"]),
    ('{"ctx": "a", "endings": ["b", "c"], "label": 2}', ["'label' 2"]),
    ('{"endings": ["b", "c"], "label": 0}', ["'ctx'"]),
])
def test_a_bad_hellaswag_line_is_named(tmp_path, line, words):
    path = tmp_path / 'bad.jsonl'
    path.write_text(json.dumps({'ctx': 'x', 'endings': ['a', 'b'], 'label': 0}) + '\n' + line + '\n')
    with pytest.raises(ValueError) as e:
        downstream.hellaswag_items(path, lambda text: [ord(c) for c in text])
    assert f'{path}:2' in str(e.value) and all(w in str(e.value) for w in words)


# ----------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope='module')
def char_run(tmp_path_factory, data):
    """An untrained char checkpoint with an eval_continuation.json that no failed call may touch."""
    out = save_untrained(tmp_path_factory.mktemp('bad') / 'run', data)
    (out / 'eval_continuation.json').write_text('{"kept": true}\n')
    (out / 'eval_hellaswag.json').write_text('{"kept": true}\n')
    return out


@pytest.mark.parametrize('args, words', [
    (['--task=mmlu'], ['unknown task', "'mmlu'", 'continuation, hellaswag']),
    (['--eval_items=-1'], ['eval_items must be >= 0']),
    (['--eval_choices=1'], ['eval_choices must be >= 2']),
    (['--eval_seed=-2'], ['eval_seed']),
    (['--batch_size=0'], ['batch_size must be >= 1']),
    (['--eval_items=many'], ['eval_items', 'expects int']),
    (['--dtype=half'], ['dtype']),
    (['--device=gpu'], ['device']),
    (['--task=hellaswag', '--eval_choice_tokens=8'], ['--eval_choice_tokens', 'continuation']),
    (['--hellaswag_path=x.jsonl'], ['--hellaswag_path', 'hellaswag']),
    (['--dataset=no_such_dataset'], ['no_such_dataset', 'not found', 'run:']),
    (['--task=hellaswag', '--hellaswag_path=FIXTURE'], ['GPT-2 BPE', 'char', '--task=continuation']),
    (['--eval_choice_tokens=40'], ['40 tokens', 'block_size 32', '--eval_choice_tokens=8']),
    (['--eval_items=100000'], ['100,000 items', 'lower --eval_items']),
])
def test_bad_inputs_are_one_line_and_overwrite_nothing(char_run, tmp_path, args, words):
    args = [a.replace('FIXTURE', str(write_hellaswag_fixture(tmp_path / 'h.jsonl'))) for a in args]
    done = evaluate(char_run, *args, check=False)
    line = done.stderr.strip()
    assert done.returncode == 2 and 'Traceback' not in line, done.stdout + done.stderr
    assert line.startswith('error: ') and '\n' not in line, line
    for word in words:
        assert word in line, (word, line)
    for name in ('eval_continuation.json', 'eval_hellaswag.json'):
        assert (char_run / name).read_text() == '{"kept": true}\n'


def test_a_missing_checkpoint_and_another_vocabulary_are_one_line(tmp_path, data, char_run):
    done = evaluate(tmp_path, check=False)
    assert done.returncode == 2 and done.stderr.startswith('error: no checkpoint at') and 'train.py' in done.stderr
    other = tmp_path / 'other'
    write_token_dataset(other, [np.arange(40, dtype=np.uint32) % 7], tokenizer='char', vocab_size=7, source='x',
                        chars='abcdefg')
    done = evaluate(char_run, f'--dataset={other}', check=False)
    line = done.stderr.strip()
    assert done.returncode == 2 and '\n' not in line and 'another vocabulary' in line, line
