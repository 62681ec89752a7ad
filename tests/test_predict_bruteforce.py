"""``predict``'s top-k (chunked over the catalog, history masked, original ids) against a brute-force
ranking: the scores of every item at once, seen items removed, a full sort."""
from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from elastic_pl.cli import main
from elastic_pl.config import load_config
from elastic_pl.lightning_module import ElasticLightningModule
from elastic_pl.train import build_datamodule
from tests.checkpoint_fixtures import trained_tiny_run

TOP_K = 20
CHUNK = 16  # items scored at once: the top-k is merged over ~9 chunks of the 141-item catalog


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    for overrides, result in trained_tiny_run(tmp_path_factory.mktemp("predict")):
        yield overrides, result.best_checkpoint


def _id_map(path, key: str) -> dict:
    t = pq.read_table(path).to_pydict()
    return dict(zip(t[key], t["original"]))


def _brute_force(overrides, checkpoint: str, filter_seen: bool) -> dict:
    """original user id -> [(original item id, score)] of the top TOP_K, best first."""
    cfg = load_config(None, overrides)
    module = ElasticLightningModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    model = module.model
    users = _id_map(f"{cfg.data.loader.data_dir}/user_map.parquet", "user")
    items = _id_map(f"{cfg.data.loader.data_dir}/item_map.parquet", "item")
    out = {}
    with torch.no_grad():
        table = model.item_matrix().float()
        for batch in build_datamodule(cfg).predict_dataloader():
            query = model.query(model.encode_last(batch["items"], batch.get("timestamps"))).float()
            scores = query @ table.T  # [B, V+1]
            scores[:, 0] = -math.inf  # padding is never recommended
            for b in torch.nonzero(batch["valid"]).flatten().tolist():
                row = scores[b].clone()
                if filter_seen:
                    row[batch["seen"][b][batch["seen"][b] > 0]] = -math.inf
                order = torch.argsort(row, descending=True, stable=True)[:TOP_K]
                out[users[int(batch["user"][b])]] = [(items[int(i)], float(row[i])) for i in order]
    return out


@pytest.mark.parametrize("filter_seen", [True, False])
def test_predict_top_k_equals_brute_force(trained, tmp_path, filter_seen):
    overrides, best = trained
    settings = [f"eval.top_k={TOP_K}", f"eval.chunk_size={CHUNK}", f"eval.filter_seen={str(filter_seen).lower()}"]
    path = tmp_path / "preds.parquet"
    assert main(["predict", "--checkpoint", best, "--out", str(path), *overrides, *settings]) == 0
    got = pq.read_table(path).to_pydict()
    expected = _brute_force(overrides + settings, best, filter_seen)
    assert len(expected) == 120 and len(got["user"]) == 120 * TOP_K
    by_user: dict = {}
    for user, rank, item, score in zip(got["user"], got["rank"], got["item"], got["score"]):
        by_user.setdefault(user, []).append((rank, item, score))
    assert by_user.keys() == expected.keys()
    for user, rows in by_user.items():
        rows.sort()
        assert [r for r, _, _ in rows] == list(range(1, TOP_K + 1))
        assert [i for _, i, _ in rows] == [i for i, _ in expected[user]], user
        np.testing.assert_allclose([s for _, _, s in rows], [s for _, s in expected[user]], rtol=1e-5, atol=1e-6)
