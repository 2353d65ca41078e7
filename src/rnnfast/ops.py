"""Canonical non-recurrent ops on batch-major numpy arrays, each with a float64
reference written like the definition next to it (``*_reference``).

The fast forms are vectorised numpy: a 1-D convolution is one GEMM (BLAS) per group on
a strided im2col view of the padded input; poolings reduce a strided window view;
normalisations are a few whole-array passes (a batch normalisation is folded into one
affine at load). No Python loop runs per time step; the references may.

Shapes: sequences are ``(batch, steps, channels)`` here (channels last).
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["conv_padding", "conv1d", "conv1d_reference", "pool1d", "pool1d_reference",
           "affine", "layer_norm", "layer_norm_reference", "unit_norm", "unit_norm_reference"]


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


def _windows(x, kernel_size, stride, dilation):
    """(B, T_out, k, C) strided view of windows of ``x`` (B, T, C), no copy."""
    B, T, C = x.shape
    span = (kernel_size - 1) * dilation + 1
    n = (T - span) // stride + 1 if T >= span else 0
    s0, s1, s2 = x.strides
    return as_strided(x, (B, n, kernel_size, C), (s0, s1 * stride, s1 * dilation, s2), writeable=False)


def conv1d(x, kernel, bias=None, *, stride=1, dilation=1, padding=(0, 0), groups=1):
    """1-D convolution (cross-correlation, as Keras): ``x`` (B, T, Cin), ``kernel``
    (k, Cin/groups, Cout), ``bias`` (Cout,) or None, ``padding`` (left, right) zeros.
    Returns (B, T_out, Cout) in ``x``'s dtype: per group one GEMM of the im2col view."""
    k, cin_g, cout = kernel.shape
    if padding != (0, 0):
        x = np.pad(x, ((0, 0), tuple(padding), (0, 0)))
    B, T, C = x.shape
    if C != cin_g * groups:
        raise ValueError("convolution expects %d input channels, got %d" % (cin_g * groups, C))
    w = _windows(x, k, stride, dilation)                   # (B, n, k, C)
    n = w.shape[1]
    if n < 1:
        raise ValueError("convolution of span %d over %d steps gives no output"
                         % ((k - 1) * dilation + 1, T))
    cout_g = cout // groups
    if groups == 1:
        cols = w.reshape(B * n, k * C)                      # copies once: the im2col matrix
        y = cols @ kernel.reshape(k * C, cout)
    else:
        y = np.empty((B * n, cout), dtype=x.dtype)
        for g in range(groups):
            cols = w[..., g * cin_g:(g + 1) * cin_g].reshape(B * n, k * cin_g)
            y[:, g * cout_g:(g + 1) * cout_g] = cols @ kernel[:, :, g * cout_g:(g + 1) * cout_g].reshape(
                k * cin_g, cout_g)
    if bias is not None:
        y += bias
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
                y[:, t, o] += x[:, t * stride + j * dilation, g * cin_g:(g + 1) * cin_g] @ kernel[j, :, o]
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
        part = x[:, max(lo, 0):min(hi, T)]
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
    return x / np.maximum(np.sqrt((x ** 2).sum(axis=axis, keepdims=True)), epsilon)
