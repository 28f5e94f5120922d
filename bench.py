"""
Speed and memory of every activation, and of MoE against dense, measured side by side in one process.

    python bench.py                                   # CPU: the default config below -> out-bench/bench.md
    python bench.py --record=True                     # the same, recorded: the CPU section of BENCHMARKS.md
    python bench.py --repeats=3 --activations=gelu,polynorm --modes=eager
    python bench.py config/bench_gpu.py               # GPU: GPT-2-small size, bf16 autocast + torch.compile
    python bench.py --profile=polynorm                # torch.profiler table of one variant's training step
    python bench.py --activations=gelu,polynorm --poly_orders=1,2,3,4,5,6 --moe_activations=   # cost of the order r
    python bench.py --activations=gelu --modes=eager --moe_activations= --gen_new_tokens=500   # past block_size

Where the results go. Always to the terminal, and to at most one markdown file:
- by default out_file (out-bench/bench.md, ignored by git), so a quick or partial run never touches the recorded
  results;
- with --record=True to BENCHMARKS.md next to this file instead: the section of this device kind (cpu or cuda) is
  replaced, every other line of BENCHMARKS.md is kept. It refuses, in one line, a run that is not the full recording
  configuration of its device (CPU: the defaults below; CUDA: config/bench_gpu.py) before it starts, and one during
  whose timed rounds other processes used more than QUIET_OTHER_LOAD CPU cores (its results then go to out_file);
  --force_record=True records such a run anyway, and its section says what was wrong with it.
The last line printed names the file written.

What runs. Every activation in --activations in every mode in --modes ('eager', 'compiled' = torch.compile), and MoE
rows for --moe_activations in --moe_modes, which is empty by default = the same modes as --modes. So --modes=eager
means no torch.compile at all. With --poly_orders=1,2,... every PolyCom activation runs once per order (rows
'polynorm-r2 eager', ...), so the cost of the order r is measured in one run, each order paired with GELU per round.
And generation rows for --gen_activations: GPT.generate (sample.py's settings) with and without the KV cache, on a
model of its own (the gen_ knobs: the README's char model on CPU, GPT-2 small in config/bench_gpu.py); both are timed
in every round, one after the other, and the speed-up is the median of the per-round ratios.

For every variant (activation x eager/compiled, plus MoE) it builds a model and its AdamW optimizer, warms it up, then
times training steps (forward + backward + AdamW step + zero_grad) ROUND-ROBIN: repeat r times variant 1, 2, ..., n
before repeat r+1 starts, with the starting variant rotated each repeat. A burst of load from another process then
slows all variants of one repeat alike, and the ratio of two variants measured in the same repeat cancels it. Each
variant lives in a process of its own, as a model does in train.py (--isolate; VariantProcess in lab/bench_variants.py
says why), and the modes are timed one after the other, each with only its own variants alive. We report
the median step time over repeats, the median of the per-repeat ratios to GELU (same mode) and, for the targets, the
quartiles of those ratios: a limit that lies between the quartiles is marked borderline.

MFU = model FLOPs per token (model.flops_per_token()) x tokens/s / peak. The peak on CPU is a float32 matmul measured
in every repeat of this run (peak_flops.measure_cpu_matmul_flops, interleaved like the variants); on CUDA it is the
datasheet table in training/peak_flops.py. Bytes saved for backward are counted over one eager forward of the whole model with
torch.autograd.graph.saved_tensors_hooks: unique storages, parameters and buffers excluded (they live anyway), divided by B*T.

Performance targets live here (TARGETS), never in timed unit tests.
"""
import os
import statistics
import sys
import time

import torch

from configurator import ConfigError, parse_config
from lab.bench_variants import Generation, Variant, VariantProcess, generation_config, keep_freed_memory_in_heap
from lab.bench_report import (QUIET_OTHER_LOAD, RECORD_HEADER, SCRATCH_HEADER, device_kind, machine_info,
                              print_results, write_markdown)
from model import MAX_POLY_ORDER, build_activation
from training.peak_flops import cpu_seconds, gpu_peak_flops, measure_cpu_matmul_flops

# -----------------------------------------------------------------------------
# default config values: the CPU config the targets are set for (a small character-level model, random token ids:
# speed does not depend on the data)
n_layer = 4
n_head = 4
n_embd = 256
block_size = 256            # T
batch_size = 16             # B
vocab_size = 65             # a fixed character vocabulary (Shakespeare's)
arch = 'modern'             # 'modern' (RMSNorm + RoPE) or 'gpt2'
poly_order = 3
poly_orders = ''            # comma-separated orders r, e.g. '1,2,3,4,5,6': every PolyCom activation (dense and MoE)
                            # once per order, rows named 'polynorm-r2 eager'; '' = poly_order alone, names without -r
activations = 'gelu,relu,relu2,swiglu,polyrelu,polynorm'   # comma-separated keys of model.ACTIVATIONS; gelu is the baseline
modes = 'eager,compiled'    # 'compiled' = torch.compile (inductor) of the model; the optimizer step stays eager
# mixture of experts against dense: the same model with every FFN an MoE of n_expert experts, top_k routed
moe_activations = 'gelu,polynorm'   # '' = no MoE rows
moe_modes = ''              # '' = the same as modes; else a subset of modes (e.g. 'compiled' to skip eager MoE rows)
n_expert = 8
top_k = 2
expert_hidden = 0           # 0 = the dense FFN's hidden width
# generation: GPT.generate with and without the KV cache, both timed in every round (batch 1, a 1-token prompt,
# sample.py's temperature 0.8 and top_k 200, eager). Its model has n_layer, n_head, block_size, arch and dtype above
# and the gen_ sizes below: on CPU the README's 4-layer d = 128 char model, in config/bench_gpu.py GPT-2 small
gen_activations = 'gelu,polynorm'   # comma-separated keys of model.ACTIVATIONS; '' = no generation rows
gen_new_tokens = 255        # 1 + 255 = block_size: all in the cache; more goes past block_size (the cache refills)
gen_n_embd = 128            # 0 = n_embd
gen_ffn_hidden = 576        # as train.py's ffn_hidden: 0 = the paper's width rule
gen_vocab_size = 84         # 0 = vocab_size
# measurement
repeats = 15                # timed rounds over all variants; medians and quartiles are reported
steps_per_repeat = 1        # training steps timed per variant per round (their mean is one sample)
warmup_steps = 2            # untimed steps per variant first (compile, allocator, thread pool)
warmup_at_once = 1          # variants in processes of their own that warm up (compile) side by side; 1 = in turn
matmul_peak = True          # CPU: measure the float32 matmul peak in every round (for MFU)
isolate = True              # every variant in a process of its own, as train.py runs one model (see VariantProcess)
# system
device = 'cpu'              # 'cpu', 'cuda', 'cuda:N'
dtype = 'float32'           # 'float32' or 'bfloat16' (autocast, fp32 master weights)
seed = 1337
malloc_keep_heap = False    # Linux CPU: glibc serves no tensor from fresh mmap pages (lab/bench_variants.py)
record = False              # True: write the results into this device's section of BENCHMARKS.md (the recorded ones)
force_record = False        # True: record even a run that is not the full recording config, or ran on a loaded machine
out_file = 'out-bench/bench.md'   # where an unrecorded run writes them; '' = terminal only
profile = ''                # an activation name: print a torch.profiler table of its training step and exit
profile_mode = 'eager'      # ... of its eager or compiled variant
profile_moe = False         # ... of its MoE variant
profile_steps = 3
# -----------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith('_') and isinstance(v, (bool, int, float, str))}

# Targets on the CPU config above: (figure key, description, limit, 'max' or 'min')
TARGETS = [
    (('step_ratio', 'polynorm', 'eager'), 'PolyNorm step time / GELU, eager', 1.05, 'max'),
    (('step_ratio', 'polynorm', 'compiled'), 'PolyNorm step time / GELU, compiled', 1.02, 'max'),
    (('step_ratio', 'polyrelu', 'eager'), 'PolyReLU step time / GELU, eager', 1.05, 'max'),
    (('step_ratio', 'polyrelu', 'compiled'), 'PolyReLU step time / GELU, compiled', 1.00, 'max'),
    (('saved_ratio', 'polynorm', None), 'bytes saved for backward, PolyNorm model / GELU model', 1.01, 'max'),
    (('moe_ratio', 'gelu', 'eager'), 'MoE 8e top-2 / dense step time, GELU, eager', 1.9, 'max'),
    (('moe_ratio', 'gelu', 'compiled'), 'MoE 8e top-2 / dense step time, GELU, compiled', 1.9, 'max'),
    (('moe_ratio', 'polynorm', 'eager'), 'MoE 8e top-2 / dense step time, PolyNorm, eager', 1.9, 'max'),
    (('moe_ratio', 'polynorm', 'compiled'), 'MoE 8e top-2 / dense step time, PolyNorm, compiled', 1.9, 'max'),
    (('mfu', 'gelu', 'eager'), 'GELU MFU against the measured matmul peak, eager', 0.75, 'min'),
    (('mfu', 'gelu', 'compiled'), 'GELU MFU against the measured matmul peak, compiled', 0.75, 'min'),
    (('gen_speedup', 'polynorm', None), 'PolyNorm generation tokens/s, KV cache / none', 3.0, 'min'),
]


def split_list(text):
    return [s.strip() for s in text.split(',') if s.strip()]


def check_config(cfg):
    """One clear line per mistake, before anything slow happens."""
    from model import ACTIVATIONS
    for key in ('activations', 'moe_activations', 'profile', 'gen_activations'):
        for name in split_list(cfg[key]):
            if name not in ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r} in --{key}; valid: {', '.join(ACTIVATIONS)}")
    if 'gelu' not in split_list(cfg['activations']):
        raise ValueError("--activations must include gelu: every ratio is taken against GELU measured in the same run")
    for key in ('modes', 'moe_modes', 'profile_mode'):
        for mode in split_list(cfg[key]):
            if mode not in ('eager', 'compiled'):
                raise ValueError(f"unknown mode {mode!r} in --{key}; valid: eager, compiled")
    check_poly_orders(cfg)
    if not split_list(cfg['modes']):
        raise ValueError("--modes is empty; use eager, compiled or eager,compiled")
    outside = [m for m in split_list(cfg['moe_modes']) if m not in split_list(cfg['modes'])]
    if outside:
        raise ValueError(f"--moe_modes={cfg['moe_modes']} asks for {','.join(outside)}, which --modes={cfg['modes']} "
                         f"leaves out; --modes decides what runs: widen it, or leave --moe_modes empty to follow it")
    if cfg['dtype'] not in ('float32', 'bfloat16'):
        raise ValueError(f"dtype must be float32 or bfloat16, got {cfg['dtype']!r}")
    if cfg['device'].startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f"device={cfg['device']!r} but torch.cuda.is_available() is False; use --device=cpu")
    for key in ('repeats', 'steps_per_repeat', 'batch_size', 'block_size', 'warmup_at_once'):
        if cfg[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg['gen_new_tokens'] < 1:
        raise ValueError(f"gen_new_tokens must be >= 1, got {cfg['gen_new_tokens']}")
    for name in split_list(cfg['gen_activations']):
        generation_config(cfg, name)   # GPTConfig's own one-line ValueError, e.g. gen_n_embd not divisible by n_head
    if cfg['force_record'] and not cfg['record']:
        raise ValueError("--force_record=True only applies to a recording: add --record=True, or drop --force_record")


def takes_order(activation):
    """True for the PolyCom activations: their module has an order r. The others ignore --poly_order."""
    return hasattr(build_activation(activation), 'order')


def check_poly_orders(cfg):
    for text in split_list(cfg['poly_orders']):
        if not text.isdigit() or not 1 <= int(text) <= MAX_POLY_ORDER:
            raise ValueError(f"--poly_orders={cfg['poly_orders']}: {text!r} is not an order from 1 to {MAX_POLY_ORDER}")
    named = split_list(cfg['activations']) + split_list(cfg['moe_activations'])
    if cfg['poly_orders'] and not any(takes_order(a) for a in named):
        raise ValueError(f"--poly_orders applies to PolyCom activations (polynorm, polyrelu, ...), and "
                         f"--activations={cfg['activations']} --moe_activations={cfg['moe_activations']} name none")


def orders_of(cfg, activation):
    """The orders activation is measured at: each of --poly_orders for a PolyCom activation, else [None] (a
    non-PolyCom activation has no order; with --poly_orders empty every variant builds at poly_order, unnamed)."""
    if cfg['poly_orders'] and takes_order(activation):
        return [int(r) for r in split_list(cfg['poly_orders'])]
    return [None]


# -----------------------------------------------------------------------------
# The measurement


def moe_modes_of(cfg):
    """The modes of the MoE rows: --moe_modes, or every mode of --modes when it is empty."""
    return split_list(cfg['moe_modes']) or split_list(cfg['modes'])


def variant_specs(cfg):
    """(activation, mode, moe, order) of every row, in the order of the table: the dense rows of each mode, then the
    MoE rows of each mode."""
    specs = [(a, m, False, r) for m in split_list(cfg['modes']) for a in split_list(cfg['activations'])
             for r in orders_of(cfg, a)]
    return specs + [(a, m, True, r) for m in moe_modes_of(cfg) for a in split_list(cfg['moe_activations'])
                    for r in orders_of(cfg, a)]


def build_variants(cfg, mode=None):
    """One Variant per row (see variant_specs), or per row of one mode; with cfg['isolate'] each in a process of its
    own (VariantProcess, all started at once: their imports overlap)."""
    specs = [spec for spec in variant_specs(cfg) if mode in (None, spec[1])]
    if not cfg['isolate']:
        return [Variant(cfg, *spec) for spec in specs]
    variants = [VariantProcess(cfg, spec) for spec in specs]
    for v in variants:
        v.wait_until_built()
    return variants


def run_benchmark(cfg, log=print):
    """Build, warm up and time every variant round-robin, one mode at a time. Returns a dict of results (see
    summarize).

    Each mode is a phase of its own: its models are built, timed for all rounds and freed before the next mode's are
    built. Every ratio is taken within one mode, so nothing pairs across phases, and only one mode's models take
    memory at a time (in their own processes, or with --isolate=False in this one; VariantProcess says why the
    default keeps each apart)."""
    check_config(cfg)
    load_before = load_average()
    torch.manual_seed(cfg['seed'])
    on_cuda = cfg['device'].startswith('cuda')
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    generations = [Generation(cfg, a) for a in split_list(cfg['gen_activations'])]
    log(f"{len(variant_specs(cfg))} variants, one mode at a time: "
        f"{', '.join(Variant.name_of(*spec) for spec in variant_specs(cfg))}"
        + ''.join(f", {g.name}" for g in generations))

    saved = {}   # (activation, order, moe) -> bytes per token; eager forward, mode does not matter
    timed = []   # every variant once timed, its model freed
    peaks = []   # CPU matmul peak, FLOP/s, one per round of every mode
    others, seconds = [], []   # per mode: CPU seconds other processes used (None: unknown), wall seconds timed
    t0 = time.perf_counter()
    for phase, mode in enumerate(split_list(cfg['modes'])):
        variants = build_variants(cfg, mode)
        for v in variants:
            if (v.activation, v.order, v.moe) not in saved:
                saved[(v.activation, v.order, v.moe)] = v.saved_bytes_per_token()
        warm_up(cfg, variants, generations if phase == 0 else [], log)
        mode_others, mode_seconds, mode_peaks = time_rounds(cfg, variants, generations if phase == 0 else [], log)
        others.append(mode_others), seconds.append(mode_seconds)
        peaks += [p for p in mode_peaks if p]
        for v in variants:
            v.release()
        timed += variants
    order = {spec: i for i, spec in enumerate(variant_specs(cfg))}
    timed.sort(key=lambda v: order[v.spec])
    results = summarize(cfg, timed, saved, peaks, time.perf_counter() - t0, generations)
    results['load_before'] = load_before[0] if load_before else None
    if None not in others:   # CPU time of everything else on the machine, in cores, while we timed
        results['other_load'] = max(0.0, sum(others) / sum(seconds))
    return results


def warm_up(cfg, variants, generations, log):
    """Untimed steps (compile, allocator, thread pool), and the peak memory of one step on CUDA. Variants in processes
    of their own warm up cfg['warmup_at_once'] at a time: on an H200 the compiles, in turn, took 20-36 s each and used
    up the GPU check's time; side by side they share its 16 cores. Nothing is timed until every variant is warm."""
    at_once = cfg['warmup_at_once'] if cfg['isolate'] else 1
    for first in range(0, len(variants), at_once):
        group = variants[first:first + at_once]
        for v in group:
            v.start_warm_up(cfg['warmup_steps'])
        for v in group:
            seconds = v.finish_warm_up()
            log(f"warm-up {v.name}: {seconds:.1f} s" + (f" (side by side with {len(group) - 1} more)"
                                                         if len(group) > 1 else ''))
    for g in generations:   # a few tokens each way: the first calls allocate and load kernels
        g.generate(True, 8), g.generate(False, 8)


def time_rounds(cfg, variants, generations, log):
    """Time every variant cfg['repeats'] times, round-robin, each round starting one variant later; on CPU also the
    float32 matmul peak of each round (v.peaks, paired with v.times for MFU). Returns (CPU seconds other processes
    used meanwhile or None, wall seconds, the rounds' matmul peaks)."""
    mode = variants[0].mode if variants else ''
    log(f"timing {cfg['repeats']} rounds of the {mode} variants")
    busy_before, ours_before, t_rounds = cpu_seconds(), variants_cpu_seconds(variants), time.perf_counter()
    peaks = []
    for r in range(cfg['repeats']):
        shift = r % len(variants)   # rotate the order so no variant always runs right after the same neighbour
        for v in variants[shift:] + variants[:shift]:
            v.times.append(v.timed_steps(cfg['steps_per_repeat']))
        for g in generations:
            g.time_round(cached_first=r % 2 == 0)
        peak = measure_cpu_matmul_flops(reps=3) if cfg['matmul_peak'] and not cfg['device'].startswith('cuda') \
            else None
        peaks.append(peak)
        for v in variants:
            v.peaks.append(peak)
        log(f"round {r + 1}/{cfg['repeats']}: " + ', '.join(f"{v.name} {v.times[-1] * 1000:.0f}" for v in variants)
            + ' ms' + (f"; matmul {peak / 1e9:.0f} GFLOP/s" if peak else '')
            + ''.join(f"; {g.name} {g.times[True][-1]:.2f} s with KV cache, {g.times[False][-1]:.2f} s without"
                      for g in generations))
    busy_after, ours_after, seconds = cpu_seconds(), variants_cpu_seconds(variants), time.perf_counter() - t_rounds
    if not (busy_before and busy_after) or ours_before is None or ours_after is None:
        return None, seconds, peaks
    ours = (busy_after[1] - busy_before[1]) + (ours_after - ours_before)   # this process and its variants' processes
    return (busy_after[0] - busy_before[0]) - ours, seconds, peaks


def variants_cpu_seconds(variants):
    """CPU seconds the variants' own processes have used (0 for variants in this process), None if one is unknown."""
    seconds = [v.cpu_seconds() for v in variants]
    return None if None in seconds else sum(seconds)


def spread(samples):
    """(median, first quartile, third quartile) of per-round samples."""
    samples = list(samples)
    if len(samples) < 2:
        return samples[0], samples[0], samples[0]
    q1, median, q3 = statistics.quantiles(samples, n=4, method='inclusive')
    return median, q1, q3


def paired_ratios(a, b):
    """a[i] / b[i] for every round i: both measured in the same round, so a burst of outside load cancels."""
    return [x / y for x, y in zip(a, b)]


def summarize(cfg, variants, saved, peaks, seconds, generations=()):
    """One row per variant and per generation, figures[key] = (median, q1, q3) over rounds for the targets, and the
    targets checked. peaks: the CPU matmul peak of every round of every mode (v.peaks: those of v's rounds)."""
    on_cuda = cfg['device'].startswith('cuda')
    if on_cuda:
        name = torch.cuda.get_device_name(torch.device(cfg['device']))
        peak, peak_note = gpu_peak_flops(name), 'datasheet dense bf16 peak (training/peak_flops.py)'
    else:
        peak = statistics.median(peaks) if peaks else None
        peak_note = (f"float32 matmul measured in each of the {len(peaks)} rounds, median; MFU is paired with the "
                     f"peak of its own round" if peaks else "not measured (--matmul_peak=False), MFU left empty")
    by_key = {v.key: v for v in variants}
    gelu_saved = saved.get(('gelu', None, False))
    rows, figures = [], {}
    for v in variants:
        step = statistics.median(v.times)
        baseline = by_key.get(('gelu', None, v.mode, False))
        dense = by_key.get((v.activation, v.order, v.mode, False))
        round_peaks = [peak] * len(v.times) if on_cuda else v.peaks   # CPU: the peak of each step's own round
        mfu = spread(v.flops_per_token * v.tokens_per_step / (t * p) for t, p in zip(v.times, round_peaks)) \
            if peak and all(round_peaks) else None
        ratio_gelu = spread(paired_ratios(v.times, baseline.times)) if baseline else None
        ratio_dense = spread(paired_ratios(v.times, dense.times)) if v.moe and dense else None
        own_saved = saved[(v.activation, v.order, v.moe)]
        saved_ratio = own_saved / gelu_saved if gelu_saved else None
        rows.append(dict(name=v.name, activation=v.activation, order=v.order, mode=v.mode, moe=v.moe,
                         step_ms=step * 1000,
                         step_ms_min=min(v.times) * 1000, tokens_per_sec=v.tokens_per_step / step,
                         mfu=mfu and mfu[0], ratio_gelu=ratio_gelu and ratio_gelu[0],
                         ratio_dense=ratio_dense and ratio_dense[0], saved_per_token=own_saved,
                         saved_ratio=saved_ratio, peak_mem_mb=v.peak_mem / 2 ** 20 if v.peak_mem is not None else None,
                         flops_per_token=v.flops_per_token))
        if v.order not in (None, cfg['poly_order']):
            continue     # the targets are set at poly_order
        if not v.moe:
            figures[('step_ratio', v.activation, v.mode)] = ratio_gelu
            figures[('mfu', v.activation, v.mode)] = mfu
            figures[('saved_ratio', v.activation, None)] = saved_ratio and (saved_ratio,) * 3   # exact: no spread
        else:
            figures[('moe_ratio', v.activation, v.mode)] = ratio_dense
    generation = [generation_row(g) for g in generations]
    for g, row in zip(generations, generation):
        figures[('gen_speedup', g.activation, None)] = (row['speedup'], row['speedup_q1'], row['speedup_q3'])
    results = dict(cfg=cfg, rows=rows, generation=generation, figures=figures, peak=peak, peak_note=peak_note,
                   seconds=seconds, machine=machine_info(cfg), load_before=None, other_load=None)
    results['targets'] = check_targets(results)
    return results


def generation_row(g):
    """Tokens/s with and without the KV cache (median over rounds) and the speed-up: the median over rounds of
    (time without) / (time with), both measured in the same round."""
    speedup = spread(paired_ratios(g.times[False], g.times[True]))
    return dict(name=g.name, activation=g.activation, ffn_hidden=g.ffn_hidden,
                cached_tokens_per_sec=g.new_tokens / statistics.median(g.times[True]),
                uncached_tokens_per_sec=g.new_tokens / statistics.median(g.times[False]),
                speedup=speedup[0], speedup_q1=speedup[1], speedup_q3=speedup[2])


def check_targets(results):
    """[(description, limit, median, quartiles over rounds, result)] for every target, as text. The result says
    'pass' or 'FAIL' on the median, and 'borderline' when the limit lies between the quartiles: then another run on
    the same machine may well land on the other side."""
    out = []
    for key, text, limit, kind in TARGETS:
        figure = results['figures'].get(key)
        show = (lambda x: f"{x:.1%}") if key[0] == 'mfu' else (lambda x: f"{x:.3f}×")
        limit_text = f"{'≥' if kind == 'min' else '≤'} " + (f"{limit:.0%}" if key[0] == 'mfu' else f"{limit:.2f}×")
        if figure is None:
            out.append((text, limit_text, '—', '—', 'not measured'))
            continue
        median, q1, q3 = figure
        ok = median >= limit if kind == 'min' else median <= limit
        result = ('pass' if ok else 'FAIL') + (', borderline' if q1 < limit < q3 else '')
        quartiles = '—' if q1 == q3 else f"{show(q1)} – {show(q3)}"
        out.append((text, limit_text, show(median), quartiles, result))
    return out


# -----------------------------------------------------------------------------
# Where the results go (the tables and the markdown section themselves: lab/bench_report.py)


def load_average():
    try:
        return os.getloadavg()
    except OSError:
        return None


RECORD_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'BENCHMARKS.md')


def results_file(cfg, recording=None):
    """(path, header for a new file) of the markdown this run writes, or (None, None) for terminal only. recording:
    whether the run is recorded (default: --record); a refused recording writes where an unrecorded run would."""
    if cfg['record'] if recording is None else recording:
        return RECORD_FILE, RECORD_HEADER
    return (cfg['out_file'], SCRATCH_HEADER) if cfg['out_file'] else (None, None)


# -----------------------------------------------------------------------------
# What may be recorded: the full recording configuration of the device, on a quiet machine

GPU_RECORD_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config', 'bench_gpu.py')
# knobs that do not change the measured numbers: where the results go, and the profiler (which exits before timing)
NOT_MEASURED = ('record', 'force_record', 'out_file', 'profile', 'profile_mode', 'profile_moe', 'profile_steps',
                'warmup_at_once')


def recording_config(kind):
    """The settings a recorded run of this device kind must have: bench.py's defaults for 'cpu'; for 'cuda' those
    updated by config/bench_gpu.py (read now, so an edit of that file moves the rule with it)."""
    if kind == 'cpu':
        return dict(DEFAULTS)
    cfg, _ = parse_config([GPU_RECORD_CONFIG], DEFAULTS)
    return cfg


def record_config_problem(cfg):
    """Why cfg is not the full recording configuration of its device kind (every measured setting named with its
    recorded value), or None when it is. The device itself only has to be of that kind (cuda:1 records like cuda)."""
    kind = device_kind(cfg)
    full = recording_config(kind)
    differences = [f"{key}={cfg[key]!r} (recorded: {full[key]!r})" for key in DEFAULTS
                   if key not in NOT_MEASURED and key != 'device' and cfg[key] != full[key]]
    if not differences:
        return None
    home = 'the defaults of bench.py' if kind == 'cpu' else 'config/bench_gpu.py'
    return f"not the full recording configuration of {kind} ({home}): {', '.join(differences)}"


def record_load_problem(other_load):
    """Why a run with other_load (CPU cores other processes used while the rounds were timed, None = unknown) is not
    a quiet machine's run, or None when it is."""
    if other_load is None:
        return "the CPU use of other processes could not be measured (no /proc/stat), so a quiet machine is not shown"
    if other_load > QUIET_OTHER_LOAD:
        return (f"other processes used {other_load:.2f} CPU cores on average while the rounds were timed (a "
                f"recording allows {QUIET_OTHER_LOAD}: a quiet machine)")
    return None


def where_results_go(cfg, done=False):
    """The line printed before (done=False) and after the run that says which file holds the results."""
    path, _ = results_file(cfg)
    verb = 'wrote' if done else 'will write'
    if cfg['record']:
        return f"{verb} the {device_kind(cfg)} section of {path} (--record=True)"
    where = f"{verb} {path}" if path else "no results file (--out_file='')"
    return f"{where}; BENCHMARKS.md is left as it is (--record=True records a run there)"


# -----------------------------------------------------------------------------
# Profiling one variant: where does its step time go?


def profile_variant(cfg, activation, mode='eager', moe=False, steps=3, row_limit=25):
    from torch.profiler import ProfilerActivity, profile as torch_profile
    variant = Variant(cfg, activation, mode, moe)
    for _ in range(cfg['warmup_steps']):
        variant.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cfg['device'].startswith('cuda') else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            variant.step()
    sort_by = 'self_device_time_total' if cfg['device'].startswith('cuda') else 'self_cpu_time_total'
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)


def main(argv):
    try:
        cfg, _ = parse_config(argv, DEFAULTS)
        check_config(cfg)
        not_full = record_config_problem(cfg) if cfg['record'] else None
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if not_full and not cfg['force_record']:   # refused before anything slow happens
        print(f"error: --record=True refused: {not_full}; drop these settings, or pass --force_record=True to record "
              f"anyway", file=sys.stderr)
        sys.exit(2)
    if cfg['malloc_keep_heap'] and not cfg['device'].startswith('cuda') and not keep_freed_memory_in_heap():
        print("note: --malloc_keep_heap needs glibc (Linux); running with the default allocator")
    if cfg['profile']:
        print(profile_variant(cfg, cfg['profile'], cfg['profile_mode'], cfg['profile_moe'], cfg['profile_steps']))
        return
    load = load_average()
    if load and load[0] > 0.3 * (os.cpu_count() or 1) and not cfg['device'].startswith('cuda'):
        print(f"note: load average {load[0]:.2f}: other processes share this CPU; the ratios stay fair "
              f"(round-robin), the absolute times and MFU do not")
    print(where_results_go(cfg))
    results = run_benchmark(cfg)
    print()
    print_results(results)
    loaded = record_load_problem(results['other_load']) if cfg['record'] else None
    refused = loaded and not cfg['force_record']   # then the results go where an unrecorded run's go
    results['forced'] = [why for why in (not_full, loaded) if why] if not refused else []
    path, header = results_file(cfg, recording=cfg['record'] and not refused)
    if path:
        write_markdown(results, path, header)
    if refused:
        kept = f"the results are in {path}" if path else "the results are above only (--out_file='')"
        print(f"error: --record=True refused: {loaded}; BENCHMARKS.md is left as it is and {kept}; rerun on a quiet "
              f"machine, or pass --force_record=True to record anyway", file=sys.stderr)
        sys.exit(1)
    print('\n' + where_results_go(cfg, done=True))


if __name__ == '__main__':
    main(sys.argv[1:])
