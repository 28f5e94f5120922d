# A compute-scaled activation sweep on one GPU: four sizes from 3M to 50M non-embedding parameters, each trained on
# about 20 tokens per non-embedding parameter (Chinchilla's ratio), GPT-2 BPE tokens from FineWeb-Edu, every
# activation at its own tuned learning rate per size. Prepare the data once (network):
#   python data/fineweb_edu/prepare.py --max_tokens=1000000000
#   python compare.py config/scaling_gpt2_gpu.py                            # -> out-scaling-gpt2/
# The largest size needs 49.6M x 20 = 0.99B tokens per run. The runs are printed with their token counts and an
# estimated duration (from timed steps) before anything trains; with several GPUs visible, one run per GPU.
out_dir = 'out-scaling-gpt2'
activations = 'gelu,swiglu,polyrelu,polynorm'
seeds = '1,2'
sizes = '4x256,6x384,8x512,10x640'   # 3.2M, 10.6M, 25.7M, 49.6M non-embedding parameters
head_size = 64
tokens_per_param = 20.0
tune_lr = '1e-3,2e-3,4e-3'
tune_seeds = '0,1000'                # every rate on two tuning seeds, the lowest mean wins

dataset = 'fineweb_edu'
eval_interval = 200
eval_iters = 40
log_interval = 20
always_save_checkpoint = True

block_size = 1024
dropout = 0.0
arch = 'modern'
batch_size = 32
gradient_accumulation_steps = 4     # 131,072 tokens per iteration
min_lr = 1e-4                        # a tenth of the lowest rate; tuned rates keep min_lr / learning_rate
learning_rate = 1e-3
warmup_iters = 100
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0

device = 'cuda'
dtype = 'bfloat16'
compile = True
