"""The LightningModule: wraps the plain-torch model with optimisation, evaluation and logging."""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Optional

import lightning as L
import torch

from .config import EvalConfig, OptimConfig
from .metrics import FullRankingMetrics, target_ranks
from .model import ModelConfig, SequentialRecommender
from .model.memory import ProductKeyMemory, mean_read_statistics
from .optim_groups import param_groups
from . import item_table


class ElasticLightningModule(L.LightningModule):
    """Training/validation/test/predict around :class:`SequentialRecommender`.

    Hyper-parameters are plain dicts (saved in every checkpoint with the resolved run config),
    so a checkpoint rebuilds its model without the config files.
    """

    def __init__(self, model: dict, optim: dict, eval: dict, run_config: Optional[dict] = None):
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg = ModelConfig.from_dict(model)
        self.optim_cfg = OptimConfig(**optim)
        self.eval_cfg = EvalConfig(**eval)
        self.model = SequentialRecommender(self.model_cfg)
        self.val_metrics = FullRankingMetrics()
        self.test_metrics = FullRankingMetrics()
        self._tokens, self._t0 = 0, None
        self._positions = 0  # padded positions of the batches behind self._tokens (train/fill)
        self._val_fill = torch.zeros(2, dtype=torch.float64)  # real, padded positions of validation
        self._epoch_t0 = None  # set when an epoch starts from its beginning

    @classmethod
    def from_configs(cls, model: ModelConfig, optim: OptimConfig, eval: EvalConfig, run_config: Optional[dict] = None):
        return cls(asdict(model), asdict(optim), asdict(eval), run_config)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.model(items)

    def configure_model(self) -> None:
        """FSDP2 (``trainer.strategy=fsdp2``): shard the encoder's units (ELASTIC: every block and
        interest memory) and the rest (embeddings) over the data-parallel mesh. Other strategies leave the model as is."""
        item_table.prepare_model(self.model, self.optim_cfg.item_table)  # before DDP wraps it
        mesh = getattr(self, "device_mesh", None)
        if mesh is None or getattr(self, "_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard

        dp = mesh["data_parallel"]
        for unit in self.model.wrap_units():  # the encoder's FSDP units, innermost first
            fully_shard(unit, mesh=dp)
        fully_shard(self.model, mesh=dp, reshard_after_forward=False)  # item table reused by the loss
        self._sharded = True

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        with item_table.training_reads(self.model, self.optim_cfg.item_table):  # sparse rows if row-sparse
            hidden = self.model(batch["items"], timestamps=batch.get("timestamps"))
            loss = self.model.loss(hidden, batch["targets"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["items"].shape[0])
        self._tokens += int((batch["items"] != 0).sum())
        self._positions += batch["items"].numel()
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = max(1, self.trainer.log_every_n_steps)
        if (batch_idx + 1) % every:
            return
        now = time.perf_counter()
        if self._t0 is not None:
            tokens_per_s = self._tokens / (now - self._t0) * self.trainer.world_size
            self.log("train/tokens_per_s", tokens_per_s, prog_bar=True)
        if self._positions:  # real items / padded positions of the batches since the last log
            self.log("train/fill", self._tokens / self._positions)
        if torch.cuda.is_available() and self.device.type == "cuda":
            self.log("train/peak_mem_gib", torch.cuda.max_memory_allocated(self.device) / 2**30)
        else:
            import resource

            self.log("train/peak_rss_gib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        self._tokens, self._positions, self._t0 = 0, 0, now

    def on_train_epoch_start(self) -> None:
        self._tokens, self._positions, self._t0 = 0, 0, time.perf_counter()
        self._epoch_t0 = self._t0

    def on_train_epoch_end(self) -> None:
        """Wall time of the epoch: its training steps and the validation that ends it (Lightning
        validates before ``on_train_epoch_end``), for BENCHMARKS.md.
        Not logged when the epoch began before a resume (no start hook ran in this process)."""
        if self._epoch_t0 is not None:
            self.log("train/epoch_time_s", time.perf_counter() - self._epoch_t0)
        self._epoch_t0 = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The RNG that dropout and negative sampling draw from, so a resumed run continues with the
        same draws as an uninterrupted one (Lightning restores the data loader's position)."""
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("rng")
        trainer = self._trainer  # None when loaded for evaluation, export or predict
        if rng is not None and trainer is not None and trainer.state.fn == "fit":
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"], self.device)

    # -- evaluation ---------------------------------------------------------------------------
    def ranks(self, batch: dict) -> torch.Tensor:
        query = self.model.query(self.model.encode_last(batch["items"], batch.get("timestamps")))
        seen = batch["seen"] if self.eval_cfg.filter_seen else None
        return target_ranks(query, self.model.item_matrix(), batch["target"], seen, self.eval_cfg.chunk_size)

    def _memories(self):
        return [m for m in self.model.modules() if isinstance(m, ProductKeyMemory)]

    def on_validation_epoch_start(self) -> None:
        for m in self._memories():
            m.reset_usage()
            m.track_usage = True
        self._val_fill.zero_()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_metrics.update(self.ranks(batch), batch["valid"])
        self._val_fill += torch.tensor([float((batch["items"] != 0).sum()), float(batch["items"].numel())],
                                       dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)
        real, padded = self.trainer.strategy.reduce(self._val_fill.to(self.device), reduce_op="sum").tolist()
        if padded:
            self.log("val/fill", real / padded, sync_dist=False)
        memories = self._memories()
        for m in memories:
            m.track_usage = False
        if memories:  # reads summed over ranks first, so every rank logs the same values
            stats = mean_read_statistics(memories, lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))
            for key in ("slot_fraction", "read_entropy", "read_entropy_frac"):
                self.log(f"val/memory_{key}", stats[key], sync_dist=False)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self.ranks(batch), batch["valid"])

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def _log_metrics(self, split: str, metrics: FullRankingMetrics) -> None:
        values = metrics.compute()  # reduced across ranks (sum states)
        metrics.reset()
        for k, v in values.items():  # already reduced over ranks: no sync_dist
            self.log(f"{split}/{k}", v.float(), prog_bar=k == "ndcg@10", sync_dist=False)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Top-k items per user (history excluded if ``filter_seen``), padding rows dropped."""
        query = self.model.query(self.model.encode_last(batch["items"], batch.get("timestamps"))).float()
        items = self.model.item_matrix().float()
        k = min(self.eval_cfg.top_k, items.shape[0] - 1)
        best_scores = torch.full((query.shape[0], k), -math.inf, device=query.device)
        best_items = torch.zeros((query.shape[0], k), dtype=torch.long, device=query.device)
        step = self.eval_cfg.chunk_size
        for lo in range(1, items.shape[0], step):
            scores = query @ items[lo:lo + step].T
            if self.eval_cfg.filter_seen:  # mask history items that fall into this chunk
                idx = batch["seen"] - lo
                inside = (idx >= 0) & (idx < scores.shape[1])
                hits = torch.zeros_like(scores).scatter_add_(1, idx.clamp(0, scores.shape[1] - 1), inside.to(scores.dtype))
                scores = scores.masked_fill(hits > 0, -math.inf)
            ids = torch.arange(lo, lo + scores.shape[1], device=query.device).expand_as(scores)
            merged_s, pos = torch.cat([best_scores, scores], 1).topk(k, dim=1)
            best_items = torch.cat([best_items, ids], 1).gather(1, pos)
            best_scores = merged_s
        keep = batch["valid"]
        return {"user": batch["user"][keep].cpu(), "items": best_items[keep].cpu(), "scores": best_scores[keep].cpu()}

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        c = self.optim_cfg
        groups = param_groups(self.model, c.lr, c.weight_decay, c.memory_lr_mult)
        opt = item_table.build_optimizer(self.model, groups, c, self.trainer.strategy)  # AdamW unless row-sparse
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(c.warmup_steps, total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        item_table.clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
