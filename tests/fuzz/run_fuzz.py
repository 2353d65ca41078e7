"""Long fuzzing runs of every loader (``make fuzz``).

Usage (from the repository root)::

    KERAS_BACKEND=torch .venv/bin/python tests/fuzz/run_fuzz.py [--seconds 600] [--formats torchzip,keras]
        [--out build/fuzz-findings] [--seed N]

The time is split evenly between the formats; a finding (shrunk and saved to
``--out``) does not stop the run: the format goes on with the next seed. Prints each format's executions and
outcomes; exits 1 if anything was found.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz.driver import Report, fuzz_format
from fuzz.mutators import FORMATS
from fuzz.runner import Worker


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 600)))
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--out", default="build/fuzz-findings")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    args = p.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        p.error("unknown formats %s (known: %s)" % (", ".join(sorted(unknown)), ", ".join(FORMATS)))
    share = args.seconds / len(formats)
    print(
        "fuzzing %s for %.0f s each, seeds from %d; findings -> %s" % (", ".join(formats), share, args.seed, args.out),
        flush=True,
    )
    reports = []
    with Worker(timeout=args.timeout) as worker:
        for fmt in formats:
            rep = Report(fmt)
            end = time.monotonic() + share
            rnd = 0
            while time.monotonic() < end:  # after a finding, go on with the next seed
                fuzz_format(
                    fmt, worker, seconds=end - time.monotonic(), seed=args.seed + rnd, out_dir=args.out, report=rep
                )
                rnd += 1
            print(rep, flush=True)
            reports.append(rep)
        print("worker restarts: %d" % worker.restarts)
    total = sum(r.executions for r in reports)
    found = sum(len(r.findings) for r in reports)
    upstream = sum(len(r.upstream) for r in reports)
    print("total: %d cases, %d findings, %d hangs/crashes inside the HDF5 library" % (total, found, upstream))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
