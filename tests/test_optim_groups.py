"""AdamW groups by intent: only nn.Linear weights decay; the memory's values have their own lr."""
from __future__ import annotations

import torch

from elastic_pl.model.config import ModelConfig
from elastic_pl.model.recommender import SequentialRecommender
from elastic_pl.optim_groups import param_groups


def _model() -> SequentialRecommender:
    return SequentialRecommender(ModelConfig.from_flat(dict(num_items=50, d_model=16, n_heads=2, n_layers=1,
                                                            memory_subkeys=4, memory_topk=2, memory_key_dim=8,
                                                            num_experts=4, chunk_size=4)))


def test_groups_cover_every_parameter_once_and_decay_only_linear_weights():
    model = _model()
    groups = param_groups(model, lr=1e-3, weight_decay=0.1, memory_lr_mult=10.0)
    by_name = {g["name"]: g for g in groups}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in by_name["decay"]["params"]}
    assert decayed and all(n.endswith(".weight") for n in decayed)
    linear = {n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert decayed == linear
    undecayed = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert "embedding.items.weight" in undecayed
    memory_values = [n for n in names.values() if n.endswith("memory.values.weight")]
    assert memory_values and {names[id(p)] for p in by_name["memory_values"]["params"]} == set(memory_values)
    assert by_name["memory_values"]["weight_decay"] == 0.0 and by_name["memory_values"]["lr"] == 1e-2
    assert all(n not in decayed for n in undecayed) and not any("norm" in n for n in decayed)


def test_unread_memory_slots_do_not_shrink():
    """One AdamW step with zero gradient on the memory values leaves them unchanged."""
    model = _model()
    opt = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if n.endswith("memory.values.weight") or n == "embedding.items.weight":
            assert torch.equal(p, before[n]), n
