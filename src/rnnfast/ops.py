"""Canonical non-recurrent ops on batch-major numpy arrays, each with a float64
reference written like the definition next to it (``*_reference``).

The fast forms are vectorised numpy around the core's products (rnnfast._products:
rnnfast's own threads, never NumPy's BLAS): a 1-D convolution is one product per group
on a strided im2col view of the padded input; poolings reduce a strided window view;
normalisations are a few whole-array passes (a batch normalisation is folded into one
affine at load). No Python loop runs per time step; the references may.

Shapes: sequences are ``(batch, steps, channels)`` here (channels last).
"""

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._products import matmul

__all__ = [
    "conv_padding",
    "conv1d",
    "conv1d_reference",
    "pool1d",
    "pool1d_reference",
    "affine",
    "layer_norm",
    "layer_norm_reference",
    "unit_norm",
    "unit_norm_reference",
    "multi_head_attention",
    "multi_head_attention_reference",
    "fold_affine_into",
]


def conv_padding(steps, kernel_size, stride, dilation, padding):
    """(left, right) zero padding of Keras' ``padding`` ("valid", "same", "causal")."""
    span = (kernel_size - 1) * dilation + 1
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return span - 1, 0
    if padding == "same":
        out = -(-steps // stride)
        total = max((out - 1) * stride + span - steps, 0)
        return total // 2, total - total // 2
    raise ValueError("padding must be 'valid', 'same' or 'causal', got %r" % (padding,))


def _strided(x, shape, strides):
    """``x`` seen with ``shape`` and ``strides`` (bytes, from its first element), read-only,
    no copy: one ndarray constructor on ``x``'s memory where ``x`` is C-contiguous (0.4 us),
    else ``as_strided`` (its interface dict and checks: 5 us, a Speech model's Conv at
    B=1 paid it on every call)."""
    if x.flags.c_contiguous and x.size:
        v = np.ndarray(shape, x.dtype, x, 0, strides)
        v.flags.writeable = False
        return v
    return as_strided(x, shape, strides, writeable=False)


def _windows(x, kernel_size, stride, dilation):
    """(B, T_out, k, C) strided view of windows of ``x`` (B, T, C), no copy."""
    B, T, C = x.shape
    span = (kernel_size - 1) * dilation + 1
    n = (T - span) // stride + 1 if T >= span else 0
    s0, s1, s2 = x.strides
    return _strided(x, (B, n, kernel_size, C), (s0, s1 * stride, s1 * dilation, s2))


def conv1d(x, kernel, bias=None, *, stride=1, dilation=1, padding=(0, 0), groups=1, num_threads=None, act=-1):
    """1-D convolution (cross-correlation, as Keras): ``x`` (B, T, Cin), ``kernel``
    (k, Cin/groups, Cout), ``bias`` (Cout,) or None, ``padding`` (left, right) zeros.
    Returns (B, T_out, Cout) in ``x``'s dtype: per group one product of the im2col view
    (``num_threads``: as in :meth:`rnnfast.layers.RNNLayer.forward`), ``act`` (an
    ``RNN_ACT_*`` code, or -1) applied by the product."""
    k, cin_g, cout = kernel.shape
    if padding != (0, 0):
        x = np.pad(x, ((0, 0), tuple(padding), (0, 0)))
    B, T, C = x.shape
    if C != cin_g * groups:
        raise ValueError("convolution expects %d input channels, got %d" % (cin_g * groups, C))
    w = _windows(x, k, stride, dilation)  # (B, n, k, C)
    n = w.shape[1]
    if n < 1:
        raise ValueError("convolution of span %d over %d steps gives no output" % ((k - 1) * dilation + 1, T))
    cout_g = cout // groups
    if groups == 1 and (dilation == 1 or k == 1):
        # no im2col copy: output step t's window is k*C consecutive values of its row of
        # x from step t*stride on, so the windows are rows of an overlapping strided view
        # (k*C values, C*stride apart) that the product reads in place; the same values
        # in the same order as the im2col matrix's rows (the same bits)
        x = np.ascontiguousarray(x)
        item = x.itemsize
        cols = _strided(x, (B, n, k * C), (x.strides[0], stride * C * item, item))
        y = matmul(cols, kernel.reshape(k * C, cout), bias, num_threads, act)
    elif groups == 1:
        cols = w.reshape(B * n, k * C)  # copies once: the im2col matrix
        y = matmul(cols, kernel.reshape(k * C, cout), bias, num_threads, act)
    else:
        y = np.empty((B * n, cout), dtype=x.dtype)
        for g in range(groups):
            cols = w[..., g * cin_g : (g + 1) * cin_g].reshape(B * n, k * cin_g)
            part = kernel[:, :, g * cout_g : (g + 1) * cout_g].reshape(k * cin_g, cout_g)
            y[:, g * cout_g : (g + 1) * cout_g] = matmul(
                cols, part, None if bias is None else bias[g * cout_g : (g + 1) * cout_g], num_threads, act
            )
    return y.reshape(B, n, cout)


def conv1d_reference(x, kernel, bias=None, *, stride=1, dilation=1, padding=(0, 0), groups=1):
    """:func:`conv1d` written as the sum it is, in float64."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), tuple(padding), (0, 0)))
    kernel = np.asarray(kernel, np.float64)
    k, cin_g, cout = kernel.shape
    B, T, C = x.shape
    n = (T - (k - 1) * dilation - 1) // stride + 1
    cout_g = cout // groups
    y = np.zeros((B, n, cout))
    for t in range(n):
        for o in range(cout):
            g = o // cout_g
            for j in range(k):
                y[:, t, o] += x[:, t * stride + j * dilation, g * cin_g : (g + 1) * cin_g] @ kernel[j, :, o]
    if bias is not None:
        y += np.asarray(bias, np.float64)
    return y


def pool1d(x, pool_size, stride, padding, reduce):
    """Max or average pooling over steps of ``x`` (B, T, C); ``padding`` (left, right)
    steps that do not count (max: -inf; average: left out of the mean, as Keras)."""
    left, right = padding
    if reduce == "max":
        if left or right:
            x = np.pad(x, ((0, 0), (left, right), (0, 0)), constant_values=-np.inf)
        return _windows(x, pool_size, stride, 1).max(axis=2)
    if left or right:
        ones = np.pad(np.ones(x.shape[1], x.dtype), (left, right))
        x = np.pad(x, ((0, 0), (left, right), (0, 0)))
        w = _windows(x, pool_size, stride, 1).sum(axis=2)
        count = _windows(ones[None, :, None], pool_size, stride, 1).sum(axis=2)
        return w / count
    return _windows(x, pool_size, stride, 1).mean(axis=2)


def pool1d_reference(x, pool_size, stride, padding, reduce):
    """:func:`pool1d` window by window, in float64."""
    x = np.asarray(x, np.float64)
    left, right = padding
    T = x.shape[1]
    n = (T + left + right - pool_size) // stride + 1
    out = []
    for t in range(n):
        lo, hi = t * stride - left, t * stride - left + pool_size
        part = x[:, max(lo, 0) : min(hi, T)]
        out.append(part.max(axis=1) if reduce == "max" else part.mean(axis=1))
    return np.stack(out, axis=1)


def affine(x, scale, shift):
    """``x * scale + shift`` on the last axis (a folded batch normalisation)."""
    y = x * scale
    y += shift
    return y


def layer_norm(x, gamma, beta, epsilon, rms_scaling=False):
    """Keras' LayerNormalization over the last axis (``gamma`` / ``beta`` or None)."""
    if rms_scaling:
        # as Keras 3 computes it: the (centred) variance scales the uncentred input
        var = x.var(axis=-1, keepdims=True)
        y = x * (1 / np.sqrt(var + x.dtype.type(epsilon)))
        return y * gamma if gamma is not None else y
    mean = x.mean(axis=-1, keepdims=True)
    d = x - mean
    var = np.mean(d * d, axis=-1, keepdims=True)
    y = d * (1 / np.sqrt(var + x.dtype.type(epsilon)))
    if gamma is not None:
        y *= gamma
    if beta is not None:
        y += beta
    return y


def layer_norm_reference(x, gamma, beta, epsilon, rms_scaling=False):
    x = np.asarray(x, np.float64)
    if rms_scaling:
        y = x / np.sqrt(x.var(-1, keepdims=True) + epsilon)
        return y * gamma if gamma is not None else y
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + epsilon)
    return y * (1 if gamma is None else gamma) + (0 if beta is None else beta)


def unit_norm(x, axis=-1, epsilon=1e-12):
    """``x / max(||x||, epsilon)`` along ``axis`` (Keras' UnitNormalization)."""
    inv = 1 / np.sqrt((x * x).sum(axis=axis, keepdims=True))
    return x * np.minimum(inv, x.dtype.type(1 / epsilon))


def unit_norm_reference(x, axis=-1, epsilon=1e-12):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.sqrt((x**2).sum(axis=axis, keepdims=True)), epsilon)


# -- multi-head attention ----------------------------------------------------------------------


def _head_projection(x, kernel, bias, num_threads=None):
    """``x`` (B, T, D) by ``kernel`` (D, N, d) (+ ``bias`` (N, d)) -> (B, N, T, d): one product."""
    B, T, D = x.shape
    _, N, d = kernel.shape
    y = matmul(
        x.reshape(B * T, D), kernel.reshape(D, N * d), None if bias is None else bias.reshape(N * d), num_threads
    )
    return y.reshape(B, T, N, d).transpose(0, 2, 1, 3)


def _softmax_last(s):
    s = s - s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


def multi_head_attention(
    query,
    value,
    key,
    wq,
    bq,
    wk,
    bk,
    wv,
    bv,
    wo,
    bo,
    *,
    valid=None,
    gate=None,
    large_negative=-1e9,
    zero_masked=False,
    num_threads=None,
):
    """Keras' ``MultiHeadAttention`` on batch-major sequences, in ``query``'s dtype.

    Parameters
    ----------
    query : ndarray (B, Tq, Dq)
    value : ndarray (B, Tv, Dv)
    key : ndarray (B, Tv, Dk)
    wq, wk : ndarray (Dq, N, dk), (Dk, N, dk)
        Query and key kernels (N heads of size dk); ``bq``, ``bk`` (N, dk) or None.
    wv : ndarray (Dv, N, dv)
        Value kernel; ``bv`` (N, dv) or None.
    wo : ndarray (N, dv, E)
        Output kernel; ``bo`` (E,) or None.
    valid : bool ndarray broadcastable to (B, Tq, Tv), optional
        Where a query step may attend to a value step (the masks, causal, attention_mask).
    gate : (kernel (Dq, N, dv), bias (N, dv) or None), optional
        Keras 3's ``use_gate``: the heads' outputs times ``sigmoid(query Wg + bg)``.
    large_negative : float
        Added to the scores of the pairs that are not ``valid`` before the softmax (as
        Keras does: a query step with none valid attends to every value step alike).
    zero_masked : bool
        Set the weights of the pairs that are not ``valid`` to zero after the softmax
        (Keras 3's explicit path: a query step with none valid attends to nothing).
    num_threads : int, optional
        Threads of the products (rnnfast._products), as in
        :meth:`rnnfast.layers.RNNLayer.forward`; the results do not depend on it.

    Returns
    -------
    ndarray (B, Tq, E): ``concat_h(softmax(q_h k_h^T / sqrt(dk)) v_h) Wo + bo``.
    """
    dt = query.dtype
    dk = wq.shape[2]
    q = _head_projection(query, wq, bq, num_threads) * dt.type(1 / np.sqrt(dk))
    k = _head_projection(key, wk, bk, num_threads)
    v = _head_projection(value, wv, bv, num_threads)
    scores = matmul(q, k.transpose(0, 1, 3, 2), num_threads=num_threads)  # (B, N, Tq, Tv)
    if valid is not None:
        scores += np.where(valid, dt.type(0), dt.type(large_negative))[:, None]
    a = _softmax_last(scores)
    if zero_masked and valid is not None:
        a *= np.asarray(valid, dt)[:, None]
    o = matmul(a, v, num_threads=num_threads).transpose(0, 2, 1, 3)  # (B, Tq, N, dv)
    if gate is not None:
        g = _head_projection(query, gate[0], gate[1], num_threads).transpose(0, 2, 1, 3)
        o = o * (dt.type(0.5) * (np.tanh(dt.type(0.5) * g) + dt.type(1)))
    B, Tq, N, dv = o.shape
    y = matmul(np.ascontiguousarray(o).reshape(B * Tq, N * dv), wo.reshape(N * dv, -1), bo, num_threads)
    return y.reshape(B, Tq, -1)


def multi_head_attention_reference(
    query, value, key, wq, bq, wk, bk, wv, bv, wo, bo, *, valid=None, gate=None, large_negative=-1e9, zero_masked=False
):
    """:func:`multi_head_attention` written as its equations, in float64, per sample,
    head and query step::

        q_h = x_q Wq_h + bq_h,  k_h = x_k Wk_h + bk_h,  v_h = x_v Wv_h + bv_h
        s_h[i, j] = q_h[i] . k_h[j] / sqrt(dk)    (+ large_negative where not valid[i, j])
        a_h[i] = softmax_j(s_h[i])                (a_h[i, j] = 0 where not valid[i, j] with zero_masked)
        o_h[i] = sum_j a_h[i, j] v_h[j]           (* sigmoid(x_q[i] Wg_h + bg_h) with a gate)
        y[i] = sum_h o_h[i] Wo_h + bo

    ``large_negative`` is added in the input's dtype first (as Keras does: in float32
    a fully masked row's scores all round to it)."""
    f = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
    dt = np.asarray(query).dtype
    xq, xv = np.asarray(query, np.float64), np.asarray(value, np.float64)
    xk = xv if key is None else np.asarray(key, np.float64)
    wq, wk, wv, wo = (np.asarray(a, np.float64) for a in (wq, wk, wv, wo))
    bq, bk, bv, bo = map(f, (bq, bk, bv, bo))
    B, Tq, _ = xq.shape
    Tv = xv.shape[1]
    N, dk = wq.shape[1:]
    E = wo.shape[2]
    ok = np.ones((B, Tq, Tv), bool) if valid is None else np.broadcast_to(valid, (B, Tq, Tv))
    y = np.zeros((B, Tq, E))
    for b in range(B):
        for h in range(N):
            q = xq[b] @ wq[:, h] + (0 if bq is None else bq[h])
            k = xk[b] @ wk[:, h] + (0 if bk is None else bk[h])
            v = xv[b] @ wv[:, h] + (0 if bv is None else bv[h])
            for i in range(Tq):
                s = np.array([q[i] @ k[j] / np.sqrt(dk) for j in range(Tv)])
                # the masked scores as the input's dtype holds them
                s = np.where(ok[b, i], s, (s.astype(dt) + dt.type(large_negative)).astype(np.float64))
                a = np.exp(s - s.max())
                a /= a.sum()
                if zero_masked:
                    a = np.where(ok[b, i], a, 0)
                o = sum(a[j] * v[j] for j in range(Tv))
                if gate is not None:
                    wg = np.asarray(gate[0], np.float64)[:, h]
                    g = xq[b, i] @ wg + (0 if gate[1] is None else np.asarray(gate[1], np.float64)[h])
                    o = o / (1 + np.exp(-g))
                y[b, i] += o @ wo[h]
    if bo is not None:
        y += bo
    return y


# -- folding an affine into the op before it ---------------------------------------------------


def fold_affine_into(kernel, bias, scale, shift):
    """Fold ``y * scale + shift`` (per output channel, the last axis) into the linear op
    ``y = x . kernel + bias`` before it: returns ``(kernel * scale, bias * scale + shift)``
    in float64 (``kernel``: any shape whose last axis is the output channels; ``bias``
    None counts as zeros). Exact in real arithmetic; in float32 the result differs from
    the two ops in turn by rounding (a few ulp)."""
    scale = np.asarray(scale, np.float64)
    k = np.asarray(kernel, np.float64) * scale
    b = (0 if bias is None else np.asarray(bias, np.float64)) * scale + np.asarray(shift, np.float64)
    return k, np.broadcast_to(b, scale.shape).copy()
