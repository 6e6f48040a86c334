"""libx264's speed presets, in a module light enough for the CLI to import at start-up."""

from __future__ import annotations

__all__ = ["X264_PRESETS"]

X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
"""Fastest (least CPU, most bits for the same picture) first."""
