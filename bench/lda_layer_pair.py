"""One LDA layer against SASRec's causal-attention layer, forward + backward, interleaved in one
process so that load on a shared machine hits both alike; prints the median times and the ratio.

    python -m bench.lda_layer_pair --length 200 --batch 128 --chunk 64 --iters 20

D = 64, 2 heads, ELASTIC's defaults otherwise (E = 16, memory 64^2 slots), one thread.
"""
import argparse
import statistics
import time

import torch

from elastic_pl.model.attention import CausalSelfAttention
from elastic_pl.model.config import ModelConfig
from elastic_pl.model.lda import LinearDispatcherAttention
from elastic_pl.model.registry import ENCODERS


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = lambda name, **kw: ModelConfig(d_model=64, encoder=ENCODERS.config_class(name)(n_heads=2, **kw))  # noqa: E731
    layers = {"lda": LinearDispatcherAttention(cfg("elastic", chunk_size=a.chunk)),
              "sdpa": CausalSelfAttention(cfg("sasrec"))}
    x = torch.randn(a.batch, a.length, 64)
    times = {name: [] for name in layers}
    for i in range(a.iters + 2):
        for name, layer in layers.items():
            xx = x.clone().requires_grad_()
            t0 = time.perf_counter()
            layer(xx).square().mean().backward()
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"N={a.length} B={a.batch} C={a.chunk}: LDA {ms['lda']:.1f} ms, SDPA {ms['sdpa']:.1f} ms, "
          f"LDA/SDPA {ms['lda'] / ms['sdpa']:.2f}")


if __name__ == "__main__":
    main()
