"""What compare.py leans on: the run folders (runs), statistics (stats), the analyses of a checkpoint (analysis), the
figures and the report. Imports model.py, data/, configurator.py and training/ (to read checkpoints)."""
