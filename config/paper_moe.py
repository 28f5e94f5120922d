# The paper's mixture-of-experts model with the official code's architectural choices (OLMoE-based, 1B active / 7B
# total), at a size that trains on a laptop CPU. Swap the activation to compare, as the paper does:
#   python data/shakespeare_char/prepare.py
#   python train.py config/paper_moe.py                            (PolyNorm; --activation=swiglu for the baseline)
# As in the official model: 64 experts, top-8, an MoE FFN in every block, dropless routing, the chosen experts' softmax
# probabilities used as they are (no renormalisation), expert widths at OLMoE's ratio (non-gated 0.75 d, SwiGLU 0.5 d:
# 1536 / 1024 at d = 2048), one set of PolyNorm coefficients per layer shared by its experts, QK-norm, pre-norm RMSNorm
# with eps 1e-5, RoPE (theta 10000), no biases, untied embeddings, every weight matrix initialised from normal(0, 0.02)
# truncated at 3 standard deviations without depth scaling, AdamW (0.9, 0.95) with weight decay 0.1, clipping at 1.0.
# Auxiliary losses: the paper states a load-balancing weight of 0.01 and a router z-loss weight of 0.001, computed here
# at megablocks' scale; the official MoE trainer adds neither to its objective (--aux_loss_weight=0
# --z_loss_weight=0 reproduces that; both are still logged).
# What differs is scale: 4 layers (paper 16), d = 128 (2048), 4 heads of 32 (16 of 128), experts 96 / SwiGLU 64 wide
# (1536 / 1024), context 128 (4096), 4096 tokens per step, 1.6M characters of Shakespeare (200B tokens), peak learning
# rate 2e-3, fp32 on CPU (bf16).
out_dir = 'out-paper-moe'
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
arch = 'modern'                  # RMSNorm + RoPE
bias = False
dropout = 0.0
tie_weights = False
norm_eps = 1e-5
qk_norm = True
init_std = 0.02
init_residual_scale = False
init_cutoff = 3.0
n_expert = 64
top_k = 8
moe_every = 1
expert_hidden = 96               # non-gated experts 96 wide; SwiGLU experts get 2/3 of it, 64: the same parameter count
norm_topk = False
aux_loss_weight = 0.01
z_loss_weight = 0.001
z_loss_scaling = 'megablocks'
shared_expert = False
per_expert_poly = False

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
