"""Run cases in a worker process that may crash, hang or run out of memory.

:class:`Worker` keeps one ``worker.py`` process alive and sends it one file per case.
A case's result is an :class:`Outcome`; ``Outcome.ok`` is the contract: the file
loaded (and the model ran), or the load raised ``FormatError`` /
``UnsupportedLayerError``. Anything else is a finding:

- ``error``: another exception type (with its traceback), ``MemoryError`` included
  (the worker runs under ``RLIMIT_AS``, so an outsized allocation fails there);
- ``crash``: the worker died (a signal such as SIGSEGV; faulthandler's traceback is
  in ``detail``);
- ``hang``: no answer within ``timeout`` seconds (the worker is killed);
- ``outside-read``: a file in the worker's ``outside/`` folder (a secret, an HDF5
  donor, which mutations name in external storage, links and virtual datasets) was
  opened or read during the case: the loader took bytes from outside the file it was
  given (seen through Linux inotify; elsewhere not checked).

A hang or crash whose innermost Python frame is in h5py is labelled
``hang-in-hdf5`` / ``crash-in-hdf5``: a bug of the HDF5 library that a damaged file
triggers, which rnnfast cannot catch (see README.md, "Known upstream bugs").

After a crash or a hang the worker is restarted for the next case.
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
#: The address-space cap, above the worker's own baseline (Python, numpy, h5py, the
#: OpenMP and BLAS runtimes and their thread stacks; measured at start-up).
EXTRA_AS_MB = 768
ACCEPTED = ("loaded", "FormatError", "UnsupportedLayerError")


def _innermost_in_h5py(trace):
    """Whether faulthandler's dump has h5py's code as the innermost Python frame (the
    hang or crash is then inside the HDF5 library, not rnnfast)."""
    lines = trace.splitlines()
    for i, line in enumerate(lines):
        if "most recent call first" in line:
            frames = [l for l in lines[i + 1 : i + 3] if l.strip().startswith("File ")]
            return bool(frames) and "/h5py/" in frames[0]
    return False


class _Watch:
    """Linux inotify on a folder: were any of its files opened or read since the last
    :meth:`events` call? (None where inotify is missing.)"""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, folder):
        import ctypes
        import ctypes.util

        self.fd = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return
            if libc.inotify_add_watch(fd, os.fsencode(folder), self.IN_ACCESS | self.IN_OPEN) < 0:
                os.close(fd)
                return
            self.fd = fd
        except (OSError, AttributeError):
            pass

    def events(self):
        """Names of the files opened or read since the last call."""
        import struct

        names = set()
        while self.fd is not None:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            pos = 0
            while pos + 16 <= len(buf):
                _wd, _mask, _cookie, n = struct.unpack_from("iIII", buf, pos)
                names.add(buf[pos + 16 : pos + 16 + n].rstrip(b"\0").decode("utf-8", "replace"))
                pos += 16 + n
        return names

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _outside_files(folder):
    """The files of the worker's ``outside/`` folder (see mutators.OUTSIDE_FILES): a
    secret and an HDF5 file with the seeds' paths."""
    import shutil

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "secret.bin"), "wb") as f:
        f.write(b"\x00\x00\x80\x3f" * 65536)
    shutil.copyfile(os.path.join(HERE, "corpus", "keras3h5-gru.h5"), os.path.join(folder, "donor.h5"))


class Outcome:
    __slots__ = ("kind", "detail", "seconds", "ran")

    def __init__(self, kind, detail="", seconds=0.0, ran=False):
        self.kind, self.detail, self.seconds, self.ran = kind, detail, seconds, ran

    @property
    def ok(self):
        return self.kind in ACCEPTED

    def __repr__(self):
        return "Outcome(%s%s)" % (self.kind, ", %s" % self.detail[:2000] if self.detail and not self.ok else "")


def _baseline_as_mb():
    """Address space of a worker after start-up, measured once per fuzzing process."""
    probe = (
        "import os, numpy, h5py, rnnfast, rnnfast.io.keras_file, rnnfast.io.torch_file, rnnfast.io.onnx;"
        "rnnfast.set_num_threads(1);"
        "print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1])"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) // 1024


class Worker:
    """One loader process. Use as a context manager; :meth:`run` one case at a time.

    Parameters
    ----------
    timeout : float
        Seconds a case may take before it counts as a hang.
    extra_as_mb : int
        Address space allowed beyond the worker's start-up baseline.
    """

    _baseline = None

    def __init__(self, timeout=20.0, extra_as_mb=EXTRA_AS_MB):
        self.timeout = timeout
        if Worker._baseline is None:
            Worker._baseline = _baseline_as_mb()
        self.as_mb = Worker._baseline + extra_as_mb
        self._dir = tempfile.TemporaryDirectory(prefix="rnnfast-fuzz-")
        _outside_files(os.path.join(self._dir.name, "outside"))
        self._watch = _Watch(os.path.join(self._dir.name, "outside"))
        self._watch.events()
        self._proc = None
        self._err = None
        self._buf = b""
        self.restarts = 0
        self.cases = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _start(self):
        self._err = open(os.path.join(self._dir.name, "stderr.txt"), "w+b")
        env = dict(
            os.environ,
            RNNFAST_FUZZ_AS_MB=str(self.as_mb),
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            PYTHONFAULTHANDLER="1",
        )
        self._proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=env,
            cwd=self._dir.name,
        )
        self._buf = b""
        first = self._readline(120.0)
        if first is None or "ready" not in json.loads(first):
            raise RuntimeError("fuzz worker did not start: %s" % self._stderr())

    def _readline(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None  # the worker died
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def _stderr(self):
        if self._err is None:
            return ""
        self._err.flush()
        self._err.seek(0)
        return self._err.read()[-4000:].decode("utf-8", "replace")

    def _stop(self):
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for f in (self._proc.stdin, self._proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self._proc = None
        if self._err is not None:
            self._err.close()
            self._err = None

    def run(self, data):
        """Load ``data`` (the bytes of a file) in the worker; return an :class:`Outcome`."""
        if self._proc is None or self._proc.poll() is not None:
            self._stop()
            self._start()
        self.cases += 1
        path = os.path.join(self._dir.name, "case.bin")
        with open(path, "wb") as f:
            f.write(data)
        t0 = time.monotonic()
        try:
            self._proc.stdin.write(path.encode() + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._readline(self.timeout)
        if line is None:
            alive = self._proc.poll() is None
            if alive:
                self._proc.send_signal(signal.SIGABRT)  # faulthandler prints where it hangs
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            code = self._proc.poll()
            if alive and code is not None and code < 0 and code != -signal.SIGABRT:
                alive = False  # it was dying of its own signal when the time ran out
            detail = self._stderr()
            self._stop()
            self.restarts += 1
            where = "-in-hdf5" if _innermost_in_h5py(detail) else ""
            if alive:
                return Outcome(
                    "hang" + where, "no answer in %.0f s\n%s" % (self.timeout, detail), time.monotonic() - t0
                )
            name = signal.Signals(-code).name if code is not None and code < 0 else "exit %s" % code
            return Outcome("crash" + where, "worker died (%s)\n%s" % (name, detail), time.monotonic() - t0)
        res = json.loads(line)
        opened = self._watch.events()
        if opened:
            return Outcome(
                "outside-read",
                "the loader opened %s, named by the file (%s: %s)"
                % (", ".join("outside/" + n for n in sorted(opened)), res["outcome"], res.get("error", "")[:300]),
                res["seconds"],
                res.get("ran", False),
            )
        detail = res.get("error", "")
        if res.get("traceback"):
            detail += "\n" + res["traceback"]
        if res.get("stage") == "run":
            detail = "while running the loaded model: " + detail
        return Outcome(res["outcome"], detail, res["seconds"], res.get("ran", False))

    def close(self):
        self._stop()
        self._watch.close()
        self._dir.cleanup()
