"""Padding that costs nothing: right-padded batches against the same batch run with
every row stepping every step.

For each case (cell, units, steps), a batch of B rows with lengths drawn uniformly
from [1, T] (a fixed seed) runs through one ``RNNLayer`` three ways, interleaved
round by round (medians): ``padded``, every row stepping every step (rnnfast before
this change, ``rnnfast._plan.SKIP_PADDING = False``); ``skip``, rows whose sequence
has ended dropping out of each step (the default); and ``dense``, the same batch with
every row at full length (the padded run's work, for reference). The ``skip`` and
``padded`` outputs are checked to be bitwise equal before timing. The ideal speed-up
is ``B*T / sum(lengths)`` (about 2 for uniform lengths) on the recurrence; the input
projection drops out too where it runs on packed weights (float32 on AVX-512).

    python bench/padding.py [--quick] [--batch 64] [--threads 1] [--out bench/results]

Prints a table and writes padding.json to --out.
"""

import argparse
import json
import os
import platform
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rnnfast  # noqa: E402
from rnnfast import _kernels, _plan  # noqa: E402
from rnnfast.layers import CellWeights, RNNLayer  # noqa: E402

from _common import interleaved  # noqa: E402

GATES = {"gru": 3, "lstm": 4, "simple": 1}


def layer(cell, I, H, directions, rng):
    s = 1 / np.sqrt(H)
    G = GATES[cell]
    ws = [
        CellWeights(rng.uniform(-s, s, (I, G * H)), rng.uniform(-s, s, (H, G * H)), rng.uniform(-s, s, G * H))
        for _ in range(directions)
    ]
    return RNNLayer(cell, ws)


def run_case(cell, H, T, B, I, directions, threads, budget, seed=0):
    rng = np.random.default_rng(seed)
    lay = layer(cell, I, H, directions, rng)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    full = np.full(B, T)

    def padded():
        _plan.SKIP_PADDING = False
        try:
            return lay(x, lengths=lengths, num_threads=threads)
        finally:
            _plan.SKIP_PADDING = True

    def skip():
        return lay(x, lengths=lengths, num_threads=threads)

    def dense():
        return lay(x, lengths=full, num_threads=threads)

    for a, b in zip(padded(), skip()):
        if a is not None and a.tobytes() != b.tobytes():
            raise AssertionError("%s H=%d: skipping padded rows changed the results" % (cell, H))
    ms, repeats = interleaved({"padded": padded, "skip": skip, "dense": dense}, budget_s=budget)
    return dict(
        cell=cell,
        units=H,
        steps=T,
        batch=B,
        input=I,
        directions=directions,
        threads=threads,
        padded_ms=ms["padded"],
        skip_ms=ms["skip"],
        dense_ms=ms["dense"],
        speedup=ms["padded"] / ms["skip"],
        ideal=B * T / float(lengths.sum()),
        repeats=repeats,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases, shorter timing")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    if args.quick:
        cases = [("gru", 256, 100, 1), ("lstm", 256, 100, 1)]
        budget = 1.0
    else:
        cases = [(c, H, 200, d) for c in ("gru", "lstm") for H in (128, 512) for d in (1, 2)]
        budget = 3.0
    rows = []
    print(
        "rnnfast %s, ISA %s, %s, B=%d, threads=%d, lengths uniform on [1, T]"
        % (rnnfast.__version__, _kernels.isa(), platform.processor() or platform.machine(), args.batch, args.threads)
    )
    print(
        "%-5s %5s %5s %4s  %10s %10s %10s  %7s %6s"
        % ("cell", "H", "T", "dirs", "padded ms", "skip ms", "dense ms", "speedup", "ideal")
    )
    for cell, H, T, d in cases:
        r = run_case(cell, H, T, args.batch, 64, d, args.threads, budget)
        rows.append(r)
        print(
            "%-5s %5d %5d %4d  %10.2f %10.2f %10.2f  %6.2fx %5.2fx"
            % (cell, H, T, d, r["padded_ms"], r["skip_ms"], r["dense_ms"], r["speedup"], r["ideal"])
        )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "padding.json")
    with open(path, "w") as f:
        json.dump(dict(isa=_kernels.isa(), version=rnnfast.__version__, rows=rows), f, indent=1)
    print("->", path)


if __name__ == "__main__":
    main()
