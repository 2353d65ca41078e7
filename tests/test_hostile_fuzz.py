"""The fuzzers know the structure classes of issue 12 (item 7 there: keep it proven).

Each new mutation operator (tests/fuzz/mutators.py) applied to a seed, loaded in the
fuzz worker: the outcome is within the contract (loaded, FormatError or
UnsupportedLayerError) and, for the hostile ones, the refusal expected. The runner
notices a loader that opens a file the case names (the worker's ``outside/`` folder,
watched through inotify). The regression files of every class are in
tests/fuzz/findings/ (test_fuzz_loaders.py::test_fixed_findings loads them).
"""
import os

import pytest

from fuzz import hostile as H
from fuzz.mutators import KEY_SPELLINGS, OUTSIDE_FILES, build_case, seeds
from fuzz.runner import Worker

pytestmark = [pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="Linux (inotify)")]


@pytest.fixture(scope="module")
def worker():
    with Worker(timeout=20.0) as w:
        yield w


def _seed(fmt, i=0):
    return seeds(fmt)[i % len(seeds(fmt))]


def _run(worker, fmt, ops, file_ops=(), seed=0):
    data = build_case(fmt, (_seed(fmt, seed), list(ops), list(file_ops), []))
    out = worker.run(data)
    assert out.ok, out
    return out


@pytest.mark.parametrize("fmt", ["keras3h5", "keras2h5", "keras"])
@pytest.mark.parametrize("how", sorted(OUTSIDE_FILES))
def test_outside_operator(fmt, how, worker):
    op = ("outside", 0, how)
    if fmt == "keras":
        op = ("member_h5", op)
    out = _run(worker, fmt, [op])
    assert out.kind == "FormatError", out
    assert any(w in out.detail for w in ("external", "soft link", "virtual dataset")), out.detail


@pytest.mark.parametrize("fmt", ["keras3h5", "keras"])
def test_deep_groups_and_heap_signatures(fmt, worker):
    wrap = (lambda op: ("member_h5", op)) if fmt == "keras" else (lambda op: op)
    out = _run(worker, fmt, [wrap(("h5_deep", 70))])
    assert out.kind == "FormatError" and "groups nested more than 64" in out.detail, out
    assert _run(worker, fmt, [wrap(("h5_deep", 10))]).kind == "loaded"
    assert _run(worker, fmt, [wrap(("gcol", 32768))]).kind == "loaded"


@pytest.mark.parametrize("fmt", ["torchzip", "torchlegacy"])
def test_pickle_structure_operators(fmt, worker):
    for how in ("tuple", "list", "dict", "key", "set", "late"):
        for where in ("value", "key", "extra"):
            out = _run(worker, fmt, [("nest", how, 5000, where, 0)])
            assert out.kind == "FormatError", (how, where, out)
    out = _run(worker, fmt, [("count", 300000)])
    assert out.kind == "FormatError" and "opcodes" in out.detail, out
    out = _run(worker, fmt, [("dupkey", 0)])
    assert out.kind == "FormatError" and "twice" in out.detail, out
    if fmt == "torchzip":
        out = _run(worker, fmt, [("stray_proj",)])
        assert out.kind == "FormatError" and "proj_size" in out.detail, out


@pytest.mark.parametrize("fmt", ["torchzip", "safetensors"])
def test_key_spelling_operators(fmt, worker):
    """Every spelling, renaming a key or shadowing it: never loaded as the real name."""
    kind = "keyspell" if fmt == "torchzip" else "st_key"
    for i in range(len(KEY_SPELLINGS)):
        for shadow in (False, True):
            out = _run(worker, fmt, [(kind, 0, i, shadow)])
            assert out.kind == "FormatError", (i, shadow, out)
    if fmt == "safetensors":
        out = _run(worker, fmt, [("st_dup", 0)])
        assert out.kind == "FormatError" and "twice" in out.detail, out


def test_many_layers_operator(worker):
    out = _run(worker, "keras", [("many_layers", 10001)])
    assert out.kind == "FormatError" and "at most 10000" in out.detail, out
    assert _run(worker, "keras", [("many_layers", 50)]).kind == "loaded"


def test_runner_notices_outside_reads(monkeypatch):
    """A case that opens a file of the worker's outside/ folder is an ``outside-read``
    finding, whatever the load's own outcome."""
    monkeypatch.setenv("RNNFAST_FUZZ_SELFTEST", "1")
    with Worker(timeout=10.0) as w:
        out = w.run(b"SELFTEST:outside")
        assert out.kind == "outside-read" and "outside/donor.h5" in out.detail, out
        assert not out.ok
        with open(H.seed_path("safetensors"), "rb") as f:
            assert w.run(f.read()).kind == "loaded"     # no stale events afterwards
