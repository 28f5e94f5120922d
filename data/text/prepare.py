"""
Your own text -> data/<name>/ (train/val .bin files or shards + meta.json).

Inputs are files or folders (searched recursively, in sorted order) of .txt (one document per file) and .jsonl
(one document per line, in its "text" field). Documents end with <|endoftext|> (gpt2) or a blank line (char).
Tokenizes in parallel; the last --val_fraction of the tokens becomes the val split.

    python data/text/prepare.py books/ notes.jsonl --name=mybooks                 # GPT-2 BPE, one train.bin
    python data/text/prepare.py corpus/ --name=big --shard_tokens=100000000       # 100M-token shards
    python data/text/prepare.py poems.txt --name=poems_char --tokenizer=char
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


def iter_documents(files):
    for path in files:
        if path.suffix == '.txt':
            yield path.read_text(encoding='utf-8')
            continue
        with open(path, encoding='utf-8') as f:
            for line_number, line in enumerate(f, 1):
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get('text'), str):
                        raise ValueError(f"{path}:{line_number}: expected a JSON object with a \"text\" string")
                    yield record['text']


def prepare(inputs, out_dir, tokenizer='gpt2', val_fraction=0.1, shard_tokens=None, workers=None):
    files = list_files(inputs)
    chars, vocab_size = None, GPT2_VOCAB_SIZE
    if tokenizer == 'char':   # the character table needs one pass over all text before encoding
        chars = char_vocabulary(iter_documents(files))
        vocab_size = len(chars)
    chunks = tokenize_documents(iter_documents(files), tokenizer, chars=chars, workers=workers)
    source = f"{len(files)} files: {', '.join(str(p) for p in files[:5])}{' ...' if len(files) > 5 else ''}"
    return write_token_dataset(out_dir, chunks, tokenizer=tokenizer, vocab_size=vocab_size, chars=chars,
                               source=source, val_fraction=val_fraction, shard_tokens=shard_tokens,
                               progress=Progress('tokenizing'))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+', help='.txt/.jsonl files or folders')
    parser.add_argument('--name', default='text', help='output folder data/<name>/')
    parser.add_argument('--tokenizer', default='gpt2', choices=['gpt2', 'char'])
    parser.add_argument('--val_fraction', type=float, default=0.1)
    parser.add_argument('--shard_tokens', type=int, default=0, help='tokens per shard; 0 = one file per split')
    parser.add_argument('--workers', type=int, default=0, help='tokenizer processes; 0 = all cores')
    args = parser.parse_args()
    meta = prepare(args.inputs, DATA_ROOT / args.name, args.tokenizer, args.val_fraction,
                   args.shard_tokens or None, args.workers or None)
    print(f"data/{args.name}: train {meta['train_tokens']:,} tokens in {len(meta['train_files'])} files, "
          f"val {meta['val_tokens']:,} tokens; vocab {meta['vocab_size']} ({meta['tokenizer']}, {meta['dtype']})")


if __name__ == '__main__':
    run_script(main)
