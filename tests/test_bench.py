"""bench.py on a tiny config, one round: the table and the markdown come out with the right rows, in the right file.
No timing assertions here: performance targets are checked by bench.py itself on a full run, never in unit tests."""
import os
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch

import bench
from lab import bench_variants
from lab.analysis import mean_step_seconds, train_step
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(bench.DEFAULTS, n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=2, activations='gelu,polynorm',
            modes='eager', moe_activations='gelu', n_expert=4, top_k=2, repeats=1, warmup_steps=1, matmul_peak=False,
            out_file='', gen_activations='polynorm', gen_new_tokens=6, gen_n_embd=0, gen_ffn_hidden=0, gen_vocab_size=0,
            isolate=False)   # in this process (faster); the isolated default has tests of its own
TINY_FLAGS = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=2', '--repeats=1',
              '--warmup_steps=1', '--matmul_peak=False', '--activations=gelu,polynorm', '--modes=eager',
              '--moe_activations=gelu', '--n_expert=4', '--gen_new_tokens=6', '--gen_n_embd=0', '--gen_ffn_hidden=0',
              '--gen_vocab_size=0']


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
    per_token = [bench.Variant(dict(TINY, batch_size=b), 'polynorm', 'eager', False).saved_bytes_per_token()
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
    results = {'figures': {('step_ratio', 'polynorm', 'eager'): (1.04, 1.02, 1.07),     # limit 1.05 inside
                           ('step_ratio', 'polyrelu', 'eager'): (1.02, 1.01, 1.03),
                           ('mfu', 'gelu', 'eager'): (0.70, 0.69, 0.71)}}
    rows = {r[0]: r for r in bench.check_targets(results)}
    assert rows['PolyNorm step time / GELU, eager'][2:] == ('1.040×', '1.020× – 1.070×', 'pass, borderline')
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
    ('--poly_orders=0', "--poly_orders=0: '0' is not an order from 1 to 8"),
    ('--poly_orders=2,x', "'x' is not an order from 1 to 8"),
    ('--activations=gelu,swiglu --moe_activations= --poly_orders=2', '--poly_orders applies to PolyCom activations'),
    ('--gen_activations=gelu,tanh', "unknown activation 'tanh' in --gen_activations"),
    ('--gen_new_tokens=0', 'gen_new_tokens must be >= 1, got 0'),
    ('--warmup_at_once=0', 'warmup_at_once must be >= 1, got 0'),
    ('--gen_n_embd=130', 'n_embd (130) must be divisible by n_head (4)'),
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


def test_each_mode_is_built_timed_and_freed_before_the_next_modes_models_exist(monkeypatch):
    # the ratios pair rows of one mode, so a mode can be timed alone: a compiled model must not be alive while the
    # eager ones are timed (nor the other way round), and the table keeps its order whatever the phases
    monkeypatch.setattr(torch, 'compile', lambda model, **kwargs: model)
    events, alive = [], set()
    init, release, timed_steps = bench.Variant.__init__, bench.Variant.release, bench.Variant.timed_steps

    def build(self, *args, **kwargs):
        init(self, *args, **kwargs)
        alive.add(self.name)
        events.append(('build', self.name))

    def free(self):
        release(self)
        alive.discard(self.name)
        events.append(('free', self.name))

    def timed(self, n):
        events.append(('time', self.name, frozenset(alive)))
        return timed_steps(self, n)

    monkeypatch.setattr(bench.Variant, '__init__', build)
    monkeypatch.setattr(bench.Variant, 'release', free)
    monkeypatch.setattr(bench.Variant, 'timed_steps', timed)
    results = bench.run_benchmark(dict(TINY, modes='eager,compiled', repeats=2, gen_activations=''),
                                  log=lambda *a: None)
    for event in events:
        if event[0] == 'time':
            mode = event[1].split()[-1]
            assert {name.split()[-1] for name in event[2]} == {mode}, event
    first_compiled = next(i for i, e in enumerate(events) if e[:2] == ('build', 'gelu compiled'))
    assert all(('free', f"{n} eager") in events[:first_compiled] for n in ('gelu', 'polynorm', 'moe-gelu'))
    assert [r['name'] for r in results['rows']] == ['gelu eager', 'polynorm eager', 'gelu compiled',
                                                    'polynorm compiled', 'moe-gelu eager', 'moe-gelu compiled']
    rows = {r['name']: r for r in results['rows']}
    assert rows['gelu compiled']['ratio_gelu'] == pytest.approx(1.0) and rows['moe-gelu compiled']['ratio_dense'] > 0


def test_an_isolated_variant_runs_in_its_own_process_and_measures_what_the_in_process_one_does():
    # the default: each variant in a process of its own (as train.py holds one model); the same model, so the same
    # FLOPs and the same bytes saved for backward; stopping it ends its process
    cfg = dict(TINY, isolate=True)
    gelu, child = bench.build_variants(dict(cfg, activations='gelu', moe_activations='polynorm'), 'eager')
    gelu.release()
    here = bench.Variant(cfg, 'polynorm', 'eager', True)
    assert child.name == here.name == 'moe-polynorm eager' and child.process.pid != os.getpid()
    assert (child.flops_per_token, child.tokens_per_step) == (here.flops_per_token, here.tokens_per_step)
    assert child.saved_bytes_per_token() == here.saved_bytes_per_token()
    child.step()
    assert child.timed_steps(2) > 0
    child.release()
    assert not child.process.is_alive() and child.process.exitcode == 0


def test_isolated_variants_warm_up_side_by_side_in_groups_and_all_before_any_timing():
    """warmup_at_once = 2 of 3 variants: two warm-ups asked before either is awaited, then the third; the in-process
    variants (isolate=False) warm up in turn whatever warmup_at_once says. The real pipe answers the request too."""
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def start_warm_up(self, steps):
            calls.append(('start', self.name, steps))

        def finish_warm_up(self):
            calls.append(('finish', self.name))
            return 1.0
    variants = [Fake('a'), Fake('b'), Fake('c')]
    bench.warm_up(dict(TINY, isolate=True, warmup_at_once=2, warmup_steps=3), variants, [], log=lambda *a: None)
    assert calls == [('start', 'a', 3), ('start', 'b', 3), ('finish', 'a'), ('finish', 'b'),
                     ('start', 'c', 3), ('finish', 'c')]
    calls.clear()
    bench.warm_up(dict(TINY, isolate=False, warmup_at_once=2, warmup_steps=3), variants[:2], [], log=lambda *a: None)
    assert calls == [('start', 'a', 3), ('finish', 'a'), ('start', 'b', 3), ('finish', 'b')]
    children = bench.build_variants(dict(TINY, isolate=True, activations='gelu,polynorm', moe_activations=''), 'eager')
    for child in children:
        child.start_warm_up(1)
    assert all(child.finish_warm_up() > 0 for child in children)
    for child in children:
        child.release()


def test_a_failure_inside_a_variants_process_is_raised_here_with_its_name():
    # n_head=3 does not divide n_embd=32: GPTConfig's one-line error, raised in the child, comes back named
    with pytest.raises(RuntimeError, match=r"^gelu eager: ValueError: .*n_head"):
        bench.build_variants(dict(TINY, isolate=True, n_head=3, activations='gelu', moe_activations=''))


def test_the_isolated_default_gives_every_row_and_figure_of_the_in_process_run(results):
    isolated = bench.run_benchmark(dict(TINY, isolate=True), log=lambda *a: None)
    assert [r['name'] for r in isolated['rows']] == [r['name'] for r in results['rows']]
    assert set(isolated['figures']) == set(results['figures'])
    for a, b in zip(isolated['rows'], results['rows']):
        assert a['saved_per_token'] == b['saved_per_token'] and a['flops_per_token'] == b['flops_per_token']
        assert a['step_ms'] > 0


def test_the_variants_own_processes_are_not_counted_as_other_load(monkeypatch):
    # what the machine was busy with, minus this process, minus the variants' processes = other people's work; a
    # variant's process that cannot be read makes the load unknown (None), never 0
    class Child:
        def __init__(self, seconds):
            self.name, self.mode, self.times, self.peaks, self.seconds = 'gelu eager', 'eager', [], [], iter(seconds)

        def timed_steps(self, n):
            return 1.0

        def cpu_seconds(self):
            return next(self.seconds)

    machine = iter([(100.0, 5.0), (110.0, 6.0)])          # (busy seconds of the whole machine, of this process)
    monkeypatch.setattr(bench, 'cpu_seconds', lambda: next(machine))
    cfg = dict(TINY, repeats=2)
    children = [Child([10.0, 12.0]), Child([0.0, 1.0])]
    others, seconds, _ = bench.time_rounds(cfg, children, [], log=lambda *a: None)
    assert others == pytest.approx(10.0 - 1.0 - 3.0) and seconds >= 0
    machine = iter([(100.0, 5.0), (110.0, 6.0)])
    assert bench.time_rounds(cfg, [Child([10.0, None])], [], log=lambda *a: None)[0] is None


def test_the_other_load_is_unknown_when_one_modes_rounds_could_not_measure_it(monkeypatch):
    # two modes: 3 s of others' CPU over 10 s, then an unknown one: the run's load is unknown, not 3 / 10
    monkeypatch.setattr(torch, 'compile', lambda model, **kwargs: model)
    answers = iter([(3.0, 10.0, []), (None, 10.0, [])])
    monkeypatch.setattr(bench, 'time_rounds', lambda cfg, variants, generations, log: next(answers))
    monkeypatch.setattr(bench, 'summarize', lambda *args: {})
    cfg = dict(TINY, modes='eager,compiled', gen_activations='')
    assert bench.run_benchmark(cfg, log=lambda *a: None).get('other_load') is None
    answers = iter([(3.0, 10.0, []), (1.0, 10.0, [])])
    assert bench.run_benchmark(cfg, log=lambda *a: None)['other_load'] == pytest.approx(4.0 / 20.0)


def test_mfu_pairs_each_step_time_with_the_matmul_peak_of_its_own_round():
    cfg = dict(TINY, modes='eager,compiled', moe_activations='', activations='gelu')
    variants = [bench.Variant(cfg, 'gelu', mode, False) for mode in ('eager', 'compiled')]
    flops = variants[0].flops_per_token * variants[0].tokens_per_step
    variants[0].times, variants[0].peaks = [1.0, 2.0, 1.0], [4 * flops, 1 * flops, 2 * flops]   # MFU 1/4, 1/2, 1/2
    variants[1].times, variants[1].peaks = [1.0, 1.0, 1.0], [8 * flops, 8 * flops, 8 * flops]   # its own rounds
    results = bench.summarize(cfg, variants, {('gelu', None, False): 1.0}, variants[0].peaks + variants[1].peaks, 1.0)
    rows = {r['name']: r for r in results['rows']}
    assert rows['gelu eager']['mfu'] == pytest.approx(0.5) and rows['gelu compiled']['mfu'] == pytest.approx(1 / 8)
    assert results['peak'] == pytest.approx(6 * flops)       # the median over all six rounds


def test_poly_orders_measure_every_polycom_activation_once_per_order_in_one_run(tmp_path):
    # the cost of the order r in one run: PolyCom rows per order (dense and MoE), each built at its own order, each
    # paired with the one GELU row; non-PolyCom rows once; the targets read only the rows at poly_order
    cfg = dict(TINY, activations='gelu,polynorm,swiglu', moe_activations='polynorm', poly_orders='2,5')
    variants = bench.build_variants(cfg)
    assert [v.name for v in variants] == ['gelu eager', 'polynorm-r2 eager', 'polynorm-r5 eager', 'swiglu eager',
                                          'moe-polynorm-r2 eager', 'moe-polynorm-r5 eager']
    assert [v.raw_model.activations()[0].order for v in variants if v.activation == 'polynorm'] == [2, 5, 2, 5]
    for i, v in enumerate(variants):
        v.times = [0.1 * (i + 1)] * 3                    # distinct, known step times: each ratio says who it paired
    saved = {(v.activation, v.order, v.moe): 100.0 + i for i, v in enumerate(variants)}
    results = bench.summarize(cfg, variants, saved, [], 1.0)
    rows = {r['name']: r for r in results['rows']}
    assert rows['polynorm-r5 eager']['ratio_gelu'] == pytest.approx(3.0) and rows['polynorm-r5 eager']['order'] == 5
    assert rows['moe-polynorm-r5 eager']['ratio_dense'] == pytest.approx(6 / 3)       # its own order's dense row
    assert rows['moe-polynorm-r2 eager']['ratio_dense'] == pytest.approx(5 / 2)
    assert rows['polynorm-r2 eager']['saved_per_token'] == 101.0 and rows['swiglu eager']['order'] is None
    assert ('step_ratio', 'polynorm', 'eager') not in results['figures']                # no row at poly_order 3
    results = bench.summarize(dict(cfg, poly_order=5), variants, saved, [], 1.0)
    assert results['figures'][('step_ratio', 'polynorm', 'eager')][0] == pytest.approx(3.0)
    path = tmp_path / 'bench.md'
    bench.write_markdown(results, str(path))
    assert 'poly_orders 2,5 (targets at 5)' in path.read_text() and '| moe-polynorm-r2 eager |' in path.read_text()


def test_without_poly_orders_names_carry_no_order_and_build_at_poly_order():
    variants = bench.build_variants(dict(TINY, poly_order=4))
    assert [v.name for v in variants] == ['gelu eager', 'polynorm eager', 'moe-gelu eager']
    assert variants[1].raw_model.activations()[0].order == 4


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
    bench.main(TINY_FLAGS + ['--record=True', '--force_record=True'])   # a tiny run: only recorded when forced
    text = recorded.read_text()
    assert 'recorded by hand' in text and '<!-- bench:cpu begin -->' in text and '| polynorm eager |' in text
    assert not (tmp_path / 'out-bench').exists()
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote the cpu section of {recorded} (--record=True)"


# ----------------------------------------------------------------------------- generation with and without the KV cache


def test_generation_rows_give_tokens_per_second_both_ways_and_the_speedup_target(results, tmp_path):
    [row] = results['generation']
    assert row['name'] == 'polynorm generate' and row['ffn_hidden'] == 192    # the paper's rule at d = 32
    assert row['cached_tokens_per_sec'] > 0 and row['uncached_tokens_per_sec'] > 0 and row['speedup'] > 0
    assert results['figures'][('gen_speedup', 'polynorm', None)] == (row['speedup'],) * 3   # one round: no spread
    path = tmp_path / 'BENCHMARKS.md'
    bench.write_markdown(results, str(path))
    text = path.read_text()
    assert 'Generation: GPT.generate, batch 1, a 1-token prompt, 6 new tokens' in text and 'block_size 16' in text
    assert '| generation | FFN hidden | tokens/s with KV cache | tokens/s without |' in text
    assert '| polynorm generate | 192 |' in text
    assert [line for line in text.splitlines() if line.startswith('| PolyNorm generation tokens/s, KV cache / none |')
            ][0].startswith('| PolyNorm generation tokens/s, KV cache / none | ≥ 3.00× |')
    lines = []
    bench.print_results(results, log=lines.append)
    assert any(line.startswith('polynorm generate ') for line in '\n'.join(lines).splitlines())


def test_the_cpu_generation_model_is_the_readmes_char_model_and_the_gpu_one_gpt2_small():
    cpu = bench.generation_config(bench.DEFAULTS, 'polynorm')
    assert (cpu.n_layer, cpu.n_head, cpu.n_embd, cpu.ffn_hidden, cpu.block_size, cpu.vocab_size) == \
        (4, 4, 128, 576, 256, 84)
    assert bench.DEFAULTS['gen_new_tokens'] + 1 == cpu.block_size            # prompt + new tokens fill the cache
    gpu_cfg, _ = bench.parse_config([bench.GPU_RECORD_CONFIG], bench.DEFAULTS)
    gpu = bench.generation_config(gpu_cfg, 'polynorm')
    assert (gpu.n_layer, gpu.n_head, gpu.n_embd, gpu.ffn_hidden, gpu.block_size, gpu.vocab_size) == \
        (12, 12, 768, 0, 1024, 50304)
    assert gpu_cfg['gen_activations'] == 'polynorm' and gpu_cfg['gen_new_tokens'] == 255


def test_each_round_times_one_call_with_and_one_without_the_cache_in_alternating_order(monkeypatch):
    g = bench.Generation(dict(TINY), 'gelu')
    calls = []
    generate = g.model.generate
    monkeypatch.setattr(g.model, 'generate', lambda idx, n, **kwargs: calls.append((n, kwargs)) or
                        generate(idx, n, **kwargs))
    g.time_round(cached_first=True)
    g.time_round(cached_first=False)
    assert [kwargs['kv_cache'] for _, kwargs in calls] == [True, False, False, True]
    assert all(n == 6 and kwargs['temperature'] == 0.8 and kwargs['top_k'] == 200 for n, kwargs in calls)
    assert len(g.times[True]) == len(g.times[False]) == 2 and min(g.times[True] + g.times[False]) > 0
    assert not g.model.training and g.generate(True).shape == (1, 7)


def test_the_speedup_is_the_median_of_per_round_ratios_and_tokens_per_second_use_median_times():
    g = bench.Generation(dict(TINY, gen_new_tokens=10), 'gelu')
    g.times = {True: [1.0, 2.0, 1.0], False: [4.0, 4.0, 5.0]}        # per-round ratios 4, 2, 5
    row = bench.generation_row(g)
    assert (row['speedup'], row['speedup_q1'], row['speedup_q3']) == (4.0, 3.0, 4.5)
    assert row['cached_tokens_per_sec'] == 10.0 and row['uncached_tokens_per_sec'] == 2.5


def test_generation_past_block_size_runs_and_no_gen_activations_means_no_generation_rows():
    g = bench.Generation(dict(TINY, gen_new_tokens=40), 'polynorm')     # block_size 16: the cache refills
    assert g.generate(True).shape == g.generate(False).shape == (1, 41)
    results = bench.summarize(dict(TINY, gen_activations=''), [], {}, [], 1.0)
    assert results['generation'] == [] and ('gen_speedup', 'polynorm', None) not in results['figures']


# ----------------------------------------------------------------------------- the shared timing step


def tiny_model(moe=True):
    config = GPTConfig(block_size=16, vocab_size=65, n_layer=1, n_head=2, n_embd=32, activation='polynorm',
                             n_expert=4 if moe else 0, top_k=2, init_seed=7)
    return GPT(config, verbose=False)


def test_train_step_is_one_step_on_the_mean_gradient_of_loss_plus_aux_losses():
    # by hand: SGD with lr 1 on the gradient of cross-entropy + MoE aux losses; train_step must take the same step,
    # and with 3 micro-steps on the same batch too (each objective / 3: the mean, not the sum, of 3 equal gradients)
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randint(65, (2, 16), generator=generator) for _ in range(2))
    by_hand = tiny_model()
    _, loss, aux = by_hand(x, y, return_aux=True)
    assert aux['aux_total'].item() > 0                        # the aux losses are part of what is checked
    (loss + aux['aux_total']).backward()
    with torch.no_grad():
        for p in by_hand.parameters():
            p -= p.grad
    for micro_steps in (1, 3):
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        train_step(model, optimizer, x, y, nullcontext(), micro_steps=micro_steps)
        for (name, p), q in zip(model.named_parameters(), by_hand.parameters()):
            assert torch.allclose(p, q, atol=1e-6), (micro_steps, name)
            assert p.grad is None, name                        # zero_grad(set_to_none=True) after the step


def test_mean_step_seconds_is_the_mean_of_n_calls_between_cuda_synchronizations(monkeypatch):
    clock, events = [0.0], []

    def step():   # each call "takes" 2 seconds on a fake clock
        events.append('step')
        clock[0] += 2.0
    monkeypatch.setattr(bench.time, 'perf_counter', lambda: clock[0])
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: events.append(f'sync {device}'))
    assert mean_step_seconds(step, 4, 'cpu') == 2.0
    assert events == ['step'] * 4                               # no CUDA call on CPU
    events.clear()
    assert mean_step_seconds(step, 3, torch.device('cuda', 1)) == 2.0
    assert events == ['sync cuda:1'] + ['step'] * 3 + ['sync cuda:1']


def test_bench_variants_take_the_shared_step_and_train_py_s_optimizer(monkeypatch):
    # one optimizer builder (GPT.configure_optimizers with its defaults: bench sets no hyperparameters of its own) and
    # one timing step (train_step, timed by mean_step_seconds) for bench.py and compare.py
    built, stepped = [], []
    configure = GPT.configure_optimizers
    monkeypatch.setattr(GPT, 'configure_optimizers',
                        lambda self, *args, **kwargs: built.append((args, kwargs)) or configure(self, *args, **kwargs))
    v = bench.Variant(dict(TINY), 'gelu', 'eager', False)
    assert built == [((), {'device_type': 'cpu'})]
    monkeypatch.setattr(bench_variants, 'train_step', lambda *args, **kwargs: stepped.append(args))
    assert v.timed_steps(2) >= 0
    assert stepped == [(v.model, v.optimizer, v.x, v.y, v.ctx)] * 2


# ----------------------------------------------------------------------------- what --record=True accepts


def refuse_to_run(cfg, log=print):
    raise AssertionError("the benchmark ran although --record=True should have refused before it started")


@pytest.mark.parametrize('flags, named', [
    (['--n_layer=1'], 'n_layer=1 (recorded: 4)'),                                   # model size
    (['--batch_size=4', '--block_size=64'], 'block_size=64 (recorded: 256), batch_size=4 (recorded: 16)'),
    (['--repeats=3'], 'repeats=3 (recorded: 15)'),                                  # measurement
    (['--warmup_steps=1'], 'warmup_steps=1 (recorded: 2)'),
    (['--matmul_peak=False'], 'matmul_peak=False (recorded: True)'),
    (['--modes=eager'], "modes='eager' (recorded: 'eager,compiled')"),              # what runs
    (['--activations=gelu,polynorm'],
     "activations='gelu,polynorm' (recorded: 'gelu,relu,relu2,swiglu,polyrelu,polynorm')"),
    (['--moe_activations='], "moe_activations='' (recorded: 'gelu,polynorm')"),
    (['--gen_new_tokens=100'], 'gen_new_tokens=100 (recorded: 255)'),                # generation
    (['--gen_activations='], "gen_activations='' (recorded: 'gelu,polynorm')"),
    (['--dtype=bfloat16'], "dtype='bfloat16' (recorded: 'float32')"),              # numerics
    (['--malloc_keep_heap=True'], 'malloc_keep_heap=True (recorded: False)'),
    (['--seed=1'], 'seed=1 (recorded: 1337)'),
])
def test_record_refuses_a_run_that_is_not_the_full_cpu_config(monkeypatch, tmp_path, capsys, flags, named):
    recorded = tmp_path / 'BENCHMARKS.md'
    recorded.write_text('# Benchmarks\n\nrecorded by hand\n')
    monkeypatch.setattr(bench, 'RECORD_FILE', str(recorded))
    monkeypatch.setattr(bench, 'run_benchmark', refuse_to_run)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        bench.main(flags + ['--record=True'])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: --record=True refused: not the full recording configuration '
                                               'of cpu (the defaults of bench.py): ')
    assert named in err[0] and err[0].endswith('pass --force_record=True to record anyway')
    assert recorded.read_text() == '# Benchmarks\n\nrecorded by hand\n'


def test_the_full_recording_configs_are_accepted_and_the_gpu_one_is_config_bench_gpu():
    assert bench.record_config_problem(dict(bench.DEFAULTS, record=True, out_file='x.md')) is None
    gpu, _ = bench.parse_config([bench.GPU_RECORD_CONFIG], bench.DEFAULTS)
    assert gpu['device'].startswith('cuda')
    for device in ('cuda', 'cuda:1'):
        assert bench.record_config_problem(dict(gpu, device=device, record=True)) is None
    # bench.py's CPU defaults are not the GPU recording, and the GPU file's sizes are not the CPU one
    assert 'of cuda (config/bench_gpu.py): n_layer=4 (recorded: 12)' in \
        bench.record_config_problem(dict(bench.DEFAULTS, device='cuda'))
    assert 'of cpu (the defaults of bench.py): n_layer=12 (recorded: 4)' in \
        bench.record_config_problem(dict(gpu, device='cpu'))


def full_run(results, other_load):
    """A stand-in for run_benchmark: the tiny run's rows, as if the full config ran with other_load measured."""
    return lambda cfg, log=print: dict(results, cfg=cfg, other_load=other_load)


@pytest.mark.parametrize('other_load, why', [
    (0.9, 'other processes used 0.90 CPU cores on average while the rounds were timed (a recording allows 0.3'),
    (None, 'the CPU use of other processes could not be measured'),
])
def test_record_refuses_a_run_on_a_loaded_machine_and_keeps_its_results_in_out_file(monkeypatch, tmp_path, capsys,
                                                                                  results, other_load, why):
    recorded = tmp_path / 'BENCHMARKS.md'
    recorded.write_text('# Benchmarks\n\nrecorded by hand\n')
    monkeypatch.setattr(bench, 'RECORD_FILE', str(recorded))
    monkeypatch.setattr(bench, 'run_benchmark', full_run(results, other_load))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        bench.main(['--record=True'])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: --record=True refused: ' + why)
    assert 'BENCHMARKS.md is left as it is and the results are in out-bench/bench.md' in err[0]
    assert recorded.read_text() == '# Benchmarks\n\nrecorded by hand\n'
    assert '| polynorm eager |' in (tmp_path / 'out-bench' / 'bench.md').read_text()


def test_record_takes_a_quiet_full_run_and_force_record_says_what_it_let_through(monkeypatch, tmp_path, results):
    recorded = tmp_path / 'BENCHMARKS.md'
    monkeypatch.setattr(bench, 'RECORD_FILE', str(recorded))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, 'run_benchmark', full_run(results, 0.02))
    bench.main(['--record=True'])
    assert '| polynorm eager |' in recorded.read_text() and 'force_record' not in recorded.read_text()
    monkeypatch.setattr(bench, 'run_benchmark', full_run(results, 0.9))
    bench.main(['--record=True', '--force_record=True', '--repeats=3'])
    forced = [line for line in recorded.read_text().splitlines() if 'force_record' in line]
    assert forced == ["- **recorded with --force_record=True although not the full recording configuration of cpu "
                      "(the defaults of bench.py): repeats=3 (recorded: 15); other processes used 0.90 CPU cores on "
                      "average while the rounds were timed (a recording allows 0.3: a quiet machine)**"]
    assert not (tmp_path / 'out-bench').exists()
