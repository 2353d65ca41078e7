"""Pieces shared by the benchmark scripts: interleaved timing, the BLAS report, pyplot."""
import os
import time

import numpy as np


def interleaved(fns, budget_s=None, repeats=None):
    """Median milliseconds per callable, runs interleaved after two warm-ups each.

    Either ``repeats`` is given, or it is chosen so that the timing takes about
    ``budget_s`` seconds (5 to 200 rounds). Returns ``(ms per name, repeats)``.
    """
    for f in fns.values():
        f()
        f()
    if repeats is None:
        t0 = time.perf_counter()
        for f in fns.values():
            f()
        one_round = time.perf_counter() - t0
        repeats = int(max(5, min(200, budget_s / max(one_round, 1e-6))))
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}, repeats


def blas_report():
    """The BLAS libraries loaded, with the kernel each runs (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    return [dict(api=i["internal_api"], version=i.get("version"), kernel=i.get("architecture"),
                 threads=i.get("num_threads"), file=os.path.basename(i["filepath"]))
            for i in threadpool_info() if i["user_api"] == "blas"]


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a note) when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return None
    return plt
