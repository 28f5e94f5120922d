"""
Downstream evaluation of a model trained with train.py: multiple-choice accuracy (lab/downstream.py has the method).

    python eval.py --out_dir=out-shakespeare-char                # continuation items from its dataset's val split
    python eval.py --out_dir=out-gpt2-small --task=hellaswag     # HellaSwag (GPT-2 BPE checkpoints)

Writes out_dir/eval_<task>.json (accuracy and accuracy per token, each with its 95% Wilson interval, the checkpoint's
iteration, the items' settings and which items were answered right) and prints one line. Every setting is checked
before torch is imported; a wrong one is one error line (exit status 2) and nothing is written.
"""
import os

from configurator import configure, device_name_problem
from lab import downstream
from training import checkpoint
from training.processes import choose_device, fail

# -----------------------------------------------------------------------------
out_dir = 'out'             # the folder holding ckpt.pt
task = 'continuation'       # 'continuation' (any prepared dataset, offline) or 'hellaswag' (GPT-2 BPE models)
dataset = ''                # continuation: the dataset whose val split makes the items ('' = the checkpoint's own)
eval_items = 0              # 0 = the task's default: 1000 continuation items, every HellaSwag item (10,042)
eval_seed = 0               # continuation: which items (the same seed gives the same items on every run)
eval_context_tokens = 0     # continuation: N context tokens (0 = per tokenizer: 64 characters, 20 GPT-2 tokens)
eval_choice_tokens = 0      # continuation: M tokens per choice (0 = per tokenizer: 32 characters, 10 GPT-2 tokens)
eval_choices = 4            # continuation: K choices, the true continuation and K - 1 distractors
hellaswag_path = ''         # hellaswag: a local hellaswag_val.jsonl ('' = data/hellaswag/, downloaded when online)
batch_size = 32             # sequences per forward pass
device = 'auto'             # 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'
dtype = 'auto'              # 'auto' (bf16 on CUDA if supported, else fp16; fp32 elsewhere), 'float32', 'bfloat16',
                            # 'float16'
# -----------------------------------------------------------------------------
_, explicit = configure(globals())
# -----------------------------------------------------------------------------
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
CONTINUATION_ONLY = ('dataset', 'eval_seed', 'eval_context_tokens', 'eval_choice_tokens', 'eval_choices')


def setting_problem():
    """The first thing wrong with the settings, as one line naming the key, or None."""
    if task not in downstream.TASKS:
        return f"unknown task {task!r}; valid choices: {', '.join(downstream.TASKS)}"
    for key in ('eval_items', 'eval_context_tokens', 'eval_choice_tokens'):
        if globals()[key] < 0:
            return f"{key} must be >= 0 (0 = the default), got {globals()[key]}"
    if eval_choices < 2:
        return f"eval_choices must be >= 2 (the true continuation and at least one distractor), got {eval_choices}"
    if batch_size < 1:
        return f"batch_size must be >= 1, got {batch_size}"
    if not 0 <= eval_seed < 2 ** 31:
        return f"eval_seed must be in 0 .. 2**31 - 1, got {eval_seed}"
    if task == 'hellaswag' and explicit & set(CONTINUATION_ONLY):
        return (f"--{sorted(explicit & set(CONTINUATION_ONLY))[0]} is a setting of --task=continuation; HellaSwag's "
                f"items come from its file (--eval_items=N scores the first N)")
    if task == 'continuation' and 'hellaswag_path' in explicit:
        return "--hellaswag_path is a setting of --task=hellaswag"
    if dtype not in ('auto', 'float32', 'bfloat16', 'float16'):
        return f"dtype must be one of auto, float32, bfloat16, float16, got {dtype!r}"
    if device_name_problem(device):
        return device_name_problem(device)
    return checkpoint.out_dir_problem(out_dir)


if setting_problem():
    fail(setting_problem())

# torch comes only now (1-2 s, with choose_device and the data helpers): everything above fails fast
from data.dataset import dataset_dir, load_meta  # noqa: E402
from training.settings import vocabulary  # noqa: E402

device, _, dtype, autocast = choose_device(device, dtype, local_rank=None)   # 'auto' resolved

try:
    model, ckpt = checkpoint.load_model(ckpt_path, device)
except (FileNotFoundError, checkpoint.CheckpointError) as e:
    fail(str(e))


def checkpoint_meta():
    """The vocabulary the model speaks: saved in the checkpoint (older checkpoints: its dataset's meta.json)."""
    if ckpt.get('meta') is not None:
        return ckpt['meta']
    return dataset_meta(ckpt.get('config', {}).get('dataset'), 'the dataset the checkpoint was trained on')[1]


def dataset_meta(name, what):
    """(folder, meta.json) of a dataset, or one error line."""
    if not name:
        fail(f"{ckpt_path} records neither its dataset nor its vocabulary; name the dataset it was trained on with "
             f"--dataset=NAME")
    try:
        return dataset_dir(name), load_meta(dataset_dir(name))
    except (FileNotFoundError, ValueError) as e:
        fail(f"{e} (eval.py reads {what} for its items)")


def continuation_dataset(meta):
    """(folder, meta.json) of the dataset whose val split makes the continuation items, checked against the model's
    vocabulary (meta): another vocabulary's token ids would mean other text."""
    own = ckpt.get('config', {}).get('dataset') or meta.get('name')
    path, data_meta = dataset_meta(dataset or own, '--dataset' if dataset else
                                   'the dataset the checkpoint was trained on')
    if vocabulary(data_meta) != vocabulary(meta):
        fail(f"dataset {dataset or own!r} ({data_meta['tokenizer']}, {data_meta['vocab_size']} tokens) has another "
             f"vocabulary than the checkpoint's ({meta.get('tokenizer')}, {meta.get('vocab_size')} tokens): its token "
             f"ids would mean other text; pass a --dataset of the checkpoint's vocabulary (or leave --dataset out)")
    return path, data_meta


meta = checkpoint_meta()
spec = downstream.Spec(task, eval_items, eval_seed, eval_context_tokens, eval_choice_tokens, eval_choices,
                       hellaswag_path)
data_dir, meta = continuation_dataset(meta) if task == 'continuation' else (None, meta)
try:
    items, item_settings = downstream.make_items(spec, meta, data_dir)
    downstream.check_fits(items, model.config.block_size)
except (FileNotFoundError, ValueError) as e:
    fail(str(e))
result = downstream.result_of(model, ckpt, ckpt_path, task, items, item_settings, device, batch_size, autocast)
path = os.path.join(out_dir, downstream.result_name(task))
downstream.write_result(result, path)
print(downstream.summary_line(result, path))
