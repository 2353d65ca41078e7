"""Two builds of rnnfast side by side: interleaved A/B timing of recurrent layers.

Each round runs every case in a fresh process per build, the builds' order swapped
every round, so that load from other work falls on both alike; the table shows each
build's median over the rounds and new/old speed. ``--cpu`` times thread CPU time
(``time.thread_time``) instead of wall time: robust on a shared machine, but only
meaningful for one thread (the team's other threads are not counted).

    python bench/ab_builds.py OLD_SRC NEW_SRC [--rounds 7] [--cpu] [--threads 1] [--cases lstm]

OLD_SRC and NEW_SRC are folders holding a built ``rnnfast`` package (a worktree's
``src`` after ``setup.py build_ext --inplace``). Cases: GRU and LSTM, T = 100, I = H,
random weights (seeded), H in {256, 512} at B = 64 and H = 256 at B = 1.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

WORKER = r"""
import json, sys, time
import numpy as np
from rnnfast.layers import CellWeights, RNNLayer

clock = time.thread_time if sys.argv[2] == "cpu" else time.perf_counter
out = {}
for cell, H, B, th in json.loads(sys.argv[1]):
    G = 4 if cell == "lstm" else 3
    r = np.random.default_rng(0)
    w = CellWeights(*(0.05 * r.standard_normal(s).astype(np.float32) for s in ((H, G * H), (H, G * H), G * H, G * H)))
    layer = RNNLayer(cell, [w])
    x = np.random.default_rng(1).standard_normal((100, B, H)).astype(np.float32)
    layer.forward(x, num_threads=th)
    ts, end = [], time.perf_counter() + 0.6
    while time.perf_counter() < end or len(ts) < 5:
        t0 = clock()
        layer.forward(x, num_threads=th)
        ts.append(clock() - t0)
    out["%s H=%d B=%d %dt" % (cell, H, B, th)] = float(np.median(ts))
print(json.dumps(out))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cpu", action="store_true", help="thread CPU time (one thread only)")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--cases", help="only the cases whose name contains this")
    args = ap.parse_args(argv)
    cases = [
        (cell, H, B, th)
        for th in (int(t) for t in args.threads.split(","))
        for cell in ("lstm", "gru")
        for H, B in ((256, 64), (512, 64), (256, 1))
    ]
    if args.cases:
        cases = [c for c in cases if args.cases in "%s H=%d B=%d %dt" % c]
    builds = {"old": args.old, "new": args.new}
    times: dict = {"old": {}, "new": {}}
    for r in range(args.rounds):
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(builds[name]))
            cmd = [sys.executable, "-c", WORKER, json.dumps(cases), "cpu" if args.cpu else "wall"]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            for key, t in json.loads(done.stdout).items():
                times[name].setdefault(key, []).append(t)
    clock = "thread CPU" if args.cpu else "wall"
    head = "case                  old ms    new ms   new/old speed"
    print(head + "  (%s time, medians of %d rounds)" % (clock, args.rounds))
    for key in times["old"]:
        old, new = np.median(times["old"][key]), np.median(times["new"][key])
        print("%-20s %8.2f  %8.2f   %.3fx" % (key, 1e3 * old, 1e3 * new, old / new))
    print("load average: %.1f %.1f %.1f" % os.getloadavg())


if __name__ == "__main__":
    main()
