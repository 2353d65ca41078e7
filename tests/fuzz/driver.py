"""Drive hypothesis over the fuzz cases of one format, in a :class:`~fuzz.runner.Worker`.

:func:`fuzz_format` runs up to ``examples`` cases or for ``seconds``, whichever ends
first, and returns a :class:`Report`. A case that breaks the contract (see
``runner``) or makes the marker file appear fails the hypothesis property, which then
shrinks it to a small reproducer; the reproducer's bytes are written to ``out_dir``
(``<format>-<kind>-<n>.bin``) with a ``.txt`` describing it.
"""

import builtins
import collections
import os
import time

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from .mutators import MARKER, build_case, case_strategy

#: hypothesis raises ExceptionGroups on Python 3.11+ (none before)
_GROUPS = (builtins.BaseExceptionGroup,) if hasattr(builtins, "BaseExceptionGroup") else ()


class Finding(Exception):
    """A case broke the contract. Subclassed per kind of finding (see :func:`_finding`):
    hypothesis shrinks each kind separately, so a hang does not shrink into a crash."""


_KINDS = {}


def _finding(kind):
    if kind not in _KINDS:
        _KINDS[kind] = type("Finding_" + "".join(c if c.isalnum() else "_" for c in kind), (Finding,), {})
    return _KINDS[kind]


class Report:
    def __init__(self, fmt):
        self.fmt = fmt
        self.counts = collections.Counter()
        self.ran = 0
        self.seconds = 0.0
        self.findings = []  # (kind, detail, path)
        self.upstream = []  # hangs / crashes inside the HDF5 library: (kind, detail, path)

    @property
    def executions(self):
        return sum(self.counts.values())

    def __str__(self):
        kinds = ", ".join("%s %d" % kv for kv in sorted(self.counts.items()))
        return "%-12s %6d cases in %5.1f s (%s; models run %d)%s" % (
            self.fmt,
            self.executions,
            self.seconds,
            kinds,
            self.ran,
            "".join("\n  FINDING %s: %s" % (k, d.splitlines()[0] if d else "") for k, d, _ in self.findings)
            + "".join("\n  upstream (HDF5 library) %s: %s" % (k, p or "") for k, _, p in self.upstream),
        )


def _save(out_dir, fmt, kind, n, seed, data, detail):
    """Write a reproducer and its description; returns the path (None without out_dir)."""
    if not out_dir:
        return None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "%s-%s-%d-seed%d.bin" % (fmt, kind, n, seed))
    with open(path, "wb") as f:
        f.write(data)
    with open(path[:-4] + ".txt", "w") as f:
        f.write(detail)
    return path


def fuzz_format(
    fmt, worker, *, examples=100000, seconds=10.0, min_examples=0, seed=0, out_dir=None, report=None, hdf5_bytes=True
):
    """Fuzz one format; returns a :class:`Report` (its ``findings`` empty when all is well).

    Parameters
    ----------
    fmt : str
        One of :data:`fuzz.mutators.FORMATS`.
    worker : fuzz.runner.Worker
    examples, seconds : int, float
        Whichever limit comes first (shrinking a finding may take longer).
    min_examples : int
        Cases to run however long they take: on a slow or busy machine the time limit
        alone could leave a smoke run with a handful of cases.
    seed : int
        Hypothesis' seed: the same seed draws the same cases.
    out_dir : str, optional
        Where reproducers of findings go.
    hdf5_bytes : bool
        Include byte mutations of HDF5 data (see :func:`fuzz.mutators.case_strategy`).

    Hangs and crashes inside the HDF5 library (``*-in-hdf5``, see ``runner``) do not
    fail the property: they are counted, and the first five saved to
    ``out_dir`` unshrunk, as ``report.upstream``.
    """
    report = report or Report(fmt)
    t0 = time.monotonic()
    deadline = t0 + seconds
    start = report.executions

    def running():
        return time.monotonic() < deadline or report.executions - start < min_examples

    state = {"failing": False}  # once a case fails, the deadline no longer skips cases
    marker = os.path.join(worker._dir.name, MARKER)

    def check(case):
        if not state["failing"] and not running():
            return
        data = build_case(fmt, case)
        out = worker.run(data)
        report.counts[out.kind] += 1
        report.ran += out.ran
        if os.path.exists(marker):
            os.remove(marker)
            out.kind, out.detail = "code-execution", "the marker file was created: code from the file ran"
        if out.kind.endswith("-in-hdf5"):
            n = len(report.upstream)
            report.upstream.append(
                (out.kind, out.detail, _save(out_dir, fmt, out.kind, n, seed, data, out.detail) if n < 5 else None)
            )
            return
        if not out.ok:
            state["failing"] = True
            kind = out.kind
            if kind == "error":
                kind += "-" + out.detail.split(":")[0].split()[-1] if out.detail else ""
            exc = _finding(kind)("%s: %s" % (out.kind, out.detail))
            exc.kind, exc.detail, exc.data = out.kind, out.detail, data
            raise exc

    strategy = case_strategy(fmt, hdf5_bytes)
    # rounds of ROUND cases (hypothesis cannot stop at a deadline: the cases after it
    # are skipped, so a round may only run over by a few cheap draws)
    todo, rnd = examples, 0
    while todo > 0 and running():
        n = min(ROUND, todo)
        todo -= n
        run = settings(
            max_examples=n,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=True,
            phases=[Phase.generate, Phase.shrink],
            print_blob=False,
        )(given(strategy)(check))
        run = hypothesis_seed(seed * 100003 + rnd)(run)
        rnd += 1
        if not _run_round(run, fmt, seed, out_dir, report):
            break
    report.seconds += time.monotonic() - t0
    return report


#: Cases per hypothesis run inside :func:`fuzz_format`.
ROUND = 200


def _run_round(run, fmt, seed, out_dir, report):
    """One hypothesis run; findings go to ``report``. Returns False after a finding."""
    try:
        run()
        return True
    except (Finding, *_GROUPS) as e:
        found = list(e.exceptions) if isinstance(e, _GROUPS) else [e]
        for exc in found:
            if not isinstance(exc, Finding):
                raise e
            path = _save(out_dir, fmt, type(exc).__name__[8:], len(report.findings), seed, exc.data, exc.detail)
            report.findings.append((exc.kind, exc.detail, path))
        return False
