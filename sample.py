"""
Sample text from a model trained with train.py.

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --out_dir=out-gpt2-small --start=FILE:prompt.txt --temperature=0.8

Every setting and the prompt file are checked before torch is imported, so a wrong one costs a fraction of a second
and one error line naming it.

The KV cache (--kv_cache=True, the default) keeps every layer's keys and values: the prompt runs through the model once,
then one token per step, with the predictions of --kv_cache=False, which reruns the whole context for every token (the
same text for the same seed, up to float rounding tipping a near tie). Each token is predicted from the block_size
tokens before it (nanoGPT's crop). Past block_size the cache is EXACT, not fast: when the window slides, every position
and so every cached key and value changes, and each further token refills the cache from the new window, at the cost
of a step without the cache. So only the first block_size - len(prompt) new tokens are faster (BENCHMARKS.md: ~3-4x
for 255 tokens on the README's char model with block_size 256, ~1.4x for the default 500).
"""
import math
import os
import sys

from configurator import configure, device_name_problem
from training import checkpoint
from training.processes import choose_device

# -----------------------------------------------------------------------------
out_dir = 'out'             # the folder holding ckpt.pt
start = '\n'                # the prompt, or 'FILE:path' to read it from a file
num_samples = 3
max_new_tokens = 500
temperature = 0.8           # 1.0 = the model's distribution, < 1 sharper, 0 = greedy (always the likeliest token)
top_k = 200                 # sample only among the k likeliest tokens (0 = all)
seed = 1337
device = 'auto'             # 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'
dtype = 'auto'              # 'auto' (bf16 on CUDA if supported, else fp16; fp32 elsewhere), 'float32', 'bfloat16', 'float16'
compile = False
kv_cache = True             # keep each layer's keys and values (the same tokens, faster); False: rerun the context
# -----------------------------------------------------------------------------
configure(globals())
# -----------------------------------------------------------------------------
ckpt_path = os.path.join(out_dir, 'ckpt.pt')


def fail(message):
    """One clear line for a person, then exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def setting_problem():
    """The first thing wrong with the settings, as one line naming the key, or None."""
    if num_samples < 1:
        return f"num_samples must be >= 1, got {num_samples}"
    if max_new_tokens < 1:
        return f"max_new_tokens must be >= 1, got {max_new_tokens}"
    if not (temperature >= 0 and math.isfinite(temperature)):
        return f"temperature must be a number >= 0 (0 = greedy, 1 = the model's distribution), got {temperature}"
    if top_k < 0:
        return f"top_k must be >= 0 (0 = sample among all tokens), got {top_k}"
    if not 0 <= seed < 2 ** 31:
        return f"seed must be in 0 .. 2**31 - 1, got {seed}"
    if dtype not in ('auto', 'float32', 'bfloat16', 'float16'):
        return f"dtype must be one of auto, float32, bfloat16, float16, got {dtype!r}"
    if device_name_problem(device):
        return device_name_problem(device)
    return checkpoint.out_dir_problem(out_dir)


def read_prompt(text):
    """The prompt itself, or the contents of the file named by 'FILE:path'."""
    if not text.startswith('FILE:'):
        return text
    path = text[len('FILE:'):]
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except UnicodeDecodeError as e:
        fail(f"prompt file {path} (--start=FILE:{path}) is not UTF-8 text (bad byte at offset {e.start})")
    except OSError as e:
        fail(f"cannot read the prompt file {path} (--start=FILE:{path}): {e.strerror}")


if setting_problem():
    fail(setting_problem())
start = read_prompt(start)
if not start:
    fail("the prompt is empty; give a non-empty --start (or a non-empty FILE:)")

# torch comes only now (1-2 s): everything above fails fast
import torch  # noqa: E402

from data.dataset import dataset_dir, get_tokenizer, load_meta  # noqa: E402

device, _, dtype, ctx = choose_device(device, dtype, local_rank=None)   # 'auto' resolved
torch.manual_seed(seed)

try:
    model, ckpt = checkpoint.load_model(ckpt_path, device)
except (FileNotFoundError, checkpoint.CheckpointError) as e:
    fail(str(e))
if compile:
    model = torch.compile(model)


def checkpoint_meta():
    """The tokenizer's meta: saved in the checkpoint (older checkpoints: the dataset folder's meta.json)."""
    if ckpt.get('meta') is not None:
        return ckpt['meta']
    dataset = ckpt.get('config', {}).get('dataset')
    if not dataset:
        fail(f"{ckpt_path} records neither its vocabulary nor its dataset, so its tokens cannot be decoded")
    try:
        return load_meta(dataset_dir(dataset))
    except (FileNotFoundError, ValueError) as e:
        fail(f"the vocabulary of {ckpt_path} comes from its dataset, which cannot be read: {e}")


meta = checkpoint_meta()
try:
    encode, decode = get_tokenizer(meta)
    start_ids = encode(start)
except ValueError as e:
    fail(f"cannot encode the prompt: {e}")
if not start_ids:
    fail("the prompt encodes to zero tokens; give a non-empty --start")
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]   # (1, T)

with torch.no_grad(), ctx:
    for _ in range(num_samples):
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k if top_k > 0 else None,
                           kv_cache=kv_cache)
        # BPE vocabularies are padded (50257 -> 50304); a padding id has no text, so drop the rare one sampled
        ids = [i for i in y[0].tolist() if i < meta['vocab_size']]
        print(decode(ids))
        print('---------------')
