"""Every loss written out row by row: loops over rows and candidates, explicit exp/log, nothing
from elastic_pl. The references of tests/test_loss_formulas.py and tests/test_loss_cross_rank.py.

Each ``*_rows`` function returns one 0-d tensor per row (query i with target t_i), differentiable
in the query and the item table; the loss is their mean. Scores are ``query_i . item_j / T``.
"""
from __future__ import annotations

from collections import Counter

import torch


def score(q: torch.Tensor, item: torch.Tensor, temperature: float) -> torch.Tensor:
    return (q * item).sum() / temperature


def log_sum_exp(values: list[torch.Tensor]) -> torch.Tensor:
    shift = max(float(v.detach()) for v in values)  # a constant: exact for any shift, overflow-free
    return shift + torch.log(sum(torch.exp(v - shift) for v in values))


def softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.log(1 + torch.exp(x))


def mean(values: list[torch.Tensor]) -> torch.Tensor:
    return sum(values) / len(values)


def full_softmax_rows(query, target, items, temperature) -> list[torch.Tensor]:
    """-log softmax of the target among all items 1..V."""
    V = items.shape[0] - 1
    rows = []
    for i, t in enumerate(target.tolist()):
        logits = [score(query[i], items[j], temperature) for j in range(1, V + 1)]
        rows.append(log_sum_exp(logits) - logits[t - 1])
    return rows


def uniform_rows(query, target, items, temperature, negatives: list[int]) -> list[torch.Tensor]:
    """Softmax over [target] + the drawn negatives, duplicates kept, those equal to the row's
    target (accidental hits) removed."""
    rows = []
    for i, t in enumerate(target.tolist()):
        pos = score(query[i], items[t], temperature)
        negs = [score(query[i], items[n], temperature) for n in negatives if n != t]
        rows.append(log_sum_exp([pos, *negs]) - pos)
    return rows


def mixture_rows(query, target, items, temperature, batch_targets: list[int],
                 negatives: list[int] = ()) -> list[torch.Tensor]:
    """Softmax over the distinct items of ``batch_targets`` and ``negatives``, each logit minus
    log q_j: q is the proposal of the M + K draws, M from the batch's target frequency c_j / M and
    K uniform over 1..V. With no negatives q_j = c_j / M, the in-batch logQ of Yi et al. 2019."""
    V = items.shape[0] - 1
    M, K = len(batch_targets), len(negatives)
    freq = {j: c / M for j, c in Counter(batch_targets).items()}
    candidates = sorted(set(batch_targets) | set(negatives))
    q = {j: (M * freq.get(j, 0.0) + K * (1.0 / V)) / (M + K) for j in candidates}
    rows = []
    for i, t in enumerate(target.tolist()):
        logits = {j: score(query[i], items[j], temperature) - torch.log(torch.tensor(q[j], dtype=query.dtype))
                  for j in candidates}
        rows.append(log_sum_exp(list(logits.values())) - logits[t])
    return rows


def bce_rows(query, target, items, temperature, negatives: list[int]) -> list[torch.Tensor]:
    """Per row: softplus(-pos) + softplus(neg) with the row's own drawn negative."""
    rows = []
    for i, t in enumerate(target.tolist()):
        pos = score(query[i], items[t], temperature)
        neg = score(query[i], items[negatives[i]], temperature)
        rows.append(softplus(-pos) + softplus(neg))
    return rows


def draw(num_items: int, count: int, generator: torch.Generator) -> list[int]:
    """``count`` ids uniform in 1..V, as the losses draw them from the same generator state."""
    return torch.randint(1, num_items + 1, (count,), generator=generator).tolist()


def _sampled_softmax(cfg, query, target, items, T, generator):
    V = items.shape[0] - 1
    if cfg.get("negatives", "uniform") == "in_batch":
        return mixture_rows(query, target, items, T, target.tolist())
    return uniform_rows(query, target, items, T, draw(V, cfg["num_negatives"], generator))


REFERENCES = {  # loss name -> (cfg, query, target, items, temperature, generator) -> per-row losses
    "full_softmax": lambda cfg, q, t, items, T, g: full_softmax_rows(q, t, items, T),
    "sampled_softmax": _sampled_softmax,
    "bce": lambda cfg, q, t, items, T, g: bce_rows(q, t, items, T, draw(items.shape[0] - 1, t.numel(), g)),
    "in_batch_softmax": lambda cfg, q, t, items, T, g: mixture_rows(q, t, items, T, t.tolist()),
    "mixed_softmax": lambda cfg, q, t, items, T, g: mixture_rows(
        q, t, items, T, t.tolist(), draw(items.shape[0] - 1, cfg["num_negatives"], g)),
}


def reference_rows(cfg: dict, query, target, items, generator: torch.Generator) -> list[torch.Tensor]:
    """The per-row losses of the loss ``cfg`` (``{"name": ..., its keys}``) describes; ``generator``
    is in the state the loss under test received. A loss that ignores its generator draws nothing."""
    return REFERENCES[cfg["name"]](cfg, query, target, items, cfg.get("temperature", 1.0), generator)
