"""What train.py leans on: settings checks, the run folder, checkpoints, the divergence guard, peak FLOP/s and
process handling (DDP, signals, one-line errors). Imports model.py, data/ and configurator.py, never lab/."""
