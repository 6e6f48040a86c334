"""pytest plugin registered through the ``pytest11`` entry point.

Kept light at import time: it loads in every pytest run wherever kvs-peer is installed.
"""
