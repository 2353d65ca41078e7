"""One ONNX row of ``compare.py`` in one process: ``rnnfast.load(path).run`` against an
ONNX Runtime session of the same file, calls in alternating blocks, medians; then where
each engine's time goes, op by op, in sequence (whole calls, not ops run alone: after a
recurrent layer a step finds the caches cold), and rnnfast's Python around its steps.

    python bench/onnx_steps.py --case "Speech Conv+BiGRU B=1" --threads 1 --seconds 8

The file, its inputs and the model are ``compare.py``'s (``whole_cases`` / ``grid_cases``,
``case_inputs``, ``onnx_file``: the same export). rnnfast's steps are its flat plan's
(``model_onnx.flat_plan``), each step's call wrapped in a clock; ONNX Runtime's are its
profiler's kernel times (``enable_profiling``). Run it at real-time priority on a shared
machine (``chrt -f 20``), and one thread: two engines' FIFO thread pools in one process
do not yield to each other.
"""

import argparse
import collections
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # (bench/'s own module: the cases, the export)


def _case(name):
    for case in compare.grid_cases(True) + compare.whole_cases():
        if name in case["name"]:
            return case
    raise SystemExit("no case named like %r" % name)


def _model_file(case, folder):
    import torch

    return compare.onnx_file(
        compare.torch_model(case, torch), case, torch, os.path.join(folder, "%s.onnx" % compare.case_key(case))
    )


def interleaved(fns, seconds, block):
    """Median seconds per call of each of ``fns`` (name -> callable), ``block`` calls of
    each in turn, the order reversed every round, for ``seconds``."""
    times: dict = {k: [] for k in fns}
    end, r = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            f = fns[k]
            for _ in range(block):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        r += 1
    return {k: float(np.median(v)) for k, v in times.items()}


def rnnfast_steps(model, feeds, calls):
    """(name, median us) of each step of ``model``'s flat plan, timed in whole calls: the
    plan run by ``model.run`` as it is, each step's call wrapped in a clock."""
    model.run(None, feeds)
    plan = model._plan
    steps = plan[0]
    spent: list = [[] for _ in steps]
    clock = time.perf_counter_ns

    def clocked(j, call):
        def timed(args, num_threads):
            t0 = clock()
            res = call(args, num_threads)
            spent[j].append(clock() - t0)
            return res

        return timed

    model._plan = ([(clocked(j, s[0]),) + tuple(s[1:]) for j, s in enumerate(steps)],) + tuple(plan[1:])
    try:
        for _ in range(calls):
            model.run(None, feeds)
    finally:
        model._plan = plan
    names = [repr(s[0].__self__) if hasattr(s[0], "__self__") else s[0].__qualname__ for s in steps]
    return [(nm, np.median(t) / 1e3) for nm, t in zip(names, spent)]


def python_in_sequence(model, feeds, calls):
    """Median us of rnnfast's own Python in whole calls of ``model.run``: from the call to
    its plan's first step, between the steps and from the last step to the return (each
    step's call wrapped in a clock, whose own cost is included: ~0.1-0.3 us a step)."""
    model.run(None, feeds)
    plan = model._plan
    clock = time.perf_counter_ns
    marks: list = []

    def clocked(call):
        def timed(args, num_threads):
            marks.append(clock())
            res = call(args, num_threads)
            marks.append(clock())
            return res

        return timed

    model._plan = ([(clocked(s[0]),) + tuple(s[1:]) for s in plan[0]],) + tuple(plan[1:])
    parts = []
    try:
        for _ in range(calls):
            marks.clear()
            t0 = clock()
            model.run(None, feeds)
            t1 = clock()
            between = sum(marks[i + 1] - marks[i] for i in range(1, len(marks) - 1, 2))
            parts.append((marks[0] - t0, between, t1 - marks[-1]))
    finally:
        model._plan = plan
    before, between, after = np.median(np.array(parts), axis=0) / 1e3
    return before, between, after


def ort_steps(path, feeds, threads, calls):
    """(op type and node, median us) of ONNX Runtime's profiled kernels over ``calls``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.gettempdir(), "onnx_steps_%d" % os.getpid())
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(calls):
        sess.run(None, feeds)
    prof = sess.end_profiling()
    with open(prof) as f:
        events = json.load(f)
    os.remove(prof)
    spent = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            spent["%s %s" % (e["args"].get("op_name"), e["name"][: -len("_kernel_time")])].append(e["dur"])
    return [(k, float(np.median(v))) for k, v in spent.items()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True, help="a compare.py case name, or part of one")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=8.0, help="of interleaved calls")
    ap.add_argument("--no-steps", action="store_true", help="the interleaved calls only")
    ap.add_argument(
        "--kept",
        action="store_true",
        help="also rnnfast with no weights streamed past the caches (_plan.streamed_weights) in the interleaved calls",
    )
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "rnnfast_onnx_steps"))
    args = ap.parse_args(argv)
    import onnxruntime as ort

    import rnnfast
    import rnnfast.io.onnx  # (the loader, imported before the timing)

    case = _case(args.case)
    os.makedirs(args.folder, exist_ok=True)
    path, feeds = _model_file(case, args.folder), compare.case_inputs(case)
    rnnfast.set_num_threads(args.threads)
    model = rnnfast.load(path)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    diff = float(np.abs(model.run(None, feeds)[0] - sess.run(None, feeds)[0]).max())
    fns = {"rnnfast": lambda: model.run(None, feeds), "onnxruntime": lambda: sess.run(None, feeds)}
    if args.kept:
        from rnnfast import _plan

        chosen = _plan.streamed_weights
        _plan.streamed_weights = lambda sizes, streamable, l3=None: set()
        try:
            kept = rnnfast.load(path)
            for _ in range(3):  # (its plan, and the choice, made by then)
                kept.run(None, feeds)
        finally:
            _plan.streamed_weights = chosen
        fns["kept"] = lambda: kept.run(None, feeds)
    for f in fns.values():
        for _ in range(5):
            f()
    med = interleaved(fns, args.seconds, 20 if case["B"] == 1 else 2)
    print(
        "%s, %d thread(s): rnnfast %.3f ms, ONNX Runtime %.3f ms, ORT / rnnfast %.3fx (max |diff| %.1e; load %.1f)"
        % (case["name"], args.threads, 1e3 * med["rnnfast"], 1e3 * med["onnxruntime"],
           med["onnxruntime"] / med["rnnfast"], diff, os.getloadavg()[0])
    )  # fmt: skip
    if args.kept:
        print("rnnfast with nothing streamed: %.3f ms (streamed / kept %.3fx)"
              % (1e3 * med["kept"], med["kept"] / med["rnnfast"]))  # fmt: skip
    if args.no_steps:
        return
    calls = 300 if case["B"] == 1 else 20
    print("rnnfast's plan steps (us, in sequence):")
    for name, us in rnnfast_steps(model, feeds, calls):
        print("  %10.1f  %s" % (us, name[:100]))
    before, between, after = python_in_sequence(model, feeds, 10 * calls)
    print(
        "rnnfast's Python in sequence (us): call -> first step %.1f, between steps %.1f, last step -> return %.1f"
        % (before, between, after)
    )
    print("ONNX Runtime's profiled kernels (us):")
    for name, us in ort_steps(path, feeds, args.threads, calls):
        print("  %10.1f  %s" % (us, name[:100]))


if __name__ == "__main__":
    main()
