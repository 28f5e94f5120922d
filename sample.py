"""
Sample text from a model trained with train.py.

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --out_dir=out-gpt2-small --start=FILE:prompt.txt --temperature=0.8
"""
import os
import sys
from contextlib import nullcontext

import torch

import checkpoint
from configurator import configure
from data.dataset import get_tokenizer, load_meta
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
out_dir = 'out'             # the folder holding ckpt.pt
start = '\n'                # the prompt, or 'FILE:path' to read it from a file
num_samples = 3
max_new_tokens = 500
temperature = 0.8           # 1.0 = the model's distribution, < 1 sharper, 0 = greedy
top_k = 200                 # sample only among the k likeliest tokens (0 = all)
seed = 1337
device = 'auto'             # 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'
dtype = 'auto'              # 'auto' (bf16 on CUDA if supported, else fp16; fp32 elsewhere), 'float32', 'bfloat16', 'float16'
compile = False
# -----------------------------------------------------------------------------
configure(globals())
# -----------------------------------------------------------------------------


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if device == 'auto':
    device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
device_type = 'cuda' if device.startswith('cuda') else device
if dtype == 'auto':
    dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if device_type == 'cuda' else 'float32'
if dtype not in ('float32', 'bfloat16', 'float16'):
    fail(f"dtype must be one of auto, float32, bfloat16, float16, got {dtype!r}")
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
torch.manual_seed(seed)

try:
    ckpt = checkpoint.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu')
except FileNotFoundError as e:
    fail(str(e))
model = GPT(GPTConfig(**ckpt['model_args']), verbose=False)
model.load_state_dict(ckpt['model'])
model.eval().to(device)
if compile:
    model = torch.compile(model)

# the tokenizer: from the meta.json saved in the checkpoint (older checkpoints: the dataset folder)
meta = ckpt.get('meta')
if meta is None:
    dataset = ckpt['config']['dataset']
    meta = load_meta(dataset if os.sep in dataset else os.path.join(os.path.dirname(__file__), 'data', dataset))
encode, decode = get_tokenizer(meta)

if start.startswith('FILE:'):
    with open(start[5:], encoding='utf-8') as f:
        start = f.read()
try:
    start_ids = encode(start)
except ValueError as e:
    fail(f"cannot encode the prompt: {e}")
if not start_ids:
    fail("the prompt encodes to zero tokens; give a non-empty --start")
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]   # (1, T)

with torch.no_grad(), ctx:
    for _ in range(num_samples):
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k if top_k > 0 else None)
        # BPE vocabularies are padded (50257 -> 50304); a padding id has no text, so drop the rare one sampled
        ids = [i for i in y[0].tolist() if i < meta['vocab_size']]
        print(decode(ids))
        print('---------------')
