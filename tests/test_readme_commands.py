"""The README's commands run: ``make demo`` (shrunk by DEMO_ARGS) and the "Your own logs" commands,
read from the README itself, on a tiny log."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from elastic_pl.cli import main
from tests.pipeline_config import TINY

REPO = Path(__file__).resolve().parents[1]
SHRINK = [o for o in TINY if not o.startswith(("data.synthetic.", "run.", "model.loss."))]  # the recipe picks the loss


def _readme_block(heading: str) -> list[list[str]]:
    """The commands of the first shell block after ``heading``, as tokens."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo(tmp_path):
    """The README's first command, on the embedded default shrunk to seconds."""
    assert ["make", "demo"] == _readme_block("## Two commands")[0][:2]
    args = TINY + [f"data.source.path={tmp_path}/demo/events.parquet", f"data.prepare.output_dir={tmp_path}/demo/shards",
                   f"run.root={tmp_path}/runs", "run.run_id=readme"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PY": sys.executable}
    p = subprocess.run(["make", "-s", "demo", f"DEMO_ARGS={' '.join(args)}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "ndcg@10" in p.stdout and "full ranking over the catalog" in p.stdout
    assert (tmp_path / "runs" / "e2e" / "readme" / "test_metrics.json").is_file()


def _own_log(path: Path) -> None:
    rng = np.random.default_rng(0)
    path.mkdir(parents=True)
    for part in range(2):  # a glob of two files
        users = np.repeat(np.arange(part * 60, part * 60 + 60), 15)
        pq.write_table(pa.table({"user_id": users, "item_id": rng.integers(1, 80, len(users)),
                                 "event_time": np.arange(len(users)) * 60}), path / f"part-{part}.parquet")


def test_own_logs_commands(tmp_path, monkeypatch):
    """README "Your own logs": the same commands with the README's paths moved under tmp_path, the
    GPU settings swapped for CPU ones, and the model shrunk."""
    prepare, train = _readme_block("## Your own logs")
    assert prepare[:2] == ["elastic-pl", "prepare"] and train[:2] == ["elastic-pl", "train"]
    _own_log(tmp_path / "events")
    monkeypatch.chdir(REPO)  # the README's --config paths are relative to the repository

    def moved(tokens: list[str]) -> list[str]:
        out = []
        for tok in tokens[1:]:
            tok = tok.replace("/data/events/", f"{tmp_path}/events/").replace("data/mylog/", f"{tmp_path}/mylog/")
            out.append({"trainer.accelerator=gpu": "trainer.accelerator=cpu",
                        "trainer.precision=bf16-mixed": "trainer.precision=32-true"}.get(tok, tok))
        return out

    assert main(moved(prepare) + ["data.prepare.progress=false", "data.prepare.workers=1"]) == 0
    assert (tmp_path / "mylog" / "shards" / "manifest.json").is_file()
    assert main(moved(train) + SHRINK + [f"run.root={tmp_path}/runs", "run.run_id=own"]) == 0
    assert (tmp_path / "runs" / "mylog" / "own" / "test_metrics.json").is_file()
