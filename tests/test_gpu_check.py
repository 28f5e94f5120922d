"""gpu_check.py, rehearsed on CPU: the dry run takes the GPU check's code path (pytest on tests/test_cuda.py, then
bench.py with config/bench_gpu.py at tiny sizes) and writes the results file; a dry run is never recorded; a stage
that overruns its limit is stopped and the file says so; the benchmark table is read into the issue's targets."""
import hashlib
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import gpu_check  # noqa: E402
from train_helpers import REPO, run_script  # noqa: E402

BENCHMARKS = os.path.join(REPO, 'BENCHMARKS.md')


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def section(text, heading):
    """The lines under a '## ' heading up to the next '## ' heading."""
    match = re.search(rf'^{re.escape(heading)}\n(.*?)(?=^## |\Z)', text, re.S | re.M)
    assert match, f"no section {heading!r} in the results file"
    return match.group(1)


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check')
    before = digest(BENCHMARKS)
    done = run_script(['gpu_check.py', '--device=cpu', '--tiny=True', f'--out_dir={out}'])
    assert digest(BENCHMARKS) == before, "the dry run changed BENCHMARKS.md"
    return out, done, (out / 'gpu_check.md').read_text()


def test_dry_run_writes_every_part_of_the_results_file(dry_run):
    out, done, text = dry_run
    assert done.stdout.strip().splitlines()[-1] == f"wrote {out / 'gpu_check.md'}"
    for name in ('gpu_check.md', 'tests.log', 'tests.xml', 'bench.log', 'bench.md'):
        assert (out / name).exists(), name
    assert text.startswith('# nanoPoly GPU check\n')
    assert '**dry run**' in text and '(still running)' not in text
    machine = section(text, '## Machine')
    assert 'GPU: none used' in machine and re.search(r'torch \S+, CUDA .*, triton .*, Python \d', machine)


def test_dry_run_reports_the_cuda_tests_as_skipped_with_their_reason(dry_run):
    _, _, text = dry_run
    tests = section(text, '## CUDA tests (tests/test_cuda.py)')
    assert re.search(r'finished in \d+ s \(limit 180 s\), exit status 0', tests)
    skipped = int(re.search(r'outcomes: (\d+) skipped', tests).group(1))
    rows = re.findall(r'^\| test_cuda::(\S+) \| skipped \| [\d.]+ \|$', tests, re.M)
    assert skipped == len(rows) >= 40 and 'test_polycom_gradcheck_on_cuda_in_float64[polynorm]' in rows
    assert 'skipped because: needs a CUDA GPU' in tests
    assert '- result: tests finished: 0 passed, 0 failed, ' in text


def test_dry_run_reads_the_benchmark_table_into_figures_and_targets(dry_run):
    _, _, text = dry_run
    bench = section(text, '## GPU benchmark (bench.py config/bench_gpu.py)')
    assert 'bench.py config/bench_gpu.py --device=cpu' in bench and '--n_layer=2' in bench
    figures = dict(re.findall(r'^\| ((?:moe-)?\w+ eager) \| ([\d.]+) \|', bench, re.M))
    assert set(figures) == {'gelu eager', 'swiglu eager', 'polyrelu eager', 'polynorm eager', 'moe-gelu eager',
                            'moe-polynorm eager'}
    assert all(float(ms) > 0 for ms in figures.values())
    assert re.search(r'^\| gelu eager \| [\d.]+ \| — \| 1\.000 \|', bench, re.M)   # GELU is its own baseline
    ours = bench[bench.index('### Targets (issue 20)'):bench.index("### bench.py's section")]
    targets = re.findall(r'^\| (.+?) \| [≤≥] [\d.]+[%×] \| (.+?) \| (.+?) \|$', ours, re.M)
    assert [t[0] for t in targets] == [t[0] for t in gpu_check.TARGETS]
    assert all(result == 'not measured' for _, _, result in targets)   # CPU dry run: eager rows, no peak memory
    assert "### bench.py's section" in bench and '| variant | step ms (median) |' in bench


def test_a_dry_run_is_never_recorded(tmp_path):
    before = digest(BENCHMARKS)
    for args in (['--device=cpu', '--tiny=True'], ['--tiny=True']):
        done = run_script(['gpu_check.py', *args, '--record=True', f'--out_dir={tmp_path / "out"}'], check=False)
        assert done.returncode == 2 and done.stdout == ''
        assert done.stderr.strip().splitlines() == [
            "error: --record=True refused: a dry run (--device=cpu or --tiny=True) is never recorded; BENCHMARKS.md "
            "is left as it is. Record the full GPU run: python gpu_check.py --record=True"]
    assert digest(BENCHMARKS) == before and not (tmp_path / 'out').exists()


@pytest.mark.parametrize('args, message', [
    (['--device=cpu'], 'device=cpu runs only the dry run, at tiny sizes'),
    (['--device=gpu'], "device='gpu': use cuda (or cuda:N) for the check, or cpu with --tiny=True"),
    (['--device=cpu', '--tiny=True', '--stages=tests,benchmark'], "stages='tests,benchmark': choose from tests, bench"),
    (['--tests_timeout=5.0'], "'tests_timeout' (from the command line) expects int"),
])
def test_bad_settings_fail_in_one_line(args, message):
    done = run_script(['gpu_check.py', *args], check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith('error: ') and message in done.stderr


def test_a_stage_over_its_limit_is_stopped_and_its_partial_log_kept(tmp_path):
    done = run_script(['gpu_check.py', '--device=cpu', '--tiny=True', '--stages=bench', '--bench_timeout=2',
                       f'--out_dir={tmp_path}'], check=False)
    assert done.returncode == 1
    text = (tmp_path / 'gpu_check.md').read_text()
    assert '**timed out** after 2 s' in text and 'Last lines of bench.log:' in text and '$ ' in text
    assert 'no results table: the benchmark did not finish' in text and '## CUDA tests' not in text


# ---- reading bench.py's table (a section in bench.py's format with GPU-like numbers: which targets are met)

GPU_SECTION = """- machine: NVIDIA H200
| variant | step ms (median) | step ms (min) | tokens/s | MFU | × GELU | × dense | saved B/token | saved × GELU | peak MiB |
|---|---|---|---|---|---|---|---|---|---|
| gelu eager | 30.0 | 29.0 | 273,066 | 30.0% | 1.000 | — | 90,488 | 1.0000 | 10,000 |
| polynorm eager | 45.0 | 44.0 | 182,044 | 20.0% | 1.500 | — | 90,536 | 1.0005 | 10,300 |
| gelu compiled | 18.0 | 17.5 | 455,111 | 50.5% | 1.000 | — | 90,488 | 1.0000 | 9,000 |
| polyrelu compiled | 19.5 | 19.0 | 420,102 | 46.6% | 1.083 | — | 90,488 | 1.0000 | 9,050 |
| polynorm compiled | 18.5 | 18.0 | 442,810 | 49.1% | 1.028 | — | 90,536 | 1.0005 | 9,100 |
| moe-gelu compiled | 27.0 | 26.0 | 303,407 | 40.0% | 1.500 | 1.500 | 141,160 | 1.5600 | 20,000 |

Targets (set for the CPU config; ratios to GELU measured in the same run):

| target | limit | measured (median) | quartiles over rounds | result |
|---|---|---|---|---|
| PolyNorm step time / GELU, eager | ≤ 1.10× | 1.500× | — | FAIL |
"""


def test_the_bench_table_is_read_by_column_name_and_each_target_marked():
    rows = gpu_check.parse_bench_table(GPU_SECTION)
    assert list(rows) == ['gelu eager', 'polynorm eager', 'gelu compiled', 'polyrelu compiled', 'polynorm compiled',
                          'moe-gelu compiled']   # the targets table below it is not read as variants
    assert rows['gelu compiled']['MFU'] == pytest.approx(0.505) and rows['moe-gelu compiled']['× dense'] == 1.5
    assert rows['polynorm eager']['peak MiB'] == 10300 and rows['gelu eager']['× dense'] is None
    results = {text: (measured, result) for text, _, measured, result in gpu_check.target_results(rows)}
    assert results == {
        'GELU compiled MFU (datasheet dense bf16 peak)': ('50.5%', 'met'),
        'PolyNorm compiled step time / GELU compiled': ('1.028×', 'met'),
        'PolyReLU compiled step time / GELU compiled': ('1.083×', 'NOT met'),
        'PolyNorm peak memory / GELU, compiled': ('1.011×', 'met'),
        'PolyNorm peak memory / GELU, eager': ('1.030×', 'NOT met'),
        'MoE 8e top-2 / dense step time, GELU, compiled': ('1.500×', 'met'),
        'MoE 8e top-2 / dense step time, PolyNorm, compiled': ('—', 'not measured'),
    }


@pytest.mark.parametrize('log', [
    ("tests/test_cuda.py::test_a[polynorm] PASSED                  [  2%]\n"
     "tests/test_cuda.py::test_b FAILED                            [  4%]\n"
     "tests/test_cuda.py::test_c SKIPPED (needs a CUDA GPU)        [  6%]\n"
     "tests/test_cuda.py::test_d "),
    # pytest-xdist (--test_workers) prints the outcome first
    ("[gw1] [  2%] PASSED tests/test_cuda.py::test_a[polynorm] \n"
     "[gw0] [  4%] FAILED tests/test_cuda.py::test_b \n"
     "[gw2] [  6%] SKIPPED tests/test_cuda.py::test_c \n"
     "[gw3] [ 5"),
], ids=['one-process', 'xdist'])
def test_an_interrupted_pytest_run_still_yields_the_outcomes_it_printed(log):
    assert gpu_check.parse_verbose_log(log) == [('test_cuda::test_a[polynorm]', 'passed', None, ''),
                                                ('test_cuda::test_b', 'failed', None, ''),
                                                ('test_cuda::test_c', 'skipped', None, '')]


def test_test_workers_need_pytest_xdist_or_zero(monkeypatch):
    monkeypatch.setattr(gpu_check, 'test_workers', 6)
    monkeypatch.setattr(gpu_check.importlib.util, 'find_spec', lambda name: None)
    assert gpu_check.settings_problem() == ("test_workers=6 needs pytest-xdist: pip install pytest-xdist, or run the "
                                            "tests in one process with --test_workers=0")
    monkeypatch.setattr(gpu_check, 'stages', 'bench')        # the benchmark alone needs no pytest
    assert gpu_check.settings_problem() is None
    monkeypatch.setattr(gpu_check, 'test_workers', -1)
    assert gpu_check.settings_problem().startswith("test_workers=-1: use 0 (one pytest process)")


def test_a_recorded_run_is_read_from_benchmarks_md_and_copied_beside_the_results(tmp_path, monkeypatch):
    """The record path, which only a GPU takes: bench.py (here a stand-in that writes what bench.py writes) puts its
    section into BENCHMARKS.md; the check reads its table from there and copies the file into out_dir."""
    repo, out = tmp_path / 'repo', tmp_path / 'out'
    repo.mkdir(), out.mkdir()
    (repo / 'BENCHMARKS.md').write_text("# Benchmarks\n\n<!-- bench:cuda begin -->\nstale section\n"
                                        "<!-- bench:cuda end -->\n")

    def bench_writes_its_section(cmd, log_path, timeout):
        assert '--record=True' in cmd and 'config/bench_gpu.py' in cmd
        (repo / 'BENCHMARKS.md').write_text(f"# Benchmarks\n\n<!-- bench:cuda begin -->\n## GPU: NVIDIA H200\n\n"
                                            f"{GPU_SECTION}<!-- bench:cuda end -->\n")
        open(log_path, 'w').write('wrote the cuda section of BENCHMARKS.md (--record=True)\n')
        return dict(status='finished', seconds=1.0, returncode=0, command=' '.join(cmd), timeout=timeout)

    monkeypatch.setattr(gpu_check, 'REPO', str(repo))
    monkeypatch.setattr(gpu_check, 'run_stage', bench_writes_its_section)
    for key, value in (('out_dir', str(out)), ('record', True), ('device', 'cuda'), ('tiny', False)):
        monkeypatch.setattr(gpu_check, key, value, raising=True)
    stage = gpu_check.run_bench()
    assert stage['recorded'] is True and list(stage['rows'])[0] == 'gelu eager'
    assert (out / 'BENCHMARKS.md').read_text() == (repo / 'BENCHMARKS.md').read_text()
    lines = '\n'.join(gpu_check.bench_lines(stage))
    assert 'the GPU section of BENCHMARKS.md was written' in lines and '#### GPU: NVIDIA H200' in lines
