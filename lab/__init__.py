"""What compare.py leans on: the run folders (runs), statistics (stats), the analyses of a checkpoint (analysis), the
figures and the report; and what bench.py leans on: the timing step (analysis) and its tables and markdown
(bench_report). Imports model.py, data/, configurator.py and training/ (to read checkpoints); never an entry script."""
