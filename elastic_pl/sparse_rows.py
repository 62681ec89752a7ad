"""Row reads of the item table with sparse gradients.

The item table (V+1, D) is read in three places during training: the input lookup
(``nn.Embedding``), the target rows and the sampled negatives of the loss (``items[ids]``, see
``SequentialRecommender.item_matrix``). Each read's gradient is, by default, a dense (V+1, D)
tensor: at 10^7 items and D=64 that is 2.6 GB written per read and per step, whatever the batch.

Under :func:`sparse_table_reads` every row read of the table becomes
``F.embedding(ids, table, sparse=True)``: the same values, and a sparse COO gradient with one
entry per row read, so backward costs O(rows read x D) instead of O(V x D). The model and the
losses keep indexing the table as a plain tensor; nothing in ``elastic_pl.model`` knows about it.

A read that is not a row read (the full-catalog softmax's ``items[1:]``, L2 normalisation of the
whole table) would give a dense gradient again: it is an error under this context, naming the
setting to change, rather than a silent dense step.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

INDEX_DTYPES = (torch.int64, torch.int32)


class WholeTableRead(RuntimeError):
    """The loss or the model read the whole item table while row-sparse updates were on."""


def _row_ids(func, args: tuple, kwargs: dict, table: torch.Tensor):
    """The row ids if ``func(*args, **kwargs)`` reads whole rows of ``table``, else None."""
    if func is torch.Tensor.__getitem__ and len(args) == 2 and args[0] is table:
        index = args[1]
        if isinstance(index, torch.Tensor) and index.dtype in INDEX_DTYPES:
            return index
    if func in (torch.Tensor.index_select, torch.index_select) and args and args[0] is table:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        index = args[2] if len(args) > 2 else kwargs.get("index")
        if dim == 0 and isinstance(index, torch.Tensor):
            return index
    return None


class _SparseRowReads(TorchFunctionMode):
    def __init__(self, table: torch.Tensor, setting: str):
        super().__init__()
        self.table, self.setting = table, setting

    def __torch_function__(self, func, types, args: tuple = (), kwargs: Any = None):
        kwargs = dict(kwargs or {})
        ids = _row_ids(func, args, kwargs, self.table)
        if ids is not None:
            return F.embedding(ids, self.table, sparse=True)
        if func is F.embedding and len(args) > 1 and args[1] is self.table:
            kwargs["sparse"] = True  # nn.Embedding lookups, whatever the module's own flag
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if torch.is_grad_enabled() and self._reads_table(args, kwargs) and _differentiable(out):
            raise WholeTableRead(
                f"{self.setting}: row-sparse updates need every read of the item table to be a read of "
                f"rows (table[ids]); {getattr(func, '__name__', func)!r} read the whole table. Losses "
                "over the whole catalog (model.loss=full_softmax) and model.l2_normalize=true do that: use "
                "optim.item_table=dense with them")
        return out

    def _reads_table(self, args: tuple, kwargs: dict) -> bool:
        return any(leaf is self.table for leaf in tree_leaves((args, kwargs)))


def _differentiable(out) -> bool:
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in tree_leaves(out))


def sparse_table_reads(table: torch.Tensor, setting: str = "optim.item_table"):
    """Context: inside it, row reads of ``table`` (``table[ids]``, ``table.index_select(0, ids)``,
    ``F.embedding(ids, table)``) have sparse gradients; any other differentiable use of ``table``
    raises :class:`WholeTableRead` (its message names ``setting``).

    Values are unchanged: ``F.embedding`` gathers the same rows as indexing does. Only the
    gradient's layout changes (sparse COO [V+1, D], duplicates not yet summed)."""
    return _SparseRowReads(table, setting)
