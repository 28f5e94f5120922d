"""bench.py on a tiny config, one round: the table and the markdown come out with the right rows, in the right file.
No timing assertions here: performance targets are checked by bench.py itself on a full run, never in unit tests."""
import os
import subprocess
import sys

import pytest
import torch

import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(bench.DEFAULTS, n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=2, activations='gelu,polynorm',
            modes='eager', moe_activations='gelu', n_expert=4, top_k=2, repeats=1, warmup_steps=1, matmul_peak=False,
            out_file='')
TINY_FLAGS = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=2', '--repeats=1',
              '--warmup_steps=1', '--matmul_peak=False', '--activations=gelu,polynorm', '--modes=eager',
              '--moe_activations=gelu', '--n_expert=4']


@pytest.fixture(scope='module')
def results():
    return bench.run_benchmark(dict(TINY), log=lambda *a: None)


def test_one_row_per_variant_with_ratios_to_gelu_and_dense(results):
    rows = {r['name']: r for r in results['rows']}
    assert list(rows) == ['gelu eager', 'polynorm eager', 'moe-gelu eager']
    assert rows['gelu eager']['ratio_gelu'] == pytest.approx(1.0)
    assert rows['polynorm eager']['ratio_gelu'] > 0 and rows['polynorm eager']['ratio_dense'] is None
    assert rows['moe-gelu eager']['ratio_dense'] > 0
    for r in rows.values():
        assert r['step_ms'] > 0 and r['tokens_per_sec'] > 0 and r['saved_per_token'] > 0
        assert r['mfu'] is None and r['peak_mem_mb'] is None     # no matmul peak asked for; CPU has no CUDA peak


def test_saved_bytes_count_activations_not_parameters(results):
    # activations grow with the batch, parameters and buffers do not: leaving those out makes the count per token the
    # same whatever the batch size
    per_token = [bench.saved_bytes_per_token(bench.Variant(dict(TINY, batch_size=b), 'polynorm', 'eager', False))
                 for b in (2, 5)]
    assert per_token[0] == pytest.approx(per_token[1], abs=1.0)   # (a few scalars, e.g. the loss, do not scale)
    rows = {r['name']: r for r in results['rows']}
    assert rows['moe-gelu eager']['saved_per_token'] > rows['gelu eager']['saved_per_token']   # k = 2 experts/token
    assert rows['polynorm eager']['saved_ratio'] <= 1.01    # PolyNorm keeps x and r inverse RMS values per token


def test_markdown_has_machine_config_table_and_every_target(results, tmp_path):
    path = tmp_path / 'BENCHMARKS.md'
    bench.write_markdown(results, str(path))
    text = path.read_text()
    for needed in ('## CPU', 'machine:', 'torch', 'git commit:', 'config: 1 layers', '1 rounds', 'load average',
                   '| gelu eager |', '| polynorm eager |', '| moe-gelu eager |', '| variant | step ms (median) |'):
        assert needed in text, needed
    for _, description, _, _ in bench.TARGETS:
        assert f"| {description} |" in text
    assert '| PolyNorm step time / GELU, compiled | ≤ 1.02× | — | — | not measured |' in text
    target_rows = [line for line in text.splitlines() if line.startswith('| PolyNorm step time / GELU, eager |')]
    assert len(target_rows) == 1 and target_rows[0].endswith(('| pass |', '| FAIL |'))   # one round: no spread


def test_a_second_run_replaces_its_own_section_and_keeps_the_rest(results, tmp_path):
    path = tmp_path / 'BENCHMARKS.md'
    path.write_text('# Benchmarks\n\nnotes by hand\n\n<!-- bench:cuda begin -->\n## GPU: H100\n<!-- bench:cuda end -->\n')
    bench.write_markdown(results, str(path))
    bench.write_markdown(results, str(path))
    text = path.read_text()
    assert text.count('<!-- bench:cpu begin -->') == 1 and text.count('| gelu eager |') == 1
    assert 'notes by hand' in text and '## GPU: H100' in text


def test_targets_report_the_spread_over_rounds_and_flag_borderline_results():
    results = {'figures': {('step_ratio', 'polynorm', 'eager'): (1.08, 1.05, 1.12),     # limit 1.10 inside
                           ('step_ratio', 'polyrelu', 'eager'): (1.02, 1.01, 1.03),
                           ('mfu', 'gelu', 'eager'): (0.70, 0.69, 0.71)}}
    rows = {r[0]: r for r in bench.check_targets(results)}
    assert rows['PolyNorm step time / GELU, eager'][2:] == ('1.080×', '1.050× – 1.120×', 'pass, borderline')
    assert rows['PolyReLU step time / GELU, eager'][4] == 'pass'
    assert rows['GELU MFU against the measured matmul peak, eager'][2:] == ('70.0%', '69.0% – 71.0%', 'FAIL')
    assert rows['PolyNorm step time / GELU, compiled'][4] == 'not measured'


def test_printed_table_lists_every_variant_and_target(results):
    lines = []
    bench.print_results(results, log=lines.append)
    text = '\n'.join(lines)
    assert 'moe-gelu eager' in text and 'GELU MFU against the measured matmul peak, eager' in text


@pytest.mark.parametrize('flags, message', [
    ('--activations=polynorm', 'must include gelu'),
    ('--activations=gelu,tanh', "unknown activation 'tanh'"),
    ('--modes=jit', "unknown mode 'jit'"),
    ('--repets=3', "did you mean 'repeats'"),
    ('--modes=eager --moe_modes=compiled', '--moe_modes=compiled asks for compiled, which --modes=eager leaves out'),
])
def test_bad_flags_fail_in_one_line(flags, message):
    proc = subprocess.run([sys.executable, 'bench.py', *flags.split()], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('modes, compiled', [('eager', 0), ('compiled', 3), ('eager,compiled', 3)])
def test_modes_decide_compilation_for_every_variant_moe_included(monkeypatch, modes, compiled):
    # --modes=eager must mean no torch.compile anywhere; MoE rows follow --modes unless --moe_modes narrows them
    calls = []
    monkeypatch.setattr(torch, 'compile', lambda model, **kwargs: calls.append(model) or model)
    variants = bench.build_variants(dict(TINY, modes=modes))
    assert len(variants) == 3 * len(modes.split(','))            # gelu, polynorm, moe-gelu per mode
    assert len(calls) == compiled
    assert all(v.mode in modes.split(',') for v in variants)


def test_a_quick_run_writes_out_bench_and_leaves_the_recorded_results_alone(monkeypatch, tmp_path, capsys):
    recorded = tmp_path / 'BENCHMARKS.md'
    recorded.write_text('# Benchmarks\n\nrecorded by hand\n')
    monkeypatch.setattr(bench, 'RECORD_FILE', str(recorded))
    monkeypatch.chdir(tmp_path)
    bench.main(TINY_FLAGS)
    assert recorded.read_text() == '# Benchmarks\n\nrecorded by hand\n'
    scratch = (tmp_path / 'out-bench' / 'bench.md').read_text()
    assert scratch.startswith('# Benchmarks (not recorded)') and '| moe-gelu eager |' in scratch
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == 'wrote out-bench/bench.md; BENCHMARKS.md is left as it is (--record=True records a run there)'


def test_record_replaces_the_section_of_benchmarks_md_only(monkeypatch, tmp_path, capsys):
    recorded = tmp_path / 'BENCHMARKS.md'
    recorded.write_text('# Benchmarks\n\nrecorded by hand\n')
    monkeypatch.setattr(bench, 'RECORD_FILE', str(recorded))
    monkeypatch.chdir(tmp_path)
    bench.main(TINY_FLAGS + ['--record=True'])
    text = recorded.read_text()
    assert 'recorded by hand' in text and '<!-- bench:cpu begin -->' in text and '| polynorm eager |' in text
    assert not (tmp_path / 'out-bench').exists()
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote the cpu section of {recorded} (--record=True)"
