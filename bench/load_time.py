"""ONNX load time per row of ``compare.py``'s ONNX columns: rnnfast builds against ONNX Runtime.

The files are the ones ``compare.py --quick`` exports (its grid and its three whole models,
torch, opset 17), exported once into ``--dir``. Each run starts one worker process per
engine, which goes through the cases in ``compare.py``'s order as its workers do, with its
own engine classes (``rnnfast-onnx``, ``onnxruntime``): a case's build loads the file with
``timed_load`` (the median of ``LOAD_REPEATS`` loads, the first included, as the ONNX
columns report it) and runs the model once on the case's input, then ``timed_rounds``
times its calls for ``--budget`` seconds (``--quick``'s budget by default), so that each
load finds the allocator as compare.py's worker leaves it (the last case's inputs, outputs
and freed model: glibc's mmap threshold follows the largest block freed, which decides
whether a load's arrays are fresh pages or reused, cleared heap). ``--budget 0``: loads
only, no model built and no call (session 10's protocol). The engines' workers are
interleaved run by run (their order rotating), so that load from other work falls on all
alike; the table shows each engine's median over the runs and ORT's session creation /
rnnfast's load (above 1: rnnfast loads faster), with geometric means.

The files exported beforehand, by another process, is compare.py's protocol since session 12
(its ``onnx-export`` worker writes each file before any engine builds the case). ``--fresh``:
each run exports the files into a folder of its own, in the first worker that builds a case,
and the engines run in the ``--engines`` order every run: compare.py's protocol before
session 12, where the ONNX Runtime worker exported each file (``torch.onnx.export`` in its
process, at the first thread count) just before its loads and the rnnfast-onnx worker found it
written. ORT's creation differs after that export (the TextClassifier B=1 file: 4.9 ms, against
9.7 ms with the files exported beforehand; session 11), so ``--fresh --engines ort,...`` gives
the numbers the 1-thread rows of those runs saw.

    python bench/load_time.py [--runs 10] [--threads 1] [--engines src,ort] [--cases GRU] [--budget 0.15]
                              [--fresh] [--json out.json]

An engine is ``ort`` (ONNX Runtime's ``InferenceSession``) or a folder holding a built
``rnnfast`` package (a worktree's ``src``), named ``NAME=FOLDER`` or by the folder. Run
each worker at real-time priority on a shared machine: ``--prefix "chrt -f 20"``.
"""

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

WORKER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import compare
import torch

engine, threads, folder, budget, names = sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), sys.argv[6:]
torch.set_num_threads(threads)
if engine == "ort":
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    load = lambda path: ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
else:
    import onnx
    import rnnfast
    import rnnfast.io.onnx

    rnnfast.set_num_threads(threads)
    load = rnnfast.load
eng = compare.ENGINE_CLASSES["onnxruntime" if engine == "ort" else "rnnfast-onnx"](threads, folder)
eng.setup()


class Here:  # compare.EngineProcess's ask, answered by the engine in this process
    def ask(self, cmd, timeout, **kw):
        return getattr(eng, "cmd_" + cmd)(**kw)


out = {}
for case in compare.grid_cases(True) + compare.whole_cases():
    if case["name"] not in names:
        continue
    path = os.path.join(folder, "%s.onnx" % compare.case_key(case))
    if budget <= 0:
        if not os.path.exists(path):  # (--fresh: the first worker of a run exports, as compare.py did)
            compare.onnx_file(compare.torch_model(case, torch), case, torch, path)
        model, out[case["name"]] = compare.timed_load(lambda: load(path))
        model = None
        continue
    r = eng.cmd_build(case)
    os.remove(r["output"])
    out[case["name"]] = r["load_s"]
    compare.timed_rounds({engine: Here()}, {engine: r["first_s"]}, budget, {})
print(json.dumps(out))
"""


def export(folder, only, fresh=False):
    """``[(case name, .onnx path)]`` of compare.py --quick's ONNX rows, exported here once
    (with ``fresh``: not exported, the workers do)."""
    sys.path.insert(0, HERE)
    import compare
    import torch

    out = []
    for case in compare.grid_cases(True) + compare.whole_cases():
        if only and only not in case["name"]:
            continue
        path = os.path.join(folder, "%s.onnx" % compare.case_key(case))
        out.append(
            (case["name"], path if fresh else compare.onnx_file(compare.torch_model(case, torch), case, torch, path))
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engines", default="src,ort", help="comma-separated: ort, FOLDER or NAME=FOLDER")
    ap.add_argument("--cases", help="only the cases whose name contains this")
    ap.add_argument("--dir", help="where the .onnx files are exported (default: a temporary folder)")
    ap.add_argument(
        "--budget", type=float, default=0.15, help="seconds of calls per case after its loads (0: loads only)"
    )
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="each run exports the files afresh, in its first worker; engines in the given order every run",
    )
    ap.add_argument("--prefix", default="", help='a command each worker runs under, e.g. "chrt -f 20"')
    ap.add_argument("--json", help="write every run's times here")
    args = ap.parse_args(argv)
    engines = {}
    for e in args.engines.split(","):
        name, _, folder = e.rpartition("=") if "=" in e else (e, "", e)
        engines[name] = None if folder == "ort" else os.path.abspath(folder)
    with tempfile.TemporaryDirectory() as tmp:
        index = export(args.dir or tmp, args.cases, args.fresh)
        times: dict = {e: [] for e in engines}
        names = list(engines)
        for r in range(args.runs):
            folder = args.dir or tmp
            if args.fresh:
                folder = os.path.join(tmp, "run%d" % r)
                os.mkdir(folder)
            for e in names if args.fresh else names[r % len(names) :] + names[: r % len(names)]:
                env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
                if engines[e] is not None:
                    env["PYTHONPATH"] = engines[e]
                cmd = shlex.split(args.prefix) + [sys.executable, "-c", WORKER, HERE, e if e == "ort" else "rnnfast"]
                out = subprocess.run(
                    cmd + [str(args.threads), folder, str(args.budget)] + [n for n, _ in index],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                times[e].append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, index=index, times=times), f, indent=1)
    ms = {e: {n: 1e3 * statistics.median(t[n] for t in times[e]) for n, _ in index} for e in engines}
    mine = [e for e in engines if e != "ort"]
    print("load ms, median of %d runs (each: compare.py's timed_load), %d thread(s)" % (args.runs, args.threads))
    print("%-34s" % "case" + "".join("%10s" % e for e in engines) + "".join("%12s" % ("ort/" + e) for e in mine))
    for n, _ in index:
        line = "%-34s" % n + "".join("%10.2f" % ms[e][n] for e in engines)
        if "ort" in engines:
            line += "".join("%12.2f" % (ms["ort"][n] / ms[e][n]) for e in mine)
        print(line)
    if "ort" in engines:
        for e in mine:
            r = [ms["ort"][n] / ms[e][n] for n, _ in index]
            print(
                "%s: %.2fx ORT's session creation (geometric mean), %d of %d rows slower"
                % (e, math.exp(sum(map(math.log, r)) / len(r)), sum(x < 1 for x in r), len(r))
            )
    print("load average %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
