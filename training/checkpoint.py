"""
Checkpoint helpers for train.py, sample.py and eval.py: atomic save, safe load, clean state dicts, RNG state, and the
lock that keeps two processes out of one out_dir.

They live outside train.py so tests can exercise them in-process (nothing imports train.py). torch and numpy are
imported inside the functions that need them, so a script can check a checkpoint file, take the out_dir lock (or fail)
before paying for those imports.
"""
import atexit
import errno
import json
import os
import random
import re
import socket
import sys
import time
import zipfile


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read, for a reason the user can act on: the message is one line."""


class LockError(ValueError):
    """out_dir is in use by another live process (or cannot be used at all): the message is one line."""


# ----------------------------------------------------------------------------- save and load

DISK_FULL = (errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC))


def disk_full(exc):
    """True when exc (or anything in its chain) is 'no space left' / 'quota exceeded'. torch.save wraps the OSError
    in a RuntimeError from its C++ writer ("enforce fail at inline_container.cc ... [Errno 28]"), so look down the
    chain and, failing that, at the text."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        if 'No space left on device' in str(exc) or 'Disk quota exceeded' in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def temp_path(path, pid=None):
    """The hidden temp file save_atomic writes before the rename: .<name>.<pid>.tmp beside path."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid() if pid is None else pid}.tmp")


def save_atomic(obj, path):
    """
    torch.save obj to path so that path always holds either the old or the new complete file: write a temp file in
    the same directory (same filesystem, so the rename is atomic), flush + fsync it, then os.replace over path.
    A crash or kill at any point leaves the previous checkpoint untouched (a kill -9 leaves a stray temp file, which
    remove_stale_temp_files() cleans up). A full disk raises CheckpointError (one line) with the temp file removed.
    """
    import torch
    directory = os.path.dirname(os.path.abspath(path))
    tmp = temp_path(path)
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, Exception) and disk_full(e):
            kept = (f"the previous {path} is kept unchanged" if os.path.exists(path)
                    else f"nothing was written to {path}")
            raise CheckpointError(f"disk full: no space left in {directory} to write {os.path.basename(path)}; "
                                  f"{kept}. Free some space there or use another --out_dir") from None
        raise
    try:   # make the rename itself durable (POSIX); not possible on every platform
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):   # exists but belongs to someone else / not a pid at all
        return pid > 0 and not isinstance(pid, bool)
    return True


def remove_stale_temp_files(directory):
    """Delete the .<name>.<pid>.tmp files that a save killed mid-write (kill -9, power loss) left in directory, when
    that pid is no longer running on this machine. Returns the names removed."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = re.fullmatch(r'\..+\.(\d+)\.tmp', name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            try:
                os.remove(os.path.join(directory, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def check_file(path):
    """The checks of load() that need no torch, so a script can refuse a missing or visibly damaged checkpoint in a
    fraction of a second: FileNotFoundError, or CheckpointError for a folder, an empty file, a zip archive without
    its central directory (torch.save writes zip archives; a truncated one loses the directory at its end), or a file
    that is neither a zip archive nor the pickle of torch's legacy format."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}; train one first (python train.py --out_dir=...) "
                                f"or start from scratch with --init_from=scratch")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    with open(path, 'rb') as f:
        head = f.read(4)
    if head.startswith(b'PK') and zipfile.is_zipfile(path):
        return
    if head.startswith(b'\x80'):   # pickle protocol 2+: torch's legacy (pre-1.6) format; torch.load judges it
        return
    reason = 'truncated' if head.startswith(b'PK') else 'empty' if not head else 'not a torch file'
    raise CheckpointError(f"the checkpoint at {path} is damaged ({reason}, {os.path.getsize(path):,} bytes) and "
                          f"cannot be loaded; {_damaged_advice(path)}")


def out_dir_problem(out_dir):
    """What stops sample.py or eval.py from reading out_dir/ckpt.pt, as one line (None: nothing): a missing or
    wrong folder, no checkpoint in it, or a damaged one (check_file)."""
    ckpt_path = os.path.join(out_dir, 'ckpt.pt')
    if not os.path.isdir(out_dir):
        what = "is a file, not a folder" if os.path.exists(out_dir) else "does not exist"
        return f"out_dir {out_dir} {what}; pass the --out_dir of a train.py run (the folder holding ckpt.pt)"
    if not os.path.exists(ckpt_path):
        return f"no checkpoint at {ckpt_path}; train one first (python train.py --out_dir={out_dir} ...)"
    try:
        check_file(ckpt_path)
    except CheckpointError as e:
        return str(e)
    return None


def load(path, map_location='cpu', required=('model',)):
    """
    Load a checkpoint written by train.py. weights_only=True: only tensors and plain Python values are unpickled
    (never loosen that: a checkpoint from elsewhere could run code). Missing file -> FileNotFoundError; a truncated,
    overwritten or foreign file -> CheckpointError, one line that says what the user can do. required: the keys
    the caller needs (a dict without them is not a checkpoint of ours).
    """
    import torch
    check_file(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as e:   # torch raises RuntimeError, UnpicklingError, EOFError, ... depending on the damage
        reason = 'truncated or not a torch file' if not disk_full(e) else 'unreadable'
        raise CheckpointError(f"the checkpoint at {path} is damaged ({reason}, {os.path.getsize(path):,} bytes) and "
                              f"cannot be loaded; {_damaged_advice(path)}") from None
    missing = [key for key in required if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a nanoPoly checkpoint (it lacks {', '.join(missing)}); "
                              f"{_damaged_advice(path)}")
    return ckpt


def load_model(path, device='cpu'):
    """(model in eval mode on device, checkpoint dict) from a train.py checkpoint, for sample.py and eval.py.
    FileNotFoundError, or CheckpointError (one line) for a damaged checkpoint or one written by another version of
    model.py."""
    from model import GPT, GPTConfig, upgrade_model_args
    ckpt = load(str(path), map_location='cpu', required=('model', 'model_args'))
    try:
        model = GPT(GPTConfig(**upgrade_model_args(ckpt['model_args'])), verbose=False)
        model.load_state_dict(ckpt['model'])
    except (TypeError, ValueError, RuntimeError) as e:   # settings or weights of another version of model.py
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"the checkpoint {path} does not fit this model.py ({first}); it was written by "
                              f"another version of the code") from None
    return model.to(device).eval(), ckpt


def _damaged_advice(path):
    best = os.path.join(os.path.dirname(path), 'ckpt_best.pt')
    if os.path.basename(path) != 'ckpt_best.pt' and os.path.exists(best):
        return (f"the best checkpoint {best} is a separate file: copy it over {path} to continue from it, "
                f"or start a new run in another --out_dir")
    return "start a new run in another --out_dir (or move this one away), or restore the file from a copy"


def clean_state_dict(state_dict):
    """Strip the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add, so any model can load the weights."""
    clean = {}
    for key, value in state_dict.items():
        for prefix in ('module.', '_orig_mod.'):
            while key.startswith(prefix):
                key = key[len(prefix):]
        clean[key.replace('._orig_mod.', '.')] = value
    return clean

# ----------------------------------------------------------------------------- RNG state


def seed_everything(seed):
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)   # seeds every CUDA device too


def get_rng_state():
    """Every RNG a training step may touch, as tensors and plain values (loadable with weights_only=True)."""
    import numpy as np
    import torch
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
    import numpy as np
    import torch
    random.setstate(state['python'])
    name, keys, pos, has_gauss, cached_gaussian = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])   # the current device (train.py sets it)

# ----------------------------------------------------------------------------- out_dir lock

LOCK_NAME = '.lock'


class DirLock:
    """
    Holds <path>/.lock for the life of the process (see lock_dir). The file records who holds it (pid, host, start
    time, command line) so a refused process can name the holder. Liveness comes from an flock on the file, which the
    kernel drops when the holder dies in any way (kill -9 included), so a dead run's lock never blocks: the next run
    finds the file unlocked and takes it over. Where flock is unavailable, a dead pid on this host means stale.
    """

    def __init__(self, path, what):
        self.dir, self.what = os.path.abspath(path), what
        self.path = os.path.join(self.dir, LOCK_NAME)
        self.note = None   # set when a stale lock of a dead process was taken over
        self._fd = None
        self._created_dir = not os.path.exists(self.dir)   # removed again at release if the run left it empty
        try:
            os.makedirs(self.dir, exist_ok=True)
        except FileExistsError:
            raise LockError(f"out_dir {path} exists and is a file, not a folder; pick another --out_dir") from None
        except OSError as e:
            raise LockError(f"cannot create out_dir {path}: {e.strerror}; pick another --out_dir") from None
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise LockError(f"out_dir {path} is not writable by this user; pick another --out_dir")
        try:
            self._acquire()
        except OSError as e:
            raise LockError(f"cannot write the lock file {self.path}: {e.strerror}; pick another --out_dir") from None
        atexit.register(self.release)   # normal exit, sys.exit and an uncaught KeyboardInterrupt all run atexit

    def _record(self):
        return {'pid': os.getpid(), 'host': socket.gethostname(), 'what': self.what,
                'started': time.strftime('%Y-%m-%d %H:%M:%S'), 'command': ' '.join([sys.executable] + sys.argv)}

    def _read(self, fd=None):
        try:
            if fd is None:
                with open(self.path) as f:
                    text = f.read()
            else:
                os.lseek(fd, 0, os.SEEK_SET)
                text = os.read(fd, 65536).decode('utf-8', 'replace')
            record = json.loads(text)
            return record if isinstance(record, dict) else {}
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder):
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
               f"{holder.get('command', '?')}") if holder else "a process that is still writing its lock record"
        raise LockError(f"{self.dir} is in use by another {holder.get('what') or 'process'} ({who}); wait for it to "
                        f"finish or stop it, or use another --out_dir")

    def _acquire(self):
        try:
            import fcntl
        except ImportError:   # no flock (Windows): exclusive create, and a dead pid on this host is stale
            fcntl = None
        for _ in range(20):   # retries only when another process replaced the file under us
            if fcntl is None:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    holder = self._read()
                    if (holder.get('host') == socket.gethostname() and isinstance(holder.get('pid'), int)
                            and not _pid_alive(holder['pid'])):
                        os.remove(self.path)
                        self.note = f"took over the stale lock of pid {holder['pid']} (no longer running)"
                        continue
                    self._refuse(holder)
                previous = {}
            else:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = self._read(fd)
                    os.close(fd)
                    self._refuse(holder)
                try:   # a releasing holder unlinks the file: make sure we locked the file that is there now
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                previous = self._read(fd)
                if previous.get('pid') is not None and previous.get('pid') != os.getpid():
                    self.note = (f"took over the stale lock of pid {previous.get('pid')} ({previous.get('what')}, "
                                 f"started {previous.get('started')}), which ended without releasing it")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(self._record()) + '\n').encode())
            self._fd = fd
            return
        raise LockError(f"could not take the lock {self.path}: other processes keep replacing it")

    def release(self):
        """Remove the lock file and drop the lock (idempotent). Unlink first, while still holding it, so a process
        waiting on the old file sees it replaced and retries instead of sharing the folder."""
        if self._fd is None:
            return
        try:
            if self._read(self._fd).get('pid') == os.getpid():
                os.remove(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        if self._created_dir:
            try:
                os.rmdir(self.dir)   # only succeeds when empty: a run that failed before writing leaves no folder
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_dir(path, what):
    """
    Take the out_dir lock: returns a DirLock (also a context manager) that holds <path>/.lock until release() or the
    end of the process. Creates path if needed. what names the caller in the record ('train.py', 'compare.py').
    Raises LockError (a ValueError, one line) when another live process holds it, naming that process and what to do,
    or when path is a file / cannot be created / is not writable. A lock left by a dead process is taken over; then
    DirLock.note says so (print it if you like).
    """
    return DirLock(path, what)

# ----------------------------------------------------------------------------- resuming a training run


def load_weights(model, state_dict, path):
    """model.load_state_dict with one line when the weights were written by another version of model.py."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:   # missing/unexpected keys or shapes
        from training.processes import fail
        fail(f"the weights in {path} do not fit this model.py ({str(e).strip().splitlines()[0]}); it was written by "
             f"another version of the code: train a new run in another --out_dir")


def restore_training(ckpt, optimizer, scaler, rank, world_size, say=print):
    """Put a resumed run's optimizer, loss scaler and this rank's RNGs back. Returns its progress: (iter_num, tokens,
    best_val_loss, best_iter, val_loss of these weights, elapsed_s)."""
    optimizer.load_state_dict(ckpt['optimizer'])
    if scaler.is_enabled() and ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    if len(ckpt['rng']) == world_size:
        set_rng_state(ckpt['rng'][rank])
    else:
        say(f"note: checkpoint saved with {len(ckpt['rng'])} processes, now {world_size}: dropout masks are "
            f"re-seeded, so the run is not a bitwise continuation (batches still are)")
    return (ckpt['iter_num'], ckpt['tokens'], ckpt['best_val_loss'], ckpt.get('best_iter'), ckpt.get('val_loss'),
            ckpt.get('elapsed_s', 0.0))
