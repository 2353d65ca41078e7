"""A one-step call (T = 1) of a blocked layer on the products' partner thread.

A decoder step at B = 1 is too small for an OpenMP team (its partner sleeps between
calls), so its plan gives it one thread; on 2 threads or more its unit blocks' tasks
(projection, then step) run on the caller and the polling partner thread of
c/rowops.team.h instead (``_plan.uses_partner``, ``c/engine.template.h``
``one_step_task``). Which thread runs a task changes nothing: the bits are a team of
one's, with the partner polling, asleep, or not handed over at all; against the float64
reference.
"""

import numpy as np
import pytest

from rnnfast import _kernels, _plan, _rowops
from rnnfast import reference as ref
from rnnfast.layers import RNNLayer

from _testing import assert_close, random_weights

# (cell, reset_after): the cells the blocked strategy runs
CELLS = [("gru", True), ("lstm", True), ("simple", True)]


@pytest.fixture
def partner_polls():
    """The partner's poll as the test sets it, restored after; and the engine's partner
    handed over again (a test may take it away)."""
    old = _rowops.partner_spin_us()
    handed = _kernels._use_partner(None)
    _kernels._use_partner(handed)
    yield
    _rowops.partner_spin_us(old)
    _kernels._use_partner(handed)


def bits(a):
    return None if a is None else a.view(np.uint8).tobytes()


def layer_of(rng, cell, reset_after, I, H, ndir, dtype, precision="float32"):
    ws = [random_weights(rng, cell, I, H, scale=1.5) for _ in range(ndir)]
    layer = RNNLayer(cell, ws, reset_after=reset_after, dtype=dtype, precision=precision)
    return layer, ws


def test_the_plan_shares_a_lone_step_with_the_partner():
    """Only a one-step call of the blocked strategy that its work leaves on one thread,
    with 2 threads or more allowed and enough work, is planned on the partner."""
    kw = dict(D=1, Ho=256, GH=768, ncb=4)
    assert _plan.plan(B=1, num_threads=2, T=1, **kw).partner
    assert _plan.plan(B=1, num_threads=2, T=1, **kw).num_threads == 1
    assert _plan.plan(B=1, num_threads=3, T=1, **kw).partner
    assert not _plan.plan(B=1, num_threads=1, T=1, **kw).partner  # one thread asked for
    assert not _plan.plan(B=1, num_threads=2, T=2, **kw).partner  # steps: a barrier each
    assert not _plan.plan(B=1, num_threads=2, **kw).partner  # T unknown
    assert not _plan.plan(B=64, num_threads=2, T=1, **kw).partner  # an OpenMP team's work
    assert _plan.plan(B=64, num_threads=2, T=1, **kw).num_threads == 2
    assert not _plan.plan(B=1, num_threads=2, T=1, D=1, Ho=256, GH=768, ncb=1).partner  # item strategy
    small = dict(D=1, Ho=64, GH=192, ncb=2)  # 2 * 64 * 192 flops: under MIN_PARTNER_STEP_FLOPS
    assert not _plan.plan(B=1, num_threads=2, T=1, **small).partner


def test_a_layer_plans_its_step_on_the_partner_per_call():
    """RNNLayer's kept plan of a one-step call follows the call's thread count (it has
    no plan for every count: 1 thread, no partner; 2, the partner)."""
    layer, _ = layer_of(np.random.default_rng(0), "gru", True, 256, 256, 1, np.float32)
    assert not layer._plan_for(1, 1, 1).partner
    assert layer._plan_for(1, 1, 2).partner
    assert not layer._plan_for(1, 1, 1).partner
    assert not layer._plan_for(1, 5, 2).partner


@pytest.mark.parametrize("cell,reset_after", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ndir", [1, 2])
@pytest.mark.parametrize("H", [256, 200])
def test_one_step_on_the_partner_gives_one_threads_bits(rng, partner_polls, cell, reset_after, dtype, ndir, H):
    """A one-step call at B = 1 and 3 (odd H: uneven unit blocks; two directions: twice
    the tasks) on 1 to 3 threads, the partner polling and asleep (its tasks then on the
    caller or late to it) and taken away: the bits of one thread, and the float64
    reference's values."""
    I = 96
    if cell == "simple":  # one gate: twice the units for the partner's share of work
        H *= 2
    layer, ws = layer_of(rng, cell, reset_after, I, H, ndir, dtype)
    for B in (1, 3):
        x = rng.standard_normal((1, B, I)).astype(dtype)
        h0 = rng.standard_normal((ndir, B, H)).astype(dtype)
        c0 = rng.standard_normal((ndir, B, H)).astype(dtype) if cell == "lstm" else None
        assert layer._plan_for(B, 1, 2).partner
        want = layer.forward(x, h0, c0, num_threads=1)
        r_out, r_h, r_c = ref.run_layer(cell, ws, x, h0, c0, reset_after=reset_after)
        assert_close(want[0], r_out, dtype, "out")
        assert_close(want[1], r_h, dtype, "h")
        for spin in (500, 0):
            _rowops.partner_spin_us(spin)
            for n in (2, 3, 2, 2, 1, 2):
                got = layer.forward(x, h0, c0, num_threads=n)
                for g, w, what in zip(got, want, ("out", "h", "c")):
                    assert bits(g) == bits(w), (B, spin, n, what)
        handed = _kernels._use_partner(None)  # no partner handed over: the caller runs every task
        got = layer.forward(x, h0, c0, num_threads=2)
        _kernels._use_partner(handed)
        assert all(bits(g) == bits(w) for g, w in zip(got, want))


@pytest.mark.parametrize("cell,reset_after", CELLS)
def test_one_step_with_lengths_and_masks_on_the_partner(rng, partner_polls, cell, reset_after):
    """With lengths (rows of length 0 drop out of the step: sorted rows, read through
    the kernel's row map) and with masks, every output and state is one thread's."""
    H = 512 if cell == "simple" else 256
    layer, ws = layer_of(rng, cell, reset_after, 64, H, 2, np.float32)
    assert layer._plan_for(3, 1, 2).partner
    x = rng.standard_normal((1, 3, 64)).astype(np.float32)
    h0 = rng.standard_normal((2, 3, H)).astype(np.float32)
    lengths = np.array([0, 1, 1])
    mask = np.array([[True, False, True]])
    for kw in (dict(lengths=lengths), dict(mask=mask), dict(mask=mask, zero_output_for_mask=True)):
        want = layer.forward(x, h0, **kw, num_threads=1)
        r_out, r_h, _ = ref.run_layer(cell, ws, x, h0, reset_after=reset_after, **kw_ref(kw))
        assert_close(want[0], r_out, np.float32, "out")
        assert_close(want[1], r_h, np.float32, "h")
        for spin in (500, 0):
            _rowops.partner_spin_us(spin)
            for n in (2, 3, 2):
                got = layer.forward(x, h0, **kw, num_threads=n)
                assert bits(got[0]) == bits(want[0]) and bits(got[1]) == bits(want[1]), (kw, spin, n)


def kw_ref(kw):
    """RNNLayer.forward's mask keywords as reference.run_layer takes them."""
    if "lengths" in kw:
        return dict(lengths=kw["lengths"])
    return dict(mask=kw["mask"], zero_output=kw.get("zero_output_for_mask", False))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_one_step_in_reduced_precision_on_the_partner(rng, partner_polls, precision):
    """bf16 and int8 weights: the partner's tasks give one thread's bits."""
    layer, _ = layer_of(rng, "gru", True, 256, 256, 1, np.float32, precision=precision)
    x = rng.standard_normal((1, 1, 256)).astype(np.float32)
    h0 = rng.standard_normal((1, 1, 256)).astype(np.float32)
    want = layer.forward(x, h0, num_threads=1)
    for spin in (500, 0):
        _rowops.partner_spin_us(spin)
        for n in (2, 3, 2):
            got = layer.forward(x, h0, num_threads=n)
            assert bits(got[0]) == bits(want[0]) and bits(got[1]) == bits(want[1]), (spin, n)


@pytest.mark.skipif(not _rowops.PARTNER, reason="no partner thread in this build (not Linux)")
def test_the_partner_takes_part_in_one_step_calls(rng, partner_polls):
    """With a long poll the partner runs tasks of back-to-back one-step calls (the
    schedule may leave it out of any one call, not of all)."""
    _rowops.partner_spin_us(200000)
    layer, _ = layer_of(rng, "gru", True, 256, 512, 1, np.float32)
    x = rng.standard_normal((1, 1, 256)).astype(np.float32)
    want = layer.forward(x, num_threads=1)
    before = _rowops.partner_jobs()
    for _ in range(20000):  # (a busy machine may keep it off a core for a while)
        got = layer.forward(x, num_threads=2)
        if _rowops.partner_jobs() > before:
            break
    assert _rowops.partner_jobs() > before
    assert bits(got[1]) == bits(want[1])


def test_the_partners_backoff_doubles_while_waits_recur_and_starts_short_after_calm():
    """A caller that waits on a task the partner claimed past the limit (the partner lost
    its core mid-task) runs the next products alone for a while: the shortest backoff
    after a calm spell, twice the last while such waits come back within RNN_DUO_CALM
    (8) times the last, at most the longest (c/rowops.team.h rnn_duo_backoff_after)."""
    lo, hi = _rowops.PARTNER_BACKOFF_MIN, _rowops.PARTNER_BACKOFF_MAX
    after = _rowops.partner_backoff_after
    assert lo == pytest.approx(1e-3) and hi == pytest.approx(50e-3)
    assert after(0.0, 0.0) == pytest.approx(lo)  # the first one
    assert after(lo, 0.0) == pytest.approx(2 * lo)
    assert after(lo, 7.9 * lo) == pytest.approx(2 * lo)
    assert after(lo, 8 * lo) == pytest.approx(lo)  # calm for eight times the last
    assert after(16 * lo, 100 * lo) == pytest.approx(32 * lo)
    assert after(32 * lo, 0.0) == pytest.approx(hi)  # at most the longest
    assert after(hi, 7 * hi) == pytest.approx(hi)
    assert after(hi, 8 * hi) == pytest.approx(lo)


def slow_partner_job():
    """A job whose task on the partner sleeps 5 ms (the caller's, 2 ms): the partner
    wakes and claims its task while the caller sleeps in its own. True when it did."""
    return _rowops._partner_test_job(2, 2000, 5000)


@pytest.mark.skipif(not _rowops.PARTNER, reason="no partner thread in this build (not Linux)")
def test_a_long_wait_on_the_partner_backs_off_and_recurring_waits_back_off_longer(partner_polls):
    """The backoff as rnn_duo_run takes it: after a slow partner task the next job runs on
    the caller alone; slow tasks again soon after the backoff double it; after a calm
    spell the next one is the shortest again. Timing on a shared machine can spoil a
    try (the partner without a core, this thread descheduled for longer than the calm
    spell): up to five tries, each seen through."""
    import time

    lo = _rowops.PARTNER_BACKOFF_MIN
    _rowops.partner_spin_us(500)
    seen = []
    for _ in range(5):
        time.sleep(8 * max(_rowops.partner_backoffs()[1], lo) + 0.01)  # calm: the next is the shortest
        _rowops.partner_wake()
        time.sleep(0.002)
        n0 = _rowops.partner_backoffs()[0]
        if not slow_partner_job():
            seen.append("the partner ran no task")
            continue
        n1, first = _rowops.partner_backoffs()
        jobs = _rowops.partner_jobs()
        alone = not _rowops._partner_test_job(2, 300, 0)  # within the backoff: the caller alone
        alone = alone and _rowops.partner_jobs() == jobs
        time.sleep(first)  # past the backoff, well within 8 times it
        if not slow_partner_job():
            seen.append("the partner ran no task")
            continue
        n2, second = _rowops.partner_backoffs()
        seen.append((n1 - n0, n2 - n0, alone, first, second))
        if seen[-1] == (1, 2, True, pytest.approx(lo), pytest.approx(2 * lo)):
            break
    else:
        pytest.fail(
            "no try saw a backoff of %g s, the caller alone in it, then one of twice it "
            "(backoffs taken, the caller alone, their lengths): %s" % (lo, seen)
        )
