"""
The run folder (out_dir) of train.py: who may write it (the lock), when an old run in it may be replaced, the
checkpoints, the CSV logs, summary.json, and the last line a stopped run prints (what is kept, how to resume).

Only the global rank 0 writes here. Rules:
- one process at a time: out_dir/.lock (checkpoint.lock_dir); a second train.py on the folder is refused.
- a scratch run refuses a folder that holds a run unless --overwrite=True, and even then the old files are removed only
  once the new run has started (after its first evaluation): a run that fails to start leaves the old one intact.
- ckpt.pt is replaced atomically; ckpt_best.pt is a hard link to the ckpt.pt of the best evaluation.
- on resume the logs are cut back to the checkpoint's iteration (a run killed after its last checkpoint wrote rows
  that the resumed run writes again).
- a disk that fills up ends the run with one line naming the checkpoint that is kept.
"""
import csv
import json
import os
import shlex
import sys

from training import checkpoint
from training.processes import fail

RUN_FILES = ('ckpt.pt', 'ckpt_best.pt', 'log.csv', 'coeffs.csv', 'moe.csv', 'summary.json')   # what makes a run
RESUME_KEYS = ('model', 'optimizer', 'model_args', 'config', 'iter_num', 'tokens', 'best_val_loss', 'rng')
LOG_COLUMNS = ['iter', 'tokens', 'train_loss', 'val_loss', 'lr', 'ms_per_iter', 'tokens_per_sec', 'mfu', 'elapsed_s',
               'balance_loss', 'z_loss', 'expert_cv', 'grad_norm']
# summary.json, one schema for every way a run ends (outcome: 'finished', 'did_not_learn', 'diverged' or 'stopped';
# finished is true for the first two: the schedule ran to its end)
SUMMARY_KEYS = ('outcome', 'finished', 'diverged', 'iter', 'tokens', 'final_val_loss', 'best_val_loss', 'best_iter',
                'tokens_per_sec', 'ms_per_iter', 'mfu', 'speed_iters', 'speed_includes_warmup', 'other_load_cores',
                'peak_mem_mb', 'total_params', 'active_params', 'elapsed_s', 'device', 'dtype', 'world_size',
                'unigram_entropy')


def resume_command(argv, out_dir, world_size, nodes):
    """The command that continues a run: the same script, its out_dir and the flags the user typed, each once (the
    last value wins, as it did), minus init_from and overwrite; the checkpoint supplies every other setting."""
    flags = {}
    for arg in argv:
        key = arg.partition('=')[0][2:]
        if arg.startswith('--') and key not in ('init_from', 'out_dir', 'overwrite'):
            flags.pop(key, None)
            flags[key] = arg
    if nodes > 1:
        launcher = f"torchrun --nnodes={nodes} --nproc_per_node={world_size // nodes} (on every node, as before) "
    else:
        launcher = f"torchrun --standalone --nproc_per_node={world_size} " if world_size > 1 else "python "
    return launcher + shlex.join(['train.py', f'--out_dir={out_dir}', '--init_from=resume', *flags.values()])


CSV_FORMATS = {'iter': 'd', 'tokens': 'd', 'ms_per_iter': '.3f', 'tokens_per_sec': '.1f', 'mfu': '.6f',
               'elapsed_s': '.3f'}   # every other column: full precision


def number(value, spec=None):
    """Text for a CSV cell: '' for missing, full precision (repr) by default so curves compare exactly."""
    if value is None:
        return ''
    return format(value, spec) if spec else repr(float(value))


def outcome_at_the_end(val_loss, floor):
    """How a run that reached max_iters ended: 'finished', or 'did_not_learn' (exit status 4) when its final val loss
    is not below the unigram floor (None: not checked)."""
    return 'finished' if floor is None or val_loss is None or val_loss < floor else 'did_not_learn'


def open_wandb_run(config):
    """The wandb run (--wandb_log=True, rank 0) that RunFolder.start hands every log row to; wandb is imported only
    here, so a run without it never needs the package."""
    import wandb
    return wandb.init(project=config['wandb_project'], name=config['wandb_run_name'], config=config)


def wandb_row(name, row):
    """A CSV row as wandb logs it, at full precision, at wandb step = its iter: log.csv's columns under their own
    names, coeffs.csv's and moe.csv's as 'coeffs/<column>' and 'moe/<column>'; empty cells are left out."""
    if name == 'log.csv':
        return {column: value for column, value in row.items() if value is not None}
    prefix = name[:-len('.csv')] + '/'
    return {prefix + column: value for column, value in row.items() if column != 'iter' and value is not None}


class RunFolder:
    def __init__(self, out_dir, master, resume_command):
        self.dir, self.master, self.resume_command = out_dir, master, resume_command
        self.ckpt_path, self.best_path = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'ckpt_best.pt')
        self.previous_run = []      # the files of the run a scratch run found there
        self.last_saved = None      # (iter, val loss) that ckpt.pt holds, once known
        self.saved_best = None      # (iter, val loss) that ckpt_best.pt holds
        self.logs = {}              # log file name -> header, once the run has started
        self.wandb_run = None       # --wandb_log=True (rank 0): the wandb run that gets every CSV row too
        self.training_started = False
        sys.excepthook = self.report_interrupt

    # ---- before the run: the checkpoint to resume, the lock, the old run
    def check_checkpoint(self):
        """A missing or visibly damaged ckpt.pt is refused before anything else happens (no torch needed)."""
        try:
            checkpoint.check_file(self.ckpt_path)
        except (FileNotFoundError, checkpoint.CheckpointError) as e:
            fail(str(e))

    def load_checkpoint(self):
        try:
            return checkpoint.load(self.ckpt_path, required=RESUME_KEYS)
        except (FileNotFoundError, checkpoint.CheckpointError) as e:
            fail(str(e))

    def claim(self, init_from, overwrite):
        """Take the lock and find the old run. Nothing in the folder is changed here."""
        if not self.master:
            return
        try:
            lock = checkpoint.lock_dir(self.dir, 'train.py')
        except checkpoint.LockError as e:
            fail(str(e))
        if lock.note:
            print(f"note: {self.dir}: {lock.note}", flush=True)
        removed = checkpoint.remove_stale_temp_files(self.dir)
        if removed:
            print(f"note: removed {len(removed)} unfinished checkpoint file(s) of a killed save: {', '.join(removed)}",
                  flush=True)
        self.previous_run = [name for name in RUN_FILES if os.path.exists(os.path.join(self.dir, name))]
        if init_from == 'scratch' and self.previous_run and not overwrite:
            fail(self.occupied_message())

    def occupied_message(self):
        """Why a scratch run may not start in a folder that holds a run, and what to do: resume only what can be."""
        held = f"{self.dir} already holds a run ({', '.join(self.previous_run)})"
        if 'ckpt.pt' in self.previous_run:
            return (f"{held}; continue it with --init_from=resume, replace it with --overwrite=True, or use another "
                    f"--out_dir")
        try:
            with open(os.path.join(self.dir, 'summary.json')) as f:
                summary = json.load(f)
        except (OSError, ValueError):
            summary = {}
        if summary.get('outcome') == 'diverged' or summary.get('diverged'):
            return (f"{held} that diverged before saving a checkpoint: nothing to resume; choose a new --out_dir (or "
                    f"replace the failed run with --overwrite=True) and a lower --learning_rate")
        return (f"{held} with no checkpoint: nothing to resume; replace it with --overwrite=True or use another "
                f"--out_dir")

    def state(self, init_from, start_iter):
        """What the run does with the folder, for the line that names it at the start."""
        if init_from == 'scratch' and self.previous_run:
            return f"replacing the run there ({', '.join(self.previous_run)}; --overwrite=True)"
        return 'resuming the run there' if start_iter else 'a new run'

    def start(self, init_from, iter_num, val_loss, coefficient_names, n_moe_layers, wandb_run=None):
        """The run has started: only now are the old run's files replaced (--overwrite=True) or the logs cut back to
        the checkpoint being resumed. A new run's log starts with the row of its iteration-0 evaluation. wandb_run
        (--wandb_log=True): from now on every row written to a log is logged there too (log_row)."""
        self.logs, self.wandb_run = {'log.csv': LOG_COLUMNS}, wandb_run
        if coefficient_names:
            self.logs['coeffs.csv'] = ['iter'] + coefficient_names
        if n_moe_layers:
            self.logs['moe.csv'] = ['iter'] + [f'layer{i}_cv' for i in range(n_moe_layers)]
        self.training_started = True
        if not self.master:
            return
        if init_from == 'scratch':
            for name in self.previous_run:
                os.remove(os.path.join(self.dir, name))
        for name, header in self.logs.items():
            self.cut_csv(name, iter_num if init_from == 'resume' else None)
        if iter_num == 0:
            self.log('log.csv', {'iter': 0, 'tokens': 0, 'val_loss': val_loss})

    # ---- CSV logs
    def cut_csv(self, name, last_iter):
        """Rewrite a log with its header and the old rows up to last_iter (matched by column name, so a log written
        with other columns keeps its data). Atomic: a temp file renamed over the old one."""
        path, header, rows = os.path.join(self.dir, name), self.logs[name], []
        if last_iter is not None and os.path.exists(path):
            with open(path, newline='') as f:
                for row in csv.DictReader(f):
                    try:
                        if int(row.get('iter') or -1) <= last_iter:
                            rows.append([row.get(column) or '' for column in header])
                    except ValueError:
                        continue   # a damaged line
        tmp = checkpoint.temp_path(path)   # .log.csv.<pid>.tmp: a kill -9 leftover is cleaned up at the next start
        with open(tmp, 'w', newline='') as f:
            csv.writer(f).writerows([header] + rows)
        os.replace(tmp, path)

    def log(self, name, row):
        """Append a row ({column: number or None}; missing columns stay empty) to one of the run's CSV logs, and log
        it to the wandb run if there is one."""
        path = os.path.join(self.dir, name)
        try:
            with open(path, 'a', newline='') as f:
                csv.writer(f).writerow([number(row.get(c), CSV_FORMATS.get(c)) for c in self.logs[name]])
        except OSError as e:
            if checkpoint.disk_full(e):
                fail(f"disk full: cannot append to {path}; {self.kept()}. Free some space. {self.how_to_continue()}",
                     code=1)
            raise
        if self.wandb_run is not None:
            self.wandb_run.log(wandb_row(name, row), step=row['iter'])

    def log_iteration(self, row, layer_cv=(), coefficients=None):
        """The console line and the CSV rows of one logged iteration (rank 0). row: {log.csv column: number or None};
        layer_cv: each MoE layer's expert-load coefficient of variation; coefficients: the PolyCom ones by name."""
        if not self.master:
            return
        mfu, val_loss = row.get('mfu'), row.get('val_loss')
        print(f"iter {row['iter']}: loss {row['train_loss']:.4f}, lr {row['lr']:.2e}, {row['ms_per_iter']:.1f} "
              f"ms/iter, {row['tokens_per_sec']:,.0f} tok/s" + (f", mfu {mfu * 100:.2f}%" if mfu is not None else "") +
              (f", val loss {val_loss:.4f}" if val_loss is not None else ""), flush=True)
        self.log('log.csv', row)
        if 'moe.csv' in self.logs:
            self.log('moe.csv', {'iter': row['iter'], **{f'layer{i}_cv': cv for i, cv in enumerate(layer_cv)}})
        if 'coeffs.csv' in self.logs:
            self.log('coeffs.csv', {'iter': row['iter'], **coefficients})

    # ---- checkpoints
    def save_checkpoint(self, state, best):
        """Write ckpt.pt atomically and, when best, make ckpt_best.pt the same file (a hard link: no second write; the
        next save replaces ckpt.pt, not the link). last_saved and saved_best follow each file as soon as it is in
        place, so a failure message names exactly what is on disk."""
        progress = (state['iter_num'], state['val_loss'])
        if not self.master:
            self.last_saved = progress
            self.saved_best = progress if best else self.saved_best
            return
        try:
            checkpoint.save_atomic(state, self.ckpt_path)
            self.last_saved = progress
            if best:
                self.link_best_checkpoint()
                self.saved_best = progress
        except checkpoint.CheckpointError:   # disk full while writing ckpt.pt; save_atomic removed its temp file
            self.fail_disk_full(self.ckpt_path, state['iter_num'])
        except OSError as e:
            if checkpoint.disk_full(e):
                self.fail_disk_full(self.best_path, state['iter_num'])
            raise

    def link_best_checkpoint(self):
        """ckpt_best.pt := ckpt.pt, atomically: a link (or copy) under a temp name, then renamed over the old best."""
        link = checkpoint.temp_path(self.best_path)
        try:
            try:
                os.link(self.ckpt_path, link)
            except OSError as e:   # a filesystem without hard links: copy
                if checkpoint.disk_full(e):
                    raise
                import shutil
                shutil.copyfile(self.ckpt_path, link)
            os.replace(link, self.best_path)
        finally:
            if os.path.exists(link):
                os.remove(link)

    def fail_disk_full(self, path, iter_num):
        fail(f"disk full: no space left in {os.path.abspath(self.dir)} to write {os.path.basename(path)} at iter "
             f"{iter_num}; the last good checkpoint is kept ({self.kept()}). Free some space there. "
             f"{self.how_to_continue()}", code=1)

    # ---- what a stopped run says
    def kept(self):
        """Which checkpoints a stopped run leaves, for the last line it prints."""
        if self.last_saved is None:
            return "no checkpoint was saved yet"
        text = f"{self.ckpt_path} holds iter {self.last_saved[0]}"
        if self.last_saved[1] is not None:
            text += f" (val loss {self.last_saved[1]:.4f})"
        if self.saved_best is not None and self.saved_best[0] != self.last_saved[0] and os.path.exists(self.best_path):
            text += f", {self.best_path} iter {self.saved_best[0]} (val loss {self.saved_best[1]:.4f})"
        return text

    def how_to_continue(self):
        if self.last_saved is None:
            return "Nothing to resume from: start again with the same command and --overwrite=True"
        return f"Resume with: {self.resume_command}"

    def report_interrupt(self, kind, value, tb):
        """sys.excepthook: Ctrl-C before the training loop (or a second one inside it) raises KeyboardInterrupt
        wherever it lands; a person pressed it, so one line saying what was kept replaces the traceback."""
        if not issubclass(kind, KeyboardInterrupt):
            return sys.__excepthook__(kind, value, tb)
        if self.master and not self.training_started:
            print("interrupted before training started; nothing in out_dir was changed", file=sys.stderr)
        elif self.master:
            if self.last_saved is not None:   # the logs end where the checkpoint does, as a resumed run expects
                for name in self.logs:
                    self.cut_csv(name, self.last_saved[0])
            print(f"interrupted, stopped without saving: {self.kept()}"
                  f"{' (the logs were cut back to it)' if self.last_saved is not None else ''}. "
                  f"{self.how_to_continue()}", file=sys.stderr)

    def nothing_to_train(self, max_iters, unigram_floor, **progress):
        """A finished run resumed with the same max_iters (compare.py may do this after a kill between the last
        checkpoint and summary.json): make sure summary.json exists, change nothing else."""
        if self.master and not os.path.exists(os.path.join(self.dir, 'summary.json')):
            self.write_summary(outcome=outcome_at_the_end(progress['final_val_loss'], unigram_floor),
                               unigram_entropy=unigram_floor, **progress)
        if self.master:
            print(f"nothing to train: {self.ckpt_path} is at iter {progress['iter']} and max_iters is {max_iters}; "
                  f"pass a larger --max_iters to continue", flush=True)

    # ---- summary.json
    def write_summary(self, **numbers):
        """summary.json: every key of SUMMARY_KEYS (None where a run has no such number), from the outcome."""
        outcome = numbers['outcome']
        summary = {key: numbers.get(key) for key in SUMMARY_KEYS}
        summary.update(finished=outcome in ('finished', 'did_not_learn'),
                       diverged=outcome == 'diverged' or bool(numbers.get('diverged')))
        if outcome == 'diverged' and summary['best_iter'] is None:
            summary['best_val_loss'] = None   # no checkpoint holds it: the untrained model's first evaluation
        try:
            with open(os.path.join(self.dir, 'summary.json'), 'w') as f:
                json.dump(summary, f, indent=2)
        except OSError as e:
            if not checkpoint.disk_full(e):
                raise
            fail(f"disk full: cannot write summary.json in {self.dir}; {self.kept()}", code=1)
