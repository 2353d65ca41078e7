"""Arguments checked at the boundary: every public entry point runs what a caller
hands it through one of these functions before anything reaches the compiled core.

The rule for all of them: a refusal is a ``ValueError`` (``TypeError`` only for an
option of the wrong Python type, such as ``num_threads="two"``) whose message names
the argument, what it must be and what was given, e.g. ``lengths must be integers in
[0, 5], got dtype <U1``. Messages are printable on any stream: text that came from
outside (a value, a name) is shown with :func:`printable` or ``%r``, so that a lone
surrogate is escaped rather than breaking ``print``.

Array arguments (``x``, states, ``lengths``, ``mask``, ids) may be NumPy arrays,
anything ``numpy.asarray`` takes, or torch tensors (read without importing torch).
Their dtype kind must be bool, signed or unsigned integer or floating, as PyTorch
and Keras require: complex, timedelta64, datetime64, strings, bytes, structured and
object arrays are refused, never cast.
"""

import operator

import numpy as np

__all__ = [
    "printable",
    "integer_option",
    "array",
    "as_numeric",
    "as_input",
    "as_state",
    "as_ids",
    "model_input",
    "as_lengths",
    "as_mask",
    "compute_dtype",
    "weight",
]

#: dtype kinds rnnfast computes on: bool, signed and unsigned integers, floating.
NUMERIC_KINDS = "biuf"
_KIND_NAMES = {
    "c": "complex",
    "m": "timedelta64",
    "M": "datetime64",
    "O": "object",
    "U": "str",
    "S": "bytes",
    "V": "structured/void",
}
_INT64_MAX = np.iinfo(np.int64).max


def printable(s):
    """``str(s)`` with what some streams cannot write escaped: lone surrogates (from
    a file's names, or from ``os.fsdecode``) become ``\\udcxx``, so the text encodes
    as UTF-8 with ``errors='strict'``."""
    s = str(s)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _given(v):
    """A short, printable description of a given value: its repr and its type."""
    if isinstance(v, np.generic):
        v = v.item()  # 1.5, not np.float64(1.5)
    r = repr(v)
    if len(r) > 60:
        r = r[:57] + "..."
    return "%s (%s)" % (printable(r), type(v).__name__)


def integer_option(n, name, *, allow_none=True):
    """``n`` as a Python int (``operator.index``), or None if allowed.

    bool is refused although it is an int: ``num_threads=True`` is a mistake, not 1.

    Raises
    ------
    TypeError
        Naming ``name``, what it must be and what was given.
    """
    if n is None and allow_none:
        return None
    if not isinstance(n, bool):
        try:
            return operator.index(n)
        except TypeError:
            pass
    raise TypeError("%s must be an int%s, got %s" % (name, " or None" if allow_none else "", _given(n)))


def _is_tensor(x):
    return hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy")


def _from_tensor(x, name):
    """A torch tensor's values as a NumPy array (bfloat16 widened to float32, exactly)."""
    try:
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        if getattr(t, "is_conj", None) is not None and t.is_conj():
            t = t.resolve_conj()
        return t.numpy()
    except Exception as e:  # sparse, quantized, meta, ...: torch says why
        raise ValueError(
            "%s must be a dense numeric tensor or array, got a torch tensor of dtype %s "
            "on %s: %s"
            % (name, printable(getattr(x, "dtype", "?")), printable(getattr(x, "device", "?")), printable(e))
        ) from None


def array(x, name):
    """``x`` as a NumPy array (no copy where it already is one; torch tensors read).

    Raises
    ------
    ValueError
        If NumPy cannot make one array of it (ragged nesting, ints beyond 64 bits ...).
    """
    if _is_tensor(x):
        return _from_tensor(x, name)
    try:
        return np.asarray(x)
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(
            "%s must be an array of numbers, got %s that NumPy cannot read as one: %s"
            % (name, type(x).__name__, printable(e))
        ) from None


def _check_kind(a, name, what="numeric (float, integer or bool)"):
    kind = a.dtype.kind
    if kind in NUMERIC_KINDS:
        return a
    if kind == "c":
        raise ValueError("%s must be real (float, integer or bool), got dtype %s" % (name, a.dtype))
    raise ValueError("%s must be %s, got dtype %s (%s)" % (name, what, a.dtype, _KIND_NAMES.get(kind, kind)))


def as_numeric(x, name):
    """``x`` as a NumPy array of a numeric kind (bool, int, uint, float), not cast.

    Raises
    ------
    ValueError
        Any other kind, naming ``name``, the kinds taken and the dtype given.
    """
    return _check_kind(array(x, name), name)


def as_input(x, dtype, name="input"):
    """A model or layer input as a C-contiguous array of the compute ``dtype``.

    Parameters
    ----------
    x : array_like or torch.Tensor
        bool, integer or floating values (cast to ``dtype``; NaN and Inf pass through).
    dtype : float32 or float64
    name : str
        The argument's name in messages.

    Returns
    -------
    numpy.ndarray, C-contiguous, of ``dtype`` (``x`` itself when it already is one)
    """
    return np.ascontiguousarray(as_numeric(x, name), dtype=dtype)


def as_state(s, shape, dtype, name):
    """An initial state: zeros of ``shape`` if ``s`` is None, else a writable copy of
    ``s`` cast to ``dtype`` (the kernel writes the final state into it).

    Raises
    ------
    ValueError
        ``s`` not numeric, or not of ``shape``.
    """
    if s is None:
        return np.zeros(shape, dtype)
    s = as_input(s, dtype, name)
    if s.shape != tuple(shape):
        raise ValueError("%s must have shape %s, got %s" % (name, tuple(shape), s.shape))
    return s.copy()


def _integral(a, name, what):
    """Integer-valued ``a`` (of any numeric kind, or object holding Python ints) as
    int64, refusing non-integral, non-finite and out-of-int64 values."""
    if a.dtype == object:
        try:
            vals = [operator.index(v) for v in a.ravel()]
        except TypeError:
            bad = next(v for v in a.ravel() if not _index_ok(v))
            raise ValueError("%s must be %s, got the value %s" % (name, what, _given(bad))) from None
        if vals and (min(vals) < -_INT64_MAX - 1 or max(vals) > _INT64_MAX):
            raise ValueError("%s must be %s, got min %d max %d (beyond int64)" % (name, what, min(vals), max(vals)))
        return np.array(vals, np.int64).reshape(a.shape)
    _check_kind(a, name, what)
    if a.dtype.kind == "f" and a.size:
        if not np.all(np.isfinite(a)):
            raise ValueError(
                "%s must be %s, got a non-finite value, %s" % (name, what, _given(a[~np.isfinite(a)].flat[0]))
            )
        if np.any(a != np.trunc(a)):
            raise ValueError(
                "%s must be %s, got a non-integral value, %s" % (name, what, _given(a[a != np.trunc(a)].flat[0]))
            )
        if a.min() < -(2.0**63) or a.max() >= 2.0**63:
            raise ValueError(
                "%s must be %s, got min %r max %r (beyond int64)" % (name, what, a.min().item(), a.max().item())
            )
    elif a.dtype.kind == "u" and a.size and a.max() > _INT64_MAX:
        raise ValueError("%s must be %s, got max %d (beyond int64)" % (name, what, a.max()))
    return a.astype(np.int64)


def _index_ok(v):
    try:
        operator.index(v)
        return True
    except TypeError:
        return False


def as_lengths(lengths, T, B, name="lengths"):
    """Valid steps per row, ``(B,)`` integers in ``[0, T]``, as int64.

    Integral floats (``3.0``) and bools are taken as the integers they equal, as
    PyTorch's ``pack_padded_sequence`` does.
    """
    a = array(lengths, name)
    if a.shape != (B,):
        raise ValueError("%s must have shape (batch,) = (%d,), got %s" % (name, B, a.shape))
    a = _integral(a, name, "integers in [0, %d]" % T)
    if a.size and (a.min() < 0 or a.max() > T):
        raise ValueError("%s must lie in [0, %d], got min %d max %d" % (name, T, a.min(), a.max()))
    return a


def as_mask(mask, T, B, name="mask"):
    """A Keras mask ``(T, B)``: True (or 1) where the step counts, False (0) where it is
    masked; as uint8 0/1, C-contiguous.

    bool, or numbers that are all 0 or 1 (NaN is refused: it is not a truth value).
    """
    a = array(mask, name)
    if a.shape != (T, B):
        raise ValueError("%s must have shape (time, batch) = %s, got %s" % (name, (T, B), a.shape))
    what = "boolean (or numbers 0 and 1)"
    _check_kind(a, name, what)
    if a.dtype != bool and a.size:
        bad = (a != 0) & (a != 1)
        if np.any(bad):
            raise ValueError("%s must be %s, got the value %s" % (name, what, _given(a[bad].flat[0])))
    return np.ascontiguousarray(a, dtype=bool).view(np.uint8)


def as_ids(x, name="ids"):
    """Token ids for an Embedding: integers (or integral floats, or bools) as int64.
    The range check against the table is the layer's."""
    return _integral(array(x, name), name, "integers")


def model_input(x, input_shape, dtype, *, integer, what, shape_text):
    """A Keras model's input, checked against the model's ``input_shape``.

    Parameters
    ----------
    x : array_like or torch.Tensor
    input_shape : tuple
        Batch axis first; None where any size goes. A sequence's time axis (the
        second of three) must have at least one step.
    dtype : numpy.dtype
        The model's input dtype (floating input is cast to it).
    integer : bool
        The model starts with an Embedding: ``x`` holds ids (int64 out).
    what, shape_text : str
        The model (``KerasModel 'name'``) and ``input_shape`` as messages show them.
    """

    def _shape_ok(a):
        return a.ndim == len(input_shape) and all(
            want is None or want == got for want, got in zip(input_shape[1:], a.shape[1:])
        )

    if integer:
        a = array(x, "%s: ids" % what)
        if not _shape_ok(a):
            raise ValueError("%s: expected integer ids of shape %s, got shape %s" % (what, shape_text, a.shape))
        if a.ndim == 2 and a.shape[1] == 0:
            raise ValueError(
                "%s: expected ids of shape %s with at least one time step, got shape %s" % (what, shape_text, a.shape)
            )
        return as_ids(a, "%s: ids" % what)
    try:
        a = as_input(x, dtype)
    except ValueError as e:
        raise ValueError("%s: input must be a numeric array of shape %s: %s" % (what, shape_text, e)) from None
    if not _shape_ok(a):
        raise ValueError("%s: expected input of shape %s, got shape %s" % (what, shape_text, a.shape))
    if a.ndim == 3 and a.shape[1] == 0:
        raise ValueError(
            "%s: expected input of shape %s with at least one time step, got shape %s" % (what, shape_text, a.shape)
        )
    return a


def compute_dtype(dtype, name="dtype"):
    """``dtype`` as a NumPy dtype, float32 or float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError("%s must be float32 or float64, got %s" % (name, _given(dtype))) from None
    if dt not in (np.float32, np.float64):
        raise ValueError("%s must be float32 or float64, got %s" % (name, dt))
    return dt


def weight(a, shape, name, where, dtype=None, optional=False):
    """A weight array of exactly ``shape``, copied into ``dtype`` (C order); with
    ``dtype=None`` checked but not copied (a view of ``a`` where it is an array: the
    caller copies it once, into its own layout).

    Integer and floating weights are taken; bool, complex and the rest refused.
    """
    if a is None:
        if optional:
            return None
        raise ValueError("%s: %s is missing" % (where, name))
    a = array(a, "%s: %s" % (where, name))
    if a.shape != tuple(shape):
        raise ValueError("%s: %s must have shape %s, got %s" % (where, name, tuple(shape), a.shape))
    if a.dtype.kind not in "iuf":
        raise ValueError("%s: %s must be numeric, got dtype %s" % (where, name, a.dtype))
    if dtype is None:
        return a
    return np.array(a, dtype=dtype, order="C", copy=True)
