"""One row of ``compare.py`` in its turns, call by call: where in a turn the time goes.

``compare.py`` times each engine in turns (about TURN_S of calls, then GAP_S of quiet
before the next engine's turn) and reports the median of all calls. This script runs
one case the same way, each engine in a worker process built by compare.py's own engine
classes (same export, same inputs, same thread settings), and prints per engine: the
median of all calls, of the first, second and third call of a turn and of the rest;
minor page faults and context switches per call; and for rnnfast the team's facts
(``_kernels.team_last``): its partner's arrival in the first call of a turn and in the
later ones, and the tasks each thread ran.

    python bench/turns.py --case "LSTM B=1 T=100" --threads 2 [--rounds 20] [--gap 0.1]
                          [--engines rnnfast-onnx,onnxruntime]

An engine ``rnnfast-onnx@DIR`` runs rnnfast from another source tree (its worker's
PYTHONPATH is DIR): two builds in the same turns, for an A/B.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402  (bench/'s own module: the cases, the engines, TURN_S, GAP_S)


def _case(name):
    for case in compare.seed_cases() + compare.grid_cases(True) + compare.whole_cases():
        if name in case["name"]:
            return case
    raise SystemExit("no case named like %r" % name)


def worker(engine, threads, tmp, name):
    """Build the case with compare.py's engine class, then answer ``k`` (calls in a turn)
    on stdin with the turn's times, facts and rusage on stdout, one JSON line each."""
    eng = compare.ENGINE_CLASSES[engine](threads, tmp)
    eng.setup()
    eng.cmd_build(_case(name))
    facts = None
    if engine in compare.OWN:
        from rnnfast import _kernels

        facts = _kernels.team_last
    for line in sys.stdin:
        k = json.loads(line)
        times, team = [], []
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(k):
            t0 = time.perf_counter()
            eng.fn()
            times.append(time.perf_counter() - t0)
            if facts is not None:
                f = facts()
                team.append([f["threads"], f["arrive_us"], f["ran"]])
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        ru = [r1.ru_minflt - r0.ru_minflt, r1.ru_nvcsw - r0.ru_nvcsw, r1.ru_nivcsw - r0.ru_nivcsw]
        print(json.dumps(dict(times=times, team=team, ru=ru)), flush=True)


def _ms(v):
    return "%.3f" % (1e3 * float(np.median(v))) if len(v) else "-"


def report(engine, turns):
    """Print one engine's lines; ``turns``: the replies of its turns (the first left out)."""
    times = [r["times"] for r in turns]
    at = [[t[i] for t in times if len(t) > i] for i in range(3)]
    rest = [x for t in times for x in t[3:]]
    calls = sum(len(t) for t in times)
    ru = np.sum([r["ru"] for r in turns], axis=0) / max(calls, 1)
    print(
        "%-24s all %s ms | 1st %s, 2nd %s, 3rd %s, rest %s (%d turns, %.0f calls each) | per call: "
        "%.1f minor faults, %.2f / %.2f voluntary / involuntary switches"
        % (engine, _ms([x for t in times for x in t]), *map(_ms, at), _ms(rest), len(times), calls / len(times), *ru)
    )
    team = [r["team"] for r in turns if r["team"]]
    if team:
        first = [t[0][1][1] for t in team if len(t[0][1]) > 1]
        later = [c[1][1] for t in team for c in t[1:] if len(c[1]) > 1]
        ran = [float(v) for v in np.median([c[2] for t in team for c in t if len(c[2]) > 1], axis=0)] if first else []
        print(
            "%-24s team: partner arrives %.1f us into a turn's first call (max %.1f), %.1f into the others; "
            "tasks per thread %s" % ("", np.median(first), max(first), np.median(later) if later else -1, ran)
            if first
            else "%-24s team: no call ran on a team" % ""
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", required=True, help="a substring of a compare.py --quick case name")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--gap", type=float, default=compare.GAP_S, help="seconds of quiet between turns")
    ap.add_argument("--turn", type=float, default=compare.TURN_S, help="seconds of calls per turn")
    ap.add_argument("--engines", default="rnnfast-onnx,onnxruntime")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        e, threads, tmp, name = args.worker
        return worker(e, int(threads), tmp, name)
    case = _case(args.case)
    engines = args.engines.split(",")
    tmp = tempfile.mkdtemp(prefix="rnnfast-turns-")
    procs = {}
    for e in engines:
        kind, _, src = e.partition("@")
        env = compare.worker_env(args.threads)
        if src:
            env["PYTHONPATH"] = os.path.abspath(src)
        cmd = [sys.executable, os.path.abspath(__file__), "--case", args.case, "--worker", kind, str(args.threads)]
        procs[e] = subprocess.Popen(
            cmd + [tmp, case["name"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
    est, turns = dict.fromkeys(engines, args.turn), {e: [] for e in engines}
    try:
        for r in range(args.rounds + 1):  # round 0 warms up (not reported), as compare's build call does
            for e in engines[r % len(engines) :] + engines[: r % len(engines)]:
                k = max(1, int(round(args.turn / est[e])))
                procs[e].stdin.write("%d\n" % k)
                procs[e].stdin.flush()
                line = procs[e].stdout.readline()
                if not line:
                    raise SystemExit("%s: its worker stopped" % e)
                reply = json.loads(line)
                if r:
                    turns[e].append(reply)
                est[e] = float(np.median(reply["times"]))
                time.sleep(args.gap)
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        "%s, %d thread(s), %d rounds, turns of %.3f s, %.3f s between; load average %s"
        % (case["name"], args.threads, args.rounds, args.turn, args.gap, "%.2f %.2f %.2f" % os.getloadavg())
    )
    for e in engines:
        report(e, turns[e])


if __name__ == "__main__":
    main()
