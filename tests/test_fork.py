"""Fork safety: a process forked after rnnfast ran on several threads runs its calls
correctly (bitwise the parent's results) and never hangs.

GNU OpenMP's thread pool does not survive fork: before rnnfast's fork hook, a child
forked after a 2-thread call hung for good on its first call. Every scenario runs in
a separate Python process with a timeout, and each forked child arms an alarm, so a
hang fails the test instead of hanging the suite.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")

#: The layers every scenario runs (rebuilt identically in spawned processes): the item
#: path (GRU, small), the blocked path (LSTM, unit blocks), the BLAS path (float64 GRU,
#: reset-before), bidirectional.
PRELUDE = '''
import os, signal, sys, threading, time
import numpy as np
import rnnfast
from rnnfast import _threads
from rnnfast.layers import CellWeights, RNNLayer


def _weights(rng, cell, I, H):
    G = {"gru": 3, "lstm": 4, "simple": 1}[cell]
    s = 1 / np.sqrt(H)
    return CellWeights(rng.uniform(-s, s, (I, G * H)), rng.uniform(-s, s, (H, G * H)),
                       rng.uniform(-s, s, G * H), rng.uniform(-s, s, G * H))


def make_layers():
    rng = np.random.default_rng(7)
    return [RNNLayer("gru", [_weights(rng, "gru", 8, 16)]),
            RNNLayer("lstm", [_weights(rng, "lstm", 8, 192) for _ in range(2)]),
            RNNLayer("gru", [_weights(rng, "gru", 8, 24)], reset_after=False, dtype=np.float64),
            RNNLayer("simple", [_weights(rng, "simple", 8, 128) for _ in range(2)])]


LAYERS = make_layers()
X = np.random.default_rng(8).standard_normal((60, 5, 8))
assert LAYERS[1]._ncb > 1 and LAYERS[3]._ncb > 1          # the blocked path is among them


def run(num_threads):
    """Every layer's outputs and final states, in one list."""
    out = []
    for layer in LAYERS:
        y, h, c = layer.forward(X, num_threads=num_threads)
        out += [y, h] + ([c] if c is not None else [])
    return out


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


WANT = run(1)


def fork_and_check(child, timeout=60):
    """Fork; the child runs child() (True: pass) under an alarm; returns its exit code
    (0: pass, 1: wrong result or error, -14: hung until the alarm)."""
    pid = os.fork()
    if pid == 0:
        signal.alarm(timeout)
        try:
            ok = child()
        except BaseException:
            import traceback
            traceback.print_exc()
            ok = False
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
'''


def _run_script(tmp_path, body, timeout=240):
    path = tmp_path / "scenario.py"
    path.write_text(PRELUDE + textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    try:
        r = subprocess.run(
            [sys.executable, str(path)], capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tmp_path)
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail("the scenario hung (%ss): %s" % (timeout, (e.stderr or b"")[-3000:]))
    assert r.returncode == 0, "exit %d\n%s\n%s" % (r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    return r.stdout


def test_os_fork_after_parallel_calls(tmp_path):
    out = _run_script(
        tmp_path,
        """
        assert same(run(2), WANT)                      # the parent's pool exists now

        def child():
            # a fresh team: parallel, and the parent's results bit for bit
            assert _threads.resolve_num_threads(2) == 2
            return same(run(2), WANT) and same(run(None), WANT) and same(run(1), WANT)

        for _ in range(3):
            assert fork_and_check(child) == 0
            assert same(run(2), WANT)                  # the parent rebuilt its pool

        def grandchild():                              # forked from a child that ran in parallel
            return same(run(2), WANT) and fork_and_check(lambda: same(run(2), WANT)) == 0

        assert fork_and_check(grandchild) == 0
        print("ok")
    """,
    )
    assert out.strip() == "ok"


def test_multiprocessing_pools_each_start_method(tmp_path):
    out = _run_script(
        tmp_path,
        """
        import multiprocessing as mp


        def task(k):
            return run(2 if k % 2 else None)


        if __name__ == "__main__":
            assert same(run(2), WANT)
            for method in ("fork", "forkserver", "spawn"):
                ctx = mp.get_context(method)
                with ctx.Pool(2) as pool:
                    results = pool.map_async(task, range(4)).get(timeout=120)
                assert all(same(r, WANT) for r in results), method
                proc = ctx.Process(target=task, args=(1,))
                proc.start()
                proc.join(120)
                assert proc.exitcode == 0, (method, proc.exitcode)
                assert same(run(2), WANT)
            print("ok")
    """,
        timeout=400,
    )
    assert out.strip() == "ok"


def test_fork_while_other_threads_compute(tmp_path):
    """Forks from the main thread while two other threads run parallel calls (their
    own pools), and from a thread that is not the main one."""
    out = _run_script(
        tmp_path,
        """
        stop = threading.Event()
        errors = []

        def busy():
            while not stop.is_set():
                if not same(run(2), WANT):
                    errors.append("wrong result in the parent")

        workers = [threading.Thread(target=busy) for _ in range(2)]
        for w in workers:
            w.start()
        for _ in range(4):
            assert fork_and_check(lambda: same(run(2), WANT) and same(run(None), WANT)) == 0
        codes = []
        t = threading.Thread(target=lambda: (run(2), codes.append(fork_and_check(lambda: same(run(2), WANT)))))
        t.start()
        t.join()
        stop.set()
        for w in workers:
            w.join()
        assert codes == [0] and not errors, (codes, errors)
        print("ok")
    """,
    )
    assert out.strip() == "ok"


def test_fork_while_another_thread_holds_rnnfasts_lock(tmp_path):
    out = _run_script(
        tmp_path,
        """
        held, release = threading.Event(), threading.Event()

        def hold():
            with _threads._lock:
                held.set()
                release.wait()

        t = threading.Thread(target=hold)
        t.start()
        held.wait()
        code = fork_and_check(lambda: same(run(2), WANT), timeout=30)    # the float64 layer takes the lock
        release.set()
        t.join()
        assert code == 0, code
        print("ok")
    """,
    )
    assert out.strip() == "ok"


def test_serial_fallback_where_the_pool_cannot_be_released(tmp_path):
    """An OpenMP runtime without omp_pause_resource_all (GCC < 9): the child's forking
    thread runs on one thread (same bits); threads the child starts run in parallel."""
    out = _run_script(
        tmp_path,
        """
        assert same(run(2), WANT)
        PAUSE, _threads._openmp.pause = _threads._openmp.pause, None     # as if the runtime had none

        def child():
            assert _threads.resolve_num_threads(2) == 1 and _threads.resolve_num_threads(None) == 1
            assert rnnfast.get_num_threads() >= 1
            ok = same(run(2), WANT)
            res = []
            t = threading.Thread(target=lambda: res.append((_threads.resolve_num_threads(2), same(run(2), WANT))))
            t.start()
            t.join()
            # a grandchild forked from the serial thread: serial too, and its fork never
            # touches the dead pool
            return ok and res == [(2, True)] and fork_and_check(
                lambda: _threads.resolve_num_threads(2) == 1 and same(run(2), WANT)) == 0

        assert fork_and_check(child) == 0
        _threads._openmp.pause = PAUSE                 # the runtime can again: a fresh team
        assert fork_and_check(lambda: _threads.resolve_num_threads(2) == 2 and same(run(2), WANT)) == 0
        print("ok")
    """,
    )
    assert out.strip() == "ok"


def test_the_openmp_runtime_is_recognised():
    """The fork hook acts on GNU OpenMP (libgomp) and needs its OpenMP 5.0 pause entry
    point (GCC >= 9); other runtimes and serial builds are left alone."""
    from rnnfast import _kernels, _threads

    if not os.path.exists("/proc/self/maps"):
        pytest.skip("no /proc to see which runtime is loaded")
    with open("/proc/self/maps") as f:
        maps = f.read()
    if not _kernels.openmp_enabled():
        assert not _threads._openmp.gnu and _threads._openmp.pause is None
    elif "libgomp" in maps and "libomp" not in maps and "libiomp" not in maps:
        assert _threads._openmp.gnu
        assert _threads._openmp.pause is not None, "libgomp without omp_pause_resource_all (GCC < 9)"
    else:
        pytest.skip("another OpenMP runtime (it handles fork itself)")
