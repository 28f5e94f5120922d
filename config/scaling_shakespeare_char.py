# Does the gap between activations hold as the model grows? The default comparison's recipe at four model sizes,
# each trained on the same 1.02M characters (250 iterations of 4096), two seeds, on a 2-core CPU in about 25 minutes:
#   python data/shakespeare_char/prepare.py
#   python compare.py config/scaling_shakespeare_char.py                    # -> out-scaling-shakespeare-char/
# Every size gets parameter-matched FFNs from model.py's width rule (ffn_hidden = 0 at each size). All activations
# train at one shared learning rate here (tuning per size and activation would take 2.5x as long: add
# --tune_lr=1e-3,2e-3,4e-3,8e-3 for that, on tuning seeds 0 and 1000). With 4 sizes, report.py fits L(N) = E + A N^-alpha.
out_dir = 'out-scaling-shakespeare-char'
activations = 'gelu,swiglu,polyrelu,polynorm'
seeds = '1,2'
sizes = '2x64,3x96,4x128,5x160'  # LAYERSxWIDTH: 0.11M, 0.33M, 0.85M, 1.59M non-embedding parameters
head_size = 32
parallel = 2                     # two runs at once, one thread each: small models use 2 cores poorly

dataset = 'shakespeare_char'
eval_interval = 50
eval_iters = 20
log_interval = 10

block_size = 128
dropout = 0.0
batch_size = 32                  # 4096 characters per iteration
gradient_accumulation_steps = 1
max_iters = 250                  # the same tokens at every size (see --tokens_per_param for compute-scaled sweeps)
learning_rate = 4e-3
min_lr = 4e-4
warmup_iters = 25
beta2 = 0.99
grad_clip = 1.0

device = 'cpu'
dtype = 'float32'
compile = False
