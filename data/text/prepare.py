"""
Your own text -> data/<name>/ (train/val .bin files or shards + meta.json).

Inputs are files or folders (searched recursively, in sorted order) of .txt (one document per file) and .jsonl
(one document per line, in its "text" field). Documents end with <|endoftext|> (gpt2) or a blank line (char).
Tokenizes in parallel; the last --val_fraction of the tokens becomes the val split.

    python data/text/prepare.py books/ notes.jsonl --name=mybooks                 # GPT-2 BPE, one train.bin
    python data/text/prepare.py corpus/ --name=big --shard_tokens=100000000       # 100M-token shards
    python data/text/prepare.py poems.txt --name=poems_char --tokenizer=char
    python data/text/prepare.py dump.jsonl --name=web --skip_bad_lines             # skip and count bad .jsonl lines

Re-preparing a name builds the new dataset beside the old one and swaps it in only when complete: a bad file or line
stops the run with one line naming it and leaves the previous dataset intact.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root
from data.dataset import (DATA_ROOT, Progress, char_vocabulary, run_script, tokenize_documents,  # noqa: E402
                          write_token_dataset)
from data.sources import GPT2_VOCAB_SIZE  # noqa: E402

EXTENSIONS = ('.txt', '.jsonl')


def list_files(inputs):
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob('*') if p.suffix in EXTENSIONS and p.is_file())
        elif item.is_file() and item.suffix in EXTENSIONS:
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: not a folder or a .txt/.jsonl file")
    if not files:
        raise FileNotFoundError(f"no .txt or .jsonl files in {', '.join(map(str, inputs))}")
    return files


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
            if path.suffix == '.txt':
                yield read_text(path)
            else:
                yield from self._jsonl(path)

    def _jsonl(self, path):
        with open(path, 'rb') as f:   # bytes: a bad byte then belongs to a line number, not to the whole file
            for line_number, raw in enumerate(f, 1):
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


def read_text(path):
    """A .txt file as one document; a file that is not UTF-8 is named, with the first bad byte's position."""
    data = path.read_bytes()
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        line = data.count(b'\n', 0, e.start) + 1
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); convert it to UTF-8 "
                         f"(e.g. iconv -f latin1 -t utf-8) or leave it out") from None


def prepare(inputs, out_dir, tokenizer='gpt2', val_fraction=0.1, shard_tokens=None, workers=None,
            skip_bad_lines=False):
    files = list_files(inputs)
    documents = Documents(files, skip_bad_lines)
    chars, vocab_size = None, GPT2_VOCAB_SIZE
    if tokenizer == 'char':   # the character table needs one pass over all text before encoding
        chars = char_vocabulary(documents)
        vocab_size = len(chars)
    chunks = tokenize_documents(documents, tokenizer, chars=chars, workers=workers)
    source = f"{len(files)} files: {', '.join(str(p) for p in files[:5])}{' ...' if len(files) > 5 else ''}"
    meta = write_token_dataset(out_dir, chunks, tokenizer=tokenizer, vocab_size=vocab_size, chars=chars,
                               source=source, val_fraction=val_fraction, shard_tokens=shard_tokens,
                               progress=Progress('tokenizing'))
    if documents.skipped:
        print(f"skipped {len(documents.skipped)} bad .jsonl line(s) (--skip_bad_lines); the first: "
              f"{documents.skipped[0]}", file=sys.stderr)
    meta['skipped_lines'] = len(documents.skipped)
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
    args = parser.parse_args()
    if not args.name or args.name in ('.', '..') or Path(args.name).name != args.name:
        parser.error(f"--name={args.name!r} must be a plain folder name (it becomes data/<name>/)")
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val_fraction={args.val_fraction} must be between 0 and 1 (e.g. 0.1)")
    for key, zero_means in (('shard_tokens', 'one file per split'), ('workers', 'all cores')):
        if getattr(args, key) < 0:
            parser.error(f"--{key}={getattr(args, key)} must be >= 0 (0 = {zero_means})")
    meta = prepare(args.inputs, DATA_ROOT / args.name, args.tokenizer, args.val_fraction,
                   args.shard_tokens or None, args.workers or None, args.skip_bad_lines)
    print(f"data/{args.name}: train {meta['train_tokens']:,} tokens in {len(meta['train_files'])} files, "
          f"val {meta['val_tokens']:,} tokens; vocab {meta['vocab_size']} ({meta['tokenizer']}, {meta['dtype']})")


if __name__ == '__main__':
    run_script(main)
