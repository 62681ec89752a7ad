"""bench/quality_table.py turns run directories into the BENCHMARKS.md rows (read back here)."""
import json

from bench import quality_table


def _metrics(ndcg: float, hr: float, count: int) -> dict:
    return {"test/ndcg@10": ndcg, "test/hr@10": hr, "test/count": float(count)}


def _fake_run(root, name: str, loss: str, ndcg: float, unfiltered: float | None = None,
              run_id: str = "r1", hr: float = 0.5, encoder_keys: str = "", legacy: bool = False) -> None:
    """A finished run in runs/<dataset>-<encoder>/<run_id>; its config.yaml in the nested layout
    (``legacy``: the flat layout of earlier versions, ELASTIC with the memory off)."""
    run = root / name / run_id
    (run / "csv" / "fit-1").mkdir(parents=True)
    encoder = name.split("-")[-1]
    if legacy:
        model = f"  encoder: {encoder}\n  loss: {loss}\n  num_negatives: 512\n  use_memory: false\n  num_experts: 16\n"
    else:
        loss_keys = "\n    num_negatives: 512" if loss == "sampled_softmax" else ""
        model = f"  encoder:\n    name: {encoder}{encoder_keys}\n  loss:\n    name: {loss}{loss_keys}\n"
    (run / "config.yaml").write_text("model:\n" + model)
    (run / "test_metrics.json").write_text(json.dumps({"test": _metrics(ndcg, hr, 100)}))
    (run / "csv" / "fit-1" / "metrics.csv").write_text(
        "epoch,val/ndcg@10,train/epoch_time_s\n0,0.1,\n0,,10.0\n1,0.3,\n1,,14.0\n2,0.2,\n")
    if unfiltered is not None:
        (run / "test_unfiltered.json").write_text(json.dumps(_metrics(unfiltered, 0.25, 100)))


def test_rows_name_loss_epochs_and_unfiltered_variants(tmp_path, monkeypatch, capsys):
    _fake_run(tmp_path / "runs", "wikipedia-elastic", "full_softmax", 0.8, unfiltered=0.4)
    _fake_run(tmp_path / "runs", "wikipedia-sasrec", "sampled_softmax", 0.7)
    _fake_run(tmp_path / "runs", "wikipedia-hstu", "sampled_softmax", 0.75, encoder_keys="\n    time_bias: false")
    _fake_run(tmp_path / "runs", "wikipedia-gru4rec", "bce", 0.5)
    pop = tmp_path / "pop"
    pop.mkdir()
    (pop / "pop-wikipedia.json").write_text(json.dumps(_metrics(0.03, 0.05, 100)))
    (pop / "pop-wikipedia-unfiltered.json").write_text(json.dumps(_metrics(0.02, 0.04, 100)))
    (pop / "transition-wikipedia.json").write_text(json.dumps(_metrics(0.6, 0.45, 100)))
    monkeypatch.setattr("sys.argv", ["quality_table", "--runs", str(tmp_path / "runs"), "--run-id", "r1",
                                     "--popularity", str(pop)])
    quality_table.main()
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| wikipedia")]
    assert rows == [
        "| wikipedia | popularity | - | 0.0300 | 0.0500 | - | - | 100 |",
        "| wikipedia | popularity, history not filtered | - | 0.0200 | 0.0400 | - | - | 100 |",
        "| wikipedia | item transitions | - | 0.6000 | 0.4500 | - | - | 100 |",
        "| wikipedia | ELASTIC (full softmax CE) | r1 | 0.8000 | 0.5000 | 3 (best 2) | 12 | 100 |",
        "| wikipedia | ELASTIC (full softmax CE), history not filtered | r1 | 0.4000 | 0.2500 | 3 (best 2) | 12 | 100 |",
        "| wikipedia | SASRec (sampled softmax, 512 uniform negatives) | r1 | 0.7000 | 0.5000 | 3 (best 2) | 12 | 100 |",
        "| wikipedia | HSTU without time bias (sampled softmax, 512 uniform negatives) | r1 | 0.7500 | 0.5000 | 3 (best 2) "
        "| 12 | 100 |",
        "| wikipedia | GRU4Rec (BCE, 1 negative) | r1 | 0.5000 | 0.5000 | 3 (best 2) | 12 | 100 |",
    ]


def test_seed_groups_average_the_runs_found(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    for run_id, ndcg, hr in (("a", 0.1, 0.2), ("a1", 0.2, 0.4), ("a2", 0.3, 0.3)):
        _fake_run(runs, "lastfm-elastic", "full_softmax", ndcg, run_id=run_id, hr=hr)
    _fake_run(runs, "lastfm-sasrec", "full_softmax", 0.5, run_id="a", hr=0.6)  # one seed: no mean row
    # the interest memory turned off: named so (n: the flat config layout of earlier versions)
    _fake_run(runs, "lastfm-elastic", "full_softmax", 0.4, run_id="n", hr=0.5, legacy=True)
    _fake_run(runs, "lastfm-elastic", "full_softmax", 0.6, run_id="n1", hr=0.5, encoder_keys="\n    use_memory: false")
    monkeypatch.setattr("sys.argv", ["quality_table", "--runs", str(runs), "--run-id", "a",
                                     "--popularity", str(tmp_path), "--seeds", "a,a1,a2,a3", "n,n1"])
    quality_table.main()
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| lastfm") and "±" in r]
    assert rows == [
        "| lastfm | ELASTIC (full softmax CE) | a, a1, a2 | 0.2000 ± 0.1000 | 0.3000 ± 0.1000 | 3 |",
        "| lastfm | ELASTIC without memory (full softmax CE) | n, n1 | 0.5000 ± 0.1414 | 0.5000 ± 0.0000 | 2 |",
    ]
