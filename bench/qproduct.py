"""The recurrent product alone, float32 against bf16 and int8, across builds: interleaved A/B.

Times ``_kernels.packed_matmul`` (float32 on packed weights) and ``_kernels.qmatmul``
(bf16, and int8 per column, the weights packed once and 64-byte aligned as the layers
hold them) for the
recurrent product of a layer: K = H rows, N = 3H (GRU) or 4H (LSTM) columns, M = B rows,
the weights resident in whatever cache they fit (a batch-1 step streams them every
step). Each round runs every build in a process of its own, the builds' order swapped
every round; a process keeps the least of five timed batches (thread CPU time: the
machine is shared), and the table gives each build's median of those over the rounds, the weights'
GB/s at B = 1 (int8: 1 byte an element, bf16: 2, float32: 4) and G(FL)OP/s (2 M K N)
otherwise, and each precision's speed against float32 and against the first build.

    python bench/qproduct.py OLD_SRC NEW_SRC [--rounds 5] [--H 256 512 1024] [--B 1 64]
                             [--precisions bf16 int8]

Each SRC is a folder holding a built ``rnnfast`` (a worktree's ``src``). One thread;
run it under ``timeout 180 chrt -f 20`` on a shared machine.
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
from rnnfast import _kernels, _quant

cases = json.loads(sys.argv[1])
target = float(sys.argv[2])
precisions = json.loads(sys.argv[3])
out = {}


def aligned(a):
    buf = np.empty(a.nbytes + 64, np.uint8)
    off = (-buf.ctypes.data) % 64
    v = buf[off:off + a.nbytes].view(a.dtype)
    v[:] = a
    return v


def per_call(run):
    run(1)
    t0 = time.perf_counter()
    run(1)
    one = time.perf_counter() - t0
    n = max(2, int(target / max(one, 1e-6)))
    best = []
    for _ in range(5):
        t0 = time.thread_time()
        run(1)
        t1 = time.thread_time()
        run(n + 1)
        t2 = time.thread_time()
        best.append(((t2 - t1) - (t1 - t0)) / n)  # the packing (float32) and the call overhead cancel
    return float(min(best))


for cell, H, B in cases:
    N = (3 if cell == "gru" else 4) * H
    rng = np.random.default_rng(H)
    W = (rng.standard_normal((H, N)) * 0.05).astype(np.float32)
    A = rng.standard_normal((B, H)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    key = "%s/%d/%d" % (cell, H, B)
    out[key + "/float32"] = per_call(lambda r: _kernels.packed_matmul(A, W, repeat=r, bias=b))
    for p in precisions:
        code = _quant.PRECISIONS[p]
        data, scale, comp = _quant.pack_block(W, code)
        data = aligned(data)
        out[key + "/" + p] = per_call(lambda r: _kernels.qmatmul(code, A, data, N, scale, comp, bias=b, repeat=r))
print(json.dumps(out))
"""


#: Bytes a weight and rows of K a packed group (quant.h) per precision.
BYTES = {"float32": 4, "bf16": 2, "int8": 1}
PAD = {"bf16": 2, "int8": 4}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="+", help="folders holding a built rnnfast")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--H", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--B", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--cells", nargs="+", default=["gru", "lstm"])
    ap.add_argument("--precisions", nargs="+", default=["bf16", "int8"], choices=sorted(BYTES))
    ap.add_argument("--target", type=float, default=0.05, help="seconds per timed batch of calls")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    cases = [[c, H, B] for c in args.cells for H in args.H for B in args.B]
    runs = {s: [] for s in args.src}
    for r in range(args.rounds):
        order = args.src if r % 2 == 0 else args.src[::-1]
        for s in order:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(s), OMP_NUM_THREADS="1", RNNFAST_NUM_THREADS="1")
            cmd = [sys.executable, "-c", WORKER, json.dumps(cases), str(args.target), json.dumps(args.precisions)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            runs[s].append(json.loads(res.stdout))
    med = {s: {k: float(np.median([run[k] for run in runs[s]])) for k in runs[s][0]} for s in args.src}
    first = args.src[0]
    unit = "GB/s (B=1) or G(FL)OP/s"
    print("| cell | H | B | build | precision | float32 us | us | float32 %s | %s | vs float32 | vs first |"
          % (unit, unit))  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c, H, B in cases:
        N = (3 if c == "gru" else 4) * H
        key = "%s/%d/%d" % (c, H, B)
        for s in args.src:
            for p in args.precisions:
                f, q = med[s][key + "/float32"], med[s][key + "/" + p]
                if B == 1:  # the weights as packed: K padded to the pair (bf16) or group (int8)
                    kp = -(-H // PAD[p]) * PAD[p]
                    rf, rq = BYTES["float32"] * H * N / f / 1e9, BYTES[p] * kp * N / q / 1e9
                else:
                    rf, rq = 2.0 * B * H * N / f / 1e9, 2.0 * B * H * N / q / 1e9
                print("| %s | %d | %d | %s | %s | %.1f | %.1f | %.1f | %.1f | %.2fx | %.2fx |"
                      % (c, H, B, s, p, f * 1e6, q * 1e6, rf, rq, f / q, med[first][key + "/" + p] / q))  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"runs": runs, "median": med, "cases": cases}, fh, indent=1)


if __name__ == "__main__":
    main()
