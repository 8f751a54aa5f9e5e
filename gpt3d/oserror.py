"""One line for an operating-system error (disk full, read-only or missing directory, file too large): the path, the
reason and the errno name, instead of a traceback."""
from __future__ import annotations

import errno


def os_error_line(exc: OSError) -> str:
    if exc.errno is None and exc.filename is None:  # raised with a message of its own
        return str(exc)
    name = errno.errorcode.get(exc.errno, f"errno {exc.errno}") if exc.errno is not None else "no errno"
    path = exc.filename if exc.filename is not None else "(no path)"
    other = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{path}{other}: {exc.strerror or exc} ({name})"
