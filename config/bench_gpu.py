# bench.py on one GPU at GPT-2-small size (12 layers, 12 heads, 768 wide, T = 1024, GPT-2 vocabulary padded to 50304),
# bf16 autocast, eager and torch.compile:   python bench.py config/bench_gpu.py   (add --record=True to write the GPU
# section of BENCHMARKS.md; without it the results go to out-bench/bench.md)
# Every variant's model and AdamW state stay on the GPU together (that is what lets the timing be round-robin): about
# 1.5 GB per dense variant and 6 GB per MoE variant between steps, plus one step's activations; B = 8 keeps the
# whole set under 80 GB. On a smaller GPU lower batch_size, or pass --moe_modes=compiled (no eager MoE rows).
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
batch_size = 8
vocab_size = 50304
device = 'cuda'
dtype = 'bfloat16'
repeats = 10
warmup_steps = 3
