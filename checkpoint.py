"""
Checkpoint helpers for train.py and sample.py: atomic save, safe load, clean state dicts and RNG state.

They live outside train.py so tests can exercise them in-process (nothing imports train.py).
"""
import os
import random

import numpy as np
import torch


def save_atomic(obj, path):
    """
    torch.save obj to path so that path always holds either the old or the new complete file: write a temp file in
    the same directory (same filesystem, so the rename is atomic), flush + fsync it, then os.replace over path.
    A crash or kill at any point leaves the previous checkpoint untouched (at worst a stray *.tmp file).
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:   # make the rename itself durable (POSIX); not possible on every platform
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load(path, map_location='cpu'):
    """Load a checkpoint written by train.py. weights_only=True: only tensors and plain Python values are unpickled."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}; train one first (python train.py --out_dir=...) "
                                f"or start from scratch with --init_from=scratch")
    return torch.load(path, map_location=map_location, weights_only=True)


def clean_state_dict(state_dict):
    """Strip the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add, so any model can load the weights."""
    clean = {}
    for key, value in state_dict.items():
        for prefix in ('module.', '_orig_mod.'):
            while key.startswith(prefix):
                key = key[len(prefix):]
        clean[key.replace('._orig_mod.', '.')] = value
    return clean


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)   # seeds every CUDA device too


def get_rng_state():
    """Every RNG a training step may touch, as tensors and plain values (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian),
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's device only: get_rng_state_all() would open a context on every GPU from every DDP rank
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate(state['python'])
    name, keys, pos, has_gauss, cached_gaussian = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])   # the current device (train.py sets it)
