"""Enum members as CPython 3.11.2 pickles them: `getattr(EnumClass, "NAME")`.

Debian 12's python3 (3.11.2) reduces an Enum member to `builtins.getattr` called on its class and its name, where
3.11.7 reduces it to its class called with its value. So genuine DeepSpeed optimizer states (`ZeroStageEnum`) and
torch.distributed.checkpoint indexes (`_MEM_FORMAT_ENCODING`) written on 3.11.2 name `builtins.getattr`. A safe reader
cannot allow getattr itself (a file could then fetch any attribute of anything it can name); it resolves that global
to `enum_member_getter(...)` instead: a function that returns only a member, by name, of the enum classes given.
"""
from __future__ import annotations

import enum
import pickle
from typing import Callable

PICKLED_GETATTR = "builtins.getattr"  # the global such pickles name


def enum_member_getter(enums: tuple[type[enum.Enum], ...]) -> Callable[[type, str], enum.Enum]:
    """getattr restricted to `enums`' members by name; anything else raises pickle.UnpicklingError."""
    def enum_member(cls, name):
        if cls in enums and isinstance(name, str) and name in cls.__members__:
            return cls[name]
        allowed = ", ".join(f"{e.__module__}.{e.__qualname__}" for e in enums)
        raise pickle.UnpicklingError(f"{PICKLED_GETATTR} names only a member of {allowed} here, not "
                                     f"getattr({cls!r}, {name!r})")
    return enum_member
