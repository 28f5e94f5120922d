"""
Your own text -> data/<name>/ (train/val .bin files or shards + meta.json).

Inputs are files or folders (searched recursively, in sorted order) of .txt (one document per file) and .jsonl
(one document per line, in its "text" field); the extension may be upper-case (B.TXT). Documents end with
<|endoftext|> (gpt2) or a blank line (char). Tokenizes in parallel; the last --val_fraction of the tokens becomes the
val split.

    python data/text/prepare.py books/ notes.jsonl --name=mybooks                 # GPT-2 BPE, one train.bin
    python data/text/prepare.py corpus/ --name=big --shard_tokens=100000000       # 100M-token shards
    python data/text/prepare.py poems.txt --name=poems_char --tokenizer=char
    python data/text/prepare.py dump.jsonl --name=web --skip_bad_lines             # skip and count bad .jsonl lines

What is read: it prints the files it reads and, per reason, what it skipped in the folders: files of other types,
broken symlinks, and a file met a second time (given twice, or by two paths: each file is read once). Text is UTF-8;
a leading byte-order mark is dropped (it is no character of the text); UTF-16 input (a UTF-16 BOM, or NUL bytes in
every other byte) is refused with the iconv command that converts it.

Re-preparing a name builds the new dataset beside the old one and swaps it in only when complete: a bad file or line
stops the run with one line naming it and leaves the previous dataset intact. A name that holds a dataset made from
other inputs or with the other tokenizer (data/shakespeare_char, say) is refused unless --overwrite=True.
"""
import argparse
import codecs
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root
from data.dataset import (DATA_ROOT, Progress, add_overwrite_flag, char_vocabulary, check_replace,  # noqa: E402
                          run_script, tokenize_documents, write_token_dataset)
from data.sources import GPT2_VOCAB_SIZE  # noqa: E402

EXTENSIONS = ('.txt', '.jsonl')   # compared in lower case


def is_text_file(path):
    return path.suffix.lower() in EXTENSIONS


def list_files(inputs):
    """(files to read, [(path as shown, why it was skipped)]). A named input that cannot be read stops the run; inside a
    folder, other file types and broken symlinks are skipped. A file met again (the same input twice, a folder and a
    file in it, a symlink or hard link to a file already listed) is skipped as well: it is read once."""
    files, skipped, seen = [], [], {}   # seen: (device, inode) -> the path it was first listed under
    for item in map(Path, inputs):
        if item.is_dir():
            candidates = sorted(item.rglob('*'))
        elif item.is_symlink() and not item.exists():
            raise FileNotFoundError(f"{item}: a broken symlink (to {os.readlink(item)})")
        elif item.is_file() and is_text_file(item):
            candidates = [item]
        elif item.exists():
            raise FileNotFoundError(f"{item}: not a folder or a .txt/.jsonl file")
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
        for path in candidates:
            if path.is_symlink() and not path.exists():
                skipped.append((path, 'broken symlink'))
            elif path.is_dir():
                continue
            elif not is_text_file(path):
                skipped.append((path, 'not a .txt or .jsonl file'))
            elif not path.is_file():
                skipped.append((path, 'not a regular file'))
            else:
                stat = path.stat()
                key = (stat.st_dev, stat.st_ino)
                if key in seen:
                    shown_as = path if str(path) == str(seen[key]) else f"{path} (= {seen[key]})"
                    skipped.append((shown_as, 'the same file as one listed before: read once'))
                else:
                    seen[key] = path
                    files.append(path)
    if not files:
        raise FileNotFoundError(f"no .txt or .jsonl files in {', '.join(map(str, inputs))}")
    return files, skipped


def some(paths, limit=5):
    """The first few paths and how many there are in all, for one line."""
    paths = [str(p) for p in paths]
    return ', '.join(paths[:limit]) + (f" ... ({len(paths)} in all)" if len(paths) > limit else '')


def print_inputs(files, skipped):
    """What will be read, and per reason what was left out."""
    print(f"reading {len(files)} file{'s' if len(files) != 1 else ''}: {some(files)}")
    reasons = {}   # why -> paths, in the order met
    for path, why in skipped:
        reasons.setdefault(why, []).append(path)
    for why, paths in reasons.items():
        print(f"skipped {len(paths)} ({why}): {some(paths)}")


class Documents:
    """The documents of a list of files, read afresh on every iteration (the char tokenizer reads them twice).
    A file that is not UTF-8, or a .jsonl line that is not a JSON object with a "text" string, stops the run with
    one line naming the file (and line); with skip_bad_lines such .jsonl lines are skipped and counted instead."""

    def __init__(self, files, skip_bad_lines=False):
        self.files, self.skip_bad_lines = files, skip_bad_lines
        self.skipped = []   # 'path:line: reason' of the lines skipped in the last pass

    def __iter__(self):
        self.skipped = []
        for path in self.files:
            if path.suffix.lower() == '.txt':
                yield read_text(path)
            else:
                yield from self._jsonl(path)

    def _jsonl(self, path):
        with open(path, 'rb') as f:   # bytes: a bad byte then belongs to a line number, not to the whole file
            refuse_utf16(path, f.read(4096))
            f.seek(0)
            for line_number, raw in enumerate(f, 1):
                if line_number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]   # a byte-order mark is not part of the first record
                if not raw.strip():
                    continue
                text, problem = None, None
                try:
                    record = json.loads(raw.decode('utf-8'))
                    if isinstance(record, dict) and isinstance(record.get('text'), str):
                        text = record['text']
                    else:
                        problem = 'expected a JSON object with a "text" string'
                except UnicodeDecodeError as e:
                    problem = f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                except json.JSONDecodeError as e:
                    problem = f"not valid JSON ({e.msg} at column {e.colno})"
                if problem is None:
                    yield text
                elif self.skip_bad_lines:
                    self.skipped.append(f"{path}:{line_number}: {problem}")
                else:
                    raise ValueError(f"{path}:{line_number}: {problem}; fix or remove that line, or pass "
                                     f"--skip_bad_lines to skip such lines")


def refuse_utf16(path, head):
    """UTF-16 text is not UTF-8 but may even decode as UTF-8 (ASCII letters with NUL bytes between them): tell it by
    its byte-order mark, or by NUL bytes in every other position of the first bytes (head), and say how to convert."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding, evidence = 'UTF-16', 'it starts with a UTF-16 byte-order mark'
    else:
        sample = head[:len(head) // 2 * 2]
        even, odd = sample[0::2].count(0), sample[1::2].count(0)
        if len(sample) < 8 or max(even, odd) < len(sample) // 4:   # NUL in under half of either byte column
            return
        encoding = 'UTF-16LE' if odd > even else 'UTF-16BE'
        evidence = f"every other byte is NUL: {encoding} without a byte-order mark"
    raise ValueError(f"{path}: UTF-16 text, not UTF-8 ({evidence}); convert it first: iconv -f {encoding} -t UTF-8 "
                     f"{path} > {path.stem}.utf8{path.suffix}")


def read_text(path):
    """A .txt file as one document, without a leading UTF-8 byte-order mark; a file that is not UTF-8 is named, with
    the first bad byte's position (UTF-16 with its own message)."""
    data = path.read_bytes()
    refuse_utf16(path, data[:4096])
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        line = data.count(b'\n', 0, e.start) + 1
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); convert it to UTF-8 "
                         f"(e.g. iconv -f latin1 -t utf-8) or leave it out") from None


def source_of(inputs):
    """meta.json's source: the inputs as named, made absolute. It identifies the dataset across re-prepares (a file
    added to a corpus folder is the same source), so check_replace can tell a re-prepare from a different dataset."""
    return 'text: ' + ', '.join(os.path.abspath(item) for item in inputs)


def prepare(inputs, out_dir, tokenizer='gpt2', val_fraction=0.1, shard_tokens=None, workers=None,
            skip_bad_lines=False, overwrite=False):
    source = source_of(inputs)
    check_replace(out_dir, source, tokenizer, overwrite)   # before reading anything
    files, skipped = list_files(inputs)
    print_inputs(files, skipped)
    documents = Documents(files, skip_bad_lines)
    chars, vocab_size = None, GPT2_VOCAB_SIZE
    if tokenizer == 'char':   # the character table needs one pass over all text before encoding
        chars = char_vocabulary(documents)
        vocab_size = len(chars)
    chunks = tokenize_documents(documents, tokenizer, chars=chars, workers=workers)
    meta = write_token_dataset(out_dir, chunks, tokenizer=tokenizer, vocab_size=vocab_size, chars=chars,
                               source=source, val_fraction=val_fraction, shard_tokens=shard_tokens,
                               progress=Progress('tokenizing'), overwrite=overwrite)
    if documents.skipped:
        print(f"skipped {len(documents.skipped)} bad .jsonl line(s) (--skip_bad_lines); the first: "
              f"{documents.skipped[0]}", file=sys.stderr)
    meta['skipped_lines'] = len(documents.skipped)
    meta['input_files'] = len(files)
    return meta


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+', help='.txt/.jsonl files or folders')
    parser.add_argument('--name', default='text', help='output folder data/<name>/')
    parser.add_argument('--tokenizer', default='gpt2', choices=['gpt2', 'char'])
    parser.add_argument('--val_fraction', type=float, default=0.1)
    parser.add_argument('--shard_tokens', type=int, default=0, help='tokens per shard; 0 = one file per split')
    parser.add_argument('--workers', type=int, default=0, help='tokenizer processes; 0 = all cores')
    parser.add_argument('--skip_bad_lines', action='store_true',
                        help='skip (and count) .jsonl lines that are not JSON objects with a "text" string')
    add_overwrite_flag(parser)
    args = parser.parse_args()
    if not args.name or args.name in ('.', '..') or Path(args.name).name != args.name:
        parser.error(f"--name={args.name!r} must be a plain folder name (it becomes data/<name>/)")
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val_fraction={args.val_fraction} must be between 0 and 1 (e.g. 0.1)")
    for key, zero_means in (('shard_tokens', 'one file per split'), ('workers', 'all cores')):
        if getattr(args, key) < 0:
            parser.error(f"--{key}={getattr(args, key)} must be >= 0 (0 = {zero_means})")
    meta = prepare(args.inputs, DATA_ROOT / args.name, args.tokenizer, args.val_fraction,
                   args.shard_tokens or None, args.workers or None, args.skip_bad_lines, args.overwrite)
    shards = len(meta['train_files'])
    print(f"data/{args.name}: {meta['input_files']} input file{'s' if meta['input_files'] != 1 else ''} -> train "
          f"{meta['train_tokens']:,} tokens{f' in {shards} shards' if shards > 1 else ''}, val {meta['val_tokens']:,} "
          f"tokens; vocab {meta['vocab_size']} ({meta['tokenizer']}, {meta['dtype']})")


if __name__ == '__main__':
    run_script(main)
