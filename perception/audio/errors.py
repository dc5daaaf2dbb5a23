"""Error types of the audio stage.

`AudioInputError` means the caller sent audio we cannot use (the gateway answers HTTP 400 with
its message); `AudioModelError` means the checkpoint or its configuration is wrong (a
deployment problem, not the caller's).
"""
from __future__ import annotations


class AudioInputError(ValueError):
    """The audio itself is unusable: undecodable, empty, non-finite, too long, bad rate."""


class AudioModelError(ValueError):
    """The audio checkpoint is missing, inconsistent, or lacks what the chosen mode needs."""
