# Compare activations at GPT-2-small size (12 layers, 12 heads, 768 wide, ~124M parameters) on one GPU:
# bf16 autocast, torch.compile, ~0.5M tokens per iteration (16 x 1024 x 32 micro-steps), 1000 iterations = 524M tokens
# per run. Realistic data needs FineWeb-Edu (network, once):
#   python data/fineweb_edu/prepare.py --max_tokens=1000000000
#   python compare.py config/compare_gpt2_small_gpu.py                          (gelu, swiglu, polyrelu, polynorm)
#   python compare.py config/compare_gpt2_small_gpu.py --seeds=1,2 --activations=swiglu,polynorm
# Offline smoke test on the bundled data (1.4M tokens: overfits after ~100 iterations, not for conclusions):
#   python compare.py config/compare_gpt2_small_gpu.py --dataset=shakespeare --max_iters=100 --out_dir=out-compare-gpu-smoke
# With several GPUs visible, compare.py runs one activation per GPU at once.
out_dir = 'out-compare-gpt2-small'
activations = 'gelu,swiglu,polyrelu,polynorm'
seeds = '1'

dataset = 'fineweb_edu'
eval_interval = 100
eval_iters = 40
log_interval = 10
always_save_checkpoint = True     # a killed run resumes from the last evaluation

n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
dropout = 0.0
arch = 'modern'                   # RMSNorm + RoPE, no biases, as in the paper

batch_size = 16
gradient_accumulation_steps = 32
learning_rate = 6e-4
min_lr = 6e-5
max_iters = 1000
# lr_decay_iters: train.py's -1, i.e. the cosine ends at max_iters
warmup_iters = 100
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0

device = 'cuda'
dtype = 'bfloat16'
compile = True
