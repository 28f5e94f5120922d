"""
bench.py's results as text: the tables it prints, and its markdown section, which replaces the section of its device
kind (cpu or cuda) in BENCHMARKS.md or out-bench/bench.md and keeps every other line. bench.py measures, judges the
targets and decides where a run may be recorded; this module only writes what it is given.
"""
import datetime
import os
import platform
import re
import subprocess

import torch

from training.peak_flops import _cpu_name

RECORD_HEADER = ("# Benchmarks\n\nWritten by `python bench.py --record=True` (CPU) and "
                 "`python bench.py config/bench_gpu.py --record=True` (GPU); each run replaces its own section.\n")
SCRATCH_HEADER = ("# Benchmarks (not recorded)\n\nWritten by `python bench.py` runs without --record=True; each run "
                  "replaces its device's section. The recorded results are in BENCHMARKS.md.\n")
# CPU cores that other processes may use on average while the rounds are timed (peak_flops.cpu_seconds: all busy
# CPU time minus this process's). Four full runs on a quiet machine measured at most 0.02 (BENCHMARKS.md), one other
# busy process measures about 1; 0.3 lies well between. The CPU bench runs one torch thread per core in lock-step
# matmuls, so any core another process takes stalls all of them. The same limit marks a section "measured while other
# processes loaded this machine's CPU", so a recorded section never carries that mark (bench.py refuses to record
# above it). It applies to GPU runs too: the eager variants wait on the CPU that launches their kernels.
QUIET_OTHER_LOAD = 0.3


def device_kind(cfg):
    return 'cuda' if cfg['device'].startswith('cuda') else 'cpu'


def machine_info(cfg):
    if cfg['device'].startswith('cuda'):
        hardware = torch.cuda.get_device_name(torch.device(cfg['device']))
    else:
        hardware = _cpu_name()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = (commit + (' + uncommitted changes' if dirty else '')) if commit else 'unknown'
    except (OSError, subprocess.SubprocessError):
        commit = 'unknown'
    return dict(hardware=hardware, cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), date=datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
                commit=commit)


def fmt(value, spec, empty='—'):
    return empty if value is None else format(value, spec)


TARGET_COLUMNS = ['target', 'limit', 'measured (median)', 'quartiles over rounds', 'result']
TABLE_COLUMNS = ['variant', 'step ms (median)', 'step ms (min)', 'tokens/s', 'MFU', '× GELU', '× dense',
                 'saved B/token', 'saved × GELU', 'peak MiB']
# its first column is not 'variant': gpu_check.py reads the table that starts with 'variant' as the step-time table
GENERATION_COLUMNS = ['generation', 'FFN hidden', 'tokens/s with KV cache', 'tokens/s without',
                      '× speed-up (median)', 'quartiles over rounds']


def table_rows(results):
    return [[r['name'], fmt(r['step_ms'], '.1f'), fmt(r['step_ms_min'], '.1f'), fmt(r['tokens_per_sec'], ',.0f'),
             fmt(r['mfu'], '.1%'), fmt(r['ratio_gelu'], '.3f'), fmt(r['ratio_dense'], '.3f'),
             fmt(r['saved_per_token'], ',.0f'), fmt(r['saved_ratio'], '.4f'), fmt(r['peak_mem_mb'], ',.0f')]
            for r in results['rows']]


def generation_rows(results):
    return [[r['name'], r['ffn_hidden'], fmt(r['cached_tokens_per_sec'], ',.0f'),
             fmt(r['uncached_tokens_per_sec'], ',.0f'), fmt(r['speedup'], '.2f'),
             '—' if r['speedup_q1'] == r['speedup_q3'] else f"{r['speedup_q1']:.2f} – {r['speedup_q3']:.2f}"]
            for r in results.get('generation', [])]


def text_table(header, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: '  '.join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return '\n'.join([line(header), line(['-' * w for w in widths])] + [line(r) for r in rows])


def markdown_table(header, rows):
    return '\n'.join(['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] +
                     ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows])


def generation_text(cfg):
    """The generation rows' setup in one sentence."""
    return (f"GPT.generate, batch 1, a 1-token prompt, {cfg['gen_new_tokens']} new tokens, temperature 0.8, top-k 200 "
            f"(sample.py's), eager, {cfg['dtype']}; model: {cfg['n_layer']} layers, {cfg['n_head']} heads, "
            f"d = {cfg['gen_n_embd'] or cfg['n_embd']}, block_size {cfg['block_size']}, "
            f"vocab {cfg['gen_vocab_size'] or cfg['vocab_size']}, arch {cfg['arch']}. With and without the KV cache "
            f"timed one after the other in every round (the order alternating); speed-up = median over rounds of "
            f"the per-round ratio of the times")


def markdown_section(results):
    cfg, m = results['cfg'], results['machine']
    other = results.get('other_load')
    load_text = (f"other processes used {other:.2f} CPU cores on average while the rounds were timed"
                 if other is not None else 'CPU use of other processes unknown')
    busy = other is not None and other > QUIET_OTHER_LOAD
    orders = (f"poly_orders {cfg['poly_orders']} (targets at {cfg['poly_order']})" if cfg['poly_orders'] else
              f"poly_order {cfg['poly_order']}")
    model_text = (f"{cfg['n_layer']} layers, {cfg['n_head']} heads, d = {cfg['n_embd']}, T = {cfg['block_size']}, "
                  f"B = {cfg['batch_size']}, vocab {cfg['vocab_size']}, arch {cfg['arch']}, {orders}, {cfg['dtype']}; "
                  f"MoE: {cfg['n_expert']} experts, top-{cfg['top_k']}, "
                  f"expert hidden {'= dense hidden' if cfg['expert_hidden'] == 0 else cfg['expert_hidden']}")
    generation = generation_rows(results)
    lines = [
        f"- machine: {m['hardware']}, {m['cores']} cores, {m['threads']} torch threads; torch {m['torch']}, "
        f"Python {m['python']}",
        f"- date: {m['date']}; git commit: {m['commit']}; {load_text} (load average before the run: "
        f"{fmt(results['load_before'], '.2f')})",
        *(["- **measured while other processes loaded this machine's CPU**: the ratios are paired per round and stay "
           "usable; absolute times, tokens/s and MFU are pessimistic"] if busy else []),
        *([f"- **recorded with --force_record=True although {'; '.join(results['forced'])}**"]
          if results.get('forced') else []),
        f"- config: {model_text}",
        f"- measurement: {cfg['repeats']} rounds x {cfg['steps_per_repeat']} step(s) per variant after "
        f"{cfg['warmup_steps']} warm-up steps, round-robin, one mode after the other"
        f"{', each variant in a process of its own' if cfg.get('isolate') else ', all variants in one process'}; "
        f"step = forward + backward + AdamW step + zero_grad; {results['seconds']:.0f} s in all",
        f"- MFU peak: {fmt(results['peak'] and results['peak'] / 1e9, ',.1f')} GFLOP/s ({results['peak_note']})",
        "- step ms = median over rounds; × GELU / × dense = median over rounds of the ratio measured in the same "
        "round (same mode); MFU = median over rounds; saved B/token = bytes saved for backward per token (unique storages, no parameters or buffers)",
        "",
        markdown_table(TABLE_COLUMNS, table_rows(results)),
        *(["", f"Generation: {generation_text(cfg)}.", "", markdown_table(GENERATION_COLUMNS, generation)]
          if generation else []),
        "",
        "Targets (set for the CPU config; ratios measured in the same run):",
        "",
        markdown_table(TARGET_COLUMNS, results['targets']),
    ]
    return '\n'.join(lines)


def write_markdown(results, path, header=RECORD_HEADER):
    """Replace this device kind's section of path (between its markers), keep everything else; a new file starts
    with header."""
    kind = device_kind(results['cfg'])
    begin, end = f"<!-- bench:{kind} begin -->", f"<!-- bench:{kind} end -->"
    title = {'cpu': '## CPU', 'cuda': '## GPU'}[kind]
    section = f"{begin}\n{title}: {results['machine']['hardware']}\n\n{markdown_section(results)}\n{end}"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = header
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    pattern = re.compile(re.escape(begin) + '.*?' + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip('\n') + '\n\n' + section
    with open(path, 'w') as f:
        f.write(text.rstrip('\n') + '\n')


def print_results(results, log=print):
    log(text_table(TABLE_COLUMNS, table_rows(results)))
    if results.get('generation'):
        log('')
        log(text_table(GENERATION_COLUMNS, generation_rows(results)))
    log('')
    log(text_table(TARGET_COLUMNS, results['targets']))
