"""A tiny process pool: ordered results, spawn start method, one Arrow thread per worker."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Callable, List, Sequence

import pyarrow as pa


def _init_worker() -> None:
    pa.set_cpu_count(1)  # one process per core; no nested thread pools


def run_tasks(fn: Callable, args: Sequence[tuple], workers: int, desc: str, progress: bool) -> List:
    """``[fn(*a) for a in args]`` over ``workers`` spawned processes, with a progress bar."""
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(args), desc=desc, unit="bucket")
    results: List = [None] * len(args)
    try:
        if workers <= 1 or len(args) <= 1:
            for i, a in enumerate(args):
                results[i] = fn(*a)
                bar is not None and bar.update()
            return results
        with ProcessPoolExecutor(min(workers, len(args)), mp_context=get_context("spawn"),
                                 initializer=_init_worker) as pool:
            futs = {pool.submit(fn, *a): i for i, a in enumerate(args)}
            for f in as_completed(futs):
                results[futs[f]] = f.result()
                bar is not None and bar.update()
        return results
    finally:
        if bar is not None:
            bar.close()
