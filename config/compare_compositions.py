# The paper's compositions against SwiGLU: PolyReLU, PolyPReLU, PolyNorm, PolyReLUNorm (PolyCom on ReLU, PReLU, the
# normalised powers, and both), and gated PolyNorm (PolyNorm in SwiGLU's place in a gated FFN, as the Motif models
# use it; 2/3 of the width, parameter-matched). The default recipe (config/compare_shakespeare_char.py, given first),
# each at its own tuned rate, 3 seeds, paired against SwiGLU:
#   python compare.py config/compare_shakespeare_char.py config/compare_compositions.py
#       6 variants x (4 tuning rates + 3 seeds) = 42 runs, ~65 min on a quiet 2-core CPU
out_dir = 'out-compare-compositions'
activations = 'swiglu,polyrelu,polyprelu,polynorm,polyrelunorm,polynorm_glu'
baseline = 'swiglu'
seeds = '1,2,3'
tune_lr = '1e-3,2e-3,4e-3,8e-3'          # the README's optima: PolyReLU 2e-3, SwiGLU and PolyNorm 4e-3
tune_seed = 0
parallel = 2
