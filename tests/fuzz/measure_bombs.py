"""Time and peak memory of loading each hostile file class (issue 12, item 3).

Usage (from the repository root)::

    KERAS_BACKEND=torch .venv/bin/python tests/fuzz/measure_bombs.py [--timeout 60] [--as-gb 4] [--only NAME,...]

Each file is written to a temporary folder and loaded by ``rnnfast.load`` in its own
process, under an address-space limit (``RLIMIT_AS``: the interpreter's size after
its imports plus ``--as-gb``) and a wall-clock timeout. Prints one row per file: its
size, the outcome (loaded / the exception type / killed after the timeout / the
signal that ended it), the time, and the peak RSS growth over the process's RSS after
its imports (``VmHWM`` from /proc, sampled by the parent while the child runs, so a
killed load reports what it had reached). The target: at most max(100 MB, 100 x the
file) and 5 s.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import json, os, resource, sys, time
import numpy, h5py, rnnfast, rnnfast.io.keras_file, rnnfast.io.torch_file
rnnfast.set_num_threads(1)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

base = status("VmHWM")
extra = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (status("VmPeak") + extra, status("VmPeak") + extra))
print(json.dumps({"base": base}), flush=True)
t0 = time.perf_counter()
c0 = time.process_time()
try:
    rnnfast.load(sys.argv[1])
    out = "loaded"
except (rnnfast.FormatError, rnnfast.UnsupportedLayerError) as e:
    out = "%s: %s" % (type(e).__name__, str(e).encode("ascii", "backslashreplace").decode()[:150])
except BaseException as e:
    out = "%s: %s" % (type(e).__name__, str(e)[:100])
dt = time.perf_counter() - t0
cpu = time.process_time() - c0
print(json.dumps({"outcome": out, "seconds": dt, "cpu": cpu, "peak": status("VmHWM") - base}), flush=True)
"""


BATCH_CHILD = r"""
import gc, json, os, resource, sys, time
import numpy, h5py, rnnfast, rnnfast.io.keras_file, rnnfast.io.torch_file
rnnfast.set_num_threads(1)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

extra = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (status("VmPeak") + extra, status("VmPeak") + extra))
for path in sys.argv[2:]:
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                      # peak RSS := current RSS
    base = status("VmHWM")
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        rnnfast.load(path)
        out = "loaded"
    except (rnnfast.FormatError, rnnfast.UnsupportedLayerError) as e:
        out = "%s: %s" % (type(e).__name__, str(e).encode("ascii", "backslashreplace").decode()[:150])
    except BaseException as e:
        out = "%s: %s" % (type(e).__name__, str(e)[:100])
    print(json.dumps({"path": path, "outcome": out, "seconds": time.perf_counter() - t0,
                      "cpu": time.process_time() - c0, "peak": status("VmHWM") - base}), flush=True)
"""


def measure_many(paths, timeout=300.0, as_bytes=2 << 30, cwd=None):
    """Load each of ``paths`` in turn in one fresh process (the peak RSS reset between
    them through /proc/self/clear_refs); returns {path: result} as :func:`measure`. A
    crash or the timeout ends the batch (the rest are reported as such)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", KERAS_BACKEND="torch")
    try:
        out = subprocess.run([sys.executable, "-c", BATCH_CHILD, str(as_bytes)] + list(paths), capture_output=True,
                             text=True, env=env, cwd=cwd, timeout=timeout)
        ended = "exit %d: %s" % (out.returncode, out.stderr[-500:])
        stdout = out.stdout
    except subprocess.TimeoutExpired as e:
        ended = "killed after %.0f s (no answer)" % timeout
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    results = {}
    for line in stdout.splitlines():
        try:
            res = json.loads(line)
        except ValueError:
            continue
        results[res.pop("path")] = res
    for p in paths:
        results.setdefault(p, {"outcome": ended, "seconds": 0.0, "cpu": 0.0, "peak": 0})
    return results


def _hwm(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def measure(path, timeout=60.0, as_bytes=4 << 30, cwd=None):
    """Load ``path`` in a fresh process; returns a dict: outcome, seconds (wall), cpu
    (the child's CPU time for the load), peak (bytes of RSS growth)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", KERAS_BACKEND="torch")
    with subprocess.Popen([sys.executable, "-c", CHILD, path, str(as_bytes)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, cwd=cwd, text=True) as proc:
        return _measure(proc, timeout)


def _measure(proc, timeout):
    first = proc.stdout.readline()
    try:
        base = json.loads(first)["base"]
    except ValueError:
        proc.wait()
        return {"outcome": "child failed: " + proc.stderr.read()[-300:], "seconds": 0, "peak": 0}
    t0 = time.monotonic()
    peak = 0
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        h = _hwm(proc.pid)
        if h is not None:
            peak = max(peak, h - base)
        time.sleep(0.02)
    if proc.poll() is None:
        h = _hwm(proc.pid)
        if h is not None:
            peak = max(peak, h - base)
        proc.kill()
        proc.wait()
        return {"outcome": "killed after %.0f s (no answer)" % timeout, "seconds": time.monotonic() - t0,
                "peak": peak}
    rest = proc.stdout.read()
    err = proc.stderr.read()
    if proc.returncode < 0:
        return {"outcome": "died of %s" % signal.Signals(-proc.returncode).name, "seconds": time.monotonic() - t0,
                "peak": peak, "stderr": err[-500:]}
    try:
        res = json.loads(rest.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"outcome": "exit %d: %s" % (proc.returncode, err[-300:]), "seconds": time.monotonic() - t0,
                "peak": peak}
    res["peak"] = max(res["peak"], peak)
    return res


def cases(tmp):
    """(name, path) of every hostile file, written to ``tmp``."""
    from fuzz import hostile as H

    out = []

    def put(name, data):
        p = os.path.join(tmp, name)
        with open(p, "wb") as f:
            f.write(data)
        out.append((name, p))

    secret = os.path.join(tmp, "secret.bin")
    with open(secret, "wb") as f:
        f.write(b"\x00\x00\x80\x3f" * 4096)               # 1.0f: visible in the outputs
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    H.donor_for("keras3h5", os.path.join(tmp, "donor.h5"))
    H.donor_for("keras", os.path.join(tmp, "donor-image.h5"))
    # 1. bytes from outside the file
    put("h5-external-secret.h5", H.h5_outside("keras3h5", "external", secret))
    put("h5-external-relative.h5", H.h5_outside("keras3h5", "external", "secret.bin"))
    put("h5-external-devzero.h5", H.devzero_keras_h5(4000))
    put("h5-external-fifo.h5", H.h5_outside("keras3h5", "external", fifo))
    put("h5-elink-dataset.h5", H.h5_outside("keras3h5", "elink-dataset", os.path.join(tmp, "donor.h5")))
    put("h5-elink-group.h5", H.h5_outside("keras3h5", "elink-group", os.path.join(tmp, "donor.h5")))
    put("h5-vds.h5", H.h5_outside("keras3h5", "vds", os.path.join(tmp, "donor.h5")))
    put("keras-external-secret.keras", H.h5_outside("keras", "external", secret))
    put("keras-external-fifo.keras", H.h5_outside("keras", "external", fifo))
    put("keras-elink-group.keras", H.h5_outside("keras", "elink-group", os.path.join(tmp, "donor-image.h5")))
    put("keras-vds.keras", H.h5_outside("keras", "vds", os.path.join(tmp, "donor-image.h5")))
    # 2. depth
    for kind in ("tuple", "key", "set"):
        for depth in (300000, 5000):
            put("pt-%s-%d-deep.pt" % (kind, depth),
                H.torch_zip_with_pickle(H.nested_pickle(depth, kind), compress=False))
    put("pt-list-late-20000-deep.pt", H.torch_zip_with_pickle(H.late_nesting_pickle(20000), compress=False))
    put("keras-json-900-deep.keras", H.deep_json_config(900))
    # 3. counts
    put("pt-layer-index-1e9.pt", H.huge_layer_index_pt())
    put("pt-layer-index-999999.pt", H.huge_layer_index_pt(999999))
    put("pt-1e6-empty-lists.pt", H.torch_zip_with_pickle(H.many_lists_pickle(10 ** 6)))
    put("pt-27e6-empty-lists.pt", H.torch_zip_with_pickle(H.many_lists_pickle(27 * 10 ** 6, maxrun=450)))
    put("h5-gcol-1MB.h5", H.gcol_into(H.read(H.seed_path("keras3h5")), 1 << 20))
    put("keras-gcol-1MB-deflated.keras", H.keras_gcol_deflated((1 << 20) - (64 << 10)))
    put("keras-1500-renamed-layers.keras", H.keras_renamed_layers(1500))
    put("keras-100000-dropout.keras", H.keras_many_layers(100000, weights=False))
    put("keras-20000-dropout-groups.keras", H.keras_many_layers(20000))
    put("keras-deflated-2000-units.keras", H.keras_deflated_big(2000))
    put("keras-deflated-9x-2000-units.keras", H.keras_deflated_big(2000, density=0.1))
    put("h5-gzip-90x-2000-units.h5", H.h5_gzip_big(2000))
    put("h5-gzip-9x-2000-units.h5", H.h5_gzip_big(2000, density=0.1))
    put("keras-9000-dropout.keras", H.keras_many_layers(9000, weights=False))
    put("pt-deflated-2000-units.pt", H.torch_deflated_big(2000))
    put("pt-deflated-8x-2000-units.pt", H.torch_deflated_big(2000, density=0.1))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--as-gb", type=float, default=4.0)
    p.add_argument("--only", default="")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    rows = []
    with tempfile.TemporaryDirectory(prefix="rnnfast-bombs-") as tmp:
        for name, path in cases(tmp):
            if only and not any(o in name for o in only):
                continue
            size = os.path.getsize(path)
            res = measure(path, args.timeout, int(args.as_gb * (1 << 30)), cwd=tmp)
            limit = max(100 << 20, 100 * size)
            ok = min(res["seconds"], res.get("cpu", res["seconds"])) <= 5 and res["peak"] <= limit and not res["outcome"].startswith(
                ("killed", "died", "exit", "MemoryError", "RecursionError"))
            row = dict(name=name, size=size, **res)
            rows.append(row)
            print("%-34s %9d B  %-4s %7.2f s (cpu %6.2f s) %8.1f MB  %s"
                  % (name, size, "ok" if ok else "OVER", res["seconds"], res.get("cpu", float("nan")),
                     res["peak"] / 2 ** 20, res["outcome"][:100]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
