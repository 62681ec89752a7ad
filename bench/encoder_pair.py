"""ELASTIC and SASRec training steps interleaved in one process, on ``bench/encoder.py``'s
configuration and data, so that load on a shared machine hits both alike; prints the median step
times and the ELASTIC/SASRec tokens/s ratio (also the median of the per-pair ratios).

    python -m bench.encoder_pair 20 --device cpu --threads 1 --tokens 6400 --lengths 50 --items 12101 \
        --chunk 16 --loss full_softmax --warmup 2

The first argument is the number of timed pairs; the rest are ``bench.encoder`` options (one length;
``--compile`` compiles both models, the warm-up steps include the compilation).
"""
import statistics
import sys
import time

import torch

from bench import encoder as be
iters = int(sys.argv[1]); args = be.parse(sys.argv[2:])
torch.set_num_threads(args.threads)
n = int(args.lengths); batch = max(1, args.tokens // n)
gen = torch.Generator().manual_seed(1234 + n)
seq = torch.randint(1, args.items + 1, (batch, n + 1), generator=gen)
x, y = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
models = {e: be.build(args, e) for e in ("elastic", "sasrec")}  # (model, runner: compiled with --compile)
lg = torch.Generator().manual_seed(7)
ts = {e: [] for e in models}
for i in range(iters + args.warmup):
    for e, (m, run) in models.items():
        t0 = time.perf_counter(); m.zero_grad(set_to_none=True); m.loss(run(x), y, lg).backward()
        if i >= args.warmup: ts[e].append(time.perf_counter() - t0)
med = {e: statistics.median(t) for e, t in ts.items()}
print(f"N={n} B={batch}: elastic {med['elastic']*1e3:.0f} ms ({batch*n/med['elastic']/1e3:.1f}k tok/s), "
      f"sasrec {med['sasrec']*1e3:.0f} ms ({batch*n/med['sasrec']/1e3:.1f}k tok/s), ELASTIC/SDPA tok/s "
      f"{med['sasrec']/med['elastic']:.2f}x; per-pair ratios median "
      f"{statistics.median(s/e for e, s in zip(ts['elastic'], ts['sasrec'])):.2f}x")
