"""nanoPoly data: prepare scripts under data/<name>/prepare.py, shared code in data/dataset.py (format, writer,
loader, tokenizers) and data/sources.py (fetching text and GPT-2 BPE ranks, offline-friendly)."""
