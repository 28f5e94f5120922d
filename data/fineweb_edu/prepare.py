"""
FineWeb-Edu (HuggingFaceFW/fineweb-edu) with GPT-2 BPE -> data/fineweb_edu/ as 100M-token shards, for GPU runs.
Streams the dataset (nothing is downloaded whole), tokenizes in parallel, writes train_000000.bin, ... and a val
split made of the last --val_tokens tokens.

Needs the internet and Hugging Face `datasets` (optional dependency: pip install datasets). Only this streaming
part needs them: prepare_documents(), the tokenize + shard core, is tested offline on local text.

    python data/fineweb_edu/prepare.py --max_tokens=1000000000      # first ~1B tokens of sample-10BT (~2 GB)
    python data/fineweb_edu/prepare.py --subset=sample-10BT         # all of it (~10B tokens, ~20 GB)
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root

from data.dataset import (Progress, add_overwrite_flag, run_script, tokenize_documents,  # noqa: E402
                          write_token_dataset)
from data.sources import GPT2_VOCAB_SIZE  # noqa: E402

DATASET = 'HuggingFaceFW/fineweb-edu'


def stream_documents(subset):
    """Texts of FineWeb-Edu, streamed. Imports datasets now, so a missing install fails before any file is touched."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError("streaming FineWeb-Edu needs Hugging Face datasets: pip install datasets") from e
    rows = datasets.load_dataset(DATASET, name=subset, split='train', streaming=True)
    return (row['text'] for row in rows)


def first_tokens(chunks, max_tokens):
    """The chunks, cut so that exactly max_tokens tokens come out (all of them when max_tokens is None)."""
    remaining = max_tokens
    for chunk in chunks:
        if remaining is not None and len(chunk) >= remaining:
            yield chunk[:remaining]
            return   # closing the generator also stops the tokenizer pool and the stream
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk


def prepare_documents(documents, out_dir, source, shard_tokens=100_000_000, val_tokens=10_000_000,
                      max_tokens=None, workers=None, overwrite=False):
    """Tokenize an iterable of documents (GPT-2 BPE, each ending with <|endoftext|>) into fixed-size shards."""
    chunks = first_tokens(tokenize_documents(documents, 'gpt2', workers=workers), max_tokens)
    return write_token_dataset(out_dir, chunks, tokenizer='gpt2', vocab_size=GPT2_VOCAB_SIZE, source=source,
                               val_tokens=val_tokens, shard_tokens=shard_tokens, progress=Progress('tokenizing'),
                               overwrite=overwrite)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--subset', default='sample-10BT', help='sample-10BT | sample-100BT | sample-350BT | default')
    parser.add_argument('--shard_tokens', type=int, default=100_000_000)
    parser.add_argument('--val_tokens', type=int, default=10_000_000)
    parser.add_argument('--max_tokens', type=int, default=0, help='stop after this many tokens; 0 = whole subset')
    parser.add_argument('--workers', type=int, default=0, help='tokenizer processes; 0 = all cores')
    add_overwrite_flag(parser)   # another --subset than the dataset there was made from
    args = parser.parse_args()
    for key, low in (('shard_tokens', 1), ('val_tokens', 1), ('max_tokens', 0), ('workers', 0)):
        if getattr(args, key) < low:
            parser.error(f"--{key}={getattr(args, key)} must be >= {low}")
    if args.max_tokens and args.max_tokens <= args.val_tokens:
        parser.error(f"--max_tokens={args.max_tokens} leaves nothing for training after --val_tokens={args.val_tokens}")
    meta = prepare_documents(stream_documents(args.subset), os.path.dirname(os.path.abspath(__file__)),
                             f'{DATASET} ({args.subset}), streamed', args.shard_tokens, args.val_tokens,
                             args.max_tokens or None, args.workers or None, args.overwrite)
    print(f"train {meta['train_tokens']:,} tokens in {len(meta['train_files'])} shards, val {meta['val_tokens']:,}")


if __name__ == '__main__':
    run_script(main)
