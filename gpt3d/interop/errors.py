"""The one error type of the converters: a checkpoint or config that cannot be converted, with the reason and the fix."""
from __future__ import annotations


class InteropError(ValueError):
    """A foreign checkpoint/config does not match what the converter expects. The message names the file or source,
    the mismatch and the fix."""
