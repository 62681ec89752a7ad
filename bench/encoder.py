"""Encoder benchmark: ELASTIC (linear dispatcher attention) vs SASRec (SDPA), naive attention,
HSTU and GRU4Rec (any registered encoder, or a ``package.module:ClassName`` one, by ``--encoders``).

For every encoder and history length N, at a FIXED number of tokens per batch (B = tokens // N):

* ``train``: forward + loss (``--loss``, sampled softmax by default) on random items + backward
  (model.train(), dropout on, no optimizer step), the work of one training step;
* ``infer``: forward only (model.eval(), torch.no_grad()).

Reported: median ms/iter, tokens/s (B * N / median), peak memory. GPU: ``max_memory_allocated``
after ``reset_peak_memory_stats`` (all configurations in one process). CPU: every configuration
runs in a fresh subprocess under an address-space cap (``--cpu-mem-cap-gb``, so an oversized
configuration fails with an allocation error instead of waking the OOM killer); peak memory is
the peak RSS during the timed section (``VmHWM`` after resetting it via /proc/self/clear_refs)
minus the RSS just before it, i.e. activations + gradients + allocator slack, not the model.
Out-of-memory is recorded as ``OOM``, never a crash. Each encoder gets the options its config
declares (``--experts`` reaches ELASTIC only); one that reads timestamps gets increasing synthetic
ones (int64 seconds).

    python -m bench.encoder --device cpu --tokens 16384 --lengths 256,1024,4096,16384
    python -m bench.encoder --device cpu --tokens 16384 --lengths 256,1024,4096,16384 --encoders elastic,sasrec,hstu,gru4rec
    python -m bench.encoder --device cuda --dtype bf16 --tokens 131072 --compile
    python -m bench.encoder --state-bytes

Imports only torch and elastic_pl.model (which imports only torch), so it runs on a bare
torch image.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

import torch

from elastic_pl.model import ENCODERS, LOSSES, ModelConfig, SequentialRecommender, state_bytes

MODES = ("train", "infer")


# ---------------------------------------------------------------------------------------------
# one configuration
# ---------------------------------------------------------------------------------------------
def model_config(args, encoder: str) -> ModelConfig:
    """The benchmark's shapes; the encoder and the loss take the options their configs declare."""
    return ModelConfig.from_flat(dict(
        num_items=args.items, d_model=args.d_model, n_heads=args.heads, n_layers=args.layers,
        encoder=encoder, max_positions=args.max_positions,
        num_experts=args.experts, chunk_size=args.chunk, use_memory=not args.no_memory,
        loss=args.loss, negatives="uniform", num_negatives=args.negatives,
    ), strict=False)


def display_name(encoder: str) -> str:
    return ENCODERS.get(encoder).display_name or encoder


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if torch.cuda.is_available() and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "cannot allocate memory" in msg


def _proc_status(key: str) -> int:
    """A /proc/self/status field in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def run_config(args, encoder: str, n: int, mode: str, model=None, runner=None) -> dict:
    """Time one (encoder, N, mode). ``model``/``runner`` may be passed in to reuse a (compiled)
    model across N on the GPU. Returns a result record (status 'ok' or 'OOM' or 'error')."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = max(1, args.tokens // n)
    rec = dict(encoder=encoder, n=n, batch=batch, tokens=batch * n, mode=mode, device=args.device,
               dtype=args.dtype, compile=args.compile, d_model=args.d_model, layers=args.layers,
               heads=args.heads, experts=args.experts, chunk=args.chunk, memory=not args.no_memory,
               items=args.items, loss=args.loss, negatives=args.negatives)
    gen = torch.Generator(device="cpu").manual_seed(1234 + n)
    x = targets = hidden = loss = ts = None
    try:
        if model is None:
            model, runner = build(args, encoder)
        seq = torch.randint(1, args.items + 1, (batch, n + 1), generator=gen).to(device)
        x, targets = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
        del seq
        ts = None
        if model.cfg.encoder.needs_timestamps:  # seconds, increasing along each row
            ts = torch.cumsum(torch.randint(0, 86_400, (batch, n), generator=gen), dim=1).to(device)
        model.train(mode == "train")
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                  enabled=args.dtype == "bf16")
        loss_gen = torch.Generator(device=device).manual_seed(7)

        def step():
            if mode == "train":
                model.zero_grad(set_to_none=True)
                with autocast:
                    h = runner(x, timestamps=ts)
                    l = model.loss(h, targets, loss_gen)
                l.backward()
            else:
                with torch.no_grad(), autocast:
                    runner(x, timestamps=ts)

        def sync():
            if cuda:
                torch.cuda.synchronize(device)

        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base_alloc = torch.cuda.memory_allocated(device)
        else:
            base_rss = _proc_status("VmRSS")
            can_reset = _reset_cpu_peak()

        # warmup (includes torch.compile's compilation); the first one also sizes the run
        t0 = time.perf_counter()
        step()
        sync()
        first = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            step()
        sync()
        iters = args.iters
        if args.budget_s > 0 and first > 0:
            iters = max(args.min_iters, min(args.iters, int(args.budget_s / max(first, 1e-6))))
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rec.update(status="ok", ms=med * 1e3, ms_min=min(times) * 1e3, iters=iters,
                   first_ms=first * 1e3, tokens_per_s=batch * n / med)
        if cuda:
            rec["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            rec["base_mib"] = base_alloc / 2**20
        else:
            rec["peak_mib"] = (_proc_status("VmHWM") - base_rss) / 2**20 if can_reset else None
            rec["peak_kind"] = "rss_delta" if can_reset else "n/a"
    except Exception as exc:  # noqa: BLE001 - a benchmark records failures, it does not crash
        rec.update(status="OOM" if _is_oom(exc) else "error", error=f"{type(exc).__name__}: {str(exc)[:300]}")
    finally:
        del x, targets, hidden, loss, ts
        if model is not None:
            model.zero_grad(set_to_none=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return rec


def build(args, encoder: str):
    torch.manual_seed(0)
    model = SequentialRecommender(model_config(args, encoder)).to(args.device)
    runner = model
    if args.compile:
        import torch._dynamo as dynamo

        # one graph per (N, mode): keep them all instead of silently falling back to eager
        for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(dynamo.config, name):
                setattr(dynamo.config, name, max(getattr(dynamo.config, name), 256))
        runner = torch.compile(model, dynamic=args.dynamic)
    return model, runner


# ---------------------------------------------------------------------------------------------
# drivers
# ---------------------------------------------------------------------------------------------
def worker(args) -> None:
    """Child process (CPU isolation): one configuration, result as one JSON line on stdout."""
    if args.cpu_mem_cap_gb > 0:
        import resource

        cap = int(args.cpu_mem_cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    enc, n, mode = args.worker.split(":")
    rec = run_config(args, enc, int(n), mode)
    print("RESULT " + json.dumps(rec), flush=True)


def child_argv(args) -> list[str]:
    keep = ["--device", args.device, "--dtype", args.dtype, "--tokens", str(args.tokens),
            "--d-model", str(args.d_model), "--heads", str(args.heads), "--layers", str(args.layers),
            "--experts", str(args.experts), "--chunk", str(args.chunk), "--items", str(args.items),
            "--loss", args.loss, "--negatives", str(args.negatives), "--max-positions", str(args.max_positions),
            "--threads", str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters), "--min-iters", str(args.min_iters),
            "--budget-s", str(args.budget_s), "--cpu-mem-cap-gb", str(args.cpu_mem_cap_gb)]
    if args.no_memory:
        keep.append("--no-memory")
    if args.compile:
        keep.append("--compile")
    return [sys.executable, "-m", "bench.encoder", *keep]


def run_isolated(args, enc: str, n: int, mode: str) -> dict:
    cmd = child_argv(args) + ["--worker", f"{enc}:{n}:{mode}"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.config_timeout_s)
    except subprocess.TimeoutExpired:
        return dict(encoder=enc, n=n, batch=max(1, args.tokens // n), mode=mode, device=args.device,
                    dtype=args.dtype, compile=args.compile, status="timeout",
                    error=f"over {args.config_timeout_s}s")
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (p.stderr or p.stdout)[-300:]
    status = "OOM" if p.returncode in (-9, 137) or "memory" in tail.lower() else "error"
    return dict(encoder=enc, n=n, batch=max(1, args.tokens // n), mode=mode, device=args.device,
                dtype=args.dtype, compile=args.compile, status=status,
                error=f"child rc={p.returncode}: {tail}")


def environment(args) -> dict:
    env = dict(torch=torch.__version__, python=platform.python_version(), host=platform.node(),
               cpu_threads=torch.get_num_threads(), cpus=os.cpu_count(),
               date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               argv=" ".join(["python -m bench.encoder", *sys.argv[1:]]))
    if args.device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def fmt_row(r: dict) -> str:
    if r.get("status") != "ok":
        cell = r.get("status", "?")
        return f"| {r['encoder']} | {r['n']} | {r['batch']} | {r['mode']} | {cell} | {cell} | {cell} | {cell} |"
    peak = "n/a" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}"
    return (f"| {r['encoder']} | {r['n']} | {r['batch']} | {r['mode']} | {r['ms']:.1f} | {r['ms_min']:.1f} | "
            f"{r['tokens_per_s'] / 1e3:.1f}k | {peak} |")


TABLE_HEAD = ("| encoder | N | B | mode | median ms/iter | min ms | tokens/s (median) | peak MiB |\n"
              "|---|---|---|---|---|---|---|---|")


def speedup_table(results: list[dict], mode: str, baseline: str = "sasrec") -> str:
    """Per N: every encoder's tokens/s and peak MiB, and each one's tokens/s over ``baseline``'s."""
    ok = {(r["encoder"], r["n"]): r for r in results if r["mode"] == mode and r.get("status") == "ok"}
    ns = sorted({r["n"] for r in results if r["mode"] == mode})
    encoders = list(dict.fromkeys(r["encoder"] for r in results if r["mode"] == mode))
    others = [e for e in encoders if e != baseline]
    head = ([f"{display_name(e)} tok/s" for e in encoders] + [f"{display_name(e)} MiB" for e in encoders]
            + [f"{display_name(e)} / {display_name(baseline)}" for e in others])
    lines = ["| N | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]

    def cell(r, key, fmt):
        return fmt(r[key]) if r and r.get(key) is not None else "—"
    for n in ns:
        tps = [cell(ok.get((e, n)), "tokens_per_s", lambda v: f"{v / 1e3:.1f}k") for e in encoders]
        mem = [cell(ok.get((e, n)), "peak_mib", lambda v: f"{v:.0f}") for e in encoders]
        base = ok.get((baseline, n))
        ratio = [f"{ok[(e, n)]['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base and (e, n) in ok else "—"
                 for e in others]
        lines.append(f"| {n} | " + " | ".join(tps + mem + ratio) + " |")
    return "\n".join(lines)


def bench(args) -> None:
    lengths = [int(s) for s in args.lengths.split(",") if s]
    encoders = [s for s in args.encoders.split(",") if s]
    modes = [s for s in args.modes.split(",") if s]
    isolate = args.isolate if args.isolate is not None else args.device == "cpu"
    env = environment(args)
    print(f"# encoder benchmark  {json.dumps(env)}", flush=True)
    out = open(args.out, "a") if args.out else None
    results = []
    print(TABLE_HEAD, flush=True)
    if args.interleave:  # N outer, encoders inner: a time limit cuts every encoder evenly
        order = [(enc, mode, n) for n in lengths for mode in modes for enc in encoders]
    else:
        order = [(enc, mode, n) for enc in encoders for mode in modes for n in lengths]
    models: dict = {}
    for enc, mode, n in order:
        if isolate:
            rec = run_isolated(args, enc, n, mode)
        else:
            if enc not in models:
                if not args.interleave:  # one encoder's model on the device at a time
                    models.clear()
                    gc.collect()
                models[enc] = build(args, enc)
            rec = run_config(args, enc, n, mode, *models[enc])
            if args.device == "cpu" and rec.get("status") == "ok":
                # RSS of a long-lived process mixes configurations: only isolated runs say
                rec.update(peak_mib=None, peak_kind="n/a (not isolated)")
        rec["env"] = env
        results.append(rec)
        print(fmt_row(rec), flush=True)
        if out:
            out.write(json.dumps(rec) + "\n")
            out.flush()
    models.clear()
    for mode in modes:
        print(f"\n## {mode}: {' vs '.join(display_name(e) for e in encoders)} ({args.device}, {args.dtype}"
              f"{', compiled' if args.compile else ''}, {args.tokens} tokens/batch)")
        print(speedup_table(results, mode))
    if out:
        out.close()


# ---------------------------------------------------------------------------------------------
# serving state
# ---------------------------------------------------------------------------------------------
def state_bytes_report(args) -> None:
    """The serving state of every encoder in ``--encoders`` that streams, against SASRec's KV cache."""
    lengths = [1_000, 10_000, 100_000]
    print(f"# serving state per user: D={args.d_model}, L={args.layers} (torch {torch.__version__}); measured "
          "state_bytes(model.init_state(1)), constant in N, position counter included.")
    print("# SASRec: KV cache = L * N * 2 * D * bytes_per_element (analytic; not implemented in code).")
    rows = []
    for enc in [e for e in args.encoders.split(",") if e]:
        cfg = model_config(args, enc)
        model = SequentialRecommender(cfg)
        if not model.streams:
            continue
        name, L, D = display_name(enc), cfg.n_layers, cfg.d_model
        fp32 = state_bytes(model.init_state(1))
        bf16 = state_bytes(model.to(torch.bfloat16).init_state(1))
        print(f"\n## {name} ({cfg.encoder})")
        print(f"| N | {name} fp32 | SASRec KV fp32 | ratio | {name} bf16 | SASRec KV bf16 | ratio |")
        print("|---|---|---|---|---|---|---|")
        for n in lengths:
            kv32, kv16 = L * n * 2 * D * 4, L * n * 2 * D * 2
            print(f"| {n:,} | {fp32:,} B | {kv32:,} B | {kv32 / fp32:.1f}x | {bf16:,} B | {kv16:,} B | "
                  f"{kv16 / bf16:.1f}x |")
            rows.append(dict(kind="state_bytes", encoder=enc, d_model=D, layers=L, n=n, state_fp32=fp32,
                             sasrec_kv_fp32=kv32, state_bf16=bf16, sasrec_kv_bf16=kv16))
        print(f"# SASRec's fp32 cache overtakes {name}'s state beyond N = {fp32 / (L * 2 * D * 4):.0f} positions.")
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast")
    p.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    p.add_argument("--dynamic", default=None, type=lambda s: {"true": True, "false": False}[s.lower()],
                   help="torch.compile(dynamic=...): true/false; default automatic")
    p.add_argument("--tokens", type=int, default=131072, help="tokens per batch (B = tokens // N)")
    p.add_argument("--lengths", default="256,1024,4096,16384,65536")
    p.add_argument("--encoders", default="elastic,sasrec,naive",
                   help=f"registered ({','.join(ENCODERS.names())}) or package.module:ClassName")
    p.add_argument("--modes", default="train,infer", help="train = fwd+loss+bwd, infer = no_grad fwd")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    elastic = ENCODERS.config_class("elastic")
    p.add_argument("--experts", type=int, default=elastic.num_experts, help="ELASTIC")
    p.add_argument("--chunk", type=int, default=elastic.chunk_size, help="ELASTIC")
    p.add_argument("--no-memory", action="store_true", help="ELASTIC without interest memory")
    p.add_argument("--items", type=int, default=100_000, help="catalog size V")
    p.add_argument("--loss", default="sampled_softmax", choices=["sampled_softmax", "full_softmax"],
                   help="train mode's loss; full_softmax scores the whole catalog (--items) at every position")
    p.add_argument("--negatives", type=int, default=LOSSES.config_class("sampled_softmax").num_negatives,
                   help="sampled softmax: uniform negatives")
    p.add_argument("--max-positions", type=int, default=ModelConfig.max_positions)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (CPU); 0 = torch default")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--min-iters", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="if > 0, cap timed iterations at budget_s / (first iteration's time)")
    p.add_argument("--isolate", default=None, type=lambda s: {"true": True, "false": False}[s.lower()],
                   help="one subprocess per configuration (default: on for cpu, off for cuda)")
    p.add_argument("--cpu-mem-cap-gb", type=float, default=8.0, help="RLIMIT_AS per CPU subprocess")
    p.add_argument("--config-timeout-s", type=float, default=300.0)
    p.add_argument("--interleave", action="store_true",
                   help="loop N outermost (all encoders at each N before the next N)")
    p.add_argument("--out", default=None, help="append JSON lines here")
    p.add_argument("--state-bytes", action="store_true", help="print serving-state bytes per user")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.worker:
        worker(args)
    elif args.state_bytes:
        state_bytes_report(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
