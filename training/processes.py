"""
Which process this is and where it runs, for train.py: torchrun's variables, the device and dtype, the process group
(whose rendezvous gives up after ddp_timeout seconds with a message instead of hanging), the Ctrl-C/SIGTERM stop
request, and the one-line messages (only the global rank 0 speaks: every rank fails the same way).

torchrun sets RANK (global, 0 .. WORLD_SIZE-1), LOCAL_RANK (the process's index on its own node, which picks its GPU),
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. On several nodes every node has a LOCAL_RANK 0, so
anything that must happen once (printing, writing out_dir) keys on RANK == 0, never on LOCAL_RANK.
"""
import os
import signal
import sys

TORCHRUN_VARIABLES = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


def is_master():
    return os.environ.get('RANK', '0').strip() in ('0', '')


def say(message):
    if is_master():
        print(message, flush=True)


def fail(message, code=2, everyone=False, prefix='error: '):
    """One clear line for a person, then exit (2 = bad settings, 1 = the run went wrong, 3 = it diverged)."""
    distributed = sys.modules.get('torch.distributed')
    grouped = distributed is not None and distributed.is_available() and distributed.is_initialized()
    if grouped:
        distributed.destroy_process_group()
    if everyone or is_master():
        print(prefix + message, file=sys.stderr, flush=True)
    if grouped:
        exit_after_process_group(code)
    sys.exit(code)


def exit_after_process_group(code):
    """Exit with code, skipping the interpreter's teardown, in a process that had a process group. Seen in CI and
    once in 40 torchrun runs of the DDP test here (none in 40 since; too few to prove the cure): a rank that had
    finished aborted at exit with "terminate called without an active exception" (SIGABRT). The likely cause:
    destroy_process_group drops torch's own reference to the gloo group, but the DDP wrapper still holds it, and its
    threads were then torn down during interpreter finalization. The atexit handlers (the checkpoint lock's release,
    wandb's finish) run first and the output is flushed, as a normal exit would."""
    import atexit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def torchrun_env():
    """(ddp, rank, local_rank, world_size, nodes) from torchrun's variables; (False, 0, 0, 1, 1) when none is set.
    A partial set (a stray RANK=0 in the shell, say) fails naming what is missing."""
    present = [name for name in TORCHRUN_VARIABLES if os.environ.get(name)]
    if not present:
        return False, 0, 0, 1, 1
    missing = [name for name in TORCHRUN_VARIABLES if name not in present]
    if missing:
        fail(f"torchrun's variables are set only in part ({', '.join(f'{n}={os.environ[n]}' for n in present)}; "
             f"missing {', '.join(missing)}): launch with torchrun (torchrun --standalone --nproc_per_node=N train.py "
             f"...), or unset {', '.join(present)} to train in one process", everyone=True)
    try:
        rank, local_rank, world_size = (int(os.environ[name]) for name in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
        local_world_size = int(os.environ.get('LOCAL_WORLD_SIZE') or world_size)
    except ValueError:
        fail(f"torchrun's variables must be whole numbers (RANK={os.environ['RANK']}, LOCAL_RANK="
             f"{os.environ['LOCAL_RANK']}, WORLD_SIZE={os.environ['WORLD_SIZE']}): launch with torchrun", everyone=True)
    if not (0 <= rank < world_size and 0 <= local_rank < local_world_size <= world_size):
        fail(f"torchrun's variables do not fit together (RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE="
             f"{world_size}): launch with torchrun", everyone=True)
    return True, rank, local_rank, world_size, max(1, world_size // local_world_size)


def init_process_group(device_type, world_size, timeout_s):
    """Join the other processes (nccl on CUDA, gloo elsewhere). The rendezvous waits at most timeout_s for all
    world_size processes (torch's own default is 30 minutes of silence), then fails with one line."""
    import datetime
    import torch.distributed as dist
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend='nccl' if device_type == 'cuda' else 'gloo',
                                timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError, OSError) as e:   # DistStoreError / DistNetworkError are RuntimeErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(f"the {world_size} processes did not all meet at {where} within ddp_timeout={timeout_s:g} s ({first}): "
             f"start every process (torchrun --nproc_per_node=N, on every node with its --node_rank), or unset "
             f"{', '.join(TORCHRUN_VARIABLES)} to train in one process", everyone=True)


def choose_device(device, dtype, local_rank):
    """(device, device_type, dtype, autocast context) with 'auto' resolved; under DDP each process of a node takes
    GPU LOCAL_RANK. float32 needs no autocast; bf16/fp16 autocast keeps fp32 master weights."""
    from contextlib import nullcontext
    import torch
    from configurator import device_problem
    if device_problem(device):
        fail(device_problem(device))
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    if local_rank is not None and device.startswith('cuda'):
        device = f'cuda:{local_rank}'
    if device.startswith('cuda') and torch.device(device).index is not None:
        # the current device: bare .cuda() calls and the CUDA RNG state refer to it. Plain 'cuda' is already the
        # current device, and set_device refuses a device without an index (torch 2.11, measured on an H200)
        torch.cuda.set_device(device)
    device_type = 'cuda' if device.startswith('cuda') else device
    if dtype == 'auto':
        dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if device_type == 'cuda' else 'float32'
    if dtype == 'bfloat16' and device_type == 'cuda' and not torch.cuda.is_bf16_supported():
        fail(f"dtype='bfloat16' is not supported by {torch.cuda.get_device_name()}; use --dtype=float16 (or auto)")
    torch.backends.cuda.matmul.allow_tf32 = True   # on Ampere+ "float32" matmuls run in TF32 (as nanoGPT does)
    torch.backends.cudnn.allow_tf32 = True
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type=device_type, dtype=ptdtype)
    return device, device_type, dtype, ctx


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the training loop to finish the current iteration, evaluate, save and exit;
    a second one stops at once without saving (KeyboardInterrupt). Under DDP the ranks agree at the next log point."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGINT, self.request)
        signal.signal(signal.SIGTERM, self.request)

    def request(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if is_master():
            print(f"\n{signal.Signals(signum).name}: stopping after this iteration and saving a checkpoint (press "
                  f"Ctrl-C again to stop at once without saving)", file=sys.stderr, flush=True)

    def exit_interrupted(self, last_line, leave):
        """The last line of a stopped run, then exit as an interrupted program does (status 130 in a shell), so a
        loop of runs in a script stops too."""
        if sys.modules['torch.distributed'].is_initialized():
            leave(130, last_line)
        if is_master():
            print(last_line, file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        sys.excepthook = lambda *exc: None
        raise KeyboardInterrupt


def leave(code=0, last_line=None):
    """Rank 0 prints the run's last line (stdout when it finished, stderr otherwise); exit with code. Under DDP every
    rank first waits for the others (a rank tearing gloo down while another still talks to it can abort the process
    at exit: "terminate called without an active exception"), then exits without the interpreter's teardown."""
    if last_line and is_master():
        print(last_line, file=sys.stdout if code == 0 else sys.stderr, flush=True)
    distributed = sys.modules.get('torch.distributed')
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.barrier()
        distributed.destroy_process_group()
        exit_after_process_group(code)
    sys.exit(code)
