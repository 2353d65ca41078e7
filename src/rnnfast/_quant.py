"""Reduced precision: int8 and bf16 weights for the recurrent layers.

A layer in reduced precision keeps float32 gate math, state, biases and outputs; only
its products (the input projection, the per-step recurrent product, GRU reset-before's
second product, an LSTM projection) run on weights stored in fewer bytes, in the
compiled core's reduced-precision kernels (``src/rnnfast/c/quant.h`` describes the
packed forms and the arithmetic, identical on every instruction set):

- ``"int8"``: weights quantized symmetric per output column (``W ~ ws[j] * Wq[:, j]``,
  ``|Wq| <= 127``); each row of the activations (the input rows, the state of each
  step) quantized symmetric per row on the fly (``a ~ sa * q``); int32 sums;
  ``fma(float(sum), sa * ws[j], bias[j])``. Matrices of at most
  :data:`INT8_GROUP_MAX_K` rows of K in groups of :data:`INT8_GROUP` rows instead
  (:func:`group_rows`): a weight scale per column and group, int16 activations with a
  scale per row and group, exact int32 sums per group added in float32; layers of at
  most :data:`INT8_FLOAT_INPUT` inputs keep a float32 input projection
  (:func:`reduced_input`).
- ``"bf16"``: weights and activations rounded to bfloat16 (to nearest even), float32
  sums; layers of at most :data:`BF16_FLOAT_INPUT` inputs keep a float32 input
  projection.
- ``"float32"``: the exact path (the default).

This module is the one home of the quantization: the precision names, the weight
quantizers and packers the layers call, and float64 references of the quantized
products for the tests.
"""

from typing import NamedTuple, Optional

import numpy as np

from . import _kernels

__all__ = [
    "PRECISIONS",
    "check_precision",
    "LayerWeights",
    "pack_layer",
    "bf16_round",
    "quantize_rows",
    "quantize_groups",
    "reduced_input",
    "group_rows",
]

#: The precisions a model runs in, and their codes in the C core (c/enums.h).
PRECISIONS = {
    "float32": int(_kernels.RNN_PREC_FLOAT),
    "bf16": int(_kernels.RNN_PREC_BF16),
    "int8": int(_kernels.RNN_PREC_INT8),
}

_PANEL = int(_kernels.RNN_PANEL_COLS)

#: A reduced-precision layer runs its input projection in that precision too (its W
#: packed like U), except a layer of at most :data:`INT8_FLOAT_INPUT` (int8) or
#: :data:`BF16_FLOAT_INPUT` (bf16) inputs, which keeps it in float32 on the float weights
#: (:func:`reduced_input`): a few weights per column, each a large share of the sum (on
#: the bundled digits models, 8 inputs, the int8 projection alone made a probability
#: differ by 0.022-0.026), for ``4 I`` bytes per column against the recurrent product's
#: ``H``. bf16's projection is half the float32 one's time on AVX512_BF16 (``vdpbf16ps``:
#: 32 multiply-adds per instruction against an FMA's 16; bench/README.md, "Reduced
#: precision", session 8).
INT8_FLOAT_INPUT = 16
BF16_FLOAT_INPUT = 16

#: int8: matrices of at most :data:`INT8_GROUP_MAX_K` rows of K are quantized in groups
#: of :data:`INT8_GROUP` rows of K (one scale per group of a column; activations in
#: int16, one scale per group of a row: c/quant.h's K-grouped arithmetic); larger ones
#: per column, with int8 activations per row. See
#: bench/README.md, "Reduced precision", for the accuracy and the speed of each.
INT8_GROUP = 4
INT8_GROUP_MAX_K = 64


def reduced_input(precision, input_size, given=False):
    """Whether a layer of ``input_size`` inputs runs its input projection in the reduced
    ``precision`` (else float32). ``given``: int8 weights that arrive quantized."""
    p = check_precision(precision)
    if p == "int8":
        return given or input_size > INT8_FLOAT_INPUT
    return p == "bf16" and input_size > BF16_FLOAT_INPUT


def group_rows(K):
    """Rows of K per int8 scale for a K-row matrix (and its activation rows): 0 for one
    per column, else a multiple of 4 (:data:`INT8_GROUP`, :data:`INT8_GROUP_MAX_K`)."""
    return INT8_GROUP if 0 < K <= INT8_GROUP_MAX_K and INT8_GROUP < _pad(PRECISIONS["int8"], K) else 0


def check_precision(precision):
    """``precision`` as one of :data:`PRECISIONS`' names, else ValueError.

    ``None`` means ``"float32"``; ``"bfloat16"`` is accepted for ``"bf16"``."""
    if precision is None:
        return "float32"
    if isinstance(precision, str):
        p = precision.strip().lower()
        p = {"bfloat16": "bf16", "fp32": "float32", "f32": "float32"}.get(p, p)
        if p in PRECISIONS:
            return p
    raise ValueError("unknown precision %r; known: %s" % (precision, ", ".join(PRECISIONS)))


# -- bf16 ------------------------------------------------------------------------------


def bf16_bits(a):
    """float32 values -> bfloat16 bit patterns (uint16), rounded to nearest even (as the
    kernels round; NaN stays NaN)."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), r)


def bf16_round(a):
    """float32 values rounded to bfloat16, as float32."""
    return (bf16_bits(a).astype(np.uint32) << 16).view(np.float32)


# -- int8 ------------------------------------------------------------------------------


def quantize_columns(W):
    """Symmetric per-column int8 quantization of ``W`` (K, N): ``(Wq, ws)`` with
    ``W ~ Wq * ws``, ``ws[j] = max_k |W[k, j]| / 127`` (float32; 0 for a zero column)."""
    W = np.asarray(W, np.float32)
    m = np.abs(W).max(axis=0) if W.shape[0] else np.zeros(W.shape[1], np.float32)
    ws = (m / np.float32(127)).astype(np.float32)
    safe = np.where(ws > 0, ws, np.float32(1))
    Wq = np.clip(np.rint(W / safe), -127, 127).astype(np.int8)
    return Wq, ws


def _groups(K, kg):
    """The (k0, k1) row ranges of K in groups of ``kg`` rows (0: one)."""
    kg = kg if kg > 0 else max(K, 1)
    return [(k0, min(k0 + kg, K)) for k0 in range(0, max(K, 1), kg)]


def quantize_groups(W, kg):
    """Symmetric int8 quantization of ``W`` (K, N) per column and group of ``kg`` rows of
    K (0: per column): ``(Wq, ws)``, ``ws`` (ng, N) (one row per group)."""
    W = np.asarray(W, np.float32)
    parts = [quantize_columns(W[k0:k1]) for k0, k1 in _groups(W.shape[0], kg)]
    return np.concatenate([p[0] for p in parts]), np.stack([p[1] for p in parts])


def quantize_rows(A, kg=0, levels=127):
    """The kernels' per-row activation quantization of ``A`` (M, K), in their float32
    arithmetic: ``(q, sa)`` with q integers in [-levels, levels] (int32) and ``A ~ q *
    sa``; ``kg`` > 0: per group of ``kg`` values of a row, in int16 (levels 32767, the
    K-grouped products of c/quant.h), ``sa`` (M, ng)."""
    A = np.asarray(A, np.float32)
    if kg > 0:
        parts = [quantize_rows(A[:, k0:k1], 0, 32767) for k0, k1 in _groups(A.shape[1], kg)]
        return np.concatenate([p[0] for p in parts], axis=1), np.stack([p[1] for p in parts], axis=1)
    lev = np.float32(levels)
    m = np.abs(A).max(axis=1) if A.shape[1] else np.zeros(A.shape[0], np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(m > 0, lev / m, np.float32(0)).astype(np.float32)
    v = np.clip((A * inv[:, None]).astype(np.float32), -lev, lev)
    return np.rint(v).astype(np.int32), (m / lev).astype(np.float32)


# -- packing (c/quant.h's packed forms) ------------------------------------------------


def _pad(prec, K):
    return int(_kernels.qpad(prec, K))


def pack_block(M, prec, given=None, kg=0):
    """One K x N block (float32 ``M``) in precision ``prec`` (a code of
    :data:`PRECISIONS`), packed as the kernels read it: ``(data, scale, comp)`` --
    int8 bytes with per-column scales and compensations ``128 * sum_k Wq[k, j]`` ((N,);
    ``kg`` > 0: (ng, N), per group of ``kg`` rows of K), or bf16 bits (scale and comp
    empty). ``given``: int8 ``(Wq, ws)`` (per column) to pack as they are instead of
    quantizing ``M`` (weights that arrive quantized: ONNX Runtime's
    ``DynamicQuantizeLSTM``); with ``kg`` their scale repeats for each group."""
    M = np.asarray(M, np.float32)
    K, N = M.shape
    Kp = _pad(prec, K)
    npan = -(-N // _PANEL)
    if prec == PRECISIONS["int8"]:
        if given is None:
            Wq, ws = quantize_groups(M, kg)
        else:
            Wq, ws = given[0], np.broadcast_to(np.asarray(given[1], np.float32), (len(_groups(K, kg)), N))
        full = np.zeros((Kp, npan * _PANEL), np.int8)
        full[:K, :N] = Wq
        data = full.reshape(Kp // 4, 4, npan, _PANEL).transpose(2, 0, 3, 1).reshape(-1)
        wi = Wq.astype(np.int32)
        comp = np.stack([128 * wi[k0:k1].sum(axis=0) for k0, k1 in _groups(K, kg)]).astype(np.int32)
        if kg <= 0:
            ws, comp = ws[0], comp[0]
        return np.ascontiguousarray(data), np.ascontiguousarray(ws), comp
    full = np.zeros((Kp, npan * _PANEL), np.uint16)
    full[:K, :N] = bf16_bits(M)
    data = full.reshape(Kp // 2, 2, npan, _PANEL).transpose(2, 0, 3, 1).reshape(-1)
    return np.ascontiguousarray(data), np.zeros(0, np.float32), np.zeros(0, np.int32)


def _pack_matrix(M, prec, blocks, given=None):
    """``M`` (ndir, K, N) with its columns cut into ``blocks`` ((c0, c1) ranges, in
    order, covering all N): each direction's blocks packed one after another, as
    ``(data, scale, comp, kg)`` (:func:`group_rows`). ``given``: int8 ``(Wq (ndir, K,
    N), ws (ndir, N))`` packed as they are."""
    datas, scales, comps = [], [], []
    kg = group_rows(M.shape[1]) if prec == PRECISIONS["int8"] else 0
    for d in range(M.shape[0]):
        parts = [
            pack_block(M[d][:, c0:c1], prec, None if given is None else (given[0][d][:, c0:c1], given[1][d][c0:c1]), kg)
            for c0, c1 in blocks
        ]
        datas.append(np.concatenate([p[0] for p in parts]))
        scales.append(np.concatenate([p[1] for p in parts], axis=-1))
        comps.append(np.concatenate([p[2] for p in parts], axis=-1))
    data, scale, comp = np.stack(datas), np.stack(scales), np.stack(comps)
    # on a cache line, as the float32 panels (_kernels._zeros_lines): a panel 16 bytes
    # off one splits its loads (int8 GRU(256) B=1 measured 0.50 vs 0.39 ms a call)
    aligned = _kernels._zeros_lines(data.shape, data.dtype)
    aligned[...] = data
    data = aligned
    if prec != PRECISIONS["int8"]:
        scale, comp = np.zeros((M.shape[0], 0), np.float32), np.zeros((M.shape[0], 0), np.int32)
    scale, comp = np.ascontiguousarray(scale), np.ascontiguousarray(comp)
    for a in (data, scale, comp):
        a.flags.writeable = False
    return data, scale, comp, kg


class LayerWeights(NamedTuple):
    """A recurrent layer's weights in reduced precision, as ``_kernels.rnn_forward``
    takes them (``q=``): the precision code and, per matrix, ``(data, scale, comp,
    kg)`` (kg: int8 rows of K per scale, 0 for one per column)."""

    prec: int
    W: Optional[tuple]
    U: tuple
    Wr: Optional[tuple]

    @staticmethod
    def matrix_bytes(m):
        """Bytes of one packed matrix ``(data, scale, comp, kg)`` (with its scales)."""
        return sum(a.nbytes for a in m[:3]) if m is not None else 0

    @property
    def nbytes(self):
        """Bytes of the packed weights (with their scales)."""
        return sum(self.matrix_bytes(m) for m in (self.W, self.U, self.Wr))


def pack_layer(precision, W, U, Wr, *, G, H, ncb, reset_before, given=None):
    """A layer's canonical float32 weights (``W`` (ndir, I, G*H) and ``U`` (ndir, Ho,
    G*H) in the layer's column layout of ``ncb`` unit blocks, ``Wr`` (ndir, H, P) or
    None) in ``precision`` ("int8" or "bf16"), packed as the kernels read them. ``W``
    None: the input projection stays float32 (:func:`reduced_input`). ``given``: int8
    ``((Wq, ws), (Uq, us))`` in the same layout, packed as they are instead of
    quantizing ``W`` and ``U``."""
    prec = PRECISIONS[check_precision(precision)]
    gW, gU = given if given is not None else (None, None)
    units = [(G * (cb * H // ncb), G * ((cb + 1) * H // ncb)) for cb in range(ncb)]
    Wq = _pack_matrix(W, prec, units, gW) if W is not None else None
    if reset_before:  # [z r] and [h]: r is needed before the second product
        Uq = _pack_matrix(U, prec, [(0, 2 * H), (2 * H, 3 * H)], gU)
    else:
        Uq = _pack_matrix(U, prec, units, gU)
    Wrq = _pack_matrix(Wr, prec, [(0, Wr.shape[2])]) if Wr is not None else None
    return LayerWeights(prec, Wq, Uq, Wrq)


# -- float64 references (tests) --------------------------------------------------------


def _expand(s, K, kg):
    """Group scales (..., ng) -> per row of K (..., K)."""
    return np.concatenate([np.repeat(s[..., g : g + 1], k1 - k0, -1) for g, (k0, k1) in enumerate(_groups(K, kg))], -1)


def dequantized(M, precision, kg=None):
    """``M`` (K, N) as the reduced-precision kernels see it, in float64: int8
    ``Wq * ws`` per column, per group of ``kg`` rows of K (default :func:`group_rows`;
    0: one group), or bf16-rounded."""
    p = check_precision(precision)
    if p == "int8":
        K = np.shape(M)[0]
        kg = group_rows(K) if kg is None else kg
        Wq, ws = quantize_groups(M, kg)
        return Wq.astype(np.float64) * _expand(ws.T.astype(np.float64), K, kg).T
    if p == "bf16":
        return bf16_round(M).astype(np.float64)
    return np.asarray(M, np.float64)


def activations(A, precision, kg=None):
    """The rows of ``A`` as the reduced-precision kernels see them, in float64 (int8:
    ``kg`` as :func:`dequantized`)."""
    p = check_precision(precision)
    if p == "int8":
        K = np.shape(A)[1]
        kg = group_rows(K) if kg is None else kg
        q, sa = quantize_rows(A, kg)
        sa = sa.astype(np.float64)
        return q.astype(np.float64) * (_expand(sa, K, kg) if kg else sa[:, None])
    if p == "bf16":
        return bf16_round(A).astype(np.float64)
    return np.asarray(A, np.float64)


def reference_product(A, M, precision, bias=None, kg=None):
    """float64 ``bias + A M`` with both operands as the kernels see them
    (:func:`activations`, :func:`dequantized`, with ``kg`` as there)."""
    y = activations(A, precision, kg) @ dequantized(M, precision, kg)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y
