# GPT-2-small-sized model (12 layers, 12 heads, 768 wide, 124M parameters with tied embeddings) on one GPU:
# bf16 autocast, torch.compile, fused AdamW, ~0.5M tokens per iteration (16 x 1024 x 32 micro-steps).
#   python data/shakespeare/prepare.py              (1.4M GPT-2 tokens: overfits after a few hundred iterations;
#                                                    for a real run prepare data/fineweb_edu and set dataset below)
#   python train.py config/train_gpt2_small.py
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_small.py   (same global batch: 4 micro-steps/GPU)
out_dir = 'out-gpt2-small'
dataset = 'shakespeare'          # or 'fineweb_edu'
eval_interval = 100
eval_iters = 40
log_interval = 10

n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
dropout = 0.0
activation = 'polynorm'          # the paper's best; 'swiglu' or 'gelu' for the baselines
arch = 'modern'                  # RMSNorm + RoPE as in the paper; 'gpt2' for LayerNorm + learned positions

batch_size = 16
gradient_accumulation_steps = 32  # global: divided across ranks under torchrun
learning_rate = 6e-4
min_lr = 6e-5
max_iters = 2000
# lr_decay_iters: train.py's -1, i.e. the cosine ends at max_iters (also when --max_iters shortens a run)
warmup_iters = 100
weight_decay = 0.1
grad_clip = 1.0

device = 'cuda'
dtype = 'bfloat16'
compile = True
