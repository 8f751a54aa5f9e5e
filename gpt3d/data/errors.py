"""The one exception type of gpt3d.data: bad input files or settings, with a message naming the file and the fix."""
from __future__ import annotations


class DataError(ValueError):
    """A data file, tokenizer or data setting is unusable. The message names the file (or key), the problem and the fix."""
