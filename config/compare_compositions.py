# The paper's compositions against SwiGLU: PolyReLU, PolyPReLU, PolyNorm, PolyReLUNorm (PolyCom on ReLU, PReLU, the
# normalised powers, and both), and gated PolyNorm (PolyNorm in SwiGLU's place in a gated FFN, as the Motif models
# use it; 2/3 of the width, parameter-matched). The default recipe (config/compare_shakespeare_char.py, given first),
# each at its own tuned rate, 3 seeds, paired against SwiGLU:
#   python compare.py config/compare_shakespeare_char.py config/compare_compositions.py
#       3 new variants x (4 tuning rates + 3 seeds) + 3 x 3 seeds = 30 runs, 1 h 48 min on the 2-core AMD EPYC of
#       2026-12-02 (about 7 min per pair of runs); 21 runs with the headline's 9 copied in:
# SwiGLU, PolyReLU and PolyNorm train at the rates the 3-seed tuning run chose (docs/results.md; grid 1e-3 ... 1.6e-2),
# so their 9 runs are run for run those of the 10-seed headline (config/compare_headline.py, same recipe, same
# <name>-lr<rate>-s<seed> folders): copy out-headline-10seed/{swiglu-lr0.004,polyrelu-lr0.002,polynorm-lr0.004}-s{1,2,3}
# here first and compare.py skips them. The three new variants are tuned on seed 0 over 1e-3 ... 8e-3, which brackets
# every optimum of their relatives (PolyReLU 2e-3, SwiGLU and PolyNorm 4e-3) and, after 1e-3 was added, each of
# their own; an optimum at the grid's edge is warned about.
out_dir = 'out-compare-compositions'
variants = ('swiglu:learning_rate=4e-3,polyrelu:learning_rate=2e-3,polyprelu,polynorm:learning_rate=4e-3,'
            'polyrelunorm,polynorm_glu')
baseline = 'swiglu'
seeds = '1,2,3'
tune_lr = '1e-3,2e-3,4e-3,8e-3'
tune_seeds = '0'         # one tuning seed, as the recorded result (the default tunes on 0 and 1000)
parallel = 2
