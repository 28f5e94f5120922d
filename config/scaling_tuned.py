# The scaling sweep with every activation at the rate tuned for it AT EACH SIZE (a shared rate drifts from each
# optimum as the model grows), 3 seeds (with 2, Student t has 1 degree of freedom and multiplies the spread by 12.7).
# Given after the shared-rate sweep's config, whose recipe it keeps:
#   python compare.py config/scaling_shakespeare_char.py config/scaling_tuned.py   # -> out-scaling-tuned/
#       4 sizes x 4 activations x (4 tuning rates + 3 seeds) = 112 runs, ~2 h on the 2-core CPU of 2026-12-02
# Does PolyNorm's lead over GELU still shrink with size (+0.060 per 10x parameters at the shared rate)?
out_dir = 'out-scaling-tuned'
seeds = '1,2,3'
tune_lr = '2e-3,4e-3,8e-3,1.6e-2'   # 1.6e-2 added when 2x64 chose 8e-3 on 2e-3..8e-3; edge choices checked (docs/results.md)
tune_seeds = '0'         # one tuning seed, as the recorded result (the default tunes on 0 and 1000)
