# The order r of PolyNorm (the paper's open question 1: it tried r = 2, 3, 4; what do higher orders do to quality and
# cost?). PolyNorm at r = 1 ... 6 on the default recipe (config/compare_shakespeare_char.py, given first), each order
# at its own tuned rate, 3 seeds, paired against r = 3 (the paper's choice). summary.md's cost table gives each
# order's activation scalars (r + 1 per layer) and step time; bench.py gives careful speed and memory:
#   python compare.py config/compare_shakespeare_char.py config/compare_order.py
#       6 orders x (3 tuning rates + 3 seeds) = 36 runs, ~60 min on a quiet 2-core CPU
#   python bench.py --activations=polynorm --poly_order=6 ...        # cost of one order, eager and compiled
# PolyReLU too: --variants=polyrelu-r2=polyrelu:poly_order=2,... with --baseline=polyrelu-r3 and a new --out_dir.
out_dir = 'out-compare-order'
variants = ','.join(f'polynorm-r{r}=polynorm:poly_order={r}' for r in range(1, 7))
baseline = 'polynorm-r3'
seeds = '1,2,3'
tune_lr = '2e-3,4e-3,8e-3'               # brackets PolyNorm's tuned 4e-3 (docs/results.md); an edge optimum is warned about
tune_seeds = '0'         # one tuning seed, as the recorded result (the default tunes on 0 and 1000)
parallel = 2
