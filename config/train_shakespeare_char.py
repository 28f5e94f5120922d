# A small character-level model on Shakespeare's complete works that trains on a laptop CPU in a few minutes
# (nanoGPT's CPU recipe): 4 layers, 128 wide, 64-character context, 768 tokens per iteration.
#   python data/shakespeare_char/prepare.py
#   python train.py config/train_shakespeare_char.py                      (add --activation=gelu etc. to compare)
#   python sample.py --out_dir=out-shakespeare-char
out_dir = 'out-shakespeare-char'
dataset = 'shakespeare_char'
eval_interval = 250
eval_iters = 20
log_interval = 10
always_save_checkpoint = False   # keep the best-val checkpoint (and the last one at the end)

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
activation = 'polynorm'

batch_size = 12
block_size = 64
gradient_accumulation_steps = 1
learning_rate = 1e-3             # small models tolerate a high learning rate
max_iters = 2000
# lr_decay_iters: train.py's -1, i.e. the cosine ends at max_iters (also when --max_iters shortens a run)
min_lr = 1e-4
warmup_iters = 100
beta2 = 0.99                     # few tokens per iteration: average the second moment over more steps

device = 'cpu'                   # also fine on a GPU: --device=cuda (or auto)
compile = False
