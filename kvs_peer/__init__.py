"""kvs-peer: a Python-native WebRTC peer for Amazon Kinesis Video Streams."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
