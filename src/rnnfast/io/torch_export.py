"""A live PyTorch model -> rnnfast (:func:`from_torch`).

- ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` and ``nn.GRUCell`` / ``nn.LSTMCell`` /
  ``nn.RNNCell``: their weights are read directly (:func:`rnnfast.io.torch_file.from_torch`),
  giving a :class:`~rnnfast.TorchRNN` or :class:`~rnnfast.TorchCell` called like the
  module.
- Any other ``nn.Module`` (an embedding, convolutions, a head around the recurrent
  layers): exported to ONNX in memory with ``torch.onnx.export`` on the user's example
  inputs and loaded by the ONNX frontend (:func:`rnnfast.from_onnx`), giving an
  :class:`~rnnfast.OnnxModel`. This is the same file the deployment route writes
  (``torch.onnx.export`` once, ``rnnfast.load("model.onnx")`` without torch), made
  without touching the disk.

PyTorch is imported only when one of these is called.
"""

import contextlib
import io
import itertools
import warnings

import numpy as np

from ..errors import UnsupportedLayerError
from .onnx import from_onnx
from .torch_file import from_torch as from_torch_weights

#: Most calls of the module trying an axis together with axes of the other inputs
#: (dynamic_input_axes).
MAX_GROUP_TRIALS = 64

__all__ = ["from_torch", "export_onnx", "dynamic_input_axes"]


def _torch():
    import torch  # only here: rnnfast never needs torch to load or run a file

    return torch


def _direct(torch, module):
    """Whether ``module`` is converted from its weights (an RNN module or cell)."""
    return isinstance(module, (torch.nn.RNNBase, torch.nn.RNNCellBase))


def _as_args(torch, example_inputs):
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    out = []
    for a in args:
        if isinstance(a, np.ndarray):
            a = torch.from_numpy(np.ascontiguousarray(a))
        out.append(a)
    return tuple(out)


@contextlib.contextmanager
def _exporter_warnings(torch):
    """The exporters' own warnings, silenced for the export rnnfast makes: the tracer's
    (raised from inside torch's C++ tracer, they become a SystemError there when warnings
    are errors), the TorchScript-based exporter's deprecation notice (rnnfast chose it),
    and torch.onnx's note on RNN batch sizes (the graph's batch axis is dynamic here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        yield


def _grown(torch, a, axis):
    """``a`` one longer along ``axis``: its first slice repeated (valid ids stay valid)."""
    return torch.cat([a, a.narrow(axis, 0, 1)], dim=axis)


def _runs(torch, module, args):
    try:
        module(*args)
    except Exception:  # any refusal of the shapes: the axis is fixed
        return False
    return True


def dynamic_input_axes(module, args, names):
    """The axes of the example inputs that the module takes at any size, found by
    calling it (eval mode, no grad) with one axis one longer at a time; an axis it
    refuses alone is tried together with a same-sized axis of some of the other inputs,
    at most one each (the batch axis of an input and of a state passed beside it: such
    axes share one symbol; at most ``MAX_GROUP_TRIALS`` such trials per axis).
    Axes of size 0 stay fixed.

    Returns
    -------
    dict of input name -> {axis: "name_axis"}
        ``torch.onnx.export``'s ``dynamic_axes`` (inputs without a dynamic axis left out).
    """
    torch = _torch()
    where = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    dynamic, same = set(), {}  # same: an axis found dynamic with others -> the first of them
    for i in where:
        for axis in range(args[i].ndim):
            if args[i].shape[axis] == 0:
                continue
            trial = list(args)
            trial[i] = _grown(torch, args[i], axis)
            if _runs(torch, module, trial):
                dynamic.add((i, axis))
                continue
            size, options = args[i].shape[axis], []
            for j in where:
                same_size = [(j, ax) for ax in range(args[j].ndim) if j != i and args[j].shape[ax] == size]
                if same_size:
                    options.append([None] + same_size)
            # at most one axis of each other input grows with it (a batch-1 example has
            # batch and length both 1: growing both of the ids' axes beside a state's
            # batch axis fails, and growing the length with it would tie the wrong two)
            for choice in itertools.islice(itertools.product(*options), 1, MAX_GROUP_TRIALS):
                group = [g for g in choice if g is not None]
                trial = list(args)
                trial[i] = _grown(torch, args[i], axis)
                for j, ax in group:
                    trial[j] = _grown(torch, trial[j], ax)
                if _runs(torch, module, trial):
                    dynamic.add((i, axis))
                    # one symbol for them: that of a member already found dynamic, if any
                    same[(i, axis)] = next((g for g in sorted(group) if g in dynamic), (i, axis))
                    break
    label = {i: name for name, i in zip(names, where)}
    out = {}
    for name, i in zip(names, where):
        axes = {}
        for axis in range(args[i].ndim):
            if (i, axis) in dynamic:
                j, ax = same.get((i, axis), (i, axis))
                axes[axis] = "%s_%d" % (label[j], ax)
        if axes:
            out[name] = axes
    return out


def export_onnx(module, example_inputs, *, dynamo=False, input_names=None, output_names=None, dynamic_axes=None):
    """The ONNX model (serialized bytes) of ``module`` traced on ``example_inputs``, made
    in memory with ``torch.onnx.export`` in eval mode (the module's mode is restored).

    Parameters
    ----------
    module : torch.nn.Module
    example_inputs : tensor, ndarray or tuple of them
        The positional arguments of one call of ``module``.
    dynamo : bool
        False (default): the TorchScript-based exporter (``dynamo=False``). True: the
        ``torch.export``-based one (slower to export; same ops for recurrent layers).
    input_names, output_names : list of str, optional
        Names of the graph's inputs and outputs (default ``input`` or ``input_0``,
        ``input_1``, ... for the inputs; the exporter's for the outputs). The
        torch.export-based exporter names inputs after ``forward``'s arguments.
    dynamic_axes : dict, optional
        As ``torch.onnx.export`` takes it (``{"input": {0: "batch", 1: "time"}}``).
        Default: the axes the module takes at any size (``dynamic_input_axes``:
        batch and sequence length, not features or channels), so that the graph takes
        any batch and length and fixes the rest. With ``dynamo=True`` each dynamic
        axis becomes ``torch.export.Dim.AUTO``.
    """
    torch = _torch()
    args = _as_args(torch, example_inputs)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if input_names is None:
        input_names = ["input"] if len(tensors) == 1 else ["input_%d" % i for i in range(len(tensors))]
    was_training = module.training
    module.eval()
    buf = io.BytesIO()
    try:
        with torch.no_grad(), _exporter_warnings(torch):
            if dynamic_axes is None:
                dynamic_axes = dynamic_input_axes(module, args, input_names)
            if dynamo:
                # dynamic_axes as torch.export takes them (AUTO: dynamic unless the model fixes it)
                auto, names, shapes = torch.export.Dim.AUTO, iter(input_names), []
                for a in args:
                    axes = None
                    if isinstance(a, torch.Tensor):
                        axes = dict.fromkeys(dynamic_axes.get(next(names, None)) or (), auto)
                    shapes.append(axes)
                program = torch.onnx.export(
                    module,
                    args,
                    dynamo=True,
                    dynamic_shapes=tuple(shapes),
                    input_names=input_names,
                    output_names=output_names,
                    verbose=False,
                )
                return program.model_proto.SerializeToString()
            torch.onnx.export(
                module,
                args,
                buf,
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
            )
    finally:
        module.train(was_training)
    return buf.getvalue()


def from_torch(module, example_inputs=None, *, dtype=None, precision="float32", dynamo=False, **export_options):
    """A live PyTorch module as an rnnfast model.

    Parameters
    ----------
    module : torch.nn.Module
        An ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` (-> :class:`~rnnfast.TorchRNN`), an
        ``nn.GRUCell`` / ``nn.LSTMCell`` / ``nn.RNNCell`` (-> :class:`~rnnfast.TorchCell`):
        converted from their weights, ``batch_first``, ``nonlinearity`` ... taken from
        the module. Any other module (-> :class:`~rnnfast.OnnxModel`): exported to
        ONNX in memory on ``example_inputs`` and loaded by :func:`rnnfast.from_onnx`.
        A ``torch.compile``'d module is converted as the module it wraps.
    example_inputs : tensor, ndarray or tuple of them, optional
        One call's positional arguments: needed for any module but the recurrent ones
        above (for those it is not used: their weights say everything).
    dtype : {None, "float32", "float64"}
        Compute dtype of a recurrent module or cell (default the module's). An
        exported model computes in the dtypes of its graph: export a ``.double()``
        module for float64.
    dynamo : bool
        Which ONNX exporter: False (default) the TorchScript-based one, True the
        ``torch.export``-based one.
    **export_options
        ``input_names``, ``output_names``, ``dynamic_axes``: see :func:`rnnfast.io.torch_export.export_onnx`
        (by default the axes the module takes at any size are dynamic).

    Returns
    -------
    TorchRNN, TorchCell or OnnxModel

    Raises
    ------
    TypeError
        ``module`` is not a ``torch.nn.Module``; an unknown export option.
    ValueError
        ``dtype`` for an exported module; export options for a recurrent module.
    rnnfast.UnsupportedLayerError
        ``example_inputs`` missing for a module that needs them; an ONNX op the
        frontend cannot run (named with its node); an RNN module of a kind rnnfast
        does not have.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError("from_torch takes a torch.nn.Module, got %s" % type(module).__name__)
    # torch.compile(module) wraps the module: its code and weights are the original's
    module = getattr(module, "_orig_mod", module) if type(module).__name__ == "OptimizedModule" else module
    unknown = set(export_options) - {"input_names", "output_names", "dynamic_axes"}
    if unknown:
        raise TypeError("from_torch got unexpected keyword arguments %s" % ", ".join(sorted(unknown)))
    if _direct(torch, module):
        if export_options or dynamo:
            raise ValueError(
                "%s is converted from its weights, not exported: export options do not apply" % type(module).__name__
            )
        return from_torch_weights(module, dtype=dtype, precision=precision)
    if example_inputs is None:
        # (an UnsupportedLayerError, as before example_inputs existed: without them such a
        # module cannot be converted)
        raise UnsupportedLayerError(
            type(module).__name__,
            detail="from_torch(module, example_inputs): a module other than nn.GRU / nn.LSTM / nn.RNN and "
            "their cells is exported to ONNX, which needs example inputs (one call's arguments, e.g. a "
            "batch of token ids)",
        )
    if precision != "float32":
        raise UnsupportedLayerError(
            type(module).__name__,
            "precision",
            "%r: reduced precision runs nn.GRU / nn.LSTM / nn.RNN and their cells, not yet exported "
            "(ONNX) models" % (precision,),
        )
    if dtype is not None:
        raise ValueError(
            "dtype applies to nn.GRU / nn.LSTM / nn.RNN and their cells; an exported %s computes in its "
            "graph's dtypes (export module.double() for float64)" % type(module).__name__
        )
    model = from_onnx(export_onnx(module, example_inputs, dynamo=dynamo, **export_options))
    model.source = "live torch %s, exported to ONNX (%s exporter)" % (
        type(module).__name__,
        "torch.export-based" if dynamo else "TorchScript-based",
    )
    return model
