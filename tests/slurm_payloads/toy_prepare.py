"""Stand-in for ``python -m data_pipeline.prepare`` in the SLURM array-job test.

Same command-line contract as slurm/prepare_array.sh calls it:

    toy_prepare.py --config CFG.yaml --bucket I [key=value ...]    one array task
    toy_prepare.py --config CFG.yaml --finalize [key=value ...]    the dependent finalize job

Bucket i writes out_dir/bucket-<i>.json with the "events" e in range(num_events) where
e % num_buckets == i; finalize checks every bucket is there and writes out_dir/final.json
(all events, sorted, plus per-bucket job ids and times). ``fail_bucket=I`` makes that bucket
exit 3, for the afterok test.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--bucket", type=int)
    mode.add_argument("--finalize", action="store_true")
    args, overrides = ap.parse_known_args(argv)
    cfg = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(overrides))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = int(cfg.num_buckets)
    if args.finalize:
        missing = [i for i in range(n) if not (out / f"bucket-{i}.json").exists()]
        if missing:
            sys.exit(f"finalize: buckets {missing} missing in {out}")
        parts = [json.loads((out / f"bucket-{i}.json").read_text()) for i in range(n)]
        (out / "final.json").write_text(json.dumps({
            "events": sorted(e for p in parts for e in p["events"]),
            "buckets": parts, "finalize_job": os.environ.get("SLURM_JOB_ID"), "time": time.time(),
        }))
        return
    b = args.bucket
    if not 0 <= b < n:
        sys.exit(f"bucket {b} out of range: the config has num_buckets={n}")
    if cfg.get("fail_bucket") is not None and int(cfg.fail_bucket) == b:
        print(f"bucket {b}: failing on purpose (fail_bucket)", file=sys.stderr)
        sys.exit(3)
    time.sleep(float(cfg.get("sleep", 0)))
    (out / f"bucket-{b}.json").write_text(json.dumps({
        "bucket": b, "events": [e for e in range(int(cfg.num_events)) if e % n == b],
        "job": os.environ.get("SLURM_JOB_ID"), "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "time": time.time(),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
