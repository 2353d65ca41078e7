"""Pieces shared by the benchmark scripts: interleaved timing, the BLAS report, pyplot."""

import os


def interleaved(fns, budget_s=1.0, repeats=None):
    """Median milliseconds per callable, runs interleaved after a warm-up (the timing
    of ``rnnfast bench``). Returns ``(ms per name, repeats)``."""
    from rnnfast._bench import timeit

    stats, repeats = timeit(fns, repeats=repeats, budget_s=budget_s)
    return {k: 1e3 * v[0] for k, v in stats.items()}, repeats


def blas_report():
    """The BLAS libraries loaded, with the kernel each runs (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    return [
        dict(
            api=i["internal_api"],
            version=i.get("version"),
            kernel=i.get("architecture"),
            threads=i.get("num_threads"),
            file=os.path.basename(i["filepath"]),
        )
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]


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
