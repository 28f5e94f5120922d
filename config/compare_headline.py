# The headline at 10 seeds: does PolyNorm beat SwiGLU here? GELU, SwiGLU, PolyReLU and PolyNorm on the default recipe
# (config/compare_shakespeare_char.py, given first), each at its own tuned rate, 10 comparison seeds (3 seeds estimate
# the spread poorly: a std from 2 degrees of freedom may be off several times either way).
#   python compare.py config/compare_shakespeare_char.py config/compare_headline.py
#       40 tuning runs (tuning seeds 0 and 1000, the 3-seed tuning run's grid) + 40 comparison runs, ~3 h on a quiet 2-core CPU
#   python compare.py config/compare_shakespeare_char.py config/compare_headline.py --tune_lr= \
#       --variants=gelu:learning_rate=8e-3,swiglu:learning_rate=2e-3,polyrelu:learning_rate=2e-3,polynorm:learning_rate=4e-3
#       each at the rate the two-seed tuning chose, no tuning: 40 runs, ~65 min; a variant's fixed rate keeps
#       min_lr's ratio and lands in the same <name>-lr<rate>-s<seed> folders, so the two commands share their runs
#   add --baseline=swiglu --replot for PolyNorm - SwiGLU (and PolyReLU - SwiGLU) with paired intervals
out_dir = 'out-headline-10seed'
activations = 'gelu,swiglu,polyrelu,polynorm'
seeds = '1,2,3,4,5,6,7,8,9,10'
tune_lr = '1e-3,2e-3,4e-3,8e-3,1.6e-2'   # the 3-seed tuning run's grid (docs/results.md)
tune_seeds = '0,1000'                    # every rate trains on both; the lowest mean wins
parallel = 2                             # two runs at once, one thread each: small models use 2 cores poorly
