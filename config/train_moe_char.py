# A small mixture-of-experts variant of config/train_shakespeare_char.py: 8 experts, top-2 routing in every block,
# expert width 288 (SwiGLU: 192, the same weights): each expert is half the dense model's FFN (576 / 384 at d = 128), so
# the active FFN compute matches the dense 4x128 model. Routing weights are the raw top-2 probabilities (OLMoE's;
# --norm_topk=True renormalises them as Mixtral does). For the paper's OLMoE-based setup see config/paper_moe.py.
# balance_loss, z_loss and expert_cv go to log.csv, per-layer expert-load CV to moe.csv.
#   python train.py config/train_moe_char.py --activation=swiglu      (compare with the default polynorm)
out_dir = 'out-moe-char'
dataset = 'shakespeare_char'
eval_interval = 250
eval_iters = 20
log_interval = 10
always_save_checkpoint = False

n_layer = 4
n_head = 4
n_embd = 128
activation = 'polynorm'
n_expert = 8
top_k = 2
expert_hidden = 288               # 2/3 of it for SwiGLU: 192, so 3 x 128 x 192 = 2 x 128 x 288 weights per expert
aux_loss_weight = 0.01
z_loss_weight = 0.001

batch_size = 12
block_size = 64
learning_rate = 1e-3
max_iters = 2000
# lr_decay_iters: train.py's -1, i.e. the cosine ends at max_iters (also when --max_iters shortens a run)
min_lr = 1e-4
warmup_iters = 100
beta2 = 0.99

device = 'cpu'
compile = False
