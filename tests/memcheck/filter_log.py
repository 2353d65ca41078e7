"""Read a valgrind memcheck log; report the errors that involve rnnfast's compiled core.

Python, numpy and the dynamic loader produce memcheck reports of their own (CPython's
object code reads uninitialised padding, glibc's ld.so over-reads strings): those are
counted and left out. An error counts as rnnfast's when any frame of its stack is in
the extension (``_kernels`` .so, ``_kernels.c``, the ``c/`` headers) before any frame of
the Python C API, walking out from the innermost frame: that covers errors inside
BLAS, libm or libgomp called from the kernels, and leaks of memory the kernels
allocate, and leaves out CPython's own reports made while it imports the extension.
Exits 1 if there is any, printing each.

Usage: python tests/memcheck/filter_log.py LOG [LOG ...]
"""

import re
import sys

OURS = re.compile(r"_kernels|_cellmath|rnnfast")
HEAD = re.compile(r"^==\d+==(.*)$")
PYAPI = re.compile(r"(_?Py|__Pyx_)\w*")


def blocks(lines):
    """The error and leak reports of a log, each a list of lines (without the ==pid==)."""
    block = []
    for line in lines:
        m = HEAD.match(line)
        text = m.group(1).strip() if m else None
        if text is None or text == "":
            if block:
                yield block
            block = []
            continue
        block.append(text)
    if block:
        yield block


def _ours(block):
    """Walk the stack from the innermost frame: rnnfast's if a frame of the extension
    comes before any frame of the Python C API (whose own reports, e.g. at import time,
    are CPython's even when the extension's module init is further out)."""
    for line in block:
        if not line.startswith(("at 0x", "by 0x")):
            continue
        func = line.split(": ", 1)[-1]
        if PYAPI.match(func):
            return False
        if OURS.search(func):
            return True
    return False


def main(paths):
    bad = 0
    for path in paths:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
        reports = [b for b in blocks(lines) if any(l.startswith(("at 0x", "by 0x")) for l in b)]
        ours = [b for b in reports if _ours(b)]
        summary = [l for l in lines if "ERROR SUMMARY" in l]
        print(
            "%s: %d reports (%s), %d involving rnnfast's compiled core"
            % (path, len(reports), summary[-1].split("== ")[-1] if summary else "no summary", len(ours))
        )
        for b in ours:
            print("\n".join("    " + l for l in b) + "\n")
        bad += len(ours)
        if not summary:
            print("%s: valgrind did not finish" % path)
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
