"""Threads: settings, BLAS held to one thread, concurrency from Python threads."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import rnnfast
from rnnfast import _kernels
from rnnfast._threads import blas_single_threaded, resolve_num_threads
from rnnfast.layers import RNNLayer

from _testing import random_weights


def test_default_is_available_cores(monkeypatch):
    """Without OMP_NUM_THREADS nor a cgroup quota, the cores of the affinity mask (the
    rest of the policy: test_threads_host.py)."""
    import os

    from rnnfast import _threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(_threads, "cgroup_cpu_limit", lambda: None)
    monkeypatch.setattr(_threads, "_host", {})
    rnnfast.set_num_threads(None)
    assert rnnfast.get_num_threads() == len(os.sched_getaffinity(0))


def test_set_and_get_num_threads():
    try:
        rnnfast.set_num_threads(3)
        assert rnnfast.get_num_threads() == 3
        assert resolve_num_threads(None) == 3
        assert resolve_num_threads(5) == 5
        rnnfast.set_num_threads(-1)  # all cores
        assert rnnfast.get_num_threads() == resolve_num_threads(None) >= 1
        with pytest.raises(TypeError):
            rnnfast.set_num_threads(2.5)
        with pytest.raises(TypeError):
            rnnfast.set_num_threads(True)
    finally:
        rnnfast.set_num_threads(None)


def test_openmp_is_built():
    assert _kernels.openmp_enabled(), "the compiled core was built without OpenMP"


def _blas_threads():
    """{library file: threads} of every BLAS loaded."""
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_the_blas_rnnfast_calls_is_held_to_one_thread_and_numpys_is_not(rng):
    from threadpoolctl import threadpool_limits

    from rnnfast._threads import _blas_controllers

    ours = {c.filepath for c in _blas_controllers()}
    others = set(_blas_threads()) - ours
    assert ours, "threadpoolctl does not see the BLAS the core calls"
    # float64: its input projection is a BLAS call (float32 runs on packed weights on
    # AVX-512 machines and may not call BLAS at all)
    layer = RNNLayer("gru", [random_weights(rng, "gru", 8, 16)], dtype=np.float64)
    with threadpool_limits(limits=2, user_api="blas"):
        layer.forward(rng.standard_normal((20, 3, 8)), num_threads=1)
        after = _blas_threads()
        assert all(after[f] == 1 for f in ours)  # held, and kept, at one thread
        assert all(after[f] == 2 for f in others)  # NumPy's BLAS untouched
        with blas_single_threaded():
            assert all(_blas_threads()[f] == 1 for f in ours)


def test_concurrent_calls_keep_blas_single_threaded(rng):
    from rnnfast._threads import _blas_controllers

    layer = RNNLayer("gru", [random_weights(rng, "gru", 8, 16)], dtype=np.float64)
    x = rng.standard_normal((200, 4, 8))
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda _: layer.forward(x, num_threads=1), range(16)))
    assert all(c.get_num_threads() == 1 for c in _blas_controllers())


@pytest.mark.parametrize("cell", ["gru", "lstm", "simple"])
def test_eight_python_threads_equal_serial(cell, rng):
    """One layer called from 8 Python threads at once gives the serial results, bitwise."""
    layer = RNNLayer(cell, [random_weights(rng, cell, 6, 10) for _ in range(2)])
    inputs = [rng.standard_normal((40, 1 + i, 6)).astype(np.float32) for i in range(24)]
    serial = [layer.forward(x, num_threads=1) for x in inputs]
    with ThreadPoolExecutor(8) as ex:
        concurrent = list(ex.map(lambda x: layer.forward(x, num_threads=2), inputs))
    for s, c in zip(serial, concurrent):
        for a, b in zip(s, c):
            if a is not None:
                assert np.array_equal(a, b)


def test_per_call_num_threads_validated(rng):
    layer = RNNLayer("gru", [random_weights(rng, "gru", 3, 4)])
    with pytest.raises(TypeError):
        layer.forward(np.zeros((2, 2, 3)), num_threads="two")


def test_openmp_policy_set_only_while_loading():
    """rnnfast asks OpenMP's idle threads to sleep (OMP_WAIT_POLICY=PASSIVE while the
    runtime loads) unless the user chose a policy, and leaves the environment as it was."""
    import os
    import subprocess
    import sys

    code = "import os, rnnfast; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stdout + r.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ACTIVE", r.stdout + r.stderr


def test_openmp_spins_where_the_runtime_was_loaded_first_with_its_default(tmp_path):
    """Whether rnnfast takes the OpenMP runtime's idle threads to spin: an active policy
    chosen; or GNU's runtime loaded before rnnfast (``import torch`` first: PyTorch
    bundles it) with no policy and no spin count chosen (its default spins)."""
    from rnnfast._threads import openmp_spins_here

    with_gomp, without = tmp_path / "with", tmp_path / "without"
    with_gomp.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0\n")
    without.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert openmp_spins_here({}, str(with_gomp))
    assert not openmp_spins_here({}, str(without))
    assert not openmp_spins_here({}, str(tmp_path / "absent"))  # (not Linux)
    assert openmp_spins_here({"OMP_WAIT_POLICY": "Active"}, str(without))
    assert not openmp_spins_here({"OMP_WAIT_POLICY": "passive"}, str(with_gomp))
    assert not openmp_spins_here({"GOMP_SPINCOUNT": "10000"}, str(with_gomp))


def test_a_kept_team_beside_a_spinning_pool_runs_on_the_pool_with_the_same_bits(rng):
    """``import torch`` before rnnfast: the OpenMP runtime (PyTorch's, loaded first with
    its default policy) spins, the core is told so, and a layer whose plan keeps its
    team of two runs on the OpenMP team, not with the partner thread: the bits of the
    partner's run and of one thread."""
    import os
    import subprocess
    import sys

    code = (
        "import torch, numpy as np, rnnfast\n"
        "from rnnfast import _kernels, _plan\n"
        "from rnnfast.layers import RNNLayer, CellWeights\n"
        "r = np.random.default_rng(0)\n"
        "shapes = ((64, 3072), (768, 3072), (3072,))\n"
        "w = CellWeights(*(r.standard_normal(s).astype(np.float32) * 0.1 for s in shapes))\n"
        "layer = RNNLayer('lstm', [w])\n"
        "x = r.standard_normal((20, 2, 64)).astype(np.float32)\n"
        "assert layer._plan_for(2, 20, 2).keep_team\n"
        "outs = [layer.forward(x, num_threads=n)[0] for n in (2, 1)]\n"
        "_kernels.openmp_spins(False)\n"
        "outs.append(layer.forward(x, num_threads=2)[0])\n"
        "print(_kernels.openmp_spins() or 'spun', all(np.array_equal(outs[0], o) for o in outs))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["spun", "True"], r.stdout + r.stderr


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_step_barrier_many_steps_and_teams(threads, rng):
    """The blocked path's own barrier over many steps and team sizes (more threads than
    cores too): same bits as one thread."""
    layer = RNNLayer("lstm", [random_weights(rng, "lstm", 8, 192) for _ in range(2)])
    assert layer._ncb > 1
    x = rng.standard_normal((400, 5, 8)).astype(np.float32)
    base = layer.forward(x, num_threads=1)
    got = layer.forward(x, num_threads=threads)
    for a, b in zip(base, got):
        assert np.array_equal(a, b)
