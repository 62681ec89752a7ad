"""``elastic-pl prepare|train|evaluate|predict|export|demo --config FILE key=value ...``

Every command reads the same config tree (elastic_pl.config): the YAML layers in order, then overrides.
Config errors are reported before any work starts. An error in the user's input (config, data,
checkpoint: ``USER_INPUT_ERRORS``; environment: ``_environment_error``) is one line naming the file,
row or key, exit status 2 (its traceback with ``--debug``); any other exception is a bug and shows
its traceback.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import traceback
from pathlib import Path
from typing import List, Optional

from lightning.fabric.utilities.exceptions import MisconfigurationException

from data_pipeline.errors import DataError
from data_pipeline.shard_reader import ShardReadError

from .config import Config, ConfigError, load_config
from .errors import UserInputError
from .run_dir import discarded_on_failure, resolve as run_dir

# errors that mean the input is wrong; the data pipeline's own types are listed here because it
# sits upstream of elastic_pl (it cannot subclass elastic_pl.errors.UserInputError)
USER_INPUT_ERRORS = (UserInputError, ConfigError, DataError, ShardReadError)
# an OSError with one of these on a path the user gave is the environment's (see _environment_error)
PATH_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
               errno.ENOSPC)

HR_KEYS = ["hr@1", "hr@5", "hr@10", "hr@20", "hr@50"]
NDCG_KEYS = ["ndcg@5", "ndcg@10", "ndcg@20", "ndcg@50", "mrr"]


def metrics_table(metrics: dict, prefix: str = "test/") -> str:
    """A small markdown table of the ranking metrics."""
    def row(keys):
        return "| " + " | ".join(f"{metrics.get(prefix + k, float('nan')):.4f}" for k in keys) + " |"

    head = lambda keys: "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys)  # noqa: E731
    users = metrics.get(prefix + "count")
    lines = [head(HR_KEYS), row(HR_KEYS), "", head(NDCG_KEYS), row(NDCG_KEYS)]
    if users is not None:
        lines.append(f"\n{int(users)} users, full ranking over the catalog")
    return "\n".join(lines)


# -- commands -----------------------------------------------------------------------------------
def cmd_prepare(cfg: Config, args) -> dict:
    from data_pipeline import prepare as prep

    src, pcfg = cfg.data.source, cfg.data.prepare
    if cfg.data.synthetic is not None and not Path(src.path).exists() and args.bucket is None and not args.finalize:
        # (also with --plan: the SLURM chain plan -> array of buckets -> finalize generates here)
        from data_pipeline.synthetic import generate

        print(f"generating synthetic log -> {src.path}")
        print(json.dumps(generate(cfg.data.synthetic, src.path, progress=True)))
    if args.plan:  # stage 1 only, before a SLURM array of --bucket tasks (slurm/prepare_array.sh)
        src.validate()
        pcfg.validate()
        p = prep.plan(src, pcfg)
        print(json.dumps({k: p[k] for k in ("num_items", "num_users", "num_events", "fingerprint")}))
        return p
    if args.bucket is not None:  # one bucket of a SLURM array job (the plan must exist)
        return prep.prepare_bucket(src, pcfg, args.bucket)
    if args.finalize:
        return prep.finalize(pcfg, src)
    manifest = prep.prepare(src, pcfg)
    print(f"prepared {manifest['num_users']} users, {manifest['num_items']} items, "
          f"{manifest['num_events']} events -> {pcfg.output_dir}")
    return manifest


def cmd_train(cfg: Config, args) -> dict:
    from .train import fit

    result = fit(cfg, trust_checkpoint=args.trust_checkpoint)
    if result.trainer.is_global_zero:
        print(f"\nrun directory: {result.run_dir}\nbest checkpoint: {result.best_checkpoint or 'none (no validation ran)'}")
        if result.tested_checkpoint != result.best_checkpoint:
            print(f"tested: the last weights, {result.tested_checkpoint or 'in memory'}")
        print("test (leave-one-out, full ranking" + (", history filtered" if cfg.eval.filter_seen else "") + "):")
        print(metrics_table(result.test))
    return result.test


def cmd_evaluate(cfg: Config, args) -> dict:
    _check_out_file(args)
    with discarded_on_failure(run_dir(cfg)):
        return _evaluate(cfg, args)


def _evaluate(cfg: Config, args) -> dict:
    if args.baseline:
        from .baselines import evaluate_named

        metrics = evaluate_named(cfg, args.baseline, split=args.split)
    else:
        from .train import evaluate

        metrics = evaluate(cfg, _checkpoint(args), split=args.split, trust=args.trust_checkpoint,
                           allow_data_mismatch=args.allow_data_mismatch)
    prefix = "val/" if args.split == "valid" else "test/"
    if metrics.get(prefix + "count") == 0:  # metrics of nobody are no result
        raise DataError(f"{cfg.data.loader.data_dir}: no user has enough events to be scored on the {args.split} "
                        "split: nothing was evaluated")
    print(metrics_table(metrics, prefix))
    from lightning.pytorch.utilities import rank_zero_only

    if args.out and rank_zero_only.rank == 0:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return metrics


def cmd_predict(cfg: Config, args) -> dict:
    from .predict import predict

    _check_out_file(args)
    with discarded_on_failure(run_dir(cfg)):
        out = predict(cfg, _checkpoint(args), args.out, trust=args.trust_checkpoint,
                      allow_data_mismatch=args.allow_data_mismatch)
    print(f"wrote top-{cfg.eval.top_k} recommendations for {out['users']} users -> {out['path']}")
    return out


def export_dir(checkpoint: str) -> Path:
    """``<run dir>/serving/<checkpoint name>``: the run the checkpoint belongs to (also for an
    ``hpc_ckpt_*.ckpt`` in the run directory itself or a consolidated file under it)."""
    from .checkpoint import find_run_dir

    run = find_run_dir(Path(checkpoint))
    if run is None:
        raise ConfigError(f"export: {checkpoint} is not inside a run directory (no config.yaml above it): "
                          "pass --out DIR")
    return run / "serving" / Path(checkpoint).name.removesuffix(".ckpt")


def cmd_export(cfg: Config, args) -> dict:
    import dataclasses

    from .checkpoint import check_model_config, load_checkpoint, module_from_checkpoint
    from .export import check_export, export_serving

    checkpoint = _checkpoint(args)
    out_dir = Path(args.out) if args.out else export_dir(checkpoint)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"export: --out {out_dir} is a file; export writes a directory")
    ckpt = load_checkpoint(checkpoint, args.trust_checkpoint)
    if args.config or any(o.startswith("model.") for o in args.overrides):  # a model section was given
        check_model_config(ckpt, checkpoint, dataclasses.asdict(cfg.model))
    module = module_from_checkpoint(ckpt, checkpoint)
    info = export_serving(module.model.eval(), out_dir, format=args.format)
    errors = check_export(module.model.eval(), out_dir)
    print(f"exported serving path ({args.format}) -> {out_dir}; max rel. error vs eager: {errors}")
    return info


def cmd_consolidate(cfg: Config, args) -> dict:
    """A sharded (fsdp/fsdp2) checkpoint directory -> one weights_only-loadable file."""
    from .checkpoint import consolidate

    out = consolidate(_checkpoint(args), args.out)
    print(f"consolidated {args.checkpoint} -> {out} (loads with torch.load(weights_only=True))")
    return {"path": str(out)}


def cmd_demo(cfg: Config, args) -> dict:
    """The embedded default end to end: synthetic log -> shards -> train -> test metrics."""
    args.bucket, args.finalize, args.plan = None, False, False
    cmd_prepare(cfg, args)
    return cmd_train(cfg, args)


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "export": cmd_export, "consolidate": cmd_consolidate, "demo": cmd_demo}


def _checkpoint(args) -> str:
    if not args.checkpoint:
        raise ConfigError(f"{args.command}: --checkpoint PATH is required")
    from .train import is_sharded_checkpoint

    path = Path(args.checkpoint)
    if path.is_dir() and not is_sharded_checkpoint(path):
        raise ConfigError(f"{args.command}: {args.checkpoint} is a directory but not a complete sharded "
                          "(fsdp/fsdp2) checkpoint: no meta.pt")
    if not path.exists():
        raise ConfigError(f"{args.command}: checkpoint not found: {args.checkpoint}")
    return args.checkpoint


def _check_out_file(args) -> None:
    """``--out`` of evaluate / predict names a file that can be made: refused before any work if it
    is a directory or its nearest existing parent is a file or not writable."""
    if not args.out:
        return
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"{args.command}: --out {out} is a directory; give a file name inside it")
    parent = next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"{args.command}: --out {out} cannot be written ({parent} is "
                          f"{'not a directory' if not parent.is_dir() else 'not writable'})")


def _environment_error(e: BaseException) -> Optional[str]:
    """The one-line message for an error of the environment rather than of the code: a path that
    cannot be written or read, a trainer setting this machine cannot run, W&B failing to start."""
    if isinstance(e, OSError) and e.errno in PATH_ERRNOS:  # pyarrow's carry no filename but name it
        where = f"{e.filename}: {e.strerror}" if e.filename is not None else _first_line(e)
        return f"{where} (check the path and its permissions)"
    if isinstance(e, MisconfigurationException):
        return f"trainer settings this machine cannot run: {_first_line(e)}"
    if type(e).__module__.startswith("wandb."):  # wandb.errors.CommError, UsageError, ...
        return (f"W&B could not start ({type(e).__name__}: {_first_line(e)}); without a connection to W&B, "
                "set WANDB_MODE=offline (it wins over wandb.mode) and `wandb sync` the run later")
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="elastic-pl", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("--config", action="append", metavar="FILE",
                   help="YAML config layer (see configs/); repeat to merge several in order, e.g. data, "
                        "model, recipe")
    p.add_argument("--checkpoint", help="evaluate/predict/export: a checkpoint file (or a sharded checkpoint "
                                        "directory of trainer.strategy=fsdp|fsdp2); consolidate: a sharded one")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="read a sharded checkpoint outside the run directories elastic-pl created for you "
                        "(only one you wrote yourself; else `consolidate` it)")
    p.add_argument("--allow-data-mismatch", action="store_true",
                   help="evaluate/predict: use a checkpoint trained on other data (same catalog size)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    p.add_argument("--baseline", choices=["popularity", "transition"],  # elastic_pl/baselines.py
                   help="evaluate: a baseline instead of a checkpoint (transition: windowed item-to-item co-occurrence)")
    p.add_argument("--split", choices=["valid", "test"], default="test", help="evaluate: which split")
    p.add_argument("--plan", action="store_true", help="prepare: only the plan stage (before the --bucket tasks)")
    p.add_argument("--bucket", type=int, help="prepare: process one bucket only (SLURM array task; after --plan)")
    p.add_argument("--finalize", action="store_true", help="prepare: only write the manifest (after all buckets)")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript", help="export format")
    p.add_argument("--out", help="evaluate: metrics JSON; predict: Parquet file (default: in the checkpoint's "
                                 "run directory); export: directory (default: <run dir>/serving/<checkpoint>); "
                                 "consolidate: file (default: consolidated/<name> next to the checkpoint)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.d_model=128")
    return p


def _print_traceback(e: BaseException) -> None:
    # the errors are raised `from None` to keep the message short; --debug wants the whole chain
    link = e
    while link is not None:
        link.__suppress_context__ = False
        link = link.__cause__ or link.__context__
    traceback.print_exception(e)


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_intermixed_args(argv)
    from .strategies import Requeued

    try:
        cfg = load_config(args.config, args.overrides)
        COMMANDS[args.command](cfg, args)
    except Requeued as e:  # SLURM preemption: the requeued job resumes from the saved checkpoint
        print(f"elastic-pl: {e}", file=sys.stderr)
    except USER_INPUT_ERRORS as e:  # the input is wrong (also found once the work started)
        if args.debug:
            _print_traceback(e)
        print(f"elastic-pl: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        message = _environment_error(e)
        if message is None:  # a bug: its traceback
            raise
        if args.debug:
            _print_traceback(e)
        print(f"elastic-pl: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
