"""
Tokenized datasets on disk, and the loader train.py draws its batches from.

A prepared dataset is a folder data/<name>/ in nanoGPT's format (raw token ids, no header):
    train.bin, val.bin                        small datasets, one file per split
    train_000000.bin, ..., val_000000.bin     large datasets, fixed-size shards (the last one of a split is shorter)
    meta.json   {"name", "tokenizer": "char"|"gpt2", "vocab_size", "dtype": "uint16"|"uint32", "train_tokens",
                 "val_tokens", "train_files", "val_files", "max_token_id", "unigram_entropy", "chars" (char only),
                 "source"}
Every data/<name>/prepare.py funnels through write_token_dataset(), so there is one writer and one loader. The writer
builds the new dataset in a hidden folder beside the old one and swaps it in only when it is complete, so bad input or
an interrupted run leaves the previous dataset as it was. It replaces a dataset only with one of the same source and
tokenizer (a re-prepare), unless told to overwrite: own text never silently replaces data/shakespeare_char.

    from data.dataset import load_meta, TokenDataset, get_tokenizer, check_vocab
    train_data = TokenDataset('data/shakespeare_char', 'train')
    x, y = train_data.get_batch(batch_size, block_size, seed, step, micro_step, rank, micro_steps_per_rank)
"""
import errno
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from data.sources import GPT2_EOT_ID, gpt2_encoding

DATA_ROOT = Path(__file__).resolve().parent
SPLIT_IDS = {'train': 0, 'val': 1}   # mixed into the batch seed: train and val draw independent positions
CHAR_DOC_SEPARATOR = '\n\n'          # char-level has no <|endoftext|>; documents end with a blank line instead

# ----------------------------------------------------------------------------- meta.json


def dataset_dir(dataset):
    """Where a `dataset` setting points: a name is a folder under data/ (data/<name>/), anything with a path separator
    is taken as a path. The one home of this rule (train.py, compare.py, report.py and sample.py all use it)."""
    return str(dataset) if os.sep in str(dataset) else str(DATA_ROOT / str(dataset))


def model_vocab_size(meta):
    """The embedding rows a model gets for a dataset: characters as they are; BPE padded up to a multiple of 64
    (GPT-2: 50257 -> 50304) for faster matmuls. The padding rows are never targets, so training pushes their logits
    down. The one home of this rule (train.py and compare.py use it)."""
    return meta['vocab_size'] if meta['tokenizer'] == 'char' else -(-meta['vocab_size'] // 64) * 64


def dtype_for_vocab(vocab_size):
    # uint16 holds ids 0..65535: GPT-2's 50257 fits; a bigger vocabulary needs uint32 (twice the disk)
    return 'uint16' if vocab_size <= 2**16 else 'uint32'


def shown(path):
    """path as messages show it: relative to the current folder when inside it (shorter to read and to paste)."""
    relative = os.path.relpath(path)
    return path if relative.startswith('..') else relative


def prepare_command(data_dir):
    script = Path(data_dir) / 'prepare.py'
    if script.exists():
        return f"python {shown(script)}"
    return f"python data/text/prepare.py YOUR_FILES --name={Path(data_dir).name} (or another data/*/prepare.py)"


def load_meta(data_dir):
    """meta.json of a prepared dataset, checked field by field: a missing dataset is FileNotFoundError, a damaged or
    foreign meta.json a ValueError; both one line naming the file and the prepare command."""
    path = Path(data_dir) / 'meta.json'
    if Path(data_dir).is_file():
        raise FileNotFoundError(f"dataset path {shown(str(data_dir))} is a file; give a folder with meta.json, "
                                f"train/val .bin files (made by a data/*/prepare.py)")
    if not path.exists():
        raise FileNotFoundError(f"dataset '{Path(data_dir).name}' not found at {shown(str(path))}; "
                                f"run: {prepare_command(data_dir)}")
    redo = f"re-run: {prepare_command(data_dir)}"
    try:
        meta = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{shown(str(path))} is damaged (not valid JSON: {e}); {redo}") from None
    except OSError as e:
        raise ValueError(f"cannot read {shown(str(path))}: {e.strerror}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{shown(str(path))} is not a nanoPoly meta.json (not a JSON object); {redo}")
    problem = _meta_problem(meta)
    if problem:
        raise ValueError(f"{shown(str(path))} is not a valid nanoPoly meta.json ({problem}); {redo}")
    return meta


def _meta_problem(meta):
    """What is wrong with a meta dict, or None."""
    missing = sorted({'tokenizer', 'vocab_size', 'dtype', 'train_files', 'val_files'} - meta.keys())
    if missing:
        return f"missing {', '.join(missing)}"
    if meta['dtype'] not in ('uint16', 'uint32'):
        return f"dtype {meta['dtype']!r} is not uint16 or uint32"
    if meta['tokenizer'] not in ('char', 'gpt2'):
        return f"tokenizer {meta['tokenizer']!r} is not 'char' or 'gpt2'"
    if not isinstance(meta['vocab_size'], int) or isinstance(meta['vocab_size'], bool) or meta['vocab_size'] < 1:
        return f"vocab_size {meta['vocab_size']!r} is not a positive integer"
    for key in ('train_files', 'val_files'):
        files = meta[key]
        if not isinstance(files, list) or not all(isinstance(f, str) and f and Path(f).name == f for f in files):
            return f"{key} must be a list of file names in the dataset folder"
    if 'chars' in meta and (not isinstance(meta['chars'], str) or len(meta['chars']) != meta['vocab_size']):
        return f"'chars' must be a string of vocab_size ({meta['vocab_size']}) characters"
    max_id = meta.get('max_token_id')
    if max_id is not None and (not isinstance(max_id, int) or not 0 <= max_id < meta['vocab_size']):
        return f"max_token_id {max_id!r} is not in 0..vocab_size-1 ({meta['vocab_size'] - 1})"
    entropy = meta.get('unigram_entropy')
    if entropy is not None and (not isinstance(entropy, (int, float)) or isinstance(entropy, bool) or entropy < 0):
        return f"unigram_entropy {entropy!r} is not a number >= 0"
    return None


def write_meta(data_dir, meta):
    path = Path(data_dir) / 'meta.json'
    tmp = path.with_suffix('.part')
    tmp.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + '\n')
    os.replace(tmp, path)   # a reader sees the old meta or the new one, never half of it


def check_vocab(meta, model_vocab_size):
    """Every token id of the dataset must have a row in the model's embedding."""
    if meta['vocab_size'] > model_vocab_size:
        raise ValueError(f"dataset '{meta.get('name')}' has vocab_size {meta['vocab_size']} ({meta['tokenizer']}) but "
                         f"the model has vocab_size {model_vocab_size}; use a model vocab_size >= {meta['vocab_size']}")


def largest_token_id(data_dir, meta=None):
    """The largest token id in a dataset's train and val files: meta.json's max_token_id (recorded when the dataset
    was written), else read from the files once (numpy over a memmap, ~0.1 s per 100M tokens from the page cache).
    Returns (id, where it came from)."""
    meta = meta or load_meta(data_dir)
    if meta.get('max_token_id') is not None:
        return meta['max_token_id'], 'meta.json'
    largest = -1
    for name in meta['train_files'] + meta['val_files']:
        path = Path(data_dir) / name
        if path.exists() and path.stat().st_size >= np.dtype(meta['dtype']).itemsize:
            tokens = np.memmap(path, dtype=meta['dtype'], mode='r')
            largest = max(largest, int(tokens.max()))
            del tokens
    return largest, 'a scan of the .bin files'


def check_token_ids(data_dir, meta=None):
    """Every token id in the files must be below meta.json's vocab_size: a larger one would index past the model's
    embedding in the middle of training (on a GPU a device-side assert). One line naming the dataset otherwise."""
    meta = meta or load_meta(data_dir)
    largest, source = largest_token_id(data_dir, meta)
    if largest >= meta['vocab_size']:
        raise ValueError(f"dataset {shown(str(data_dir))} holds token id {largest} (from {source}) but its meta.json "
                         f"says vocab_size {meta['vocab_size']}: the .bin files and meta.json do not belong together; "
                         f"re-run: {prepare_command(data_dir)}")
    return largest

def token_counts(paths, dtype, vocab_size, chunk_tokens=1 << 24):
    """(vocab_size,) int64: how often each token id occurs in the files, read in chunks of 16M tokens (a web-scale
    split never has to fit in memory)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for path in paths:
        if Path(path).stat().st_size < np.dtype(dtype).itemsize:
            continue
        tokens = np.memmap(path, dtype=dtype, mode='r')
        for start in range(0, len(tokens), chunk_tokens):
            counts += np.bincount(tokens[start:start + chunk_tokens], minlength=vocab_size)[:vocab_size]
        del tokens
    return counts


def entropy_of_counts(counts):
    """-sum p log p in nats, p = counts / total: the cross-entropy of the best model that knows only how often each
    token occurs (no context). A language model whose loss is not below it has learned nothing from context."""
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def unigram_entropy(data_dir, meta=None):
    """The unigram entropy (nats/token) of a dataset's train split: meta.json's unigram_entropy (recorded when the
    dataset was written), else counted from the train files once (~0.1 s per 10M tokens). Returns (value, where it
    came from). train.py and compare.py call a run whose final val loss is not below it one that did not learn."""
    meta = meta or load_meta(data_dir)
    if meta.get('unigram_entropy') is not None:
        return float(meta['unigram_entropy']), 'meta.json'
    paths = [Path(data_dir) / name for name in meta['train_files']]
    return entropy_of_counts(token_counts(paths, meta['dtype'], meta['vocab_size'])), 'a scan of the train files'

# ----------------------------------------------------------------------------- tokenizers


def get_tokenizer(meta):
    """(encode, decode) for a dataset: encode(str) -> list[int], decode(list[int]) -> str."""
    if meta['tokenizer'] == 'char':
        chars = meta.get('chars')
        if not isinstance(chars, str):
            raise ValueError(f"the char dataset '{meta.get('name')}' has no character table ('chars' in meta.json), "
                             f"so its tokens cannot be turned into text; prepare it with a data/*/prepare.py")
        stoi = {c: i for i, c in enumerate(chars)}

        def encode(text):
            unknown = set(text) - stoi.keys()
            if unknown:
                raise ValueError(f"characters {sorted(unknown)!r} not in the dataset's {len(chars)}-char vocabulary")
            return [stoi[c] for c in text]
        return encode, lambda ids: ''.join(chars[i] for i in ids)
    if meta['tokenizer'] == 'gpt2':
        enc = gpt2_encoding()
        # a prompt may start a fresh document with <|endoftext|>; any other special-looking text stays plain text
        return lambda text: enc.encode(text, allowed_special={'<|endoftext|>'}), enc.decode
    raise ValueError(f"unknown tokenizer {meta['tokenizer']!r} in meta.json: expected 'char' or 'gpt2'")


def char_vocabulary(texts):
    """Sorted characters of all texts, plus the document separator (nanoGPT's stoi/itos table)."""
    chars = set(CHAR_DOC_SEPARATOR)
    for text in texts:
        chars.update(text)
    return ''.join(sorted(chars))


_worker_encode = None   # set in each worker process by _init_encoder (functions of a Pool must be picklable)


def _init_encoder(tokenizer, chars):
    global _worker_encode
    if tokenizer == 'gpt2':
        enc = gpt2_encoding()
        # ordinary: a literal '<|endoftext|>' inside a web page is text, not a document boundary
        _worker_encode = lambda doc: enc.encode_ordinary(doc) + [GPT2_EOT_ID]
    else:
        stoi = {c: i for i, c in enumerate(chars)}
        _worker_encode = lambda doc: [stoi[c] for c in doc + CHAR_DOC_SEPARATOR]


def _encode_document(doc):
    return np.array(_worker_encode(doc), dtype=np.uint32)


def _batches(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_documents(documents, tokenizer, chars=None, workers=None, docs_per_batch=1024):
    """Iterator of one 1-D uint32 array of token ids per document, in input order, each ending with the document
    separator (<|endoftext|> for gpt2, a blank line for char). documents: any iterable of str, also a stream.
    Checks the tokenizer now, so a missing one fails before any file is touched."""
    if tokenizer == 'gpt2':
        gpt2_encoding()   # forked workers inherit the built encoding
    elif tokenizer != 'char' or chars is None:
        raise ValueError(f"tokenizer {tokenizer!r}: expected 'gpt2', or 'char' with its chars")
    return _tokenize(documents, tokenizer, chars, workers or os.cpu_count(), docs_per_batch)


def _tokenize(documents, tokenizer, chars, workers, docs_per_batch):
    if workers == 1:   # no pool: simplest to debug, and what most tests use
        _init_encoder(tokenizer, chars)
        yield from map(_encode_document, documents)
        return
    # documents go to the pool in bounded batches: Pool.imap alone would read a fast stream into memory
    with multiprocessing.Pool(workers, initializer=_init_encoder, initargs=(tokenizer, chars)) as pool:
        for batch in _batches(documents, docs_per_batch * workers):
            yield from pool.map(_encode_document, batch, chunksize=max(1, len(batch) // (4 * workers)))


class Progress:
    """Token counter on stderr: tqdm when installed (an optional dependency), else a line every 5 seconds."""

    def __init__(self, desc, total=None):
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit='tok', unit_scale=True)
        except ImportError:
            self.bar = None
        self.desc, self.count, self.start = desc, 0, time.time()
        self.last_print = self.start

    def update(self, n):
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.time() - self.last_print > 5:
            self.last_print = time.time()
            rate = self.count / max(self.last_print - self.start, 1e-9)
            print(f"{self.desc}: {self.count:,} tokens ({rate:,.0f} tok/s)", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        else:
            print(f"{self.desc}: {self.count:,} tokens in {time.time() - self.start:.1f}s", file=sys.stderr)


def run_script(main):
    """Run a prepare script's main(): a user's mistake (no file, no network, bad input, a full disk, Ctrl-C) is one
    line, no traceback. write_token_dataset has already left the previous dataset as it was."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: nothing was changed in the dataset folder (a dataset is swapped in only when complete)",
              file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno in (errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC)):
            sys.exit(f"error: disk full ({e.strerror}{': ' + str(e.filename) if e.filename else ''}); the previous "
                     f"dataset, if any, is kept. Free some space and run again")
        sys.exit(f"error: {e}")
    except (ValueError, ImportError) as e:
        sys.exit(f"error: {e}")


# ----------------------------------------------------------------------------- writer


class ShardWriter:
    """Appends token ids to data_dir/<split>.bin, or, with shard_tokens, to <split>_000000.bin, <split>_000001.bin, ...
    of exactly shard_tokens tokens each (the last one shorter)."""

    def __init__(self, data_dir, split, dtype, vocab_size, shard_tokens=None):
        self.dir, self.split, self.dtype = Path(data_dir), split, np.dtype(dtype)
        self.vocab_size, self.shard_tokens = vocab_size, shard_tokens
        self.files, self.num_tokens = [], 0   # file names written, tokens written in all
        self.max_id = -1                      # the largest token id written (meta.json's max_token_id)
        self._file, self._room = None, 0      # open file, tokens it can still take (sharded only)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in [*self.dir.glob(f'{split}.bin'), *self.dir.glob(f'{split}_[0-9]*.bin')]:
            stale.unlink()   # leftovers of an earlier, bigger run must not mix in

    def _next_file(self):
        name = f'{self.split}.bin' if self.shard_tokens is None else f'{self.split}_{len(self.files):06d}.bin'
        self.files.append(name)
        self._file = open(self.dir / name, 'wb')
        self._room = self.shard_tokens

    def write(self, ids):
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids.min() if ids.min() < 0 else ids.max()
            raise ValueError(f"token id {bad} outside the vocabulary of {self.vocab_size} ({self.dir})")
        if ids.size:
            self.max_id = max(self.max_id, int(ids.max()))
        ids = ids.astype(self.dtype, copy=False)
        while ids.size:
            if self._file is None:
                self._next_file()
            n = ids.size if self.shard_tokens is None else min(self._room, ids.size)
            ids[:n].tofile(self._file)
            ids = ids[n:]
            self.num_tokens += n
            if self.shard_tokens is not None:
                self._room -= n
                if self._room == 0:   # shard full: the next token opens the next shard
                    self._file.close()
                    self._file = None

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def _move_tail(data_dir, files, dtype, n_tokens, writer):
    """Move the last n_tokens tokens of files (in order) into writer, truncating or deleting those files.
    Returns the names of the files that still hold tokens."""
    itemsize = np.dtype(dtype).itemsize
    sizes = [(Path(data_dir) / f).stat().st_size // itemsize for f in files]
    keep, cut = len(files), 0   # the tail starts at token `cut` of files[keep]
    remaining = n_tokens
    while remaining > 0:
        keep -= 1
        take = min(remaining, sizes[keep])
        cut, remaining = sizes[keep] - take, remaining - take
    for i in range(keep, len(files)):
        tokens = np.memmap(Path(data_dir) / files[i], dtype=dtype, mode='r')
        writer.write(tokens[cut if i == keep else 0:])
        del tokens   # unmap before truncating the file
    writer.close()
    for i in range(keep, len(files)):
        path = Path(data_dir) / files[i]
        if i == keep and cut > 0:
            os.truncate(path, cut * itemsize)
        else:
            path.unlink()
    return files[:keep + (cut > 0)]


def replace_problem(data_dir, source, tokenizer):
    """Why writing a dataset of (source, tokenizer) into data_dir would replace a different dataset, naming what is
    there; None when data_dir holds no dataset or one of the same source and tokenizer (a re-prepare). The source is
    the description each prepare script gives (the inputs, not their contents: a corpus folder re-prepared after an
    edit is the same source)."""
    path = Path(data_dir) / 'meta.json'
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict):
        return f"{shown(str(data_dir))} holds a dataset whose meta.json cannot be read"
    if meta.get('source') == source and meta.get('tokenizer') == tokenizer:
        return None
    tokens = meta.get('train_tokens')
    return (f"{shown(str(data_dir))} already holds a dataset made from {meta.get('source')!r} (tokenizer "
            f"{meta.get('tokenizer')}, vocab {meta.get('vocab_size')}"
            f"{f', {tokens:,} train tokens' if isinstance(tokens, int) else ''}); this run would replace it with one "
            f"made from {source!r} (tokenizer {tokenizer})")


def check_replace(data_dir, source, tokenizer, overwrite=False):
    """Raise ValueError (one line) when writing (source, tokenizer) into data_dir would replace another dataset and
    overwrite is False. write_token_dataset checks this itself; a prepare script calls it first too, to fail before
    reading its input."""
    problem = None if overwrite else replace_problem(data_dir, source, tokenizer)
    if problem:
        raise ValueError(f"{problem}; to keep it, prepare into another folder (data/text/prepare.py: another --name); "
                         f"to replace it, pass --overwrite=True")


def add_overwrite_flag(parser):
    """--overwrite / --overwrite=True on a prepare script's argparse parser (True/False spelled as train.py's knobs)."""
    def true_or_false(text):
        if text.lower() not in ('true', 'false'):
            raise ValueError(text)
        return text.lower() == 'true'
    true_or_false.__name__ = 'True or False'   # argparse names the type in its error: "invalid True or False value"
    parser.add_argument('--overwrite', type=true_or_false, nargs='?', const=True, default=False,
                        help='replace a dataset of another source or tokenizer in the output folder')


def write_token_dataset(data_dir, token_chunks, *, tokenizer, vocab_size, source, val_fraction=0.1, val_tokens=None,
                        shard_tokens=None, chars=None, progress=None, overwrite=False):
    """Stream token chunks (1-D int arrays, in order) into data_dir, then write meta.json; returns the meta dict.
    The last val_tokens tokens (default: val_fraction of all) become the val split, as in nanoGPT. Streaming
    everything to the train files first means no total needs to be known in advance (web-scale streams).
    Everything is written into a hidden build folder inside data_dir first and swapped in only when complete: bad
    input, an error or Ctrl-C part-way leaves the previous dataset in data_dir exactly as it was. A dataset of another
    source or tokenizer in data_dir is only replaced with overwrite=True (see check_replace)."""
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"{shown(str(data_dir))} is a file, not a dataset folder; choose another name")
    check_replace(data_dir, source, tokenizer, overwrite)
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(data_dir)
    build = data_dir / f'{BUILD_PREFIX}{os.getpid()}'
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    try:
        meta = _write_build(build, token_chunks, tokenizer=tokenizer, vocab_size=vocab_size, source=source,
                            val_fraction=val_fraction, val_tokens=val_tokens, shard_tokens=shard_tokens, chars=chars,
                            progress=progress)
        meta['name'] = data_dir.name
        _swap_in(data_dir, build, meta)
    finally:
        shutil.rmtree(build, ignore_errors=True)
        if created and not any(data_dir.iterdir()):   # a first prepare that failed leaves no empty folder behind
            data_dir.rmdir()
    return meta


BUILD_PREFIX = '.build-'   # data_dir/.build-<pid>: a dataset being written


def _remove_dead_builds(data_dir):
    """Build folders of prepare runs that were killed (their pid is gone) are leftovers: remove them."""
    for path in data_dir.glob(f'{BUILD_PREFIX}*'):
        pid = path.name[len(BUILD_PREFIX):]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def _write_build(build, token_chunks, *, tokenizer, vocab_size, source, val_fraction, val_tokens, shard_tokens,
                 chars, progress):
    dtype = dtype_for_vocab(vocab_size)
    train = ShardWriter(build, 'train', dtype, vocab_size, shard_tokens)
    for chunk in token_chunks:
        train.write(chunk)
        if progress is not None:
            progress.update(len(chunk))
    train.close()
    if progress is not None:
        progress.close()
    total = train.num_tokens
    n_val = int(total * val_fraction) if val_tokens is None else val_tokens
    if not 0 < n_val < total:
        raise ValueError(f"cannot split {total:,} tokens (from {source}) into train and a val split of {n_val:,}: "
                         f"give more text or change the val size (--val_fraction / --val_tokens)")
    val = ShardWriter(build, 'val', dtype, vocab_size, shard_tokens)
    train_files = _move_tail(build, train.files, dtype, n_val, val)
    meta = {'name': None, 'tokenizer': tokenizer, 'vocab_size': vocab_size, 'dtype': dtype,
            'train_tokens': total - n_val, 'val_tokens': n_val, 'train_files': train_files, 'val_files': val.files,
            'max_token_id': train.max_id,   # every token passed through `train` (the val tail was moved out of it)
            'unigram_entropy': entropy_of_counts(token_counts([build / f for f in train_files], dtype, vocab_size))}
    if chars is not None:
        meta['chars'] = chars
    meta['source'] = source
    return meta


def _swap_in(data_dir, build, meta):
    """Replace data_dir's dataset with the complete one in build. meta.json goes first and comes back last, so a
    reader in between sees "not prepared" rather than a mix; the swap itself is a few renames (milliseconds)."""
    (data_dir / 'meta.json').unlink(missing_ok=True)
    new_files = set(meta['train_files'] + meta['val_files'])
    for name in new_files:
        os.replace(build / name, data_dir / name)
    for split in SPLIT_IDS:   # leftovers of an earlier, bigger dataset must not mix in
        for stale in [*data_dir.glob(f'{split}.bin'), *data_dir.glob(f'{split}_[0-9]*.bin')]:
            if stale.name not in new_files:
                stale.unlink()
    write_meta(data_dir, meta)


# ----------------------------------------------------------------------------- loader


class TokenDataset:
    """One split of a prepared dataset, read through np.memmap; nothing is loaded into RAM.

    The memmaps are re-created for every batch rather than kept open (as nanoGPT does): a long-lived memmap keeps
    every page it ever touched mapped into the process, so resident memory creeps up towards the dataset size over a
    long run (the "memmap leak"), per rank under DDP. Mapping a file costs ~30 us; a 64x256 batch ~0.5 ms in all."""

    def __init__(self, data_dir, split):
        if split not in SPLIT_IDS:
            raise ValueError(f"split {split!r}: expected 'train' or 'val'")
        self.data_dir, self.split = Path(data_dir), split
        self.meta = load_meta(data_dir)
        self.dtype = np.dtype(self.meta['dtype'])
        self.paths = [self.data_dir / name for name in self.meta[f'{split}_files']]
        self.file_tokens = np.array([self._count_tokens(p) for p in self.paths], dtype=np.int64)  # (n_files,)
        self.num_tokens = int(self.file_tokens.sum())
        if self.num_tokens == 0:
            raise ValueError(f"split '{split}' of {data_dir} is empty; re-run: {prepare_command(data_dir)}")
        if self.num_tokens != self.meta.get(f'{split}_tokens', self.num_tokens):
            raise ValueError(f"{data_dir}/meta.json says {self.meta[f'{split}_tokens']:,} {split} tokens but the files "
                             f"hold {self.num_tokens:,}; re-run: {prepare_command(data_dir)}")

    def _count_tokens(self, path):
        if not path.exists():
            raise FileNotFoundError(f"{shown(path)} (listed in meta.json) is missing; "
                                    f"re-run: {prepare_command(self.data_dir)}")
        size = path.stat().st_size
        if size % self.dtype.itemsize:
            raise ValueError(f"{shown(path)} has {size} bytes, not a multiple of {self.dtype.itemsize} ({self.dtype}): "
                             f"truncated or of another dtype; re-run: {prepare_command(self.data_dir)}")
        return size // self.dtype.itemsize

    def check_block_size(self, block_size):
        """A window of block_size + 1 tokens must fit inside one file of this split (ValueError, one line, if not)."""
        largest = int(self.file_tokens.max())
        if block_size + 1 > largest:
            raise ValueError(f"block_size {block_size} too large for split '{self.split}' of "
                             f"{shown(str(self.data_dir))}: its largest file holds {largest:,} tokens and a window "
                             f"needs block_size + 1; use --block_size={largest - 1} or less, or a bigger dataset")

    def get_batch(self, batch_size, block_size, seed, step, micro_step, rank=0, micro_steps_per_rank=1):
        """(x, y): int64 CPU tensors (batch_size, block_size), y[:, t] = x[:, t + 1] (next token).

        Window positions are a pure function of (seed, split, step, global micro index), with
        global micro index = rank * micro_steps_per_rank + micro_step. So N ranks doing G/N micro-steps each draw
        exactly the G micro-batches of one process doing G micro-steps, and a resumed run (same step numbers)
        draws what the uninterrupted run drew. No state, nothing to save in a checkpoint."""
        if not 0 <= micro_step < micro_steps_per_rank:
            raise ValueError(f"micro_step {micro_step} outside 0..{micro_steps_per_rank - 1} (micro_steps_per_rank)")
        index = rank * micro_steps_per_rank + micro_step
        if min(seed, step, index) < 0:
            raise ValueError(f"seed, step and rank must be >= 0 (got seed={seed}, step={step}, rank={rank})")
        # a window needs block_size + 1 tokens inside one file: it must not run across a shard boundary
        starts_per_file = np.maximum(self.file_tokens - block_size, 0)   # (n_files,) valid window starts
        n_windows = int(starts_per_file.sum())
        if n_windows == 0:
            self.check_block_size(block_size)
        rng = np.random.default_rng([seed, SPLIT_IDS[self.split], step, index])
        window = rng.integers(0, n_windows, size=batch_size)             # (B,) index into all valid windows
        ends = np.cumsum(starts_per_file)                                 # (n_files,)
        file_of = np.searchsorted(ends, window, side='right')             # (B,) which file
        offset = window - (ends - starts_per_file)[file_of]               # (B,) start inside that file
        tokens = np.empty((batch_size, block_size + 1), dtype=np.int64)   # (B, T+1)
        for f in np.unique(file_of):
            data = np.memmap(self.paths[f], dtype=self.dtype, mode='r')
            for b in np.flatnonzero(file_of == f):
                tokens[b] = data[offset[b]:offset[b] + block_size + 1]
            del data
        import torch   # here, not at the top: prepare scripts and train.py's early data checks run without torch
        x = torch.from_numpy(np.ascontiguousarray(tokens[:, :-1]))        # (B, T)
        y = torch.from_numpy(np.ascontiguousarray(tokens[:, 1:]))         # (B, T)
        return x, y
