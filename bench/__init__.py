"""Benchmarks: loader and end-to-end training throughput (``python bench/throughput.py``)."""
