"""Test helpers for applications built on kvs-peer (pytest plugin, video assertions)."""
