"""How the item table trains (``optim.item_table``): its optimizer, its reads, its clipping.

The LightningModule asks here instead of comparing names: with ``dense`` everything is plain
AdamW and dense gradients; with a row-sparse rule (``elastic_pl.sparse_optim.ROW_RULES``) the
table's training reads give sparse gradients (``elastic_pl.sparse_rows``) and one
:class:`~elastic_pl.sparse_optim.ItemTableOptimizer` steps the table's touched rows and AdamW on
the rest.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from .sparse_optim import ItemTableOptimizer, is_row_sparse
from .sparse_rows import sparse_table_reads


def item_table(model: nn.Module) -> nn.Embedding:
    """The item embedding (V+1, D) of a ``SequentialRecommender`` (also read by the output layer)."""
    return model.embedding.items


def prepare_model(model: nn.Module, item_table_update: str) -> None:
    """Before a strategy wraps the model: a row-sparse table's lookups are declared sparse, which
    DDP needs to know when it builds its gradient buckets (it then all-reduces sparse tensors)."""
    if is_row_sparse(item_table_update):
        item_table(model).sparse = True


def training_reads(model: nn.Module, item_table_update: str):
    """The context a training step's forward and loss run in."""
    if is_row_sparse(item_table_update):
        return sparse_table_reads(item_table(model).weight)
    return nullcontext()


def build_optimizer(model: nn.Module, groups: list[dict], cfg, strategy=None) -> torch.optim.Optimizer:
    """AdamW over ``groups`` (``optim.item_table=dense``), else :class:`ItemTableOptimizer`.
    ``cfg`` is the run's OptimConfig; ``strategy`` the trainer's (sharded tables are refused)."""
    betas = (cfg.beta1, cfg.beta2)
    if not is_row_sparse(cfg.item_table):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)
    table = item_table(model).weight
    if _sharded(table, strategy):
        raise ValueError(f"optim.item_table={cfg.item_table}: a sharded item table (trainer.strategy=fsdp|fsdp2) "
                         "has no row-sparse update; use trainer.strategy=ddp, or optim.item_table=dense")
    return ItemTableOptimizer(groups, table, cfg.item_table, lr=cfg.lr, betas=betas, table_lr=cfg.item_table_lr)


def _sharded(table: torch.Tensor, strategy) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
    from torch.distributed.tensor import DTensor

    return isinstance(table, DTensor) or isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))


def clip_gradients(module, optimizer, clip_val, algorithm) -> None:
    """Lightning's ``configure_gradient_clipping``: the row-sparse optimizer clips its sparse table
    gradient together with the dense ones (torch's clip_grad_norm_ refuses sparse tensors)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
    if isinstance(inner, ItemTableOptimizer) and clip_val:
        if algorithm not in (None, "norm"):
            raise ValueError(f"gradient clipping by {algorithm!r} is not supported with a row-sparse item table "
                             "(optim.item_table): clip by norm (the default)")
        inner.clip_grad_norm_(float(clip_val))
        return
    module.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)
