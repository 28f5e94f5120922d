"""
Peak FLOP/s of the device we train on, for MFU = achieved FLOP/s / peak FLOP/s (train.py, bench.py).

nanoGPT divides by an A100's 312 TFLOP/s whatever the hardware. Here:
- CUDA: a table of dense (no 2:4 sparsity) tensor-core peaks from NVIDIA's datasheets, bf16 with fp32 accumulate
  unless noted; an unknown GPU gives None (MFU left empty) rather than a wrong number.
- CPU: the best float32 matmul throughput measured on this machine (cached, the highest value seen kept), i.e. MFU on
  CPU means "fraction of what torch's own matmul reaches here", which is the honest ceiling for a CPU run. Several
  processes on one CPU (DDP with gloo) share it: they measure at the same time and their throughputs add up, so the
  peak is that of the CPU, not one process's peak times the number of processes. A run that goes faster than the
  cached peak re-measures it (train.py), and an MFU above 100% is never reported.
"""
import json
import math
import os
import platform
import re
import statistics
import sys
import time

# (regex on torch.cuda.get_device_name(), dense peak FLOP/s). First match wins, so specific names come first.
# \b keeps 'A10' from matching 'A100' or 'A10G' (whose peak we could not verify, so it is left unknown).
GPU_PEAK_FLOPS = [
    (r'H200', 989e12),                    # H200 SXM, bf16 dense
    (r'H100.*NVL', 835e12),               # H100 NVL, bf16 dense
    (r'H100.*PCIe', 756e12),              # H100 PCIe, bf16 dense
    (r'H100|H800', 989e12),               # H100 SXM ("NVIDIA H100 80GB HBM3"), bf16 dense
    (r'A100|A800', 312e12),               # A100 (SXM and PCIe), bf16 dense
    (r'L40S', 362e12),                    # L40S, bf16 dense
    (r'\bL4\b', 121e12),                  # L4, bf16 dense
    (r'\bA10\b', 125e12),                 # A10, bf16 dense
    (r'RTX 4090', 165e12),                # GeForce RTX 4090, bf16/fp16 with fp32 accumulate (330 with fp16 acc)
    (r'RTX 3090', 71e12),                 # GeForce RTX 3090, bf16 with fp32 accumulate
    (r'V100', 125e12),                    # V100 SXM2, fp16 (no bf16: dtype='auto' picks float16 there)
    (r'\bT4\b', 65e12),                   # T4, fp16 (no bf16)
]

def cpu_seconds():
    """(busy CPU seconds of the whole machine since boot, CPU seconds of this process) on Linux, else None. Their
    difference over a stretch of wall time is what OTHER processes used, in cores (the load average cannot tell our
    own threads from other people's jobs): a speed measured while it is well above 0 is not a quiet machine's."""
    try:
        with open('/proc/stat') as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    busy = sum(fields[:8]) - fields[3] - fields[4]
    own = os.times()
    return busy / os.sysconf('SC_CLK_TCK'), own.user + own.system


def process_cpu_seconds(pid):
    """CPU seconds (user + system, all threads) process pid has used so far, from /proc/<pid>/stat; None elsewhere or
    once it is gone. bench.py adds its variants' processes to its own, so that they are not "other processes"."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()   # after the command name, which may hold spaces
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')   # utime, stime: fields 14 and 15


def gpu_peak_flops(device_name):
    """Dense tensor-core peak FLOP/s for a CUDA device name, or None when the GPU is not in the table."""
    for pattern, flops in GPU_PEAK_FLOPS:
        if re.search(pattern, device_name):
            return flops
    return None


def _cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_cpu_matmul_flops(sizes=(1024, 2048), reps=5, min_seconds=0.05):
    """Best float32 (n, n) @ (n, n) throughput in FLOP/s over a few sizes, with the current torch thread count.
    Each of the reps samples times enough back-to-back matmuls to last min_seconds (one 1024 matmul takes ~10 ms on a
    fast core, too short to time alone against the clock and scheduler noise); ~2 s in all on a 2-core CPU.
    Best, not mean: on a machine shared with other jobs the fastest sample is the closest to the peak."""
    import torch
    best = 0.0
    for n in sizes:
        # a private generator: drawing from the global one would shift the training run's dropout masks
        generator = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
        t0 = time.perf_counter()
        a @ b   # warm-up (thread pool start, allocation), and an estimate of one matmul's time
        count = max(1, math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-6)))
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(count):
                a @ b
            best = max(best, count * 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def cpu_peak_cache_path():
    from data.sources import cache_dir   # the project's one cache folder ($NANOPOLY_CACHE, else ~/.cache/nanopoly)
    return os.path.join(cache_dir(), 'cpu_peak.json')


def cpu_peak_key(processes=1):
    """Cache key: the peak depends on the CPU, the threads per process, how many processes share it, and torch."""
    import torch
    shared = f" x {processes} processes" if processes > 1 else ""
    return f"{_cpu_name()} | threads={torch.get_num_threads()}{shared} | torch={torch.__version__}"


def _read_cache(cache_path):
    try:
        with open(cache_path) as f:
            cache = json.load(f)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):   # missing or damaged: measured again
        return {}


def cached_cpu_peak(processes=1, cache_path=None):
    """The cached peak for this CPU layout, or None when it was never measured."""
    value = _read_cache(cache_path or cpu_peak_cache_path()).get(cpu_peak_key(processes))
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def store_cpu_peak(flops, processes=1, cache_path=None):
    """Remember a measured peak; the cache keeps the highest value ever seen for the key (a measurement taken while
    other jobs load the machine comes out low; a later quiet one replaces it). Returns the value now cached."""
    cache_path = cache_path or cpu_peak_cache_path()
    cache, key = _read_cache(cache_path), cpu_peak_key(processes)
    old = cache.get(key)
    cache[key] = max(flops, old) if isinstance(old, (int, float)) else flops
    try:   # a read-only home directory only costs us the cache
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        tmp = f"{cache_path}.{os.getpid()}.tmp"
        with open(tmp, 'w') as f:
            json.dump(cache, f, indent=1)
        os.replace(tmp, cache_path)
    except OSError:
        pass
    return cache[key]


def cpu_peak_flops(cache_path=None, remeasure=False):
    """Measured float32 matmul peak of this CPU for one process, cached per (cpu model, thread count, torch version).
    remeasure=True measures again (a run went faster than the cached peak allows) and keeps the higher value."""
    peak = None if remeasure else cached_cpu_peak(1, cache_path)
    if peak is None:
        peak = store_cpu_peak(measure_cpu_matmul_flops(), 1, cache_path)
    return peak


def device_peak_flops(device):
    """(peak FLOP/s or None, a short description) for a torch device string such as 'cpu', 'cuda', 'cuda:1', 'mps'."""
    import torch
    if device.startswith('cuda'):
        name = torch.cuda.get_device_name(torch.device(device))
        peak = gpu_peak_flops(name)
        return peak, (f"{name}: {peak / 1e12:.0f} TFLOP/s dense peak" if peak else
                      f"{name} is not in peak_flops.GPU_PEAK_FLOPS, MFU left empty (add its dense peak there)")
    if device == 'cpu':
        peak = cpu_peak_flops()
        return peak, f"CPU float32 matmul peak measured here: {peak / 1e9:.1f} GFLOP/s (cached in {cpu_peak_cache_path()})"
    return None, f"no peak known for device '{device}', MFU left empty"


def mfu(flops_per_token, tokens_per_sec, peak_flops, num_devices=1):
    """Model FLOPs utilisation, achieved / peak; None when the peak is unknown. peak_flops is per device (a GPU);
    for CPU processes that share one CPU pass the CPU's shared peak and num_devices=1. The caller decides what to do
    with a value above 1 (the peak is then wrong: train.py re-measures a CPU peak and leaves MFU empty otherwise)."""
    if not peak_flops:
        return None
    return flops_per_token * tokens_per_sec / (peak_flops * num_devices)


class Speedometer:
    """Speed and MFU of train.py's logged periods, with the sanity check that keeps an MFU above 100% out of the logs
    (on CPU the cached peak is measured again first: it was measured on a busy machine), and the steady-state figures
    for summary.json. dist: torch.distributed under DDP (the CPU peak is measured by all ranks together), else None."""

    def __init__(self, flops_per_token, tokens_per_iter, device, world_size, nodes=1, dist=None, say=print):
        self.flops_per_token, self.tokens_per_iter = flops_per_token, tokens_per_iter
        self.device, self.world_size, self.nodes, self.dist, self.say = device, world_size, nodes, dist, say
        self.master = dist is None or dist.get_rank() == 0
        self.periods = []   # (first iteration, last iteration, ms per iteration)
        self.remeasured, self.note_shown = False, False
        self.peak, self.peak_devices = None, world_size
        self.peak_note = f"no peak known for device '{device}', MFU left empty"
        if device == 'cpu':
            self.peak, self.peak_devices = self.shared_cpu_peak(), 1
            self.peak_note = (f"CPU float32 matmul peak measured here: {self.peak / 1e9:.1f} GFLOP/s"
                              f"{f' for {world_size} processes' if world_size > 1 else ''}"
                              f"{f' (cached in {cpu_peak_cache_path()})' if nodes == 1 else ''}")
        elif self.master:
            self.peak, self.peak_note = device_peak_flops(device)

    def shared_cpu_peak(self, remeasure=False):
        """Float32 matmul peak of the CPU(s) this run uses. Under DDP every rank measures at the same time and the
        throughputs add up: processes sharing one CPU share its peak (and those on other nodes add theirs). Collective
        under DDP; cached per layout (one node only), highest value kept."""
        import torch
        dist, one_node = self.dist, self.nodes == 1
        known = cached_cpu_peak(self.world_size) if self.master and one_node and not remeasure else None
        value = torch.tensor([known or 0.0], dtype=torch.float64)
        if dist:
            dist.broadcast(value, 0)
        if value.item() == 0.0:
            if dist:
                dist.barrier()   # start together, so each rank measures while the others do
            value = torch.tensor([measure_cpu_matmul_flops()], dtype=torch.float64)
            if dist:
                dist.all_reduce(value)
            if self.master and one_node:
                value.fill_(store_cpu_peak(value.item(), self.world_size))
            if dist:
                dist.broadcast(value, 0)
        return value.item()

    def mfu(self, tokens_per_sec):
        """MFU at this speed, or None when the peak is unknown or would give more than 100% (then it is wrong)."""
        value = mfu(self.flops_per_token, tokens_per_sec, self.peak, self.peak_devices)
        if value is not None and value > 1 and self.device == 'cpu' and not self.remeasured:
            self.peak, self.remeasured = self.shared_cpu_peak(remeasure=True), True
            value = mfu(self.flops_per_token, tokens_per_sec, self.peak, self.peak_devices)
            self.say(f"note: the run went faster than the cached CPU peak; re-measured it: "
                     f"{self.peak / 1e9:.1f} GFLOP/s")
        if value is not None and value > 1:
            if not self.note_shown:
                fix = (f"other work loaded the CPU while it was measured; delete {cpu_peak_cache_path()} to measure "
                       f"it again on a quiet machine" if self.device == 'cpu' else "fix the peak in peak_flops.py")
                self.say(f"note: MFU would be {value:.0%} against a peak of {self.peak / 1e12:.3g} TFLOP/s, so that "
                         f"peak is wrong for this machine; MFU is left empty ({fix})")
                self.note_shown = True
            return None
        return value

    def period(self, seconds_per_iter, first_iter, last_iter):
        """Record one logged period (iterations first_iter+1 .. last_iter); returns (tokens/s, MFU or None)."""
        self.periods.append((first_iter, last_iter, seconds_per_iter * 1000))
        tokens_per_sec = self.tokens_per_iter / seconds_per_iter
        return tokens_per_sec, self.mfu(tokens_per_sec)

    def summary(self, start_iter, warmup=5):
        """The run's speed for summary.json: the median ms per iteration over the logged periods after the first
        `warmup` iterations of this process (torch.compile, allocator and cache warm-up), and the tokens/s and MFU of
        that same figure. A run too short to leave the warm-up out says so (speed_includes_warmup)."""
        steady = [p for p in self.periods if p[0] >= start_iter + warmup]
        includes_warmup = not steady
        steady = steady or self.periods
        if not steady:
            return {'tokens_per_sec': None, 'ms_per_iter': None, 'mfu': None, 'speed_iters': None,
                    'speed_includes_warmup': None}
        ms_per_iter = statistics.median(p[2] for p in steady)
        tokens_per_sec = self.tokens_per_iter * 1000 / ms_per_iter
        return {'tokens_per_sec': tokens_per_sec, 'ms_per_iter': ms_per_iter, 'mfu': self.mfu(tokens_per_sec),
                'speed_iters': [steady[0][0] + 1, steady[-1][1]], 'speed_includes_warmup': includes_warmup}


def other_load_cores(load_start, loop_start, dist=None, device='cpu'):
    """CPU cores that OTHER processes kept busy since (load_start = cpu_seconds(), loop_start = time.time()), on
    average: speed figures taken while it is well above 0 are not comparable with those of a quiet machine. None
    without /proc/stat. Collective under DDP (the other ranks are this run, not "other processes")."""
    import torch
    load_end, seconds = cpu_seconds(), time.time() - loop_start
    own = torch.tensor([load_end[1] - load_start[1] if load_start and load_end else 0.0], device=device)
    if dist:
        dist.all_reduce(own)
    if not (load_start and load_end and seconds > 0):
        return None
    return round(max(0.0, (load_end[0] - load_start[0] - own.item()) / seconds), 3)


def peak_memory_mb(device):
    """Peak memory of this process: CUDA's allocator peak on a GPU, else the resident set's peak."""
    import torch
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource   # ru_maxrss is in KB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == 'darwin' else 1024)
