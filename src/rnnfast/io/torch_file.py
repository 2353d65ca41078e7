"""PyTorch recurrent modules -> :class:`~rnnfast.TorchRNN` (and cells -> :class:`~rnnfast.TorchCell`):
from files and live modules; :func:`read_tensors`, every tensor of a file.

Files (:func:`load_torch_file`): ``torch.save`` zip or legacy files (read by
``torch_pickle``, without PyTorch, running nothing from the file) and
``.safetensors`` files (read by ``safetensors``). The file may hold the module's
state_dict itself or any checkpoint of dicts, lists and tuples with the state_dict
inside it; the recurrent module is found by its tensor names (``weight_ih_l0`` ...)
and chosen with ``prefix=`` when there are several (more than one is refused without
it); the file's other tensors are named in the model's ``ignored_tensors``. A cell's
state_dict (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, no ``_l0``) gives a
:class:`~rnnfast.TorchCell`; fastai's ``<prefix>weight_hh_l0_raw`` is the weight of the
module under ``<prefix>module.`` (see ``RAW_SUFFIX``).

The architecture is inferred from tensor names and shapes (PyTorch's layout, see
``torch_convert``):

- ``weight_hr_l0`` (P, H) present: an LSTM with ``proj_size=P`` and ``hidden_size=H``;
  otherwise ``hidden_size`` is the number of columns of ``weight_hh_l0``;
- the cell is the number of gates, rows of ``weight_ih_l0`` / ``hidden_size``:
  1 ``nn.RNN``, 3 ``nn.GRU``, 4 ``nn.LSTM``; ``input_size`` is its column count;
- ``num_layers`` is one more than the largest ``_l{k}``; ``bidirectional`` is the
  presence of ``_reverse`` tensors; ``bias`` the presence of ``bias_ih_l0``;
- every other tensor must then have exactly the shape such a module gives it.

What a file cannot say comes as keywords: ``nonlinearity`` (``nn.RNN``'s "tanh" or
"relu") and ``batch_first``. Live modules (:func:`from_torch`) give all of it
themselves.
"""

import math
import os
import re

import numpy as np

from .. import cells
from .._quant import check_precision
from ..errors import FormatError, UnsupportedLayerError
from ..layers import RNNLayer
from ..model_torch import TorchCell, TorchRNN
from ._foreign import name_foreign
from ._sniff import FORMAT_NAMES, detect
from .safetensors import SafeTensorRecord, SafetensorsFile
from .torch_convert import DTYPES, FLOAT_DTYPES, GATES, cell_weights_from_torch
from .torch_pickle import TensorRecord, open_torch_file, quote

__all__ = [
    "load_torch_file",
    "read_tensors",
    "from_torch",
    "infer_architecture",
    "infer_cell_architecture",
    "Architecture",
    "build_torch_rnn",
    "build_torch_cell",
]

# Names are matched whole (``fullmatch``: a ``$`` would also match before a trailing
# newline, taking ``'weight_ih_l0\n'`` for ``weight_ih_l0``); PyTorch writes layer
# indices as ``%d`` (no leading zeros), and no module has a million layers.
_PARAM = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(0|[1-9][0-9]{0,5})(_reverse)?")
#: A key naming a recurrent parameter: the module prefix, then a module's tensor
#: (``weight_ih_l0`` ...), fastai's WeightDropout copy of one (``weight_hh_l0_raw``), or a
#: cell's (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``: nn.GRUCell / LSTMCell /
#: RNNCell).
_KEY = re.compile(
    r"(.*?)((?:weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l[0-9]+(?:_reverse)?(?:_raw)?"
    r"|weight_ih|weight_hh|bias_ih|bias_hh)",
    re.DOTALL,
)
#: A cell's tensors (nn.GRUCell / nn.LSTMCell / nn.RNNCell), as ``cells.TORCH_TENSORS`` names them.
CELL_TENSORS = cells.TORCH_TENSORS[:4]
#: fastai's WeightDropout (AWD-LSTM) keeps the weight it drops out as ``<name>_raw`` on
#: the wrapper and the wrapped module under ``module.``: at inference (eval mode) the
#: module runs with the raw weight itself, so ``<prefix>weight_hh_l0_raw`` is the
#: ``weight_hh_l0`` of the module under ``<prefix>module.``.
RAW_SUFFIX, RAW_MODULE = "_raw", "module."
_CELL = {c.num_gates: c.torch_module for c in cells.CELLS.values() if c.torch_module}
_NONLINEARITIES = (None, "tanh", "relu")


class Architecture:
    """An ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` as its tensors describe it.

    Attributes
    ----------
    cell : {"GRU", "LSTM", "RNN"}
    input_size, hidden_size, num_layers, num_directions, proj_size : int
        ``proj_size`` is 0 without a projection.
    bias : bool
    is_cell : bool
        An ``nn.GRUCell`` / ``nn.LSTMCell`` / ``nn.RNNCell`` (one step, one layer, one
        direction; tensors named without ``_l0``).
    """

    __slots__ = ("cell", "input_size", "hidden_size", "num_layers", "num_directions", "bias", "proj_size", "is_cell")

    def __init__(self, cell, input_size, hidden_size, num_layers, num_directions, bias, proj_size, is_cell=False):
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.num_layers, self.num_directions, self.bias, self.proj_size = (num_layers, num_directions, bias, proj_size)
        self.is_cell = bool(is_cell)

    @property
    def gates(self):
        return cells.by_torch_module(self.cell).num_gates

    def __repr__(self):
        if self.is_cell:
            return "%sCell(%d, %d%s)" % (
                self.cell,
                self.input_size,
                self.hidden_size,
                "" if self.bias else ", bias=False",
            )
        extra = ""
        if self.num_layers != 1:
            extra += ", num_layers=%d" % self.num_layers
        if not self.bias:
            extra += ", bias=False"
        if self.num_directions == 2:
            extra += ", bidirectional=True"
        if self.proj_size:
            extra += ", proj_size=%d" % self.proj_size
        return "%s(%d, %d%s)" % (self.cell, self.input_size, self.hidden_size, extra)

    def expected_shapes(self):
        """Tensor name -> shape, for every tensor of this module's state_dict."""
        G, H, P = self.gates, self.hidden_size, self.proj_size
        Ho = P or H
        shapes: dict[str, tuple[int, ...]] = {}
        if self.is_cell:
            shapes.update(weight_ih=(G * H, self.input_size), weight_hh=(G * H, H))
            if self.bias:
                shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
            return shapes
        for k in range(self.num_layers):
            I = self.input_size if k == 0 else self.num_directions * Ho
            for d in range(self.num_directions):
                sfx = "_l%d%s" % (k, "_reverse" if d else "")
                shapes["weight_ih" + sfx] = (G * H, I)
                shapes["weight_hh" + sfx] = (G * H, Ho)
                if self.bias:
                    shapes["bias_ih" + sfx] = (G * H,)
                    shapes["bias_hh" + sfx] = (G * H,)
                if P:
                    shapes["weight_hr" + sfx] = (P, H)
        return shapes


def infer_architecture(shapes, prefix=""):
    """Infer the module from its state_dict's tensor names and shapes.

    Parameters
    ----------
    shapes : dict of str -> tuple of int
        Tensor names without the module prefix (``weight_ih_l0``, ...) -> shapes.
    prefix : str
        Put before tensor names in error messages.

    Returns
    -------
    Architecture

    Raises
    ------
    FormatError
        Naming the tensor and the shapes, when the set of tensors is not one module's.
    """

    def nm(n):
        return quote(prefix + n)

    layers: dict[int, str] = {}  # layer index -> its first tensor's name
    reverse = False
    for n in shapes:
        m = _PARAM.fullmatch(n) if isinstance(n, str) else None
        if not m:
            raise FormatError("tensor %s is not a parameter of nn.GRU, nn.LSTM or nn.RNN" % nm(str(n)))
        layers.setdefault(int(m.group(2)), n)
        reverse = reverse or bool(m.group(3))
    top = max(layers) if layers else 0
    if top >= len(layers):
        # (the layer count comes from the largest index: bound it by the tensors present
        # before anything is sized by it)
        missing = min(k for k in range(top + 1) if k not in layers)
        raise FormatError(
            "tensor %s names layer %d, but the file holds no tensors of layer %d" % (nm(layers[top]), top, missing)
        )
    for n in ("weight_ih_l0", "weight_hh_l0"):
        if n not in shapes:
            raise FormatError("tensor %s is missing (found %s)" % (nm(n), ", ".join(map(nm, shapes))))
        if len(shapes[n]) != 2:
            raise FormatError("tensor %s must be 2-D, it has shape %s" % (nm(n), tuple(shapes[n])))
    GH, I = shapes["weight_ih_l0"]
    rows_hh, Ho = shapes["weight_hh_l0"]
    if rows_hh != GH:
        raise FormatError(
            "tensor %s has shape %s but %s has shape %s: their rows (gates x hidden_size) "
            "must agree" % (nm("weight_ih_l0"), (GH, I), nm("weight_hh_l0"), (rows_hh, Ho))
        )
    if "weight_hr_l0" in shapes:
        shr = tuple(shapes["weight_hr_l0"])
        if len(shr) != 2 or shr[0] != Ho:
            raise FormatError(
                "tensor %s has shape %s; a projection is (proj_size, hidden_size) with "
                "proj_size = %d, the columns of %s %s"
                % (nm("weight_hr_l0"), shr, Ho, nm("weight_hh_l0"), (rows_hh, Ho))
            )
        H, P = shr[1], Ho
        if H == 0 or GH != 4 * H:
            raise FormatError(
                "tensor %s %s is a projection, which only an LSTM has, but %s %s does not "
                "have 4 * hidden_size = %d rows" % (nm("weight_hr_l0"), shr, nm("weight_ih_l0"), (GH, I), 4 * H)
            )
        if not 0 < P < H:
            # PyTorch: "proj_size has to be smaller than hidden_size" (and positive)
            raise FormatError(
                "tensor %s %s would make an LSTM with proj_size %d and hidden_size %d, which "
                "PyTorch cannot build (0 < proj_size < hidden_size)" % (nm("weight_hr_l0"), shr, P, H)
            )
    else:
        H, P = Ho, 0
    if H == 0 or GH % H or GH // H not in _CELL:
        raise FormatError(
            "tensor %s has shape %s and %s has shape %s: the rows must be 1 (RNN), 3 (GRU) "
            "or 4 (LSTM) times the hidden size %d" % (nm("weight_ih_l0"), (GH, I), nm("weight_hh_l0"), (rows_hh, Ho), H)
        )
    if I == 0:
        raise FormatError("tensor %s has shape %s: input_size 0 is not supported" % (nm("weight_ih_l0"), (GH, I)))
    arch = Architecture(
        _CELL[GH // H], I, H, top + 1, 2 if reverse else 1, "bias_ih_l0" in shapes or "bias_hh_l0" in shapes, P
    )
    expected = arch.expected_shapes()
    for n, shape in expected.items():
        if n not in shapes:
            raise FormatError("tensor %s is missing: an %s has one of shape %s" % (nm(n), arch, shape))
        if tuple(shapes[n]) != shape:
            raise FormatError("tensor %s has shape %s; an %s needs %s" % (nm(n), tuple(shapes[n]), arch, shape))
    for n in shapes:
        if n not in expected:
            raise FormatError(
                "unexpected tensor %s of shape %s: an %s has no such tensor" % (nm(n), tuple(shapes[n]), arch)
            )
    return arch


def infer_cell_architecture(shapes, prefix=""):
    """Infer an ``nn.GRUCell`` / ``nn.LSTMCell`` / ``nn.RNNCell`` from its state_dict's
    tensor names (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``) and shapes.

    Parameters
    ----------
    shapes : dict of str -> tuple of int
        Tensor names without the module prefix -> shapes.
    prefix : str
        Put before tensor names in error messages.

    Returns
    -------
    Architecture
        With ``is_cell`` true, one layer, one direction.

    Raises
    ------
    FormatError
        Naming the tensor and the shapes, when the set of tensors is not one cell's.
    """

    def nm(n):
        return quote(prefix + n)

    for n in shapes:
        if n not in CELL_TENSORS:
            raise FormatError(
                "tensor %s is not a parameter of nn.GRUCell, nn.LSTMCell or nn.RNNCell (found beside %s)"
                % (nm(str(n)), ", ".join(nm(c) for c in CELL_TENSORS if c in shapes))
            )
    for n in ("weight_ih", "weight_hh"):
        if n not in shapes:
            raise FormatError("tensor %s is missing (found %s)" % (nm(n), ", ".join(map(nm, shapes))))
        if len(shapes[n]) != 2:
            raise FormatError("tensor %s must be 2-D, it has shape %s" % (nm(n), tuple(shapes[n])))
    GH, I = shapes["weight_ih"]
    rows_hh, H = shapes["weight_hh"]
    if rows_hh != GH or H == 0 or GH % H or GH // H not in _CELL:
        raise FormatError(
            "tensor %s has shape %s and %s has shape %s: a cell's are (G * hidden_size, input_size) and "
            "(G * hidden_size, hidden_size) with G = 1 (RNNCell), 3 (GRUCell) or 4 (LSTMCell)"
            % (nm("weight_ih"), (GH, I), nm("weight_hh"), (rows_hh, H))
        )
    if I == 0:
        raise FormatError("tensor %s has shape %s: input_size 0 is not supported" % (nm("weight_ih"), (GH, I)))
    arch = Architecture(_CELL[GH // H], I, H, 1, 1, "bias_ih" in shapes or "bias_hh" in shapes, 0, is_cell=True)
    for n, shape in arch.expected_shapes().items():
        if n not in shapes:
            raise FormatError("tensor %s is missing: an %s has one of shape %s" % (nm(n), arch, shape))
        if tuple(shapes[n]) != shape:
            raise FormatError("tensor %s has shape %s; an %s needs %s" % (nm(n), tuple(shapes[n]), arch, shape))
    return arch


def _mode(arch, nonlinearity):
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError("nonlinearity must be 'tanh' or 'relu', got %r" % (nonlinearity,))
    modes = {act: mode for mode, act in cells.by_torch_module(arch.cell).torch_modes.items()}
    if nonlinearity not in (None,) + tuple(modes):
        raise ValueError("nonlinearity=%r is an nn.RNN option; the weights are an nn.%s's" % (nonlinearity, arch.cell))
    return modes[nonlinearity or "tanh"]


def _compute_dtype(dtype, stored):
    """The compute dtype: the ``dtype`` option if given, else float64 when every stored
    weight is float64, else float32."""
    if dtype is None:
        return np.dtype(np.float64 if stored and all(s == "float64" for s in stored) else np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError("dtype must be float32 or float64, got %r" % (dtype,)) from None
    if dt not in (np.float32, np.float64):
        raise ValueError("dtype must be float32 or float64, got %r" % (dtype,))
    return dt


def build_torch_rnn(arch, arrays, *, nonlinearity=None, batch_first=False, dtype=np.float32, source=None):
    """Canonical layers from a state_dict's arrays, wrapped as a :class:`~rnnfast.TorchRNN`.

    Parameters
    ----------
    arch : Architecture
    arrays : dict of str -> ndarray
        The module's tensors by name (no prefix), in PyTorch's layout.
    nonlinearity : {None, "tanh", "relu"}
    batch_first : bool
    dtype : float32 or float64
        The compute dtype; weights are converted to it once, here.
    source : str, optional
        Where the weights came from (a path, or a note for a live module).
    """
    mode = _mode(arch, nonlinearity)
    cell, act = cells.by_torch_mode(mode)
    layers = []
    for k in range(arch.num_layers):
        weights = []
        for d in range(arch.num_directions):
            sfx = "_l%d%s" % (k, "_reverse" if d else "")
            weights.append(
                cell_weights_from_torch(
                    mode,
                    arrays["weight_ih" + sfx],
                    arrays["weight_hh" + sfx],
                    arrays.get("bias_ih" + sfx),
                    arrays.get("bias_hh" + sfx),
                    arrays.get("weight_hr" + sfx),
                )
            )
        layers.append(
            RNNLayer(cell.name, weights, reset_after=True, activation=act, recurrent_activation="sigmoid", dtype=dtype)
        )
    return TorchRNN(layers, batch_first=batch_first, bias=arch.bias, source=source)


def build_torch_cell(arch, arrays, *, nonlinearity=None, dtype=np.float32, source=None):
    """A :class:`~rnnfast.TorchCell` from a cell's state_dict arrays (``weight_ih``,
    ``weight_hh``, ``bias_ih``, ``bias_hh``; PyTorch's layout), ``arch`` from
    :func:`infer_cell_architecture`. The other parameters as for :func:`build_torch_rnn`."""
    mode = _mode(arch, nonlinearity)
    cell, act = cells.by_torch_mode(mode)
    w = cell_weights_from_torch(
        mode, arrays["weight_ih"], arrays["weight_hh"], arrays.get("bias_ih"), arrays.get("bias_hh")
    )
    layer = RNNLayer(cell.name, [w], reset_after=True, activation=act, recurrent_activation="sigmoid", dtype=dtype)
    return TorchCell(layer, bias=arch.bias, source=source)


# -- finding the module's tensors in a file ----------------------------------------------


#: Deepest nesting of containers searched for the module (a checkpoint has a few levels).
MAX_DEPTH = 100


def _walk(root, is_tensor):
    """All tensors in a tree of dicts / lists / tuples, and the candidate modules.

    Returns
    -------
    groups : dict of (path, prefix) -> dict of name -> record
        Tensors whose key ends in a recurrent parameter name, grouped by the dict
        they sit in (its path of keys from the root) and the key prefix before the
        name; any other tensor directly under such a prefix joins the group (so that
        the architecture check names it).
    tensors : list of (dotted name, record)
    """
    groups, tensors, seen = {}, [], set()
    stack: list[tuple[tuple[str, ...], object]] = [((), root)]
    while stack:
        path, obj = stack.pop()
        if not isinstance(obj, (dict, list, tuple)) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if len(path) > MAX_DEPTH:
            raise FormatError("containers nested more than %d levels deep" % MAX_DEPTH)
        items = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj))
        children: list[tuple[tuple[str, ...], object]] = []
        others = []
        found: dict[str, dict[str, object]] = {}
        raw: dict = {}
        for k, v in items:
            if is_tensor(v):
                tensors.append((".".join(path + (str(k),)), v))
                m = _KEY.fullmatch(k) if isinstance(obj, dict) and isinstance(k, str) else None
                if m and (m.group(1) == "" or m.group(1).endswith(".")):
                    name = m.group(2)
                    if name.endswith(RAW_SUFFIX):  # fastai WeightDropout: see RAW_SUFFIX
                        raw.setdefault(m.group(1) + RAW_MODULE, []).append((k, name[: -len(RAW_SUFFIX)], v))
                    else:
                        found.setdefault(m.group(1), {})[name] = v
                elif isinstance(k, str):
                    others.append((k, v))
            elif isinstance(v, (dict, list, tuple)):
                children.append((path + (str(k),), v))
        for prefix, recs in raw.items():
            for k, name, v in recs:
                if prefix in found:
                    # the raw weight is the one the wrapped module runs with (a stale copy
                    # under the module's own name, as fastai v1 saved it, is left out)
                    found[prefix][name] = v
                else:  # no wrapped module beside it: an unknown tensor
                    others.append((k, v))
        for k, v in others:  # not a plain RNN module if it has other tensors
            cut = k.rfind(".") + 1
            if k[:cut] in found:
                found[k[:cut]][k[cut:]] = v
        for prefix, recs in found.items():
            if (path, prefix) in groups:
                # two containers at one dotted path (keys 1 and "1", say): which one the
                # name means cannot be told, so neither is taken
                raise FormatError(
                    "two containers hold tensors under the same name %s" % quote(_full_name(path, prefix))
                )
            groups[(path, prefix)] = recs
        stack.extend(reversed(children))
    return groups, tensors


def _full_name(path, prefix):
    return ".".join(path) + "." + prefix if path else prefix


def _describe(root, tensors):
    """Say in words what a file holds (for the 'no RNN here' error)."""

    def tensor_list(items):
        shown = ", ".join("%s %s %s" % (quote(n), list(r.shape), r.dtype) for n, r in items[:8])
        return shown + (", ..." if len(items) > 8 else "")

    if isinstance(root, dict):
        names = {n for n, _ in tensors}
        others = [str(k) for k in root if str(k) not in names]
        what = "a dict of %d entries" % len(root)
        if tensors:
            what += " with %d tensors: %s" % (len(tensors), tensor_list(tensors))
        else:
            what += " and no tensors"
        if others:
            what += "; other keys: %s" % ", ".join(quote(k) for k in others[:8])
        return what
    if isinstance(root, (list, tuple)):
        what = "a %s of %d items" % (type(root).__name__, len(root))
        return what + (" with %d tensors: %s" % (len(tensors), tensor_list(tensors)) if tensors else "")
    if hasattr(root, "shape") and hasattr(root, "dtype"):
        return "a single tensor %s %s" % (list(root.shape), root.dtype)
    return "a %s" % type(root).__name__


def _select(groups, tensors, root, prefix):
    """The (full prefix, tensors) of the one recurrent module chosen."""
    found = sorted((_full_name(p, pre), (p, pre)) for (p, pre) in groups)
    if not found:
        raise FormatError(
            "holds no nn.GRU / nn.LSTM / nn.RNN state_dict (no tensor named like "
            "'weight_ih_l0'); found %s" % _describe(root, tensors)
        )
    names = ", ".join(quote(f) for f, _ in found)
    if prefix is None:
        if len(found) > 1:
            raise FormatError(
                "holds %d recurrent modules, under the prefixes %s: choose one with prefix=..., "
                "e.g. rnnfast.load(path, prefix=%s) (rnnfast info --prefix on the command line)"
                % (len(found), names, quote(found[0][0]))
            )
        full, key = found[0]
        return full, groups[key]
    if not isinstance(prefix, str):
        raise TypeError("prefix must be a string, got %r" % (prefix,))
    if prefix and not prefix.endswith("."):
        prefix += "."
    hits = [(f, key) for f, key in found if prefix in (f, key[1])]
    if not hits:
        raise FormatError("no recurrent module under prefix %s; the file has them under %s" % (quote(prefix), names))
    if len(hits) > 1:
        raise FormatError(
            "prefix %s matches %d recurrent modules (%s): give the full prefix"
            % (quote(prefix), len(hits), ", ".join(quote(f) for f, _ in hits))
        )
    full, key = hits[0]
    return full, groups[key]


def _is_record(v):
    return isinstance(v, (TensorRecord, SafeTensorRecord))


def load_torch_file(path, *, prefix=None, nonlinearity=None, batch_first=False, dtype=None):
    """Load an ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` from a weights file, without PyTorch.

    Parameters
    ----------
    path : str or path-like
        ``torch.save(module.state_dict(), path)`` (zip format, or the legacy pre-1.6
        format), a checkpoint holding such a state_dict (nested dicts / lists), or a
        ``.safetensors`` file of one. Nothing from the file is executed: only tensors
        and plain containers are accepted.
    prefix : str, optional
        Where the module's tensors are, e.g. ``"encoder.rnn."`` for
        ``{"model": {"encoder.rnn.weight_ih_l0": ...}}``; the path of keys to the
        dict may be included (``"model.encoder.rnn."``). Needed only when the file
        holds several recurrent modules.
    nonlinearity : {"tanh", "relu"}, optional
        ``nn.RNN``'s activation (default "tanh"); a file cannot record it. "relu" for
        a GRU or LSTM is a ValueError.
    batch_first : bool
        As the module's ``batch_first`` (a file cannot record it). A cell's input has no
        time axis (``(batch, features)`` either way): the option changes nothing there.
    dtype : {None, "float32", "float64"}
        The compute dtype. Default: float64 when all the module's stored tensors are
        float64, else float32. Stored float16 / bfloat16 / float64 values are
        converted to it once at load time (float16 and bfloat16 widen exactly).

    Returns
    -------
    TorchRNN or TorchCell

    Raises
    ------
    FormatError
        Not a readable PyTorch or safetensors file; a refused pickle global; no, or
        several (without ``prefix``), recurrent modules; tensors inconsistent with
        one module (the message names the tensor and the shapes).
    ValueError
        Invalid options.
    """
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError("nonlinearity must be 'tanh' or 'relu', got %r" % (nonlinearity,))
    batch_first = _flag(batch_first, "batch_first")
    _compute_dtype(dtype, [])
    with _open_archive(path) as archive:
        tensors = []
        try:
            groups, tensors = _walk(archive.root, _is_record)
            full, recs = _select(groups, tensors, archive.root, prefix)
            shapes = {n: r.shape for n, r in recs.items()}
            if any(n in CELL_TENSORS for n in recs):
                arch = infer_cell_architecture(shapes, full)
            else:
                arch = infer_architecture(shapes, full)
            for n, r in recs.items():
                if r.dtype not in FLOAT_DTYPES:
                    raise FormatError(
                        "tensor %s has element type %s; expected floating point (%s)"
                        % (quote(full + n), r.dtype, ", ".join(FLOAT_DTYPES))
                    )
        except FormatError as e:
            hint = ""
            if any("parametrizations." in n for n, _ in tensors):
                hint = (
                    " (the file holds parametrized weights, e.g. weight_norm: save the state_dict after "
                    "torch.nn.utils.parametrize.remove_parametrizations, or use rnnfast.from_torch)"
                )
            raise FormatError("%s: %s%s" % (path, e, hint)) from None
        arrays = {n: archive.array(r) for n, r in recs.items()}
        used = {id(r) for r in recs.values()}
        ignored = {n: tuple(r.shape) for n, r in _tensors_in_order(archive.root) if id(r) not in used}
    dt = _compute_dtype(dtype, [r.dtype for r in recs.values()])
    if arch.is_cell:
        model = build_torch_cell(arch, arrays, nonlinearity=nonlinearity, dtype=dt, source=path)
    else:
        model = build_torch_rnn(arch, arrays, nonlinearity=nonlinearity, batch_first=batch_first, dtype=dt, source=path)
    model.ignored_tensors = ignored
    return model


def _open_archive(path):
    """The PyTorch or safetensors file at ``path``, opened (a context manager whose
    ``root`` holds the tensors' records and whose ``array(record)`` reads one)."""
    kind = detect(path)  # names the formats it does not read (ONNX, TorchScript ...)
    if kind == "safetensors":
        return SafetensorsFile(path)
    if kind == "torch-zip":
        return open_torch_file(path, "zip")
    if kind == "torch-legacy":
        return open_torch_file(path, kind)
    if kind == "onnx":
        raise FormatError("%s is an ONNX model, not a PyTorch or safetensors file: rnnfast.load reads it" % (path,))
    if kind.startswith("keras"):
        raise FormatError(
            "%s is a %s, not a PyTorch or safetensors file: rnnfast.load reads it" % (path, FORMAT_NAMES[kind])
        )
    raise FormatError(
        "%s is %s, not a PyTorch or safetensors file" % (path, name_foreign(path) or FORMAT_NAMES.get(kind, kind))
    )


def _tensors_in_order(root):
    """(dotted name, record) for every tensor in a tree of dicts / lists / tuples, in
    the file's order (depth first); a container met twice (shared in the pickle) is
    read once, under its first name. Depth is bounded as :func:`_walk` bounds it."""
    out, seen = [], set()
    stack: list = [((), iter([(None, root)]))]
    while stack:
        path, items = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        k, v = item
        name = path if k is None else path + (str(k),)
        if _is_record(v):
            out.append((".".join(name), v))
        elif isinstance(v, (dict, list, tuple)) and id(v) not in seen:
            seen.add(id(v))
            if len(name) > MAX_DEPTH:
                raise FormatError("containers nested more than %d levels deep" % MAX_DEPTH)
            stack.append((name, iter(list(v.items()) if isinstance(v, dict) else list(enumerate(v)))))
    return out


#: ``read_tensors`` returns at most this many times the file's bytes (plus
#: READ_SLACK_BYTES): bfloat16 widens to float32 (twice its bytes); more would mean
#: tensors that view the same bytes many times over, which no real file holds.
MAX_READ_RATIO = 4
READ_SLACK_BYTES = 1 << 20


def read_tensors(path):
    """Every tensor of a PyTorch or safetensors file, as numpy arrays, without PyTorch.

    Reads ``torch.save`` files (zip or legacy format) of a state_dict or of any
    checkpoint of dicts, lists and tuples around one (``{"state_dict": ...,
    "optimizer_states": [...]}`` as Lightning writes, ``{"model": ..., "epoch": 3}``), and
    ``.safetensors`` files. Nothing from the file is executed (the same restricted
    reader and checks as :func:`rnnfast.load`): a pickle global other than tensors and
    plain containers (a whole pickled module, say) is a :class:`~rnnfast.FormatError`.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    dict of str -> ndarray
        Tensor name -> a new array in native byte order, in the file's order. Names
        are the keys, nested ones joined with ``"."`` (``"state_dict.rnn.weight_ih_l0"``,
        ``"optimizer_states.0.state.0.exp_avg"``; list items by index). The arrays
        have the stored element type (float32, int64, bool ...), except bfloat16,
        widened exactly to float32 (numpy has no bfloat16). A tensor stored once and
        named twice (tied weights) is one array under both names. Values that are
        not tensors (an epoch number, hyper-parameters) are not returned.

    Raises
    ------
    rnnfast.FormatError
        Not a PyTorch or safetensors file (the message names a Keras, ONNX,
        TorchScript or TensorFlow file as such); a refused pickle global; a tensor of
        a type numpy cannot hold (quantized, float8); two tensors under one name.
    """
    path = os.fspath(path)
    with _open_archive(path) as archive:
        try:
            records = _tensors_in_order(archive.root)
        except FormatError as e:
            raise FormatError("%s: %s" % (path, e)) from None
        budget = MAX_READ_RATIO * os.path.getsize(path) + READ_SLACK_BYTES
        out: dict = {}
        arrays: dict = {}
        for name, rec in records:
            if name in out:
                raise FormatError("%s: two tensors under the name %s" % (path, quote(name)))
            a = arrays.get(id(rec))
            if a is None:
                if rec.dtype not in DTYPES or DTYPES[rec.dtype][1] is None:
                    raise FormatError(
                        "%s: tensor %s has element type %s, which rnnfast cannot read into numpy"
                        % (path, quote(name), rec.dtype)
                    )
                budget -= math.prod(rec.shape) * (4 if rec.dtype == "bfloat16" else DTYPES[rec.dtype][0])
                if budget < 0:
                    raise FormatError(
                        "%s: the tensors would take more than %d times the file's size (tensors viewing "
                        "the same bytes many times over)" % (path, MAX_READ_RATIO)
                    )
                a = arrays[id(rec)] = archive.array(rec)
            out[name] = a
    return out


def _from_torch_cell(torch, module, dtype):
    """A live ``nn.GRUCell`` / ``nn.LSTMCell`` / ``nn.RNNCell`` -> TorchCell."""
    nonlinearity = getattr(module, "nonlinearity", None)
    arrays = {}
    with torch.no_grad():
        for n in CELL_TENSORS:
            t = getattr(module, n, None)
            if t is None:
                continue
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise UnsupportedLayerError(type(module).__name__, "weights of type %s" % getattr(t, "dtype", type(t)))
            t = t.detach().to("cpu")
            if t.dtype == torch.bfloat16:
                t = t.float()  # exact; numpy has no bfloat16
            arrays[n] = t.numpy().copy()
    arch = infer_cell_architecture({n: a.shape for n, a in arrays.items()})
    name = type(module).__name__
    if arch.cell + "Cell" != name and not isinstance(module, getattr(torch.nn, arch.cell + "Cell")):
        raise UnsupportedLayerError(name, detail="rnnfast.from_torch takes an nn.GRUCell, nn.LSTMCell or nn.RNNCell")
    if (arch.input_size, arch.hidden_size, arch.bias) != (module.input_size, module.hidden_size, bool(module.bias)):
        raise FormatError(
            "the cell's weights describe %r but the cell says %s"
            % (arch, (module.input_size, module.hidden_size, bool(module.bias)))
        )
    dt = _compute_dtype(dtype, [str(a.dtype) for a in arrays.values()])
    return build_torch_cell(arch, arrays, nonlinearity=nonlinearity, dtype=dt, source="live torch.nn.%s" % name)


def _flag(v, name):
    if isinstance(v, (bool, np.bool_)) or (isinstance(v, int) and v in (0, 1)):
        return bool(v)
    raise TypeError("%s must be True or False, got %r" % (name, v))


def from_torch(module, *, dtype=None, precision="float32"):
    """Convert a live ``torch.nn.GRU`` / ``LSTM`` / ``RNN`` into a :class:`~rnnfast.TorchRNN`,
    or a live ``nn.GRUCell`` / ``LSTMCell`` / ``RNNCell`` into a :class:`~rnnfast.TorchCell`,
    from their weights (:func:`rnnfast.from_torch` sends any other module through ONNX).

    ``batch_first``, ``nonlinearity``, ``proj_size``, ``bias``, sizes and layers come
    from the module; ``dropout`` is ignored (a no-op in inference).

    Parameters
    ----------
    module : torch.nn.RNNBase
        An ``nn.GRU``, ``nn.LSTM`` or ``nn.RNN`` (on any device; parametrized weights
        are read through the module's attributes).
    dtype : {None, "float32", "float64"}
        Compute dtype; default float64 for a float64 module, else float32.
    precision : {"float32", "bf16", "int8"}
        The recurrent products' precision, as :func:`rnnfast.load`'s.

    Returns
    -------
    TorchRNN or TorchCell
    """
    import torch

    precision = check_precision(precision)

    if not isinstance(module, torch.nn.Module):
        raise TypeError("from_torch takes a torch.nn.GRU, LSTM or RNN module, got %s" % type(module).__name__)
    if isinstance(module, torch.nn.RNNCellBase):
        cell = _from_torch_cell(torch, module, dtype)
        return cell if precision == "float32" else cell.with_precision(precision)
    if not isinstance(module, torch.nn.RNNBase) or getattr(module, "mode", None) not in GATES:
        raise UnsupportedLayerError(
            type(module).__name__, detail="rnnfast.from_torch takes an nn.GRU, nn.LSTM or nn.RNN"
        )
    names = list(getattr(module, "_flat_weights_names", None) or module.state_dict().keys())
    arrays = {}
    with torch.no_grad():
        for n in names:
            t = getattr(module, n)
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise UnsupportedLayerError(type(module).__name__, "weights of type %s" % getattr(t, "dtype", type(t)))
            t = t.detach().to("cpu")
            if t.dtype == torch.bfloat16:
                t = t.float()  # exact; numpy has no bfloat16
            arrays[n] = t.numpy().copy()
    arch = infer_architecture({n: a.shape for n, a in arrays.items()})
    declared = (
        module.mode.split("_")[0],
        module.input_size,
        module.hidden_size,
        module.num_layers,
        2 if module.bidirectional else 1,
        bool(module.bias),
        int(getattr(module, "proj_size", 0)),
    )
    inferred = (
        arch.cell,
        arch.input_size,
        arch.hidden_size,
        arch.num_layers,
        arch.num_directions,
        arch.bias,
        arch.proj_size,
    )
    if declared != inferred:
        raise FormatError("the module's weights describe %r but the module says %s" % (arch, declared))
    nonlinearity = cells.by_torch_mode(module.mode)[1]
    dt = _compute_dtype(dtype, [str(a.dtype) for a in arrays.values()])
    rnn = build_torch_rnn(
        arch,
        arrays,
        nonlinearity=nonlinearity,
        batch_first=bool(module.batch_first),
        dtype=dt,
        source="live torch.nn.%s" % type(module).__name__,
    )
    return rnn if precision == "float32" else rnn.with_precision(precision)
