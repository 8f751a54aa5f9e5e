"""Reading torch.distributed.checkpoint's `.metadata` index without running code from the file.

DCP's FileSystemReader.read_metadata() is a plain pickle.load: a hostile `.metadata` runs anything. The index only
ever holds DCP's own metadata dataclasses, torch dtypes/sizes/layouts, a path and plain containers, so an unpickler
that resolves exactly those globals (and refuses every other one before it is called) reads every real index.
"""
from __future__ import annotations

import os
import pickle

import torch

from .enum_pickles import PICKLED_GETATTR, enum_member_getter
from .errors import InteropError

_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # maps "torch.strided" to the layout object
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _DcpMetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if f"{module}.{name}" == PICKLED_GETATTR:  # an enum member, as Python 3.11.2 pickles it (enum_pickles.py)
            from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING
            return enum_member_getter((_MEM_FORMAT_ENCODING,))
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                          torch.memory_format)):
            return getattr(torch, name)
        if name in _DCP_CLASSES.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not one of torch.distributed.checkpoint's "
                                     f"metadata classes")


def read_dcp_metadata(path: str, trusted: bool):
    """The DCP Metadata of `path` (an iteration folder's `.metadata`); refuses any other pickled global unless
    `trusted` (then it is a plain pickle.load, as DCP itself does)."""
    try:
        with open(path, "rb") as fh:
            if trusted:
                return pickle.load(fh)
            return _DcpMetadataUnpickler(fh).load()
    except OSError as exc:
        raise InteropError(f"{path}: cannot read the torch_dist index ({exc.strerror}); copy the complete "
                           f"checkpoint") from None
    except pickle.UnpicklingError as exc:
        if not trusted:
            raise InteropError(f"{path}: refused: {exc}; reading it would run code from the file. If you trust "
                               f"this checkpoint, pass --trusted (Python: trusted=True)") from None
        raise InteropError(f"{path}: not a torch_dist index ({exc}); copy the complete checkpoint") from None
    except Exception as exc:  # truncated or garbage: EOFError, ValueError, ...
        raise InteropError(f"{path}: not a readable torch_dist index ({type(exc).__name__}: {exc}); copy the "
                           f"complete checkpoint") from None


def safe_filesystem_reader(iteration_dir: str, trusted: bool):
    """A DCP FileSystemReader whose read_metadata() uses read_dcp_metadata. The tensor files (`*.distcp`) are read
    by DCP with torch.load(weights_only=True); byte entries (pickled `_extra_state`) are never requested."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            metadata = read_dcp_metadata(os.path.join(iteration_dir, ".metadata"), trusted)
            if not hasattr(metadata, "state_dict_metadata"):
                raise InteropError(f"{iteration_dir}/.metadata: holds a {type(metadata).__name__}, not a torch_dist "
                                   f"index; copy the complete checkpoint")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(iteration_dir)
