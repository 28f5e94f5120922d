# bench.py on one GPU at GPT-2-small size (12 layers, 12 heads, 768 wide, T = 1024, GPT-2 vocabulary padded to 50304),
# bf16 autocast, eager and torch.compile:   python bench.py config/bench_gpu.py   (add --record=True to write the GPU
# section of BENCHMARKS.md; without it the results go to out-bench/bench.md). python gpu_check.py runs it after the
# CUDA tests. These are the recorded GPU settings: bench.py refuses to record a run that changes any of them.
# Budget (the GPU check must finish in 8 minutes on one H100/H200, compiles included): torch.compile is the cost, not
# the timing. 6 compiled variants (4 dense + 2 MoE; MoE rows compiled only: the target is compiled MoE vs dense) at
# roughly 20-60 s each; then 10 rounds x 2 steps x 10 variants of ~15-60 ms each take seconds.
# Every variant's model and AdamW state stay on the GPU together (that is what lets the timing be round-robin): about
# 1.5 GB per dense variant and 6 GB per MoE variant between steps, plus one step's activations; B = 8 keeps the
# whole set well under 80 GB. On a smaller GPU lower batch_size (the recording refuses it, the table is still written).
# Generation (GPT.generate with and without the KV cache, 255 new tokens from a 1-token prompt, batch 1, eager) runs on
# the GPT-2-small model itself (the gen_ sizes 0 = the sizes above), PolyNorm only: per round two calls of 255 steps
# each, eager steps of a few ms (kernel launches), so roughly 2-4 s a round, 20-40 s in all (an estimate: not yet
# measured on a GPU).
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
gen_activations = 'polynorm'
gen_n_embd = 0
gen_ffn_hidden = 0
gen_vocab_size = 0
