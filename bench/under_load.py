"""rnnfast and its peers on a busy machine: the batch-1 and seed cases of the grid, on 1
and 2 threads, with the machine idle and with a busy process on one core.

Real servers are shared. This script runs each case idle and then under load, back
to back (the conditions interleave case by case, so drift of the shared machine hits
both alike), for rnnfast, ONNX Runtime and OpenVINO, each engine in its own worker
process as in ``compare.py`` (same models, same weights, outputs checked to agree,
medians of interleaved rounds). The load is a pure-Python busy loop pinned to the
last CPU this process may use: one of two cores stays busy for the whole timed part.

    python bench/under_load.py [--quick] [--engines rnnfast,onnxruntime,openvino]
                               [--threads 1,2] [--cases SUBSTR] [--out bench/results]

Writes under_load.json and under_load.png to --out and prints the table with the
targets of "Fast on a busy machine too": under load, rnnfast on 2 threads within
1.3x of its own 1-thread time and at least as fast as the fastest peer on 2 threads.
Also times the bundled pretrained models at batch 1 (1 thread against the default).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402

from _common import pyplot  # noqa: E402

PEERS = ("onnxruntime", "openvino")
BUSY = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def cases(quick):
    """The seed cases and the grid's batch-1 cases (a few of each with ``quick``)."""
    out = [c for c in compare.grid_cases(False) if c["B"] == 1 or c["name"].startswith("seed")]
    if quick:
        keep = (
            "seed GRU(128)->GRU(64)",
            "GRU B=1 T=100 H=I=128",
            "LSTM B=1 T=100 H=I=128",
            "LSTM B=1 T=100 H=I=512",
            "BiLSTM B=1",
        )
        out = [c for c in out if c["name"].startswith(keep)]
    return out


class Busy:
    """A busy loop pinned to one CPU, while the ``with`` block runs."""

    def __init__(self, cpu):
        self.cpu, self.proc = cpu, None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", BUSY, str(self.cpu)])
        time.sleep(0.2)  # let it start spinning
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        time.sleep(0.1)


def run(case_list, engines, thread_counts, budget_s):
    """Rows for every (threads, case, condition); conditions interleave per case."""
    busy_cpu = max(os.sched_getaffinity(0))
    rows, versions = [], {}
    tmp = tempfile.mkdtemp(prefix="rnnfast-load-")
    try:
        for t in thread_counts:
            procs = {e: compare.EngineProcess(e, t, tmp) for e in engines}
            try:
                for p in procs.values():
                    p.start()
                for e, p in procs.items():
                    p.ensure()
                    versions.setdefault(e, p.info["version"])
                for case in case_list:
                    for load in (False, True):
                        if load:
                            with Busy(busy_cpu):
                                r = compare.run_case(case, t, procs, budget_s)
                        else:
                            r = compare.run_case(case, t, procs, budget_s)
                        r["load"] = load
                        rows.append(r)
                        print(
                            "  %-36s %dt %-5s %s%s"
                            % (
                                r["case"][:36],
                                t,
                                "load" if load else "idle",
                                "  ".join("%s %.3f" % (k, v) for k, v in r["ms"].items()),
                                "  (notes: %s)" % r["notes"] if r["notes"] else "",
                            ),
                            flush=True,
                        )
            finally:
                for p in procs.values():
                    p.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, versions


def bundled_models(budget_s):
    """The bundled pretrained models at batch 1: median ms on 1 thread and on the default
    threads, idle and under load, timed in interleaved turns (in this process)."""
    import rnnfast
    from rnnfast import demo

    ex = demo.load_digits_examples()
    x1 = ex["x"][:1]
    calls = {
        "Keras BiGRU (digits_bigru.keras)": lambda n: ex["keras"].predict(x1, num_threads=n),
        "PyTorch LSTM (digits_lstm.pt)": lambda n: ex["torch"](x1, num_threads=n),
    }
    out = []
    for name, call in calls.items():
        default = rnnfast.get_num_threads()
        for load in (False, True):
            times = {1: [], default: []}
            ctx = Busy(max(os.sched_getaffinity(0))) if load else None
            if ctx:
                ctx.__enter__()
            try:
                t_end = time.perf_counter() + budget_s
                while time.perf_counter() < t_end or min(len(v) for v in times.values()) < 20:
                    for n in times:
                        for _ in range(5):
                            t0 = time.perf_counter()
                            call(n)
                            times[n].append(time.perf_counter() - t0)
            finally:
                if ctx:
                    ctx.__exit__(None, None, None)
            out.append(
                dict(
                    model=name,
                    load=load,
                    default_threads=default,
                    ms={str(n): 1e3 * float(np.median(v)) for n, v in times.items()},
                )
            )
            print(
                "  %-28s %-5s %s"
                % (
                    name,
                    "load" if load else "idle",
                    "  ".join("%st %.3f ms" % (n, v) for n, v in out[-1]["ms"].items()),
                )
            )
    return out


def table(rows):
    """One line per case: rnnfast and the fastest peer, idle and under load, with the
    two targets checked."""
    by = {}
    for r in rows:
        by.setdefault(r["case"], {})[(r["threads"], r["load"])] = r["ms"]
    head = "%-34s %9s %9s %9s %9s %7s %9s %9s %7s" % (
        "case (ms)",
        "rnf 1t",
        "rnf 2t",
        "rnf 1t L",
        "rnf 2t L",
        "2t/1t L",
        "peer 2t L",
        "best peer",
        "vs peer",
    )
    lines, summary = [head, "-" * len(head)], []
    for case, d in by.items():

        def ms(t, load, e="rnnfast", d=d):
            return d.get((t, load), {}).get(e)

        r1, r2, r1l, r2l = ms(1, False), ms(2, False), ms(1, True), ms(2, True)
        peers = {e: ms(2, True, e) for e in PEERS if ms(2, True, e)}
        best = min(peers, key=peers.get) if peers else None
        ratio = r2l / r1l if r2l and r1l else None
        vs = peers[best] / r2l if best and r2l else None
        summary.append(
            dict(
                case=case,
                ratio_2t_1t_load=ratio,
                speedup_vs_peer_load=vs,
                best_peer=best,
                ok_ratio=ratio is not None and ratio <= 1.3,
                ok_peer=vs is not None and vs >= 1.0,
            )
        )

        def f(v):
            return "%9.3f" % v if v else "%9s" % "-"

        lines.append(
            "%-34s %s %s %s %s %7s %s %9s %7s"
            % (
                case[:34],
                f(r1),
                f(r2),
                f(r1l),
                f(r2l),
                "%.2fx" % ratio if ratio else "-",
                f(peers.get(best)),
                best or "-",
                "%.2fx" % vs if vs else "-",
            )
        )
    return lines, summary


def plot(summary, path):
    plt = pyplot()
    if plt is None or not summary:
        return
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(summary)), 5))
    xs = np.arange(len(summary))
    ax.bar(
        xs - 0.2,
        [s["ratio_2t_1t_load"] or 0 for s in summary],
        0.4,
        label="rnnfast 2 threads / 1 thread, under load (target <= 1.3)",
    )
    ax.bar(
        xs + 0.2,
        [s["speedup_vs_peer_load"] or 0 for s in summary],
        0.4,
        label="fastest peer / rnnfast, 2 threads, under load (target >= 1)",
    )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.3, color="tab:red", lw=0.8, ls="--")
    ax.set_xticks(xs)
    ax.set_xticklabels([s["case"] for s in summary], rotation=50, ha="right", fontsize=7)
    ax.legend(fontsize=8)
    ax.set_title("a busy process on one of the cores")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print("plot:", path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="five cases instead of all")
    ap.add_argument("--engines", default="rnnfast," + ",".join(PEERS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timing per engine and case")
    ap.add_argument("--cases", metavar="SUBSTR")
    ap.add_argument("--no-bundled", action="store_true", help="skip the bundled models")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    budget = args.budget if args.budget is not None else (0.3 if args.quick else 0.6)
    engines = [e for e in args.engines.split(",") if not compare.missing_modules(e)]
    skipped = sorted(set(args.engines.split(",")) - set(engines))
    if skipped:
        print("not installed, skipped:", ", ".join(skipped))
    case_list = [c for c in cases(args.quick) if args.cases is None or args.cases in c["name"]]
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    rows, versions = run(case_list, engines, [int(s) for s in args.threads.split(",")], budget)
    bundled = [] if args.no_bundled else bundled_models(2 * budget)
    lines, summary = table(rows)
    print()
    print("\n".join(lines))
    for s in summary:
        if not (s["ok_ratio"] and s["ok_peer"]):
            print(
                "  target missed: %s (2t/1t under load %s, vs peer %s)"
                % (s["case"], s["ratio_2t_1t_load"], s["speedup_vs_peer_load"])
            )
    print("engines: %s; CPU: %s; wall %.0f s" % (versions, _cpu(), time.perf_counter() - t0))
    with open(os.path.join(args.out, "under_load.json"), "w") as f:
        json.dump(
            dict(
                rows=rows,
                summary=summary,
                bundled=bundled,
                engines=versions,
                cpu=_cpu(),
                budget_s=budget,
                argv=sys.argv[1:],
            ),
            f,
            indent=1,
        )
    plot(summary, os.path.join(args.out, "under_load.png"))
    return 0


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
