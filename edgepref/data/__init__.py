"""A run's data on disk: reading instructions (JSONL, JSON, CSV, Parquet, datasets), the run
directory (its files, lock and identity), shard merge and dataset export.
A new input format goes in inputs.py; a new export format in export.py.
"""
