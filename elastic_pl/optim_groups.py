"""AdamW parameter groups by what a parameter is, not by its name.

Weight decay pulls every row towards zero at every step. That is a prior worth having on dense
projection matrices, and a harm on tables that are read sparsely: an item embedding or an interest
slot that is not read in a step still shrinks, so rarely seen items and unused slots decay to zero.
So only the weight matrices of ``nn.Linear`` layers decay; embeddings, the memory's values and
keys, norms and biases do not. The interest memory's values get their own learning rate
(``optim.memory_lr_mult``): product-key memories train their values faster than the rest
(Lample et al. 2019), since each slot sees only the few queries routed to it.
"""
from __future__ import annotations

from torch import nn

from .model.memory import ProductKeyMemory

GROUPS = ("decay", "no_decay", "memory_values")


def param_groups(model: nn.Module, lr: float, weight_decay: float, memory_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups ``{"name", "params", "weight_decay", "lr"}`` covering every trainable
    parameter exactly once; empty groups are left out."""
    memory_values = {id(m.values.weight) for m in model.modules() if isinstance(m, ProductKeyMemory)}
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    named: dict[str, list] = {g: [] for g in GROUPS}
    for _, p in model.named_parameters():  # named_parameters de-duplicates tied parameters
        if not p.requires_grad:
            continue
        if id(p) in memory_values:
            named["memory_values"].append(p)
        elif id(p) in linear_weights:
            named["decay"].append(p)
        else:
            named["no_decay"].append(p)
    settings = {"decay": (weight_decay, lr), "no_decay": (0.0, lr), "memory_values": (0.0, lr * memory_lr_mult)}
    return [{"name": g, "params": ps, "weight_decay": settings[g][0], "lr": settings[g][1]}
            for g, ps in named.items() if ps]
