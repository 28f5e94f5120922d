"""
Downstream evaluation: the multiple-choice accuracy of a trained checkpoint, scored the way lm-eval-harness scores a
multiple-choice task. Each choice is appended to the item's context; the model's log-likelihood of the choice's tokens
given the context is summed; the choice with the highest sum is the model's answer (acc), and the choice with the
highest sum divided by its number of tokens is its answer per token (acc_norm).

Two tasks:
- continuation: items built from a prepared dataset's own validation split, offline, for any tokenizer. An item is a
  context of N tokens, the true next M tokens, and K - 1 distractors: M-token spans from other validation positions.
  The items are a function of the dataset and a seed only, so every run is scored on the same items and two runs can
  be compared item by item (each result names its items by a fingerprint).
- hellaswag: the HellaSwag validation file (rowanz/hellaswag, 10,042 items), English text in GPT-2 BPE. Formatted as
  nanoGPT's and llm.c's evaluation do: the context is the item's `ctx`, each choice is ' ' + ending.

eval.py is the command; compare.py scores every finished run with the same functions and keeps each result in the
run folder as eval_<task>.json, so a --replot does not score again.
"""
import hashlib
import json
import os
import time
from collections import namedtuple
from pathlib import Path

import numpy as np

TASKS = ('continuation', 'hellaswag')
DEFAULT_CHOICES = 4
DEFAULT_ITEMS = 1000              # continuation; HellaSwag's default is every item of the file
# (context tokens N, choice tokens M) of a continuation item, per tokenizer: the same amount of text for both.
# Characters: a 32-character continuation (about six words: only a model that follows the text picks it out of four)
# after 64 characters of context. N + M = 96 fits the default models' block_size of 128, so they score every item
# whole, uncropped. A longer context barely moved the answers: two default-recipe checkpoints scored 0.574 and 0.558
# with N = 64, 0.582 and 0.550 with N = 128 (cropped to 97), each within the other's ±0.03 interval, at 4/3 the cost.
# GPT-2 BPE averages 3.23 characters per token on Shakespeare (5,053,943 characters, 1,562,698 tokens): 20 and 10.
DEFAULT_SPANS = {'char': (64, 32), 'gpt2': (20, 10)}

HELLASWAG_URL = 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'
# published in the Hugging Face `datasets` library's dataset_infos.json for hellaswag (download_checksums of this file)
HELLASWAG_SHA256 = '0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588'
HELLASWAG_BYTES = 12_246_618
HELLASWAG_DIR = Path(__file__).resolve().parent.parent / 'data' / 'hellaswag'

# context: token ids; choices: K lists of token ids; label: the index of the right choice
Item = namedtuple('Item', 'context choices label')


def result_name(task):
    return f'eval_{task}.json'


# ----------------------------------------------------------------------------- continuation items
def default_spans(tokenizer, context_tokens=0, choice_tokens=0):
    """(N, M): the given values, 0 = the tokenizer's default (DEFAULT_SPANS)."""
    n, m = DEFAULT_SPANS[tokenizer]
    return context_tokens or n, choice_tokens or m


def locate(index, starts_per_file):
    """index (array) into all valid starts of every file -> (file, offset inside that file)."""
    ends = np.cumsum(starts_per_file)
    file_of = np.searchsorted(ends, index, side='right')
    return file_of, index - (ends - starts_per_file)[file_of]


def continuation_items(data_dir, n_items, context_tokens, choice_tokens, n_choices=DEFAULT_CHOICES, seed=0):
    """n_items continuation items from the val split of the dataset in data_dir (possibly sharded), a pure function of
    the split's tokens and these arguments (numpy's default_rng(seed)). Item windows (N + M tokens) and distractor
    spans (M tokens) each lie inside one file. A distractor never overlaps its item's window and never equals the true
    continuation or another distractor token for token (a tie would be no question). The right choice's place is drawn
    too, so a model that prefers a position gains nothing. ValueError (one line) when the split is too small."""
    from data.dataset import TokenDataset, shown
    val = TokenDataset(data_dir, 'val')
    window = context_tokens + choice_tokens
    counts = val.file_tokens                                               # (n_files,) tokens per file
    window_starts = np.maximum(counts - window + 1, 0)                     # (n_files,) valid item starts
    span_starts = np.maximum(counts - choice_tokens + 1, 0)                # (n_files,) valid distractor starts
    first_token = np.cumsum(counts) - counts                               # (n_files,) global index of each file
    if window_starts.sum() < n_items:
        raise ValueError(f"the val split of {shown(str(data_dir))} ({val.num_tokens:,} tokens) has room for "
                         f"{int(window_starts.sum()):,} item windows of {window} tokens, fewer than the {n_items:,} "
                         f"items asked: lower --eval_items, --eval_context_tokens or --eval_choice_tokens")
    rng = np.random.default_rng(seed)
    files, offsets = locate(rng.choice(int(window_starts.sum()), size=n_items, replace=False), window_starts)
    tokens = [np.memmap(path, dtype=val.dtype, mode='r') for path in val.paths]
    items = []
    for f, offset in zip(files, offsets):
        text = tokens[f][offset:offset + window].astype(np.int64)
        truth = text[context_tokens:]
        start = first_token[f] + offset                                    # the window in global coordinates
        spans = [truth]
        for _ in range(n_choices - 1):
            spans.append(draw_distractor(rng, tokens, span_starts, first_token, choice_tokens, start, window, spans))
        label = int(rng.integers(n_choices))
        spans[0], spans[label] = spans[label], spans[0]
        items.append(Item(text[:context_tokens].tolist(), [s.tolist() for s in spans], label))
    del tokens
    return items


def draw_distractor(rng, tokens, span_starts, first_token, length, window_start, window, taken, attempts=1000):
    """One M-token span from elsewhere in the split: outside the item's window, unlike every span in taken."""
    for _ in range(attempts):
        f, offset = (int(v[0]) for v in locate(rng.integers(int(span_starts.sum()), size=1), span_starts))
        start = first_token[f] + offset
        if start < window_start + window and window_start < start + length:
            continue                                                       # overlaps the item itself
        span = tokens[f][offset:offset + length].astype(np.int64)
        if not any(np.array_equal(span, t) for t in taken):
            return span
    raise ValueError(f"no distractor of {length} tokens unlike the others after {attempts} draws: the val split is "
                     f"too small or too repetitive; raise --eval_choice_tokens or use a bigger dataset")


def fingerprint(items):
    """16 hex digits naming a set of items (their tokens and labels): equal fingerprints, the same questions."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.context, item.choices, item.label]).encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- HellaSwag
def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def how_to_get_hellaswag(target):
    return (f"download {HELLASWAG_URL} ({HELLASWAG_BYTES:,} bytes, sha256 {HELLASWAG_SHA256}) to {target}, or pass "
            f"--hellaswag_path=FILE")


def hellaswag_file(path='', folder=HELLASWAG_DIR):
    """(path, official) of the HellaSwag validation file to score. A given path is used as it is (official: whether
    its sha256 is the published one). Without one: folder/hellaswag_val.jsonl, downloaded there on first use when
    online and checked against the published sha256. ValueError (one line) when it is missing and cannot be
    downloaded, or when the downloaded or cached file is not the official one."""
    from data import sources
    if path:
        if not os.path.isfile(path):
            raise ValueError(f"--hellaswag_path={path}: no such file; give the path of hellaswag_val.jsonl")
        return Path(path), sha256_of(path) == HELLASWAG_SHA256
    target = Path(folder) / 'hellaswag_val.jsonl'
    if not target.exists():
        download = target.with_name(target.name + '.download')
        try:
            sources.download_url(HELLASWAG_URL, download)
        except OSError as e:
            raise ValueError(f"HellaSwag's validation file is not at {target} and cannot be downloaded ({e}); "
                             f"{how_to_get_hellaswag(target)}") from None
        if sha256_of(download) != HELLASWAG_SHA256:
            download.unlink()
            raise ValueError(f"the file downloaded from {HELLASWAG_URL} has another sha256 than the published one "
                             f"(not kept); {how_to_get_hellaswag(target)}")
        os.replace(download, target)
    elif sha256_of(target) != HELLASWAG_SHA256:
        raise ValueError(f"{target} is not the official HellaSwag validation file (its sha256 differs from "
                         f"{HELLASWAG_SHA256}): delete it to download it again, or score it on purpose with "
                         f"--hellaswag_path={target}")
    return target, True


def hellaswag_items(path, encode, limit=0):
    """Items from a HellaSwag .jsonl file (one JSON object per line with 'ctx', 'endings' and 'label'): context =
    encode(ctx), choice i = encode(' ' + endings[i]) (nanoGPT's and llm.c's formatting). limit > 0: the first limit
    items. ValueError naming the line for a line that is not such an object."""
    items = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{number} is not a JSON line; is it HellaSwag's hellaswag_val.jsonl?") \
                    from None
            problem = hellaswag_row_problem(row)
            if problem:
                raise ValueError(f"{path}:{number}: {problem}; is it HellaSwag's hellaswag_val.jsonl?")
            context = encode(row['ctx'])
            if not context:
                raise ValueError(f"{path}:{number}: the context 'ctx' is empty")
            items.append(Item(context, [encode(' ' + ending) for ending in row['endings']], int(row['label'])))
            if len(items) == limit:
                break
    if not items:
        raise ValueError(f"{path} holds no items")
    return items


def hellaswag_row_problem(row):
    if not isinstance(row, dict) or not isinstance(row.get('ctx'), str):
        return "no 'ctx' text"
    endings = row.get('endings')
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) and e for e in endings):
        return "'endings' is not a list of 2 or more texts"
    label = row.get('label')
    if isinstance(label, str) and label.isdigit():
        label = int(label)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(endings):
        return f"'label' {row.get('label')!r} is not the index of one of the {len(endings)} endings"
    return None


# ----------------------------------------------------------------------------- the items of a task
Spec = namedtuple('Spec', 'task n_items seed context_tokens choice_tokens n_choices hellaswag_path',
                  defaults=('continuation', 0, 0, 0, 0, DEFAULT_CHOICES, ''))


def make_items(spec, meta, data_dir=None):
    """(items, item settings) of a task for a model whose vocabulary is meta's (a dataset's meta.json).
    continuation: from the val split of the dataset in data_dir, N and M at the defaults of its tokenizer where the
    spec says 0. hellaswag: GPT-2 BPE vocabularies only. item settings: what names the items (their fingerprint among
    them), recorded with every result and compared by the cache. FileNotFoundError or ValueError (one line) when the
    items cannot be made."""
    from data.dataset import get_tokenizer
    if spec.task == 'hellaswag':
        if meta['tokenizer'] != 'gpt2':
            raise ValueError(f"hellaswag is English text in GPT-2 BPE tokens, but this model's vocabulary is "
                             f"{meta['tokenizer']} ({meta['vocab_size']} tokens, dataset {meta.get('name')}): its "
                             f"token ids would mean other text; score it with --task=continuation")
        path, official = hellaswag_file(spec.hellaswag_path)
        items = hellaswag_items(path, get_tokenizer(meta)[0], spec.n_items)
        return items, {'file': str(path), 'official': official, 'n_items': len(items),
                       'fingerprint': fingerprint(items)}
    n, m = default_spans(meta['tokenizer'], spec.context_tokens, spec.choice_tokens)
    n_items = spec.n_items or DEFAULT_ITEMS
    items = continuation_items(data_dir, n_items, n, m, spec.n_choices, spec.seed)
    return items, {'dataset': meta.get('name') or Path(data_dir).name, 'seed': spec.seed, 'n_items': n_items,
                   'context_tokens': n, 'choice_tokens': m, 'n_choices': spec.n_choices,
                   'fingerprint': fingerprint(items)}


# ----------------------------------------------------------------------------- scoring
def check_fits(items, block_size):
    """Each choice must fit the model's window whole, with one context token before it (the context is cropped from
    the left, never the choice). ValueError otherwise."""
    longest = max(len(choice) for item in items for choice in item.choices)
    if longest > block_size:
        raise ValueError(f"a choice of {longest} tokens does not fit the model's block_size {block_size} with a "
                         f"context token before it; choices are never cropped: use --eval_choice_tokens="
                         f"{block_size // 4} or less, or a model with a longer block_size")


def sequences(items, block_size):
    """Every (item, choice) as (input ids, index of the first choice token in the targets), the context cropped from
    the left so that context + choice is at most block_size + 1 tokens (the inputs, one shorter, fit the model)."""
    out = []
    for item in items:
        for choice in item.choices:
            context = item.context[-(block_size + 1 - len(choice)):]
            out.append((context + choice, len(context) - 1))
    return out


def choice_log_likelihoods(model, items, device='cpu', batch_size=32, autocast=None):
    """(sums, counts): (n_items, K) arrays, the log-likelihood of each choice given its context summed over the
    choice's tokens, and the number of those tokens. Sequences run batch_size at a time, padded on the right (a causal
    model's earlier positions never see the padding), in eval mode without gradients."""
    import contextlib
    import torch
    import torch.nn.functional as F
    block_size = model.config.block_size
    check_fits(items, block_size)
    todo = sequences(items, block_size)
    sums = np.zeros(len(todo))
    model.eval()
    with torch.no_grad(), autocast or contextlib.nullcontext():
        for first in range(0, len(todo), batch_size):
            batch = todo[first:first + batch_size]
            width = max(len(ids) for ids, _ in batch) - 1                  # T: the longest input of the batch
            x = torch.zeros((len(batch), width), dtype=torch.long)         # (B, T) inputs, right-padded with 0
            y = torch.zeros((len(batch), width), dtype=torch.long)         # (B, T) next tokens
            scored = torch.zeros((len(batch), width), dtype=torch.bool)    # (B, T) True where y is a choice token
            for row, (ids, start) in enumerate(batch):
                x[row, :len(ids) - 1] = torch.tensor(ids[:-1])
                y[row, :len(ids) - 1] = torch.tensor(ids[1:])
                scored[row, start:len(ids) - 1] = True
            x, y, scored = x.to(device), y.to(device), scored.to(device)
            # forward() returns logits at every position only with targets, (B, T, V): 50304 wide for GPT-2 BPE.
            # Only the choice positions need them: the output head runs on those rows alone.
            h = model.transformer.ln_f(model.hidden_states(x)[-1])        # (B, T, C)
            logp = F.log_softmax(model.lm_head(h[scored]).float(), dim=-1)   # (n, V), n = choice tokens in batch
            token_logp = logp.gather(1, y[scored][:, None])[:, 0]         # (n,)
            rows = torch.arange(len(batch), device=device)[:, None].expand_as(scored)[scored]   # (n,) row of each
            per_row = torch.zeros(len(batch), device=device, dtype=torch.float64)
            per_row.index_add_(0, rows, token_logp.double())              # (B,) summed over each choice
            sums[first:first + len(batch)] = per_row.cpu().numpy()
    k = len(items[0].choices)
    counts = np.array([len(c) for item in items for c in item.choices], dtype=float)
    return sums.reshape(len(items), k), counts.reshape(len(items), k)


def score(model, items, device='cpu', batch_size=32, autocast=None):
    """The accuracy of model on items: {'n_items', 'n_choices', 'accuracy', 'accuracy_ci95', 'accuracy_norm',
    'accuracy_norm_ci95', 'chance', 'correct', 'correct_norm', 'score_s'}. correct: one '1' or '0' per item in order
    (summed log-likelihood), correct_norm the same per token. Intervals: Wilson score, 95%."""
    from lab.stats import wilson_interval
    if len({len(item.choices) for item in items}) != 1:
        raise ValueError("every item must have the same number of choices")
    start = time.perf_counter()
    sums, counts = choice_log_likelihoods(model, items, device, batch_size, autocast)
    labels = np.array([item.label for item in items])
    right = sums.argmax(axis=1) == labels
    right_norm = (sums / counts).argmax(axis=1) == labels
    n = len(items)
    return {'n_items': n, 'n_choices': len(items[0].choices),
            'accuracy': float(right.mean()), 'accuracy_ci95': list(wilson_interval(int(right.sum()), n)),
            'accuracy_norm': float(right_norm.mean()),
            'accuracy_norm_ci95': list(wilson_interval(int(right_norm.sum()), n)),
            'chance': 1 / len(items[0].choices),
            'correct': ''.join('1' if r else '0' for r in right),
            'correct_norm': ''.join('1' if r else '0' for r in right_norm),
            'score_s': time.perf_counter() - start}


def summary_line(result, path):
    low, high = result['accuracy_ci95']
    return (f"eval {result['task']}: accuracy {result['accuracy']:.4f} [{low:.4f}, {high:.4f}], per token "
            f"{result['accuracy_norm']:.4f}, on {result['n_items']:,} items of {result['n_choices']} choices (chance "
            f"{result['chance']:.4f}); checkpoint iter {result['iter_num']}, scored in {result['score_s']:.1f} s -> "
            f"{path}")


def write_result(result, path):
    """eval_<task>.json, written whole or not at all."""
    tmp = Path(path).with_name(f'.{Path(path).name}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(result, indent=1) + '\n')
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- a run folder's checkpoint
def result_of(model, ckpt, ckpt_path, task, items, item_settings, device='cpu', batch_size=32, autocast=None):
    """Score a loaded checkpoint: the result dict that eval.py and compare.py write as eval_<task>.json."""
    return {'task': task, **score(model, items, device, batch_size, autocast), 'iter_num': ckpt.get('iter_num'),
            'checkpoint': str(ckpt_path), 'checkpoint_val_loss': ckpt.get('val_loss'), 'items': item_settings}


def cached(run_dir, task, item_settings, iter_num):
    """The run's eval_<task>.json when it holds a result for these items and for the run's checkpoint, else None.
    The checkpoint's: written after ckpt.pt (a run trained further or again since is scored again); without a ckpt.pt
    (a --replot from the logs), one whose checkpoint iteration is the run's final iteration iter_num."""
    from lab.runs import read_json
    path = Path(run_dir) / result_name(task)
    result = read_json(path)
    if not result or result.get('items') != item_settings:
        return None
    ckpt = Path(run_dir) / 'ckpt.pt'
    fresh = path.stat().st_mtime >= ckpt.stat().st_mtime if ckpt.exists() else result.get('iter_num') == iter_num
    return result if fresh else None


def check_spec(spec, data_dir, block_sizes):
    """compare.py's check before training: the items of spec can be made from data_dir and fit every block size."""
    from data.dataset import load_meta
    items = make_items(spec, load_meta(data_dir), data_dir)[0]
    for block_size in sorted(block_sizes):
        check_fits(items, block_size)


def ensure_evals(runs, spec, data_dir, batch_size=32):
    """compare.py's scoring: every finished run of runs ({variant: [run dicts]}) gets run['eval'], its result for
    spec on the items made from data_dir: the cached eval_<task>.json when it fits (same items, same checkpoint
    iteration), else its ckpt.pt is scored now and the result written. When the items cannot be made (a --replot
    without the dataset), the cached results are used as they are. A run with neither a fitting result nor a
    checkpoint, or with a damaged checkpoint, has no accuracy (said in one line)."""
    if spec is None:
        return
    import torch
    from data.dataset import load_meta
    from lab.runs import read_json
    from training import checkpoint
    name = result_name(spec.task)
    every = [r for rs in runs.values() for r in rs]
    try:
        if not any((Path(run['dir']) / 'ckpt.pt').exists() for run in every):
            raise FileNotFoundError('no run has a checkpoint')           # a --replot from the logs alone
        items, item_settings = make_items(spec, load_meta(data_dir), data_dir)
    except (FileNotFoundError, ValueError) as e:
        for run in every:
            run['eval'] = read_json(Path(run['dir']) / name)
        if any((Path(run['dir']) / 'ckpt.pt').exists() for run in every):
            print(f"note: no {spec.task} items to score on ({e}); each run's {name} is used as it is")
        return
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    for run in every:
        run['eval'] = cached(run['dir'], spec.task, item_settings, run['summary'].get('iter'))
        ckpt = Path(run['dir']) / 'ckpt.pt'
        if run['eval'] is not None:
            continue
        if not ckpt.exists():
            print(f"note: {run['dir']} has no ckpt.pt and no {name} for these items: no {spec.task} accuracy")
            continue
        print(f"scoring {run['dir']} on {len(items):,} {spec.task} items", flush=True)
        try:
            model, state = checkpoint.load_model(ckpt, device)
            check_fits(items, model.config.block_size)
        except (checkpoint.CheckpointError, ValueError) as e:
            print(f"WARNING: {e}; its {spec.task} accuracy is left out")
            continue
        run['eval'] = result_of(model, state, ckpt, spec.task, items, item_settings, device, batch_size)
        write_result(run['eval'], Path(run['dir']) / name)
