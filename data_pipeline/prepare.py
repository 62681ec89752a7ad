"""Raw event log -> WebDataset shards + manifest, out of core, resumable, bucket-parallel.

Stages (each restartable; work files live in ``<output_dir>/_work``):
0. check     every input exists, is not empty and has a usable header/schema: raised before
             anything is written
1. plan      read the log once, hash users into buckets, k-core/count passes, item map,
             per-bucket first dense user id -> ``_work/plan.json``. A bad line (or any error)
             removes what the stage wrote, so a failed run leaves ``output_dir`` as it was
2. bucket b  sort bucket b's users by (ts, original row), write shard parts, then atomically
             ``_work/buckets/b{b:05d}.done.json`` (a rerun skips buckets that have one)
3. finalize  number the parts of buckets 0..B-1 in order as ``seq-{n:06d}.tar``, move the item
             map in, write ``user_map.parquet`` and ``manifest.json`` (atomically), drop ``_work``

Everything is deterministic: the same input and config give byte-identical shards whichever
buckets ran where and in which order. CLI (one bucket per SLURM array task)::

    python -m data_pipeline.prepare --config prep.yaml [source.path=... prepare.output_dir=...]
    python -m data_pipeline.prepare --config prep.yaml --plan            # once, first
    python -m data_pipeline.prepare --config prep.yaml --bucket $SLURM_ARRAY_TASK_ID
    python -m data_pipeline.prepare --config prep.yaml --finalize        # once, last
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from typing import List, Optional

import pyarrow.parquet as pq

from data_pipeline._bucket import write_bucket
from data_pipeline._plan import make_plan
from data_pipeline._pool import run_tasks
from data_pipeline._tarwriter import fsync_dir
from data_pipeline.config import DataPrepConfig, PrepareConfig, SourceConfig
from data_pipeline.manifest import FORMAT_VERSION
from data_pipeline.readers import check_inputs, resolve_files
from data_pipeline.errors import DataError

_BYTE_FIELDS = ("k_core", "num_buckets", "users_per_block", "shard_max_events")


def write_json_atomic(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def fingerprint(src: SourceConfig, cfg: PrepareConfig) -> str:
    """Hash of everything the output bytes depend on: input files (size, mtime) and config."""
    files = [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in resolve_files(src.path)]
    key = {"v": FORMAT_VERSION, "source": asdict(src), "files": files,
           "prepare": {k: getattr(cfg, k) for k in _BYTE_FIELDS}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _work(cfg: PrepareConfig, *parts: str) -> str:
    return os.path.join(cfg.output_dir, "_work", *parts)


def bucket_ids(cfg: PrepareConfig) -> List[int]:
    return list(range(cfg.num_buckets))


def _item_map(cfg: PrepareConfig) -> str:
    """Where the plan writes the item map; finalize moves it next to the manifest."""
    return _work(cfg, "item_map.parquet")


def _check_output_dir(cfg: PrepareConfig) -> None:
    if not cfg.output_dir:
        raise DataError("prepare.output_dir: empty")
    if os.path.exists(cfg.output_dir) and not os.path.isdir(cfg.output_dir):
        raise DataError(f"prepare.output_dir: {cfg.output_dir} exists and is not a directory")


def plan(src: SourceConfig, cfg: PrepareConfig) -> dict:
    """Stage 1; reuses ``_work/plan.json`` when it matches this input and config. Inputs are
    checked first; if reading fails, the work files are removed again (and ``output_dir`` if
    this call created it)."""
    _check_output_dir(cfg)
    check_inputs(src)
    fp = fingerprint(src, cfg)
    old = _read_json(_work(cfg, "plan.json"))
    if old is not None and old.get("fingerprint") == fp:
        return old
    created = not os.path.exists(cfg.output_dir)
    shutil.rmtree(_work(cfg), ignore_errors=True)  # stale or partial work of another input/config
    os.makedirs(_work(cfg, "buckets"), exist_ok=True)
    try:
        p = make_plan(src, cfg, _work(cfg), _item_map(cfg))
        p["fingerprint"] = fp
        write_json_atomic(_work(cfg, "plan.json"), p)
    except BaseException:
        shutil.rmtree(_work(cfg), ignore_errors=True)
        if created:
            shutil.rmtree(cfg.output_dir, ignore_errors=True)
        raise
    return p


def _done_path(cfg: PrepareConfig, b: int) -> str:
    return _work(cfg, "buckets", f"b{b:05d}.done.json")


def _load_plan(cfg: PrepareConfig) -> dict:
    p = _read_json(_work(cfg, "plan.json"))
    if p is None:
        raise DataError(f"{_work(cfg, 'plan.json')} missing: run the plan stage (--plan) first")
    return p


def prepare_bucket(src: SourceConfig, cfg: PrepareConfig, bucket: int) -> dict:
    """Stage 2 for one bucket (idempotent: a bucket with a valid done-file is skipped)."""
    p = _load_plan(cfg)
    if not 0 <= bucket < cfg.num_buckets:
        raise DataError(f"bucket {bucket} not in 0..{cfg.num_buckets - 1}")
    done = _read_json(_done_path(cfg, bucket))
    if done is not None and done.get("fingerprint") == p["fingerprint"]:
        return done
    parts_dir = _work(cfg, "buckets")
    for stale in glob.glob(os.path.join(parts_dir, f"b{bucket:05d}-p*.tar*")):
        os.remove(stale)  # leftovers of a killed run of this bucket
    res = write_bucket(_work(cfg, "stage"), bucket, _item_map(cfg), cfg.k_core, p["user_base"][bucket],
                       cfg.users_per_block, cfg.shard_max_events, parts_dir, p["ts_per_second"])
    if res["users"] != p["bucket_users"][bucket]:
        raise RuntimeError(f"bucket {bucket}: {res['users']} users, plan says {p['bucket_users'][bucket]}")
    fsync_dir(parts_dir)
    res["fingerprint"] = p["fingerprint"]
    write_json_atomic(_done_path(cfg, bucket), res)
    return res


def finalize(cfg: PrepareConfig, src: Optional[SourceConfig] = None) -> dict:
    """Stage 3: number shards, user map, manifest. Idempotent; needs every bucket done."""
    p = _load_plan(cfg)
    dones = [_read_json(_done_path(cfg, b)) for b in bucket_ids(cfg)]
    missing = [b for b, d in enumerate(dones) if d is None or d.get("fingerprint") != p["fingerprint"]]
    if missing:
        raise DataError(f"finalize: buckets not done: {missing[:20]}{' ...' if len(missing) > 20 else ''} (run "
                        f"`prepare --bucket N` for each of them first, with the same config)")
    out, parts_dir, shards = cfg.output_dir, _work(cfg, "buckets"), []
    for d in dones:
        for part in d["parts"]:
            name = f"seq-{len(shards):06d}.tar"
            src_path, dst = os.path.join(parts_dir, part["name"]), os.path.join(out, name)
            if os.path.exists(src_path):
                os.replace(src_path, dst)
            elif not (os.path.exists(dst) and os.path.getsize(dst) == part["bytes"]):
                raise RuntimeError(f"finalize: part {part['name']} of shard {name} is lost; delete "
                                   f"{_done_path(cfg, d['bucket'])} and rerun that bucket")
            shards.append({"name": name, "users": part["users"], "events": part["events"], "sha256": part["sha256"]})
    names = {s["name"] for s in shards}
    for old in glob.glob(os.path.join(out, "seq-*.tar")):
        if os.path.basename(old) not in names:
            os.remove(old)
    _write_user_map(cfg, dones)
    if os.path.exists(_item_map(cfg)):  # (a rerun of finalize finds it moved already)
        os.replace(_item_map(cfg), os.path.join(out, "item_map.parquet"))
    fsync_dir(out)
    manifest = {"format_version": FORMAT_VERSION, "num_items": p["num_items"], "num_users": p["num_users"],
                "num_events": p["num_events"], "timestamps": p["ts_per_second"] is not None,
                "shards": shards, "item_map": "item_map.parquet",
                "user_map": "user_map.parquet", "prepare_config": asdict(cfg),
                "source": asdict(src) if src is not None else None, "fingerprint": p["fingerprint"],
                "read_stats": p["stage"]["read"], "bad_lines": p["stage"]["read"]["bad_lines"],
                "bad_examples": p["stage"]["read"]["bad_examples"],
                "k_core_rounds": p["k_core_rounds"], "staged_events": p["stage"]["events"]}
    write_json_atomic(os.path.join(out, "manifest.json"), manifest)
    if not cfg.keep_work:
        shutil.rmtree(_work(cfg), ignore_errors=True)
    return manifest


def _write_user_map(cfg: PrepareConfig, dones: List[dict]) -> None:
    path, writer = os.path.join(cfg.output_dir, "user_map.parquet"), None
    for d in dones:
        t = pq.read_table(_work(cfg, "buckets", d["user_map"]))
        writer = writer or pq.ParquetWriter(path + ".tmp", t.schema)
        writer.write_table(t)
    writer.close()
    os.replace(path + ".tmp", path)


def prepare(source: SourceConfig, cfg: PrepareConfig) -> dict:
    """All stages locally with ``cfg.workers`` processes; returns the manifest (resumable)."""
    source.validate()
    cfg.validate()
    _check_output_dir(cfg)
    check_inputs(source)  # before anything is written
    man = _read_json(os.path.join(cfg.output_dir, "manifest.json"))
    if man is not None and man.get("fingerprint") == fingerprint(source, cfg) and not os.path.exists(_work(cfg)):
        return man  # already complete
    plan(source, cfg)
    todo = [b for b in bucket_ids(cfg) if not os.path.exists(_done_path(cfg, b))]
    run_tasks(prepare_bucket, [(source, cfg, b) for b in todo], cfg.workers, "buckets", cfg.progress)
    return finalize(cfg, source)


def load_config(path: Optional[str], overrides: List[str]) -> DataPrepConfig:
    from omegaconf import OmegaConf
    conf = OmegaConf.structured(DataPrepConfig)
    if path:
        conf = OmegaConf.merge(conf, OmegaConf.load(path))
    conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(overrides))
    c = OmegaConf.to_object(conf)
    c.source.validate()
    c.prepare.validate()
    return c


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="overrides: dotlist, e.g. source.path=ratings.csv prepare.k_core=5")
    ap.add_argument("--config", help="YAML with `source:` and `prepare:` sections (data_pipeline.config)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--plan", action="store_true", help="stage 1 only")
    g.add_argument("--bucket", type=int, help="stage 2 for one bucket")
    g.add_argument("--finalize", action="store_true", help="stage 3 only")
    g.add_argument("--num-buckets", action="store_true", help="print the number of buckets and exit")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    c = load_config(a.config, a.overrides)
    if a.num_buckets:
        print(c.prepare.num_buckets)
    elif a.plan:
        p = plan(c.source, c.prepare)
        print(json.dumps({k: p[k] for k in ("num_items", "num_users", "num_events", "fingerprint")}))
    elif a.bucket is not None:
        r = prepare_bucket(c.source, c.prepare, a.bucket)
        print(json.dumps({k: r[k] for k in ("bucket", "users", "events")}))
    else:
        m = finalize(c.prepare, c.source) if a.finalize else prepare(c.source, c.prepare)
        print(json.dumps({k: m[k] for k in ("num_items", "num_users", "num_events", "bad_lines")} | {"shards": len(m["shards"])}))


if __name__ == "__main__":
    main()
