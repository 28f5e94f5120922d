"""
Run folders: where compare.py's runs live, what state each one is in, and reading what they left on disk.

One run = one train.py --out_dir holding log.csv, coeffs.csv, summary.json, ckpt.pt, plus what compare.py and report.py
add: compare_settings.json (the settings it was trained with), analysis.json (report.py's cache of the analyses) and,
in folders of older versions, diverged.json (compare.py's mark of a tuning run that blew up). Where runs live (sizes
and tuning are optional levels; the lr part only when the variant's rate was tuned or fixed by the variant):
    out_dir/[<size>/]<variant>[-lr<rate>]-s<seed>/
    out_dir/[<size>/]tune/<variant>-lr<rate>-s<tuning seed>/
compare.py decides what to train from a folder's state and starts train.py in it (launch, at the end); report.py
reads only finished runs and lists the rest.
"""
import csv
import json
import math
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_log(path):
    """CSV -> {column: float array}, empty cells -> nan. Rows are keyed by iter and the last one wins: should a
    resumed run's log repeat the iterations between its checkpoint and the interruption, the rerun counts."""
    if not Path(path).exists():
        return None
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    by_iter = {}
    for row in rows:
        by_iter[int(float(row['iter']))] = row
    ordered = [by_iter[k] for k in sorted(by_iter)]

    def number(text):
        try:
            return float(text)
        except (TypeError, ValueError):
            return math.nan
    log = {col: np.array([number(r.get(col)) for r in ordered]) for col in rows[0].keys()}
    if 'elapsed_s' in log:                                                # the iter-0 evaluation row has no time
        log['elapsed_s'][(log['iter'] == 0) & np.isnan(log['elapsed_s'])] = 0.0
    return log


# ----------------------------------------------------------------------------- where a run lives, and its state
def run_dir_of(out_dir, name, seed, size=None, lr=None, tune=False):
    """out_dir/[size/][tune/]<name>[-lr<rate>]-s<seed>: the folder names every version of compare.py used."""
    base = Path(out_dir) / size if size else Path(out_dir)
    base = base / 'tune' if tune else base
    return base / (name + (f'-lr{lr:g}' if lr is not None else '') + f'-s{seed}')


def run_diverged(run_dir):
    """True when the run diverged: its summary.json's outcome is 'diverged' (train.py's exit code 3), or, in a
    summary.json of an older train.py (no outcome), diverged is true (it wrote that next to finished: true), or
    compare.py left diverged.json for it. A run stopped by Ctrl-C in the middle of a divergence (outcome 'stopped')
    may still recover: it is resumed, not counted as diverged."""
    summary = read_json(Path(run_dir) / 'summary.json') or {}
    if (Path(run_dir) / 'diverged.json').exists():
        return True
    return summary.get('outcome') == 'diverged' if 'outcome' in summary else summary.get('diverged') is True


def divergence_note(run_dir):
    """How far a diverged run got, for the tables: 'iter 120' (or '' when nothing says)."""
    summary = read_json(Path(run_dir) / 'summary.json') or {}
    return f"iter {summary['iter']}" if isinstance(summary.get('iter'), int) else ''


def run_state(run_dir, max_iters):
    """'diverged', 'done', 'resume' or 'scratch'. A diverged run is a result (never retrained); a finished run is
    extended (resumed) when asked for more iterations than it has."""
    if run_diverged(run_dir):
        return 'diverged'
    summary = read_json(Path(run_dir) / 'summary.json')
    if summary and summary.get('finished') and (max_iters is None or summary.get('iter', 0) >= max_iters):
        return 'done'
    return 'resume' if (Path(run_dir) / 'ckpt.pt').exists() else 'scratch'


FAILED = ('diverged', 'did not learn')   # the outcomes of a run that is no result


def run_outcome(run_dir, max_iters):
    """What a run folder holds: 'finished', 'diverged', 'did not learn' (train.py's exit status 4: its final val loss
    was not below the unigram entropy of the training tokens), 'partial' (started, not finished) or 'missing'."""
    state = run_state(run_dir, max_iters)
    if state == 'diverged':
        return 'diverged'
    if state == 'done':
        summary = read_json(Path(run_dir) / 'summary.json') or {}
        loss = summary.get('final_val_loss')
        if not (isinstance(loss, (int, float)) and math.isfinite(loss)):
            return 'diverged'
        return 'did not learn' if summary.get('outcome') == 'did_not_learn' else 'finished'
    return 'partial' if state == 'resume' or (Path(run_dir) / 'log.csv').exists() else 'missing'


def settings_changes(run_dir, settings, harmless):
    """['key: old -> new', ...] between the settings run_dir was trained with and `settings` (keys in `harmless` do
    not change what a run computes). Only a run that trained something counts: a folder whose train.py stopped at
    its own checks (a typo) holds no result, so the corrected command is free to train it."""
    old = read_json(Path(run_dir) / 'compare_settings.json')
    if old is None or run_state(run_dir, None) == 'scratch':
        return []
    changed = sorted(k for k in set(old) | set(settings) if k not in harmless and old.get(k) != settings.get(k))
    return [f'{k}: {old.get(k)!r} -> {settings.get(k)!r}' for k in changed]


def record_settings(run_dir, settings):
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / 'compare_settings.json').write_text(json.dumps(settings, indent=1, sort_keys=True,
                                                                    default=repr))


# ----------------------------------------------------------------------------- reading one comparison
def load_runs(group, quiet=False):
    """Read every run of one comparison. Returns (runs, partial, failed):
    runs = {variant: [run dicts]} of the runs that FINISHED and learned (summary.json says finished at the expected
    iteration, not diverged, final val loss below the unigram entropy); partial = [(name, how far it got)] of runs
    that exist but are not finished; failed = [{'name', 'act', 'seed', 'outcome' ('diverged' or 'did not learn'),
    'note', 'final_val_loss'}] of runs that are no result; quiet: print nothing (a second reading of the same runs).
    Partial and failed runs are left out of every mean, interval, verdict and figure line: a run stopped at iteration
    50 among runs of 400, a blown-up loss or a model that learned nothing is not a result of the recipe."""
    runs, partial, failed = {}, [], []
    for act in group['acts']:
        for seed in group['seeds']:
            run_dir, name = group['run_dirs'][act, seed], f'{act}-s{seed}'
            if run_diverged(run_dir):
                failed.append(dict(name=name, act=act, seed=seed, outcome='diverged', note=divergence_note(run_dir),
                                   final_val_loss=None))
                continue
            log = read_log(run_dir / 'log.csv')
            summary = read_json(run_dir / 'summary.json') or {}
            if log is None:
                continue
            expected = group.get('expected_iters')
            done_iter = int(np.nanmax(log['iter'])) if len(log['iter']) else 0
            if not summary.get('finished') or (expected and summary.get('iter', 0) < expected):
                partial.append((name, f'iter {done_iter}' + (f' of {expected}' if expected else '')))
                continue
            if summary.get('outcome') == 'did_not_learn':
                failed.append(dict(name=name, act=act, seed=seed, outcome='did not learn', note=learning_note(summary),
                                   final_val_loss=summary.get('final_val_loss')))
                continue
            runs.setdefault(act, []).append(dict(
                seed=seed, dir=run_dir, log=log, coeffs=read_log(run_dir / 'coeffs.csv'),
                summary=summary, analysis=read_json(run_dir / 'analysis.json')))
    listed = dict(partial + [(f['name'], f['note']) for f in failed])
    missing = [f'{a}-s{s}' for a in group['acts'] for s in group['seeds']
               if not any(r['seed'] == s for r in runs.get(a, [])) and f'{a}-s{s}' not in listed]
    if quiet:
        return runs, partial, failed
    if missing:
        print(f"note: no finished run for {', '.join(missing)} under {group['dir']}: left out")
    for name, where in partial:
        print(f"WARNING: {name} under {group['dir']} is not finished ({where}): left out of every figure and "
              f"table; rerun the same command without --replot to finish it")
    for f in failed:
        where = f" ({f['note']})" if f['note'] else ''
        print(f"WARNING: {f['name']} under {group['dir']} {f['outcome']}{where}: marked {f['outcome']}, left out of "
              f"every mean, interval and verdict")
    return runs, partial, failed


def learning_note(summary):
    """'final val loss 3.9912 >= unigram entropy 3.3308' for a run that did not learn (or '' when nothing says)."""
    loss, entropy = summary.get('final_val_loss'), summary.get('unigram_entropy')
    if not isinstance(loss, (int, float)) or not isinstance(entropy, (int, float)):
        return ''
    return f'final val loss {loss:.4f} >= unigram entropy {entropy:.4f}'


# ----------------------------------------------------------------------------- running train.py in run folders
RUNNING = []          # the train.py processes alive right now, so Ctrl-C can stop them cleanly
DIVERGED_EXIT = 3     # train.py's exit code for a run that diverged: an outcome to record, not an error
NOT_LEARNED_EXIT = 4  # train.py's exit code for a run whose final val loss is not below the unigram entropy: likewise


def launch(jobs, slots_available):
    """Run train.py jobs, one per slot at a time. A slot is a GPU id (the child sees only that GPU through
    CUDA_VISIBLE_DEVICES), 'cpu:<threads>' or None (no restriction: CPU or a single GPU, runs one after the other).
    Each child's output is echoed with a '[i/N name]' prefix. A run that exits with train.py's diverged code is
    recorded (diverged.json beside it) and the others go on, as after a run that did not learn (its summary.json
    says so); any other failure stops new jobs from starting.
    Returns the list of (name, command) that failed."""
    slots = queue.Queue()
    for slot in slots_available:
        slots.put(slot)
    print_lock, failures, threads = threading.Lock(), [], []

    def run_one(job, slot):
        env = dict(os.environ, PYTHONUNBUFFERED='1')   # stream the child's progress lines as they come
        if slot is not None and slot.startswith('cpu'):
            env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = slot.split(':')[1]
        elif slot is not None:
            env['CUDA_VISIBLE_DEVICES'] = slot
        try:
            proc = subprocess.Popen(job['cmd'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            RUNNING.append(proc)
            tail = deque(maxlen=20)
            for line in proc.stdout:
                tail.append(line)
                with print_lock:
                    print(f"[{job['tag']}] {line}", end='', flush=True)
            code = proc.wait()
            RUNNING.remove(proc)
            if code == DIVERGED_EXIT:
                record_divergence(job, ''.join(tail))
                with print_lock:
                    print(f"=== [{job['tag']}] diverged: recorded, left out of every number; the other runs go on",
                          flush=True)
            elif code == NOT_LEARNED_EXIT:
                with print_lock:
                    print(f"=== [{job['tag']}] did not learn: recorded, left out of every number; the other runs go "
                          f"on", flush=True)
            elif code != 0 and code != -signal.SIGINT:
                failures.append((job['name'], ' '.join(job['cmd'])))
        finally:
            slots.put(slot)

    for job in jobs:
        slot = slots.get()                        # blocks until a GPU (or the single CPU slot) is free
        if failures:
            break
        with print_lock:
            print(f"=== [{job['tag']}] {job['state']}: {' '.join(job['cmd'][1:])}", flush=True)
        thread = threading.Thread(target=run_one, args=(job, slot), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        while thread.is_alive():                   # join with a timeout so Ctrl-C reaches the main thread
            thread.join(0.2)
    return failures


def record_divergence(job, output):
    """diverged.json beside the run: its summary.json says so too, but a run may diverge before writing one."""
    run_dir = job.get('run_dir')
    if run_dir is not None and Path(run_dir).is_dir():
        lines = output.strip().splitlines()
        message = next((l for l in reversed(lines) if l.startswith('diverged:')), lines[-1] if lines else '')
        (Path(run_dir) / 'diverged.json').write_text(json.dumps({'diverged': True, 'message': message}))


def stop_running(grace_s=60):
    """Ctrl-C: pass SIGINT on to the train.py children (train.py saves nothing half-written and exits) and wait."""
    for proc in list(RUNNING):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.time() + grace_s
    for proc in list(RUNNING):
        try:
            proc.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()


def run_slots(train_settings, parallel):
    """[None] to run one at a time; with several GPUs visible (and device 'auto' or 'cuda'), one slot per GPU id, so
    each run owns a GPU (`parallel` caps the number used). On CPU, --parallel=N gives N slots 'cpu:<threads>': small
    models use many cores poorly, so N runs with cores/N threads each finish sooner than N runs one after another
    (measured on 2 cores, the default model: 2 runs x 1 thread = 1.06x the throughput of 1 run x 2 threads)."""
    import torch
    device = str(train_settings.get('device', 'auto'))
    on_cpu = device == 'cpu' or (device == 'auto' and not torch.cuda.is_available())
    if on_cpu and parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // parallel)
        return [f'cpu:{threads}'] * parallel
    if device not in ('auto', 'cuda'):
        return [None]                               # CPU, mps, or a GPU the user pinned with cuda:N
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    ids = visible.split(',') if visible else [str(i) for i in range(torch.cuda.device_count())]
    ids = ids[:parallel] if parallel else ids
    return ids if len(ids) > 1 else [None]
