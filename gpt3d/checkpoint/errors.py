"""The checkpoint error: a missing, truncated, corrupted or mismatched checkpoint, named with the fix."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint cannot be written, read or used for this run. The message names the file and the mismatch."""
