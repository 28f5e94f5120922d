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
