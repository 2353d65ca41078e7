"""Bitwise identity of rnnfast's outputs across two builds.

``record OUT.npz`` runs a fixed grid of recurrent layers through the installed
rnnfast and stores a digest of every output (dtype, shape, SHA-256 of its bytes);
``compare A.npz B.npz`` reports each array that differs in any bit (and any array that only one file holds).
Record with the old
build, record with the new one, compare: a pure re-layout of the compiled core must
give zero differences, on every instruction set (set ``RNNFAST_ISA`` when recording).

The grid: every cell variant (GRU reset-after and reset-before, LSTM with and
without projection, SimpleRNN), float32 and float64, B in {1, 3, 64}, T in {1, 7,
200}, H in {16, 130, 256} (so both execution strategies run), forward, backward
(``go_backwards``) and bidirectional, with and without masks (Keras masks with and
without ``zero_output_for_mask``, PyTorch lengths), time- and batch-major input, 1
and 2 threads; every activation through the gate math of every cell and through
``apply_activation``; and the two bundled models on their test set. Where the build
has reduced precision (``RNNLayer(..., precision=)``), the int8 and bf16 products on
their own grid too (float32 layers, every cell, H in {16, 130, 256} with input sizes
{9, 40, 24}, so bf16's float and bf16 input projections both run), and the bundled
models loaded in int8 and bf16.

Only stable public APIs are used (``rnnfast.layers.RNNLayer``, ``CellWeights``,
``apply_activation``, ``ACTIVATIONS``, ``rnnfast.load``), so the script runs against
old and new builds alike.

    python bench/check_bitwise.py record old.npz
    python bench/check_bitwise.py compare old.npz new.npz
"""

import argparse
import hashlib
import os
import sys
import time

import numpy as np

import rnnfast
from rnnfast.layers import ACTIVATIONS, CellWeights, RNNLayer, apply_activation

DATA = os.path.join(os.path.dirname(os.path.abspath(rnnfast.__file__)), "data")

# cell name -> (RNNLayer cell, gates, keyword arguments, projection size)
CELLS = {
    "gru": ("gru", 3, dict(reset_after=True), 0),
    "gru_rb": ("gru", 3, dict(reset_after=False), 0),
    "lstm": ("lstm", 4, {}, 0),
    "lstm_proj": ("lstm", 4, {}, 11),
    "simple": ("simple", 1, {}, 0),
}
DTYPES = ("float32", "float64")
BATCHES = (1, 3, 64)
STEPS = (1, 7, 200)
UNITS = (16, 130, 256)
DIRECTIONS = ("fwd", "bwd", "bidir")
INPUT = 9
# (name, forward keywords, batch_first): the mask and layout variants of each case
VARIANTS = (
    ("plain", {}, False),
    ("mask", dict(mask=True), False),
    ("mask_zero_bfirst", dict(mask=True, zero_output_for_mask=True), True),
    ("lengths_bfirst", dict(lengths=True), True),
)
THREADS = (1, 2)
PRECISIONS = ("int8", "bf16")
# (H, input size) of the reduced-precision grid; B and variants as above
UNITS_Q = ((16, 9), (130, 40), (256, 24))
STEPS_Q = (1, 7, 100)


def _seed(*parts):
    """A stable seed from the case's name (never hash(): it changes per process)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _weights(rng, G, I, H, P):
    s = 1.0 / np.sqrt(H)
    Ho = P or H

    def u(*shape):
        return rng.uniform(-s, s, shape)

    return CellWeights(u(I, G * H), u(Ho, G * H), u(G * H), u(G * H), u(H, P) if P else None)


def _layer(cell, dtype, H, direction, seed, I=INPUT, **kw):
    name, G, extra, P = CELLS[cell]
    rng = np.random.default_rng(seed)
    ndir = 2 if direction == "bidir" else 1
    weights = [_weights(rng, G, I, H, P) for _ in range(ndir)]
    return RNNLayer(name, weights, go_backwards=direction == "bwd", dtype=dtype, **extra, **kw), rng


def _inputs(rng, T, B, H, P, ndir, cell, I=INPUT):
    x = rng.standard_normal((T, B, I))
    Ho = P or H
    h0 = 0.5 * rng.standard_normal((ndir, B, Ho))
    c0 = 0.5 * rng.standard_normal((ndir, B, H)) if CELLS[cell][0] == "lstm" else None
    mask = rng.random((T, B)) < 0.7
    mask[:, 0] = True  # one full row
    if B > 1:
        mask[: T // 2 + 1, 1] = False  # a row masked at the start
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    return x, h0, c0, mask, lengths


def _digest(a):
    """What is kept of an output: its dtype, shape and a SHA-256 of its bytes (bitwise
    identity), and its float64 sum and NaN count (to size a difference). Whole arrays
    would take gigabytes for this grid."""
    a = np.ascontiguousarray(a)
    canon = a
    with np.errstate(all="ignore"):
        total = float(np.nansum(a.astype(np.float64))) if a.dtype.kind == "f" else 0.0
        nans = int(np.isnan(a).sum()) if a.dtype.kind == "f" else 0
    if nans:  # every NaN as one NaN: tells NaN-bits-only differences apart
        canon = np.where(np.isnan(a), a.dtype.type(np.nan), a)
    return np.array(
        [
            a.dtype.str,
            repr(a.shape),
            hashlib.sha256(a.tobytes()).hexdigest(),
            repr(total),
            str(nans),
            hashlib.sha256(canon.tobytes()).hexdigest(),
        ]
    )


def _store(res, key, value):
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _store(res, "%s/%d" % (key, i), v)
        return
    res[key] = _digest(np.asarray(value))


def _run_variants(res, key, layer, x, h0, c0, mask, lengths):
    """One case's layer on every mask/layout variant and thread count; returns the runs."""
    n = 0
    for vname, vkw, bfirst in VARIANTS:
        kw = dict(vkw)
        if kw.pop("mask", False):
            kw["mask"] = mask
        if kw.pop("lengths", False):
            kw["lengths"] = lengths
        xin = np.ascontiguousarray(np.swapaxes(x, 0, 1)) if bfirst else x
        for nt in THREADS:
            out, h, c = layer.forward(xin, h0, c0, num_threads=nt, batch_first=bfirst, **kw)
            k = "%s/%s/t%d" % (key, vname, nt)
            _store(res, k + "/out", out)
            _store(res, k + "/h", h)
            _store(res, k + "/c", c)
            n += 1
    return n


def record_grid(res):
    n = 0
    for cell in CELLS:
        P = CELLS[cell][3]
        for dtype in DTYPES:
            for H in UNITS:
                for direction in DIRECTIONS:
                    ndir = 2 if direction == "bidir" else 1
                    layer, rng = _layer(cell, dtype, H, direction, _seed(cell, dtype, H, direction))
                    for B in BATCHES:
                        for T in STEPS:
                            inputs = _inputs(
                                np.random.default_rng(_seed(cell, dtype, H, direction, B, T)), T, B, H, P, ndir, cell
                            )
                            key = "grid/%s/%s/H%d/%s/B%d/T%d" % (cell, dtype, H, direction, B, T)
                            n += _run_variants(res, key, layer, *inputs)
    return n


def _has_precision():
    import inspect

    return "precision" in inspect.signature(RNNLayer.__init__).parameters


def record_precision(res):
    """The int8 and bf16 products: the grid's cells, directions, batches, variants and
    thread counts on float32 layers (nothing where the build predates them)."""
    if not _has_precision():
        return 0
    n = 0
    for cell in CELLS:
        P = CELLS[cell][3]
        for precision in PRECISIONS:
            for H, I in UNITS_Q:
                for direction in DIRECTIONS:
                    ndir = 2 if direction == "bidir" else 1
                    seed = _seed("q", cell, precision, H, direction)
                    layer, _ = _layer(cell, "float32", H, direction, seed, I=I, precision=precision)
                    for B in BATCHES:
                        for T in STEPS_Q:
                            rng = np.random.default_rng(_seed("q", cell, precision, H, direction, B, T))
                            inputs = _inputs(rng, T, B, H, P, ndir, cell, I=I)
                            key = "quant/%s/%s/H%d/%s/B%d/T%d" % (cell, precision, H, direction, B, T)
                            n += _run_variants(res, key, layer, *inputs)
    return n


def record_activations(res):
    """Every activation as the recurrent activation and as the activation of every
    cell (gate math paths), and through apply_activation, on values from tiny to
    huge, NaN and Inf included."""
    n = 0
    names = list(ACTIVATIONS)
    v = np.concatenate(
        [
            np.linspace(-30, 30, 997),
            [0.0, -0.0, 1e-30, -1e-30, 88.5, -88.5, 710.0, -710.0, 3e38, -3e38, np.inf, -np.inf, np.nan],
        ]
    )
    for dtype in DTYPES:
        with np.errstate(all="ignore"):
            vv = v.astype(dtype)
        for a in names:
            _store(res, "act/%s/%s" % (dtype, a), apply_activation(a, vv))
    for cell in CELLS:
        name, G, extra, P = CELLS[cell]
        for dtype in DTYPES:
            for H in (16, 130):
                for a in names:
                    for role in ("activation",) if name == "simple" else ("activation", "recurrent_activation"):
                        seed = _seed("act", cell, dtype, H, a, role)
                        layer, rng = _layer(cell, dtype, H, "bidir", seed, **{role: a})
                        x, h0, c0, mask, _ = _inputs(rng, 7, 3, H, P, 2, cell)
                        out, h, c = layer.forward(3 * x, h0, c0, mask=mask, num_threads=2)
                        key = "actcell/%s/%s/H%d/%s/%s" % (cell, dtype, H, role, a)
                        _store(res, key + "/out", out)
                        _store(res, key + "/h", h)
                        _store(res, key + "/c", c)
                        n += 1
    return n


def record_models(res):
    d = np.load(os.path.join(DATA, "digits_test.npz"))
    x = d["x"]
    xt = np.ascontiguousarray(np.swapaxes(x, 0, 1))  # the LSTM loads with batch_first=False
    n = 0
    for precision in ("float32",) + (PRECISIONS if _has_precision() else ()):
        kw = {} if precision == "float32" else dict(precision=precision)
        tag = "" if precision == "float32" else "/" + precision
        keras = rnnfast.load(os.path.join(DATA, "digits_bigru.keras"), **kw)
        rnn = rnnfast.load(os.path.join(DATA, "digits_lstm.pt"), **kw)
        for nt in THREADS:
            _store(res, "model/digits_bigru%s/t%d" % (tag, nt), keras.predict(x, num_threads=nt))
            out, (h, c) = rnn(xt, num_threads=nt)
            _store(res, "model/digits_lstm%s/t%d/out" % (tag, nt), out)
            _store(res, "model/digits_lstm%s/t%d/h" % (tag, nt), h)
            _store(res, "model/digits_lstm%s/t%d/c" % (tag, nt), c)
            n += 2
    return n


def record(path):
    from rnnfast import _kernels

    isa = _kernels.isa()
    res = {}
    t0 = time.perf_counter()
    n = record_grid(res) + record_precision(res) + record_activations(res) + record_models(res)
    res["meta/isa"] = np.array(isa)
    np.savez_compressed(path, **res)
    print("recorded %d runs, %d arrays, ISA %s, %.1f s -> %s" % (n, len(res), isa, time.perf_counter() - t0, path))


def compare(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    ka, kb = set(a.files), set(b.files)
    bad = 0
    for k in sorted(ka ^ kb):
        print("only in %s: %s" % (a_path if k in ka else b_path, k))
        bad += 1
    same = 0
    for k in sorted(ka & kb):
        x, y = a[k], b[k]
        if k.startswith("meta/"):
            if tuple(x.ravel()) != tuple(y.ravel()):
                print("note: %s differs: %s vs %s" % (k, x, y))
            continue
        if x[0] != y[0] or x[1] != y[1]:
            print("DIFFER %s: %s %s vs %s %s" % (k, x[0], x[1], y[0], y[1]))
            bad += 1
        elif x[2] != y[2]:
            nan_bits = len(x) > 5 and len(y) > 5 and x[5] == y[5]
            print(
                "DIFFER %s: %s %s, sums %s vs %s, NaNs %s vs %s%s"
                % (
                    k,
                    x[0],
                    x[1],
                    x[3],
                    y[3],
                    x[4],
                    y[4],
                    " (only the sign or payload bits of NaNs)" if nan_bits else "",
                )
            )
            bad += 1
        else:
            same += 1
    print("%d arrays bitwise identical, %d differ or missing" % (same, bad))
    return 1 if bad else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("out")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args(argv)
    if args.cmd == "record":
        record(args.out)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
