"""
The GPU check: one command that runs every CUDA test, then the GPU benchmark, and writes what it measured to one file.

    python gpu_check.py                                # on a machine with a CUDA GPU -> out-gpu-check/gpu_check.md
    python gpu_check.py --record=True                  # the same, and bench.py records the GPU section of BENCHMARKS.md
    python gpu_check.py --device=cpu --tiny=True       # the CPU rehearsal (dry run): same code path, tiny sizes, ~30 s

Stages, each a subprocess with its own time limit, so one that hangs or overruns leaves the others' results:
1. tests: `python -m pytest -v -n 6 tests/test_cuda.py` (every CUDA path; skipped as a whole without a GPU). Measured
   on an H200 (16 cores), 2026-12-04: 46 tests in 131 s on 6 workers.
2. bench: `python bench.py config/bench_gpu.py` (GPT-2-small size, T = 1024, bf16 autocast; GELU, SwiGLU, PolyReLU,
   PolyNorm eager and compiled; MoE 8 experts top-2 compiled against dense; PolyNorm generation with and without the KV
   cache). Measured on an H200, 2026-12-04: the eager phase (generation included) ~85 s, then the compile warm-ups,
   20-36 s each one after the other, used up the 270 s it then had. Now they run side by side (warmup_at_once in
   config/bench_gpu.py) and the stage has 390 s (an estimate: 150-200 s; not yet measured).
The budget: both limits together are 9.5 minutes (tests_timeout + bench_timeout), which fits one 10-minute call of a
lent H200 with its start. Nothing needs the network or pip: the tests make a small character dataset in a temp folder,
the benchmark times random token ids, and no GPT-2 BPE file is read.

What it writes, all in out_dir (ignored by git; the results file is rewritten after each stage, so a killed check
still leaves what finished): gpu_check.md (machine, GPU, torch/CUDA/triton versions, test outcomes and failures, the
benchmark table with MFU, step-time and peak-memory ratios to GELU, the MoE/dense ratio, and the issue's targets each
marked met or not met), tests.log and tests.xml (pytest's), bench.log and bench.md (bench.py's output and section).
With --record=True bench.py writes its section into BENCHMARKS.md instead of bench.md (and the check copies that file
into out_dir); bench.py refuses (one line) a run that is not config/bench_gpu.py's full configuration, and a dry run
(--device=cpu or --tiny=True) is never recorded.
"""
import importlib.util
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

from configurator import configure

# -----------------------------------------------------------------------------
out_dir = 'out-gpu-check'   # gpu_check.md and the stages' logs go here
device = 'cuda'             # 'cuda' (or 'cuda:N'): the check; 'cpu': the dry run, needs --tiny=True
tiny = False                # True: the rehearsal sizes (a 2-layer bench model, 2 rounds, eager only on CPU)
record = False              # True: bench.py writes the GPU section of BENCHMARKS.md (the full GPU run only)
stages = 'tests,bench'      # which stages run, in this order; e.g. --stages=bench to rerun only the benchmark
tests_timeout = 180         # seconds for the CUDA test stage
bench_timeout = 390         # seconds for the benchmark stage
test_workers = 6            # pytest-xdist workers for the CUDA tests (compiles run in parallel); 0 = one process
# -----------------------------------------------------------------------------
REPO = os.path.dirname(os.path.abspath(__file__))
BENCH_CONFIG = 'config/bench_gpu.py'
STAGES = ('tests', 'bench')
# The dry run's benchmark: config/bench_gpu.py with these sizes on top (same activations, same table, seconds on CPU)
TINY_BENCH = ['--n_layer=2', '--n_head=2', '--n_embd=64', '--block_size=64', '--batch_size=2', '--vocab_size=512',
              '--repeats=2', '--warmup_steps=1', '--steps_per_repeat=1']
TINY_BENCH_CPU = ['--dtype=float32', '--modes=eager', '--moe_modes=eager', '--matmul_peak=False']

# The targets for the GPU benchmark: (description, what, variant, reference variant, limit, 'max'/'min').
# what: 'ratio_gelu' = step time / GELU's in the same round (bench's × GELU), 'ratio_dense' = MoE / dense (× dense),
# 'mfu' (bench's MFU against the datasheet dense bf16 peak), 'peak_ratio' = peak MiB / the reference variant's.
TARGETS = [
    ('GELU compiled MFU (datasheet dense bf16 peak)', 'mfu', 'gelu compiled', None, 0.45, 'min'),
    ('PolyNorm compiled step time / GELU compiled', 'ratio_gelu', 'polynorm compiled', None, 1.05, 'max'),
    ('PolyReLU compiled step time / GELU compiled', 'ratio_gelu', 'polyrelu compiled', None, 1.05, 'max'),
    ('PolyNorm peak memory / GELU, compiled', 'peak_ratio', 'polynorm compiled', 'gelu compiled', 1.02, 'max'),
    ('PolyNorm peak memory / GELU, eager', 'peak_ratio', 'polynorm eager', 'gelu eager', 1.02, 'max'),
    ('MoE 8e top-2 / dense step time, GELU, compiled', 'ratio_dense', 'moe-gelu compiled', None, 1.6, 'max'),
    ('MoE 8e top-2 / dense step time, PolyNorm, compiled', 'ratio_dense', 'moe-polynorm compiled', None, 1.6, 'max'),
]


def settings_problem():
    """The first thing wrong with the settings, as one line, or None. Checked before anything slow runs."""
    unknown = [s for s in stages.split(',') if s not in STAGES]
    if unknown or not stages:
        return f"stages={stages!r}: choose from {', '.join(STAGES)} (comma-separated, e.g. --stages=tests,bench)"
    if not (device == 'cpu' or re.fullmatch(r'cuda(:\d+)?', device)):
        return f"device={device!r}: use cuda (or cuda:N) for the check, or cpu with --tiny=True for the dry run"
    if device == 'cpu' and not tiny:
        return ("device=cpu runs only the dry run, at tiny sizes (the GPU benchmark would take hours on a CPU): "
                "add --tiny=True")
    if record and (device == 'cpu' or tiny):
        return ("--record=True refused: a dry run (--device=cpu or --tiny=True) is never recorded; BENCHMARKS.md is "
                "left as it is. Record the full GPU run: python gpu_check.py --record=True")
    if tests_timeout < 1 or bench_timeout < 1:
        return f"tests_timeout and bench_timeout must be >= 1 second, got {tests_timeout} and {bench_timeout}"
    if test_workers < 0:
        return f"test_workers={test_workers}: use 0 (one pytest process) or a number of pytest-xdist workers"
    if test_workers and 'tests' in stages.split(',') and importlib.util.find_spec('xdist') is None:
        return (f"test_workers={test_workers} needs pytest-xdist: pip install pytest-xdist, or run the tests in one "
                f"process with --test_workers=0")
    return None


# -----------------------------------------------------------------------------
# Running a stage


def run_stage(cmd, log_path, timeout):
    """Run cmd in the repo with stdout+stderr to log_path. Returns dict(status, seconds, returncode). On timeout the
    whole process group (pytest's train.py children included) is stopped: status 'timed out'."""
    t0 = time.time()
    with open(log_path, 'w') as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode, status = proc.wait(timeout=timeout), 'finished'
        except subprocess.TimeoutExpired:
            stop_group(proc)
            returncode, status = None, 'timed out'
    return dict(status=status, seconds=time.time() - t0, returncode=returncode, command=shlex.join(cmd),
                timeout=timeout)


def stop_group(proc):
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def read_text(path):
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except FileNotFoundError:
        return ''


def tail(text, lines=40):
    return '\n'.join(text.rstrip('\n').splitlines()[-lines:])


# -----------------------------------------------------------------------------
# Stage 1: the CUDA tests


def run_tests():
    xml_path = os.path.join(out_dir, 'tests.xml')
    if os.path.exists(xml_path):
        os.remove(xml_path)   # a stale file from an earlier check must not pass for this one's
    workers = ['-n', str(test_workers)] if test_workers else []
    cmd = [sys.executable, '-m', 'pytest', '-v', *workers, '-p', 'no:cacheprovider', 'tests/test_cuda.py',
           f'--junitxml={os.path.abspath(xml_path)}']
    stage = run_stage(cmd, os.path.join(out_dir, 'tests.log'), tests_timeout)
    log = read_text(os.path.join(out_dir, 'tests.log'))
    stage['tests'] = parse_junit(xml_path) if os.path.exists(xml_path) else parse_verbose_log(log)
    stage['log_tail'] = tail(log, 60)
    return stage


def parse_junit(path):
    """[(test id, outcome, seconds, message)] from pytest's junit xml; outcome: passed, failed, error, skipped."""
    tests = []
    for case in ElementTree.parse(path).getroot().iter('testcase'):
        outcome, message = 'passed', ''
        for child in case:
            if child.tag in ('failure', 'error', 'skipped'):
                outcome = {'failure': 'failed'}.get(child.tag, child.tag)
                message = (child.get('message') or '') + ('\n' + child.text if child.text and outcome != 'skipped'
                                                          else '')
                break
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        tests.append((name, outcome, float(case.get('time') or 0), message.strip()))
    return tests


VERBOSE_LINE = re.compile(r'^tests/(\S+\.py)::(\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)', re.M)
# the same under pytest-xdist, which prints the outcome first: "[gw3] [ 52%] PASSED tests/test_cuda.py::test_x"
XDIST_LINE = re.compile(r'^\[gw\d+\] \[\s*\d+%\] (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) '
                        r'tests/(\S+\.py)::(\S+)', re.M)


def parse_verbose_log(log):
    """The outcomes pytest -v printed before it was stopped (no junit xml then): no times, no messages."""
    plain = [(m.group(1), m.group(2), m.group(3)) for m in VERBOSE_LINE.finditer(log)]
    xdist = [(m.group(2), m.group(3), m.group(1)) for m in XDIST_LINE.finditer(log)]
    return [(f"{path[:-3]}::{test}", outcome.lower(), None, '') for path, test, outcome in plain + xdist]


def count_outcomes(tests):
    counts = {}
    for _, outcome, _, _ in tests:
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


# -----------------------------------------------------------------------------
# Stage 2: the benchmark (bench.py's CLI; its markdown section is read back)


def bench_command():
    cmd = [sys.executable, 'bench.py', BENCH_CONFIG, f'--device={device}',
           f'--out_file={os.path.abspath(os.path.join(out_dir, "bench.md"))}']
    if tiny:
        cmd += TINY_BENCH + (TINY_BENCH_CPU if device == 'cpu' else [])
    if record:
        cmd.append('--record=True')
    return cmd


def run_bench():
    scratch = os.path.join(out_dir, 'bench.md')
    if os.path.exists(scratch):
        os.remove(scratch)
    started = time.time()
    stage = run_stage(bench_command(), os.path.join(out_dir, 'bench.log'), bench_timeout)
    log = read_text(os.path.join(out_dir, 'bench.log'))
    stage['log_tail'] = tail(log, 40)
    # where bench.py wrote its section: BENCHMARKS.md when it recorded (exit 0), else out_file (also a refused record)
    recorded = os.path.join(REPO, 'BENCHMARKS.md')
    source = recorded if record and stage['returncode'] == 0 else scratch
    stage['recorded'] = source == recorded and os.path.exists(recorded) and os.path.getmtime(recorded) >= started
    if source == recorded and not stage['recorded']:
        source = scratch   # bench.py said it recorded but BENCHMARKS.md is older than this run: do not read it
    if stage['recorded']:   # a copy beside the results: on a borrowed machine only out_dir may come back
        shutil.copy(recorded, os.path.join(out_dir, 'BENCHMARKS.md'))
    stage['section'] = bench_section(read_text(source), 'cuda' if device.startswith('cuda') else 'cpu')
    stage['rows'] = parse_bench_table(stage['section'])
    return stage


def bench_section(text, kind):
    """bench.py's section of this device kind (between its markers), '' when absent."""
    match = re.search(rf'<!-- bench:{kind} begin -->\n(.*?)\n<!-- bench:{kind} end -->', text, re.S)
    return match.group(1) if match else ''


def parse_number(cell):
    """'1,234.5' -> 1234.5, '45.3%' -> 0.453, '1.021' -> 1.021, '—' or '' -> None."""
    cell = cell.strip().replace(',', '')
    if cell in ('', '—', '-'):
        return None
    if cell.endswith('%'):
        return float(cell[:-1]) / 100
    return float(cell.rstrip('×'))


def parse_bench_table(section):
    """{variant: {column: number}} from bench.py's results table (the markdown table whose first column is
    'variant'); columns are found by their header, so a reordered table still reads right."""
    rows, header = {}, None
    for line in section.splitlines():
        if not line.startswith('|'):
            header = None if rows else header
            continue
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if header is None:
            header = cells if cells[0] == 'variant' else None
        elif not set(cells[0]) <= set('-'):
            rows[cells[0]] = {column: parse_number(cell) for column, cell in zip(header[1:], cells[1:])}
    return rows


def column(row, *prefixes):
    """The value of the first column whose header starts with one of prefixes (bench.py: 'step ms (median)', 'MFU',
    '× GELU', '× dense', 'peak MiB'), None when the row or column is absent."""
    if row is None:
        return None
    for prefix in prefixes:
        for name, value in row.items():
            if name.startswith(prefix):
                return value
    return None


def peak_ratio(rows, variant, reference):
    peak, base = column(rows.get(variant), 'peak MiB'), column(rows.get(reference), 'peak MiB')
    return peak / base if peak is not None and base else None


def target_results(rows):
    """[(description, limit text, measured text, result)]: result 'met', 'NOT met' or 'not measured'."""
    out = []
    for text, what, variant, reference, limit, kind in TARGETS:
        if what == 'peak_ratio':
            value = peak_ratio(rows, variant, reference)
        else:
            value = column(rows.get(variant), {'mfu': 'MFU', 'ratio_gelu': '× GELU', 'ratio_dense': '× dense'}[what])
        show = (lambda x: f"{x:.1%}") if what == 'mfu' else (lambda x: f"{x:.3f}×")
        limit_text = ('≥ ' if kind == 'min' else '≤ ') + show(limit)
        if value is None:
            out.append((text, limit_text, '—', 'not measured'))
            continue
        met = value >= limit if kind == 'min' else value <= limit
        out.append((text, limit_text, show(value), 'met' if met else 'NOT met'))
    return out


# -----------------------------------------------------------------------------
# The results file


def machine_lines():
    import torch
    from training.peak_flops import _cpu_name
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = 'not installed'
    lines = []
    if torch.cuda.is_available() and device.startswith('cuda'):
        props = torch.cuda.get_device_properties(torch.device(device))
        lines.append(f"- GPU: {props.name}, compute capability {props.major}.{props.minor}, "
                     f"{props.total_memory / 2 ** 30:.1f} GiB, {props.multi_processor_count} SMs; "
                     f"{torch.cuda.device_count()} visible; driver {nvidia_driver()}")
    else:
        lines.append(f"- GPU: none used (device={device}: a dry run, nothing below is a GPU measurement)")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    lines += [f"- torch {torch.__version__}, CUDA {torch.version.cuda or 'none (CPU build)'}, cuDNN {cudnn or '—'}, "
              f"triton {triton_version}, Python {platform.python_version()}",
              f"- CPU: {_cpu_name()}, {os.cpu_count()} cores; {platform.platform()}"]
    return lines


def nvidia_driver():
    try:
        done = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                              capture_output=True, text=True, timeout=20)
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown (no nvidia-smi)'


def stage_line(stage):
    if stage['status'] == 'timed out':
        return (f"**timed out** after {stage['timeout']} s (limit; stopped with its children): what it had finished "
                f"is below")
    return f"finished in {stage['seconds']:.0f} s (limit {stage['timeout']} s), exit status {stage['returncode']}"


def markdown_table(header, rows):
    return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] + \
           ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]


def fmt(value, spec):
    return '—' if value is None else format(value, spec)


def tests_lines(stage):
    tests = stage['tests']
    counts = count_outcomes(tests)
    summary = ', '.join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or 'no test outcome was reported'
    lines = ['## CUDA tests (tests/test_cuda.py)', '', f"- `{stage['command']}`", f"- {stage_line(stage)}",
             f"- outcomes: {summary}"]
    reasons = sorted({message.splitlines()[0] for _, outcome, _, message in tests if outcome == 'skipped' and message})
    lines += [f"- skipped because: {reason}" for reason in reasons]
    lines += [''] + markdown_table(['test', 'outcome', 'seconds'],
                                   [(name, outcome, fmt(seconds, '.1f')) for name, outcome, seconds, _ in tests])
    failures = [(name, message) for name, outcome, _, message in tests if outcome in ('failed', 'error')]
    if failures:
        lines += ['', '### Failures', '']
        for name, message in failures:
            lines += [f"**{name}**", '', '```text', tail(message, 30) or '(no message)', '```', '']
    if stage['status'] != 'finished' or (stage['returncode'] not in (0, None) and not failures):
        lines += ['', 'Last lines of tests.log:', '', '```text', stage['log_tail'], '```']
    return lines


def bench_lines(stage):
    rows = stage['rows']
    lines = ['## GPU benchmark (bench.py config/bench_gpu.py)', '', f"- `{stage['command']}`",
             f"- {stage_line(stage)}"]
    if record:
        lines.append('- recorded: the GPU section of BENCHMARKS.md was written (a copy of the file is in out_dir)'
                     if stage['recorded'] else
                     '- recorded: **no**, BENCHMARKS.md was not written (see the log below)')
    if not rows:
        lines += ['- no results table: the benchmark did not finish (its log, below, shows how far it got)']
    else:
        table = []
        for name, row in rows.items():
            mode = name.split()[-1]
            table.append((name, fmt(column(row, 'step ms'), '.1f'), fmt(column(row, 'MFU'), '.1%'),
                          fmt(column(row, '× GELU'), '.3f'), fmt(column(row, '× dense'), '.3f'),
                          fmt(column(row, 'peak MiB'), ',.0f'),
                          fmt(peak_ratio(rows, name, f'gelu {mode}') if not name.startswith('moe-') else None, '.4f')))
        lines += ['', '### Figures', '', 'Step time: median over rounds; × GELU, × dense: median of the ratios '
                  'paired in the same round (same mode); peak × GELU: peak MiB over the GELU row of the same mode.',
                  '']
        lines += markdown_table(['variant', 'step ms', 'MFU', '× GELU', '× dense', 'peak MiB', 'peak × GELU'], table)
        lines += ['', '### Targets (issue 20)', '']
        lines += markdown_table(['target', 'limit', 'measured', 'result'], target_results(rows))
        eager = column(rows.get('polynorm eager'), '× GELU')
        compiled = column(rows.get('polynorm compiled'), '× GELU')
        lines += ['', f"- eager PolyNorm: {fmt(eager, '.3f')}× GELU eager (one kernel per elementwise pass); "
                  f"compiled PolyNorm, whose passes inductor fuses: {fmt(compiled, '.3f')}× GELU compiled. A fused "
                  f"Triton PolyNorm (Liger-Kernel's) is not installed here and was not timed."]
        # bench.py's own heading ('## GPU: <name>') one level under this file's
        lines += ['', "### bench.py's section", '', re.sub(r'^## ', '#### ', stage['section'])]
    if stage['status'] != 'finished' or stage['returncode'] != 0 or not rows:
        lines += ['', 'Last lines of bench.log:', '', '```text', stage['log_tail'], '```']
    return lines


def write_results(path, results, started, machine):
    dry = device == 'cpu' or tiny
    tests, bench = results.get('tests'), results.get('bench')
    verdict = []
    if tests:
        counts = count_outcomes(tests['tests'])
        verdict.append(f"tests {tests['status']}: {counts.get('passed', 0)} passed, "
                       f"{counts.get('failed', 0) + counts.get('error', 0)} failed, {counts.get('skipped', 0)} skipped")
    if bench:
        met = [r[3] for r in target_results(bench['rows'])]
        verdict.append(f"bench {bench['status']}" + (f" (exit {bench['returncode']})" if bench['returncode'] else '')
                       + f": targets {met.count('met')} met, {met.count('NOT met')} not met, "
                       f"{met.count('not measured')} not measured")
    lines = ['# nanoPoly GPU check', '',
             f"- result: {'; '.join(verdict) or 'no stage finished yet'}",
             f"- command: `python gpu_check.py {shlex.join(sys.argv[1:])}`".rstrip(),
             f"- started {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(started))} UTC; "
             f"{time.time() - started:.0f} s " + ('in all' if results.get('done') else 'so far (still running)'),
             ('- **dry run** (device=cpu and/or tiny sizes): it checks the command, not the GPU; no figure here is a '
              'GPU measurement' if dry else '- full GPU run'),
             '', '## Machine', '', *machine, '']
    if tests:
        lines += tests_lines(tests) + ['']
    if bench:
        lines += bench_lines(bench) + ['']
    with open(path, 'w') as f:
        f.write('\n'.join(lines).rstrip('\n') + '\n')


def main():
    configure(globals())   # the config file and --key=value flags (here, not at import: the tests import this file)
    problem = settings_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    import torch
    if device.startswith('cuda') and not torch.cuda.is_available():
        print("error: torch sees no CUDA GPU here; for the CPU rehearsal run python gpu_check.py --device=cpu "
              "--tiny=True", file=sys.stderr)
        sys.exit(2)
    os.makedirs(out_dir, exist_ok=True)
    path, started, results = os.path.join(out_dir, 'gpu_check.md'), time.time(), {}
    machine = machine_lines()
    write_results(path, results, started, machine)
    for name in stages.split(','):
        print(f"{name}: running (limit {tests_timeout if name == 'tests' else bench_timeout} s) ...", flush=True)
        results[name] = run_tests() if name == 'tests' else run_bench()
        print(f"{name}: {stage_line(results[name])}", flush=True)
        write_results(path, results, started, machine)   # after each stage: a killed check keeps what finished
    results['done'] = True
    write_results(path, results, started, machine)
    print(f"wrote {path}")
    tests, bench = results.get('tests'), results.get('bench')
    failed = tests and (tests['status'] != 'finished' or tests['returncode'] not in (0, 5))
    failed = failed or (bench and (bench['status'] != 'finished' or bench['returncode'] != 0))
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
