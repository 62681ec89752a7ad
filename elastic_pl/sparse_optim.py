"""Row-sparse optimizers for the item table, stepped together with a dense AdamW.

``optim.item_table`` selects how the item table (V+1, D) is updated:

* ``dense``: with every other parameter by AdamW (moments for all V+1 rows, every step).
* ``rowwise_adagrad``: one accumulator per row (V+1 floats of state, not 2 (V+1) D):
  ``s_r += mean_d g_rd^2``, ``w_r -= lr g_r / (sqrt(s_r) + eps)``.
* ``lazy_adam``: Adam moments per row, updated only for the rows of this step (the global step
  count gives the bias correction, as in ``torch.optim.SparseAdam``).

The rows a step touches are the rows whose gradient is not zero; every other row, and its state,
stays bitwise unchanged. The gradient may be sparse (``elastic_pl.sparse_rows``: O(rows read)
per step) or dense (its non-zero rows are found, O(V)).

:class:`ItemTableOptimizer` is ONE ``torch.optim.Optimizer`` (Lightning runs one optimizer per
step under automatic optimization): its ``param_groups`` are the dense AdamW's groups plus the
table's group, shared with the inner AdamW, so an LR schedule drives both and a checkpoint holds
the state of both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor


def touched_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """``grad`` [V+1, D] (sparse COO or dense) -> (row ids int64 [R], their gradient [R, D]),
    rows with an all-zero gradient left out; ids sorted, each once (duplicates summed)."""
    if grad.is_sparse:
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
    else:
        rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
        values = grad.index_select(0, rows)
    keep = values.ne(0).any(dim=1)
    return rows[keep], values[keep]


# -- the row rules: (table, rows, gradient rows, state, group) -> None, in place ---------------------
def _adagrad_state(table: Tensor) -> dict:
    return {"sum": torch.zeros(table.shape[0], dtype=torch.float32, device=table.device)}


def _adagrad_step(table: Tensor, rows: Tensor, grad: Tensor, state: dict, group: dict) -> None:
    acc = state["sum"].index_select(0, rows) + grad.float().pow(2).mean(dim=1)
    state["sum"].index_copy_(0, rows, acc)
    scale = acc.sqrt_().add_(group["eps"]).reciprocal_().mul_(-group["lr"])
    table.index_add_(0, rows, (grad.float() * scale.unsqueeze(1)).to(table.dtype))


def _adam_state(table: Tensor) -> dict:
    zeros = lambda: torch.zeros(table.shape, dtype=torch.float32, device=table.device)  # noqa: E731
    return {"step": torch.zeros((), dtype=torch.float32), "exp_avg": zeros(), "exp_avg_sq": zeros()}


def _adam_step(table: Tensor, rows: Tensor, grad: Tensor, state: dict, group: dict) -> None:
    beta1, beta2 = group["betas"]
    state["step"] += 1
    t = float(state["step"])
    g = grad.float()
    m = state["exp_avg"].index_select(0, rows).lerp_(g, 1 - beta1)
    v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(g, g, value=1 - beta2)
    state["exp_avg"].index_copy_(0, rows, m)
    state["exp_avg_sq"].index_copy_(0, rows, v)
    bias1, bias2 = 1 - beta1**t, 1 - beta2**t
    denom = v.sqrt().div_(bias2**0.5).add_(group["eps"])
    table.index_add_(0, rows, (m / denom).mul_(-group["lr"] / bias1).to(table.dtype))


@dataclass(frozen=True)
class RowRule:
    """A row-sparse update: its state for a table and its in-place step over touched rows."""

    init_state: Callable[[Tensor], dict]
    step: Callable[[Tensor, Tensor, Tensor, dict, dict], None]


ROW_RULES = {"rowwise_adagrad": RowRule(_adagrad_state, _adagrad_step),
             "lazy_adam": RowRule(_adam_state, _adam_step)}
# optim.item_table: "dense" (AdamW with everything else) or a row rule
ITEM_TABLE_UPDATES = ("dense", *ROW_RULES)


def is_row_sparse(item_table: str) -> bool:
    return item_table in ROW_RULES


class ItemTableOptimizer(torch.optim.Optimizer):
    """AdamW over ``param_groups`` (the table taken out of them) + ``ROW_RULES[rule]`` for ``table``.

    ``table_lr`` (default ``lr``) is the table group's learning rate; a scheduler scales it like
    every other group's. The table group has no weight decay."""

    def __init__(self, param_groups, table: torch.nn.Parameter, rule: str, *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, table_lr: Optional[float] = None):
        if rule not in ROW_RULES:
            raise ValueError(f"optim.item_table: {rule!r} is not a row-sparse rule {tuple(ROW_RULES)}")
        groups = [dict(g, params=[p for p in g["params"] if p is not table]) for g in param_groups]
        self._adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps)
        table_group = {"params": [table], "row_rule": rule, "weight_decay": 0.0,
                       "lr": lr if table_lr is None else table_lr}
        super().__init__([*self._adamw.param_groups, table_group], self._adamw.defaults)
        self._link()

    def _link(self) -> None:
        # the inner AdamW steps the dense groups (the same dicts) and keeps its state in ours
        self._adamw.param_groups = [g for g in self.param_groups if not g.get("row_rule")]
        self._adamw.state = self.state

    def __setstate__(self, state: dict) -> None:  # load_state_dict replaces groups and state
        super().__setstate__(state)
        if "_adamw" in self.__dict__:
            self._link()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._adamw.step()
        for group in self.param_groups:
            rule = ROW_RULES.get(group.get("row_rule"))
            for p in group["params"] if rule else ():
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(rule.init_state(p))
                rows, grad = touched_rows(p.grad)
                rule.step(p, rows, grad, state, group)
        return loss

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over every parameter, the table's sparse gradient
        included (coalesced first, so a row read twice counts once with its summed gradient)."""
        grads = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    p.grad = p.grad.coalesce()
                    grads.append(p.grad._values())  # a view: scaling it scales the gradient
                else:
                    grads.append(p.grad)
        total = torch.nn.utils.get_total_norm(grads)
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale.to(g.device))
        return total
