"""Distributed strategies selected by ``trainer.strategy``.

``ddp`` (default on several devices), ``fsdp`` (Lightning's FSDPStrategy: full shard, blocks and
the interest memory wrapped, sharded checkpoints; GPU only) and ``fsdp2`` (FSDP2 ``fully_shard``
through Lightning's ModelParallelStrategy, applied in ``ElasticLightningModule.configure_model``;
runs on CPU/gloo too).
"""
from __future__ import annotations

from .config import TrainerConfig


def build_strategy(t: TrainerConfig):
    if t.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from .model.encoder import Block
        from .model.memory import ProductKeyMemory

        return FSDPStrategy(auto_wrap_policy={Block, ProductKeyMemory}, sharding_strategy="FULL_SHARD",
                            state_dict_type="sharded")
    if t.strategy == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy(data_parallel_size=t.devices * t.num_nodes, tensor_parallel_size=1)
    return t.strategy
