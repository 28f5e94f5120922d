# The paper's dense model with the official code's architectural choices (its Megatron-based 1.3B decoder), at a size
# that trains on a laptop CPU in a few minutes. Swap the activation to compare, as the paper does:
#   python data/shakespeare_char/prepare.py
#   python train.py config/paper_dense.py                          (PolyNorm; --activation=swiglu, gelu, polyrelu ...)
# As in the official model: pre-norm RMSNorm with eps 1e-5, RoPE (theta 10000), no biases, untied input and output
# embeddings, no QK-norm, every weight matrix initialised from normal(0, 0.013975) with the attention and FFN output
# projections scaled by 1/sqrt(2 * n_layer), the paper's FFN widths (ffn_hidden = 0: non-gated 1.5x the gated width,
# so every activation has the same FFN parameter count), AdamW (0.9, 0.95) with weight decay 0.1, gradient clipping at
# 1.0, cosine decay of the learning rate to a tenth of its peak.
# What differs is scale: 4 layers (paper 24), d = 128 (2048), 4 heads of 32 (16 of 128), FFN 576 / SwiGLU 384 (8256 /
# 5504), context 128 (4096), 4096 tokens per step (~262k), 1.6M characters of Shakespeare (250B tokens of RedPajama),
# peak learning rate 2e-3 (3e-4: small models take larger steps), fp32 on CPU (bf16). The init std is the official
# number, sqrt(2 / (5 * 2048)); the same small-init rule at d = 128 would give 0.056.
out_dir = 'out-paper-dense'
dataset = 'shakespeare_char'
eval_interval = 50
eval_iters = 20
log_interval = 10
always_save_checkpoint = False

n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
activation = 'polynorm'
ffn_hidden = 0                   # the paper's width rule: 576 non-gated, 384 for SwiGLU at d = 128
arch = 'modern'                  # RMSNorm + RoPE
bias = False
dropout = 0.0
tie_weights = False
norm_eps = 1e-5
qk_norm = False
init_std = 0.013975
init_residual_scale = True
init_cutoff = 0.0

batch_size = 32
gradient_accumulation_steps = 1
learning_rate = 2e-3
min_lr = 2e-4
max_iters = 400
# lr_decay_iters: train.py's -1, i.e. the cosine ends at max_iters (also when --max_iters shortens a run)
warmup_iters = 40
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.1
grad_clip = 1.0

device = 'cpu'                   # also fine on a GPU: --device=cuda
dtype = 'float32'
compile = False
