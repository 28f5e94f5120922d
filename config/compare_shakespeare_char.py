# The default comparison: GELU, SwiGLU, PolyReLU and PolyNorm on Shakespeare's complete works, character level,
# sized so that one run takes about 1.5 minutes on a 2-core CPU (4 activations x 1 seed: about 6 minutes).
#   python data/shakespeare_char/prepare.py
#   python compare.py config/compare_shakespeare_char.py                       # -> out-compare-shakespeare-char/
#   python compare.py config/compare_shakespeare_char.py --seeds=1,2,3         # error bars (adds 2 more seeds)
# Same recipe for every activation: 4 layers, 128 wide, parameter-matched FFNs (SwiGLU: 2/3 of the hidden width).
out_dir = 'out-compare-shakespeare-char'
activations = 'gelu,swiglu,polyrelu,polynorm'
seeds = '1'

dataset = 'shakespeare_char'
eval_interval = 50               # 9 points on the validation curve
eval_iters = 20                  # 20 x 32 x 128 = 82k validation characters per evaluation
log_interval = 10

n_layer = 4
n_head = 4
n_embd = 128
ffn_hidden = 576                 # 4.5 x n_embd: SwiGLU then gets 2/3 = 384 (a multiple of 64), so every FFN has
                                 # exactly 147,456 weights (with 4 x 128 = 512, SwiGLU's 320 would be 6% smaller)
block_size = 128
dropout = 0.0                    # 1.6M characters seen, a third of the data: no overfitting to prevent

batch_size = 32                  # 4096 characters per iteration
gradient_accumulation_steps = 1
learning_rate = 2e-3             # short run, small model: a high peak learning rate
max_iters = 400
# lr_decay_iters is left at train.py's -1: the cosine ends at max_iters, also when --max_iters shortens a run
min_lr = 2e-4
warmup_iters = 40
beta2 = 0.99
grad_clip = 1.0

device = 'cpu'                   # also fine on a GPU: --device=cuda
dtype = 'float32'
compile = False
