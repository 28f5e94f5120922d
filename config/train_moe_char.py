# A small mixture-of-experts variant of config/train_shakespeare_char.py: 8 experts, top-2 routing in every block,
# expert width 256 (each expert is half a dense FFN, so active FFN compute matches the dense 4x128 model).
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
expert_hidden = 256
aux_loss_weight = 0.01
z_loss_weight = 0.001

batch_size = 12
block_size = 64
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
warmup_iters = 100
beta2 = 0.99

device = 'cpu'
compile = False
