"""Padding that costs nothing: right-padded batches against the same batch run with
every row stepping every step.

For each case (cell, units, steps), a batch of B rows with lengths drawn uniformly
from [1, T] (a fixed seed) runs through one ``RNNLayer`` three ways, interleaved
round by round (medians: of the process CPU time on one thread, so that a shared
machine's other work does not count; else of the wall time): ``padded``, every row
stepping every step (rnnfast before this change, ``rnnfast._plan.SKIP_PADDING =
False``: the projection and products over every row, the gate math of an ended row
skipped by the mask); ``skip``, rows whose sequence has ended dropping out of each
step (the default); and ``dense``, the same batch with every row at full length (the
padded run's work, for reference). The ``skip`` and ``padded`` outputs are checked to
be bitwise equal before timing. The ideal speed-up is ``B*T / sum(lengths)`` (about 2
for uniform lengths) on the recurrence; the input projection drops out too where it
runs on packed weights (float32, every ISA since session 14; float64 projects by BLAS
in the caller's row order, every row).

    python bench/padding.py [--quick] [--batch 64] [--threads 1] [--out bench/results]
        [--cells gru,lstm] [--units 128,512] [--steps 200] [--dirs 1,2] [--rounds 7] [--profile]

(--cells, --units, --steps and --dirs, comma-separated, replace the full grid's axes.)

``--profile`` adds where the time goes (``_kernels.profile``, thread-milliseconds per
call: the input projection and the per-step products, the parts that scale with the
rows that step, and the rest of the steps) and the speed-up's ``bound``: the padded
call with only those two parts cut by the ideal, ``1 / (1 - f * (1 - 1/ideal))`` for
their share f of the padded call's wall time (their thread-time over the thread count:
a team's even split assumed). The rest (the gate math, which the padded run already
skips for an ended row; state copies, outputs, the call's fixed cost) is there in both
runs about alike (the skip also saves the ended rows' copies and zero outputs each
step: a few percent of it), so the skip reaches about the bound and not much past it;
``of bound`` is the measured speed-up over it.

Prints a table and writes padding.json to --out.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import rnnfast  # noqa: E402
from rnnfast import _kernels, _plan  # noqa: E402
from rnnfast.layers import CellWeights, RNNLayer  # noqa: E402

GATES = {"gru": 3, "lstm": 4, "simple": 1}


def layer(cell, I, H, directions, rng):
    s = 1 / np.sqrt(H)
    G = GATES[cell]
    ws = [
        CellWeights(rng.uniform(-s, s, (I, G * H)), rng.uniform(-s, s, (H, G * H)), rng.uniform(-s, s, G * H))
        for _ in range(directions)
    ]
    return RNNLayer(cell, ws)


def run_case(cell, H, T, B, I, directions, threads, rounds, seed=0, profile=False):
    # the lengths first, from their own generator: every case of a batch size steps the
    # same rows (drawn after the weights, they changed with the layer's shape, and so
    # did the ideal speed-up: 1.76x to 2.20x in one grid)
    lengths = np.random.default_rng(seed).integers(1, T + 1, B)
    rng = np.random.default_rng(seed + 1)
    lay = layer(cell, I, H, directions, rng)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
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
    fns = {"padded": padded, "skip": skip, "dense": dense}
    wall, cpu = timed(fns, rounds)
    ms = cpu if threads == 1 else wall
    ideal = B * T / float(lengths.sum())
    parts = profiled({"padded": padded, "skip": skip}, rounds) if profile else None
    if parts is not None:
        # the parts are thread-time: on n threads about n times their share of the wall
        a = parts["padded"]
        share = (a["projection"] + a["product"]) / threads / a["call"]
        parts["bound"] = 1 / (1 - share * (1 - 1 / ideal))
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
        ideal=ideal,
        profile=parts,
        rounds=rounds,
        clock="process CPU time" if threads == 1 else "wall",
        wall_ms=wall,
        cpu_ms=cpu,
    )


def timed(fns, rounds):
    """Median wall and process-CPU milliseconds per callable over interleaved rounds
    (after a warm-up each). On one thread the CPU time is the work itself, whatever
    else the machine runs: the numbers this script reports then."""
    for f in fns.values():
        f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            f()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    return (
        {k: 1e3 * float(np.median(v)) for k, v in wall.items()},
        {k: 1e3 * float(np.median(v)) for k, v in cpu.items()},
    )


def profiled(fns, rounds):
    """Per callable, the medians over interleaved rounds of ``_kernels.profile``'s parts
    (thread-milliseconds of the calls' input projection, per-step products, the rest of
    the steps and the barrier) and of the call's wall milliseconds (the profile's clock)."""
    got = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            _kernels.profile(True)
            w0 = time.perf_counter()
            try:
                f()
                w = time.perf_counter() - w0
                p = _kernels.profile_times()
            finally:
                _kernels.profile(False)
            got[k].append(dict(p, call=w))
    return {k: {part: 1e3 * float(np.median([p[part] for p in v])) for part in v[0]} for k, v in got.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases, shorter timing")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--cells", default="gru,lstm", help="cells of the grid, comma-separated")
    ap.add_argument("--units", default="128,512", help="H of the grid, comma-separated")
    ap.add_argument("--steps", default="200", help="T of the grid, comma-separated")
    ap.add_argument("--dirs", default="1,2", help="directions of the grid, comma-separated")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 7; 5 with --quick)")
    ap.add_argument("--profile", action="store_true", help="where the time goes, and the bound")
    args = ap.parse_args(argv)
    if args.quick:
        cases = [("gru", 256, 100, 1), ("lstm", 256, 100, 1)]
        rounds = 5
    else:
        cases = [
            (c, int(H), int(T), int(d))
            for c in args.cells.split(",")
            for H in args.units.split(",")
            for T in args.steps.split(",")
            for d in args.dirs.split(",")
        ]
        rounds = 7
    rounds = args.rounds or rounds
    rows = []
    print(
        "rnnfast %s, ISA %s, %s, B=%d, threads=%d, lengths uniform on [1, T]"
        % (rnnfast.__version__, _kernels.isa(), platform.processor() or platform.machine(), args.batch, args.threads)
    )
    head = "%-5s %5s %5s %4s  %10s %10s %10s  %7s %6s" % (
        ("cell", "H", "T", "dirs", "padded ms", "skip ms", "dense ms", "speedup", "ideal")
    )
    if args.profile:
        head += "  %6s %8s  %s" % ("bound", "of bound", "padded / skip ms: projection, products, rest of the steps")
    print(head)
    for cell, H, T, d in cases:
        r = run_case(cell, H, T, args.batch, 64, d, args.threads, rounds, profile=args.profile)
        rows.append(r)
        line = "%-5s %5d %5d %4d  %10.2f %10.2f %10.2f  %6.2fx %5.2fx" % (
            (cell, H, T, d, r["padded_ms"], r["skip_ms"], r["dense_ms"], r["speedup"], r["ideal"])
        )
        if args.profile:
            p = r["profile"]
            line += "  %5.2fx %7.0f%%  %s" % (
                p["bound"],
                100 * r["speedup"] / p["bound"],
                ", ".join("%.1f / %.1f" % (p["padded"][k], p["skip"][k]) for k in ("projection", "product", "gates")),
            )
        print(line)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "padding.json")
    with open(path, "w") as f:
        json.dump(dict(isa=_kernels.isa(), version=rnnfast.__version__, rows=rows), f, indent=1)
    print("->", path)


if __name__ == "__main__":
    main()
