# bench.py on one GPU at GPT-2-small size (12 layers, 12 heads, 768 wide, T = 1024, GPT-2 vocabulary padded to 50304),
# bf16 autocast, eager and torch.compile:   python bench.py config/bench_gpu.py   (add --record=True to write the GPU
# section of BENCHMARKS.md; without it the results go to out-bench/bench.md). python gpu_check.py runs it after the
# CUDA tests. These are the recorded GPU settings: bench.py refuses to record a run that changes any of them.
# Budget (the GPU check's benchmark has 390 s on one H100/H200, compiles included): torch.compile is the cost, not
# the timing. 6 compiled variants (4 dense + 2 MoE; MoE rows compiled only: the target is compiled MoE vs dense); on
# an H200 (2026-12-04) the dense compiles took 20-36 s each one after the other, which used up the 270 s the check then
# had, so they warm up side by side now (warmup_at_once); then 10 rounds x 2 steps x 10 variants of ~30-55 ms each.
# Every variant's model and AdamW state stay on the GPU together (that is what lets the timing be round-robin): about
# 1.5 GB per dense variant and 6 GB per MoE variant between steps, plus one step's activations; B = 8 keeps the
# whole set well under 80 GB. On a smaller GPU lower batch_size (the recording refuses it, the table is still written).
# Generation (GPT.generate with and without the KV cache, 255 new tokens from a 1-token prompt, batch 1, eager) runs on
# the GPT-2-small model itself (the gen_ sizes 0 = the sizes above), PolyNorm only: per round two calls of 255 steps
# each: measured on an H200, 2.3 s with the cache and 2.8 s without a round (the first round 28 s), ~75 s in all.
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
batch_size = 8
vocab_size = 50304
activations = 'gelu,swiglu,polyrelu,polynorm'
modes = 'eager,compiled'
moe_activations = 'gelu,polynorm'
moe_modes = 'compiled'
n_expert = 8
top_k = 2
device = 'cuda'
dtype = 'bfloat16'
repeats = 10
steps_per_repeat = 2
warmup_steps = 3
warmup_at_once = 16         # a mode's variants compile at once (CPU cores); lower it if they run out of GPU memory
gen_activations = 'polynorm'
gen_n_embd = 0
gen_ffn_hidden = 0
gen_vocab_size = 0
