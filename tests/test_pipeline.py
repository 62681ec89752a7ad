"""End to end on CPU: prepare synthetic -> train -> evaluate -> predict -> export; W&B offline;
resume; config errors; 2-process DDP evaluation equals 1 process."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pyarrow.parquet as pq
import pytest
import torch

from elastic_pl.cli import main
from elastic_pl.config import ConfigError, load_config
from elastic_pl.train import fit, latest_checkpoint
from tests.pipeline_config import logged_train_steps, tiny_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run shared by the tests below: prepare + train 1 epoch + test."""
    os.environ["WANDB_MODE"] = "offline"
    tmp = tmp_path_factory.mktemp("e2e")
    overrides = tiny_overrides(tmp, "run.run_id=first")
    assert main(["prepare", *overrides]) == 0
    result = fit(load_config(None, overrides))
    return tmp, overrides, result


def test_end_to_end_train_evaluate_predict_export(trained, tmp_path):
    tmp, overrides, result = trained
    run = Path(result.run_dir)
    assert (run / "config.yaml").is_file() and Path(result.best_checkpoint).is_file()
    assert 0.0 <= result.test["test/ndcg@10"] <= 1.0 and result.test["test/count"] == 120
    # evaluate on the test split reproduces fit's test metrics (same best checkpoint)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", result.best_checkpoint, "--out", str(out), *overrides]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["test/ndcg@10"] == pytest.approx(result.test["test/ndcg@10"], abs=1e-6)
    # predict writes top-k per user with original ids
    preds = tmp_path / "preds.parquet"
    assert main(["predict", "--checkpoint", result.best_checkpoint, "--out", str(preds), *overrides,
                 "eval.top_k=5"]) == 0
    table = pq.read_table(preds).to_pydict()
    assert len(table["user"]) == 120 * 5 and set(table["rank"]) == {1, 2, 3, 4, 5}
    # export of the serving path, checked against eager inside the command
    assert main(["export", "--checkpoint", result.best_checkpoint, "--out", str(tmp_path / "serving"), *overrides]) == 0
    assert (tmp_path / "serving" / "serving.json").is_file()


def test_resolved_config_saved_in_checkpoint(trained):
    _, _, result = trained
    import torch

    ckpt = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    saved = ckpt["hyper_parameters"]["run_config"]
    assert saved["model"]["num_items"] == ckpt["hyper_parameters"]["model"]["num_items"] > 0
    assert saved["run"]["experiment"] == "e2e"


def test_wandb_offline_run_logged_metrics_read_back(trained):
    _, _, result = trained
    run = Path(result.run_dir)
    summary = result.wandb_summary  # read from the live W&B run object before it was finished
    (fit_log,) = (run / "csv").glob("fit-*/metrics.csv")
    rows = list(csv.DictReader(open(fit_log)))
    logged_val = [float(r["val/ndcg@10"]) for r in rows if r.get("val/ndcg@10")]
    assert summary["val/ndcg@10"] == pytest.approx(logged_val[-1], abs=1e-6)
    assert summary["test/ndcg@10"] == pytest.approx(result.test["test/ndcg@10"], abs=1e-6)
    run_id = (run / "wandb_run_id.txt").read_text().strip()
    offline_runs = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline_runs, "no offline W&B run directory with the stored run id"


def test_epoch_wall_time_and_fill_logged(trained):
    _, _, result = trained
    (fit_log,) = (Path(result.run_dir) / "csv").glob("fit-*/metrics.csv")
    rows = list(csv.DictReader(open(fit_log)))
    times = [float(r["train/epoch_time_s"]) for r in rows if r.get("train/epoch_time_s")]
    assert times and all(t > 0 for t in times)
    for key in ("train/fill", "val/fill"):  # real items / padded positions, logged from the batches
        fill = [float(r[key]) for r in rows if r.get(key)]
        assert fill and all(0 < f <= 1 for f in fill), key
        assert min(fill) < 1  # the tiny set's users differ in length: fixed-size batches pad


class _Interrupt(L.Callback):
    """Simulates a crash (preemption, time limit) once ``at`` optimizer steps ran, before the next
    one (after any validation that ended step ``at``'s epoch)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step >= self.at:
            raise RuntimeError("simulated crash")


class _StepRecorder(L.Callback):
    def __init__(self):
        self.first_step = None

    def on_train_batch_start(self, trainer, *args):
        if self.first_step is None:
            self.first_step = trainer.global_step


def test_resume_after_interruption_continues_step_and_wandb_run(trained):
    tmp, overrides, _ = trained
    cfg = load_config(None, overrides + ["run.run_id=resume", "trainer.max_epochs=2",
                                         "trainer.checkpoint_every_n_steps=2"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[_Interrupt(at=5)])  # crashes in epoch 2 (4 steps per epoch)
    run = Path(tmp / "runs" / "e2e" / "resume")
    assert latest_checkpoint(run) is not None
    run_id = (run / "wandb_run_id.txt").read_text()
    recorder = _StepRecorder()
    result = fit(cfg, callbacks=[recorder])
    assert recorder.first_step == 4  # resumed from the step-4 checkpoint, not from 0
    assert result.trainer.global_step == 8
    assert (run / "wandb_run_id.txt").read_text() == run_id
    from lightning.pytorch.loggers import WandbLogger

    resumed = next(lg for lg in result.trainer.loggers if isinstance(lg, WandbLogger))
    assert resumed.version == run_id.strip()  # the resumed launch logged to the same W&B run
    # (two launches within one second share one offline-run-<second>-<id> directory)
    assert list((run / "wandb").glob(f"offline-run-*-{run_id.strip()}"))


@pytest.mark.parametrize("how", ["crash", "max_steps"])
def test_resume_from_epoch_end_checkpoint_logs_every_step_once(trained, how):
    # the newest checkpoint is last.ckpt, written after epoch 0's validation (step 4). With
    # trainer.max_steps set, Lightning alone resumed the logging step at 5 (steps 5..8 logged; the
    # SLURM requeue test met it when the signal came at an epoch's end); train.LogStepFromGlobalStep
    # puts it back at 4
    tmp, overrides, _ = trained
    base = overrides + [f"run.run_id=epoch-end-{how}", "trainer.max_epochs=100"]
    if how == "crash":
        with pytest.raises(RuntimeError, match="simulated crash"):
            fit(load_config(None, base + ["trainer.max_steps=8"]), callbacks=[_Interrupt(at=4)])
    else:  # a finished run extended
        fit(load_config(None, base + ["trainer.max_steps=4"]))
    result = fit(load_config(None, base + ["trainer.max_steps=8", "run.on_config_change=allow"]))
    assert result.trainer.global_step == 8
    assert logged_train_steps(result.run_dir) == [[0, 1, 2, 3], [4, 5, 6, 7]]


class _NoImprovementAfterFirstEpoch(L.Callback):
    """Reports val/ndcg@10 = -1 after epoch 0, so the best checkpoint stays at epoch 0."""

    def on_validation_end(self, trainer, *args):
        if trainer.current_epoch > 0:
            trainer.callback_metrics["val/ndcg@10"] = torch.tensor(-1.0)


def test_last_checkpoint_follows_every_epoch_not_only_the_best(trained):
    # Lightning's save_last on the monitored callback wrote last.ckpt only with a new best: a
    # resume went back to the best epoch (ML-1M SASRec resumed at epoch 36 of 46)
    tmp, overrides, _ = trained
    result = fit(load_config(None, overrides + ["run.run_id=last-ckpt", "trainer.max_epochs=3"]),
                 callbacks=[_NoImprovementAfterFirstEpoch()])
    run = Path(result.run_dir)
    assert torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["global_step"] == 4
    assert latest_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 12
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-epoch0-step4.ckpt", "last.ckpt"]


@pytest.mark.parametrize("override,key", [("model.d_modell=3", "model.d_modell"),
                                          ("trainer.max_epochs=abc", "trainer.max_epochs"),
                                          ("model.encoder.chunk_size=0", "model.encoder.chunk_size"),
                                          ("trainer.strategy=magic", "trainer.strategy")])
def test_bad_config_fails_before_work(tmp_path, capsys, override, key):
    assert main(["train", f"run.root={tmp_path}/runs", override]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_bad_yaml_key_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: 32\n  expertz: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*model.expertz"):
        load_config(str(bad))


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_frozen_config_loads_and_names_its_command(path):
    cfg = load_config(str(path))
    assert cfg.run.experiment
    assert f"--config configs/{path.name}" in path.read_text().split("\nrun:")[0], "header lacks the command"


def test_ddp_evaluation_equals_single_process(trained, tmp_path):
    """1 process with fixed-size batches = 2 gloo ranks x 2 workers, with fixed-size and with
    token-budget batches (every user once, the same metrics)."""
    _, overrides, result = trained
    outs = {}
    for devices, max_tokens in ((1, None), (2, None), (2, 64)):
        name = f"eval{devices}-{max_tokens}"
        out = tmp_path / f"{name}.json"
        cmd = [sys.executable, "-m", "elastic_pl", "evaluate", "--checkpoint", result.best_checkpoint,
               "--out", str(out), *overrides, f"trainer.devices={devices}",
               f"trainer.strategy={'ddp' if devices > 1 else 'auto'}", "wandb.enabled=false",
               f"run.dir={tmp_path}/{name}", f"data.loader.num_workers={2 if devices > 1 else 0}",
               f"data.loader.max_tokens={'null' if max_tokens is None else max_tokens}"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[name] = json.loads(out.read_text())
    single = outs.pop("eval1-None")
    assert single["test/count"] == 120
    for name, metrics in outs.items():
        assert metrics["test/count"] == 120, name
        for k, v in single.items():
            assert metrics[k] == pytest.approx(v, abs=1e-6), (name, k)


def test_popularity_baseline_counts_training_items_only(tmp_path):
    import numpy as np

    from elastic_pl.popularity import evaluate_popularity, training_item_counts
    from data_pipeline.datamodule import ElasticDataModule, LoaderConfig
    from tests.shard_fixtures import random_sequences, write_shards

    seqs = random_sequences(40, 30, min_len=3, max_len=12, seed=3)
    write_shards(str(tmp_path / "shards"), seqs, num_shards=3, num_items=30)
    dm = ElasticDataModule(LoaderConfig(data_dir=str(tmp_path / "shards"), num_workers=0))
    expected = np.bincount(np.concatenate([s[:-2] for s in seqs]), minlength=31)
    assert np.array_equal(training_item_counts(dm), expected)
    cfg = load_config(None, [f"data.loader.data_dir={tmp_path}/shards", "data.loader.num_workers=0"])
    metrics = evaluate_popularity(cfg)
    assert metrics["test/count"] == 40
    # the brute-force rank of each test target among unseen items, pessimistic ties
    ranks = []
    for s in seqs:
        target, seen = s[-1], set(s[:-1]) - {s[-1]}
        better = [j for j in range(1, 31) if j != target and j not in seen and expected[j] >= expected[target]]
        ranks.append(1 + len(better))
    assert metrics["test/hr@10"] == pytest.approx(np.mean(np.array(ranks) <= 10))
    assert metrics["test/mrr"] == pytest.approx(np.mean(1.0 / np.array(ranks)))


@pytest.mark.parametrize("params", [None, (1, 2, 0.8, 0.01), (4, 8, 0.3, 0.0)], ids=["default", "p1", "p2"])
def test_transition_baseline_matches_brute_force(tmp_path, params):
    import numpy as np

    from elastic_pl import transition
    from tests.shard_fixtures import random_sequences, write_shards

    p = transition.DEFAULT if params is None else transition.TransitionParams(*params)
    seqs = random_sequences(40, 25, min_len=3, max_len=14, seed=5)
    write_shards(str(tmp_path / "shards"), seqs, num_shards=2, num_items=25)
    cfg = load_config(None, [f"data.loader.data_dir={tmp_path}/shards", "data.loader.num_workers=0"])
    metrics = transition.evaluate_transition(cfg, params=p)
    assert metrics["test/count"] == 40
    # brute force: transitions within WINDOW steps over s[:-2], weight 1/distance, row-normalised
    counts = np.zeros((26, 26))
    for s in seqs:
        train = s[:-2]
        for a in range(len(train)):
            for b in range(a + 1, min(a + p.window, len(train) - 1) + 1):
                counts[train[a], train[b]] += 1.0 / (b - a)
    probs = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-30)
    events = np.bincount(np.concatenate([s[:-2] for s in seqs]), minlength=26)
    shares = events / events.sum()
    ranks = []
    for s in seqs:
        history, target = s[:-1], s[-1]
        score = p.pop_weight * shares
        for k, item in enumerate(history[::-1][: p.last]):
            score = score + p.decay**k * probs[item]
        seen = set(history) - {target}
        better = [j for j in range(1, 26) if j != target and j not in seen and score[j] >= score[target] - 1e-6]
        ranks.append(1 + len(better))
    assert metrics["test/mrr"] == pytest.approx(np.mean(1.0 / np.array(ranks)), rel=1e-5)
    assert metrics["test/hr@5"] == pytest.approx(np.mean(np.array(ranks) <= 5))


def test_transition_baseline_refuses_huge_catalogs(tmp_path, monkeypatch):
    from elastic_pl import transition
    from tests.shard_fixtures import random_sequences, write_shards

    write_shards(str(tmp_path / "shards"), random_sequences(5, 25, min_len=3, max_len=5, seed=1), num_shards=1,
                 num_items=25)
    monkeypatch.setattr(transition, "MAX_ITEMS", 10)
    cfg = load_config(None, [f"data.loader.data_dir={tmp_path}/shards", "data.loader.num_workers=0"])
    with pytest.raises(ValueError, match="supports catalogs of up to 10 items"):
        transition.evaluate_transition(cfg)


def test_paired_comparison_recomputes_the_stored_test_metric(trained, tmp_path):
    import shutil

    from bench import paired

    _, _, result = trained
    run = Path(result.run_dir)
    out = paired.compare([run], [run], "ndcg@10", resamples=200)
    assert out["users"] == 120 and out["diff"] == 0.0
    assert out["mean_a"] == pytest.approx(result.test["test/ndcg@10"], abs=1e-6)
    # the check against the stored metric fails loudly when they disagree
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    stored = json.loads((copy / "test_metrics.json").read_text())
    stored["test"]["test/ndcg@10"] += 0.01
    (copy / "test_metrics.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="differs from the stored"):
        paired.compare([copy], [run], "ndcg@10", resamples=10)
    # overrides re-evaluate both sides differently (here without the history filter): no stored check
    unfiltered = paired.compare([copy], [run], "ndcg@10", resamples=10, overrides=["eval.filter_seen=false"])
    assert unfiltered["overrides"] == ["eval.filter_seen=false"] and unfiltered["diff"] == 0.0
    assert unfiltered["mean_a"] < result.test["test/ndcg@10"]  # seen items now rank above targets


def test_paired_comparison_against_a_baseline(trained):
    from bench import paired
    from elastic_pl import cli
    from elastic_pl.baselines import BASELINES, evaluate_named

    _, _, result = trained
    run = Path(result.run_dir)
    cfg = load_config(str(run / "config.yaml"))
    for name in BASELINES:
        out = paired.compare([run], [Path(f"baseline:{name}")], "ndcg@10", resamples=50)
        assert out["users"] == 120
        assert out["mean_a"] == pytest.approx(result.test["test/ndcg@10"], abs=1e-6)
        assert out["mean_b"] == pytest.approx(evaluate_named(cfg, name)["test/ndcg@10"], abs=1e-6), name
    with pytest.raises(ValueError, match="needs a run directory"):
        paired.compare([Path("baseline:transition")], [Path("baseline:popularity")], resamples=10)
    with pytest.raises(ValueError, match="unknown baseline"):
        paired.compare([run], [Path("baseline:markov")], resamples=10)
    choices = next(a.choices for a in cli.parser()._actions if a.dest == "baseline")
    assert sorted(choices) == sorted(BASELINES)


def test_frontier_reads_a_real_run(trained, tmp_path):
    from bench import frontier

    _, _, result = trained
    run = result.run_dir
    points = frontier.main(["--run", run, run, "--paired", "--png", str(tmp_path / "f.png"), "--hline", "pop=0.01",
                            "--json", str(tmp_path / "f.json")])
    p = points[0]
    assert p["ndcg@10"] == pytest.approx(result.test["test/ndcg@10"]) and p["encoder"] == "elastic"
    assert p["max_len"] == 32 and p["epochs"] == 1 and p["best_epoch"] == 0
    assert p["seconds_to_best"] > 0 and p["peak_rss_gib"] > 0
    assert points[1]["vs_shorter"]["diff"] == 0.0  # a run against itself, through bench.paired
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_fill_bench_on_the_tiny_run(trained):
    from bench import fill

    _, overrides, _ = trained
    fixed = fill.measure(None, overrides, None)
    budget = fill.measure(None, overrides + ["data.loader.max_tokens=128"], None)
    assert fixed["train"]["batches"] == 4 and budget["train"]["batches"] >= 1
    assert 0 < fixed["train"]["fill"] < budget["train"]["fill"] <= 1
    assert budget["valid"]["fill"] > fixed["valid"]["fill"]


@pytest.mark.slow
def test_a_trained_model_beats_popularity(trained):
    """The whole pipeline learns: a few epochs on the tiny synthetic log (drifting interests,
    so the recent items predict the next) beat the popularity baseline on test."""
    from elastic_pl.popularity import evaluate_popularity

    tmp, overrides, _ = trained
    cfg = load_config(None, overrides + ["run.run_id=learns", "trainer.max_epochs=12", "data.loader.steps_per_epoch=8",
                                         "model.d_model=32", "optim.lr=0.01"])
    trained_ndcg = fit(cfg).test["test/ndcg@10"]
    popularity = evaluate_popularity(cfg)["test/ndcg@10"]
    assert trained_ndcg > 1.5 * popularity, (trained_ndcg, popularity)


def test_limit_test_batches_scores_a_subset_and_says_so(trained):
    tmp, overrides, _ = trained
    result = fit(load_config(None, overrides + ["run.run_id=limited", "trainer.max_steps=1",
                                                "trainer.limit_test_batches=1"]))
    assert result.test["test/count"] == 32  # one eval batch of 32 users, not all 120
    stored = json.loads((Path(result.run_dir) / "test_metrics.json").read_text())
    assert stored["limit_test_batches"] == 1 and stored["test"]["test/count"] == 32
    with pytest.raises(ConfigError, match="trainer.limit_test_batches: must be >= 1"):
        load_config(None, ["trainer.limit_test_batches=0"])


def test_a_run_stopped_before_its_first_validation_tests_its_last_checkpoint_and_says_so(trained, capsys):
    from elastic_pl.cli import main
    from elastic_pl.train import evaluate

    tmp, overrides, _ = trained
    run = overrides + ["run.run_id=unvalidated", "trainer.max_steps=2"]  # an epoch is 4 steps
    assert main(["train", *run]) == 0
    out = capsys.readouterr().out
    assert "best checkpoint: none (no validation ran)" in out and "tested: the last weights" in out, out
    stored = json.loads((tmp / "runs" / "e2e" / "unvalidated" / "test_metrics.json").read_text())
    last = tmp / "runs" / "e2e" / "unvalidated" / "checkpoints" / "last.ckpt"
    assert stored["best_checkpoint"] == "" and stored["tested_checkpoint"] == str(last)
    again = evaluate(load_config(None, run + ["run.run_id=unvalidated-eval"]), str(last))
    assert again["test/ndcg@10"] == pytest.approx(stored["test"]["test/ndcg@10"], abs=1e-6)


class StopLikeTheTimer(L.Callback):
    """What ``trainer.max_time_minutes`` does when the time runs out inside an epoch: ask the loop
    to stop after a step; Lightning then validates and writes the last checkpoint mid-epoch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            trainer.should_stop = True


def _stopped_run(overrides, run_id):
    run = overrides + [f"run.run_id={run_id}", "trainer.early_stopping_patience=3", "trainer.max_epochs=3"]
    first = fit(load_config(None, run), callbacks=[StopLikeTheTimer()])
    assert first.trainer.global_step == 6  # one epoch of 4 steps, then 2 of the second
    return run, Path(first.run_dir) / "checkpoints" / "last.ckpt"


def test_a_resume_after_a_wall_time_stop_starts_the_next_epoch_in_step_with_lightning(trained):
    """Lightning counts the stopped epoch as done; the data must start the next epoch too, not
    spend the resumed epoch on the stopped one's remaining batches (which lost an epoch)."""
    _, overrides, _ = trained
    run, _ = _stopped_run(overrides, "timer-stop")
    resumed = fit(load_config(None, run))
    assert logged_train_steps(resumed.run_dir)[-1] == list(range(6, 10))  # epoch 2, whole: 4 steps
    assert resumed.test["test/count"] == 120


def test_a_resume_of_a_stopped_epoch_with_early_stopping_does_not_crash(trained):
    """A checkpoint that points inside the stopped epoch (as written before the fix above): the
    resumed run ends that epoch without a validation, where early stopping has no metric to read."""
    _, overrides, _ = trained
    run, last = _stopped_run(overrides, "timer-stop-old")
    ckpt = torch.load(last, weights_only=True)
    ckpt["ElasticDataModule"]["train_loader"]["batches"] = 2
    torch.save(ckpt, last)
    resumed = fit(load_config(None, run))
    assert resumed.trainer.global_step > 6 and resumed.test["test/count"] == 120
