"""Read a sharded (``torch.distributed.checkpoint``) checkpoint directory without general pickle.

``trainer.strategy=fsdp|fsdp2`` saves a checkpoint as a directory: ``.metadata`` (the index of
every tensor), ``__<rank>_0.distcp`` (the shards) and Lightning's ``meta.pt`` (epoch, step,
hyper-parameters, loops). Torch's own reader unpickles ``.metadata`` with ``pickle.load`` and the
non-tensor entries with ``torch.load(weights_only=False)``, and Lightning's consolidation loads
``meta.pt`` without ``weights_only`` (so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` turns pickle on):
any of the three runs code planted in the directory. Here ``.metadata`` goes through an
unpickler that builds only the checkpoint index records (an allow-list; anything else is an
error naming it) and every other file through ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import io
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import filesystem as dcp_filesystem
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
from torch.distributed.checkpoint._traverse import set_element

from .errors import CheckpointError

META_FILE = "meta.pt"  # Lightning's non-tensor part of a sharded checkpoint (written last)
INDEX_FILE = ".metadata"  # torch.distributed.checkpoint's index

# the records torch.distributed.checkpoint writes into .metadata (torch 2.3 - 2.13)
_ALLOWED = {
    (cls.__module__, cls.__qualname__): cls
    for cls in (dcp_metadata.Metadata, dcp_metadata.TensorStorageMetadata, dcp_metadata.ChunkStorageMetadata,
                dcp_metadata.BytesStorageMetadata, dcp_metadata.MetadataIndex, dcp_metadata.TensorProperties,
                dcp_metadata.StorageMeta, dcp_metadata._MEM_FORMAT_ENCODING, dcp_filesystem._StorageInfo,
                torch.Size, pathlib.PurePosixPath, pathlib.PosixPath, pathlib.PureWindowsPath, pathlib.WindowsPath)
}
_ALLOWED[("torch.serialization", "_get_layout")] = torch.serialization._get_layout  # name -> torch.layout
_TORCH_CONSTANTS = (torch.dtype, torch.layout, torch.memory_format)


class _IndexUnpickler(pickle.Unpickler):
    """Builds the checkpoint index records and torch dtype/layout constants, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_CONSTANTS):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not a checkpoint index record")


def read_index(path: Path) -> dcp_metadata.Metadata:
    """``path/.metadata`` through the restricted unpickler."""
    index = Path(path) / INDEX_FILE
    try:
        with open(index, "rb") as f:
            metadata = _IndexUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {INDEX_FILE}: not a complete sharded checkpoint") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{index}: not a valid sharded-checkpoint index ({e})") from None
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise CheckpointError(f"{index}: holds a {type(metadata).__name__}, not a checkpoint index")
    return metadata


class _IndexedReader(FileSystemReader):
    """A FileSystemReader that uses the index already read by :func:`read_index`."""

    def __init__(self, path: Path, metadata: dcp_metadata.Metadata):
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        if self._metadata.storage_meta is None:
            self._metadata.storage_meta = dcp_metadata.StorageMeta()
        self._metadata.storage_meta.load_id = self.load_id
        return self._metadata


class _WeightsOnlyPlanner(_EmptyStateDictLoadPlanner):
    """Loads the non-tensor entries (optimizer hyper-parameters) with ``weights_only=True``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def read_sharded(path: Path) -> dict:
    """The whole checkpoint (weights, optimizer state, Lightning's ``meta.pt`` entries) as one
    dict in CPU memory, read in this process without a process group."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise CheckpointError(f"{path} is a directory but not a complete sharded (fsdp/fsdp2) checkpoint: no "
                              f"{META_FILE} (an unfinished save, or not a checkpoint)")
    metadata = read_index(path)
    checkpoint: dict = {}
    try:
        _load_state_dict(checkpoint, storage_reader=_IndexedReader(path, metadata), planner=_WeightsOnlyPlanner(),
                         no_dist=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: a shard holds something other than tensors and plain values ({e})") from None
    try:
        checkpoint.update(torch.load(path / META_FILE, map_location="cpu", weights_only=True))
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path / META_FILE}: cannot be loaded with weights_only=True ({e})") from None
    return checkpoint
