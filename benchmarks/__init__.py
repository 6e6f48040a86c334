"""Speed and memory benchmarks for kvs-peer, each printing ours next to a baseline.

Run from the repository root, e.g. ``.venv/bin/python -m benchmarks.master_cpu``; see
``benchmarks/README.md``. Benchmarks are measurements, not tests: they exit 0 when a target is
missed and print FAIL instead.
"""
