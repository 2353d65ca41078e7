"""The layer table of ``model.summary()`` and ``rnnfast info``: one copy for both model
classes and the command line.

Columns: layer name, type, units, options, parameters (counted as the source framework
counts them: Keras' ``count_params()``, the sum of a PyTorch module's ``numel()``),
dtype. The title line names the model and where it came from.
"""
import os

__all__ = ["describe_source", "layer_rows", "summary_text"]


def describe_source(path):
    """Name the format of the model file at ``path`` in words (e.g. "Keras .keras
    archive", "PyTorch state_dict (zip)"), or return None when it is not a file
    rnnfast knows."""
    from .errors import FormatError
    from .io import sniff

    try:
        kind = sniff(path)
    except (OSError, FormatError):
        return None
    if kind == "hdf5":
        return "Keras HDF5 file"
    if kind == "safetensors":
        return "safetensors file"
    if kind == "torch-legacy":
        return "PyTorch file (legacy format)"
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    if "config.json" in names:
        return "Keras .keras archive"
    return "PyTorch file (zip)"


def _source_line(model, source):
    """'<format> <path>' for a file, or the model's own ``source`` text."""
    src = source if source is not None else getattr(model, "source", None)
    if src is None:
        return None
    src = str(src)
    if os.path.isfile(src):
        kind = describe_source(src)
        return "%s %s" % (kind, src) if kind else src
    return src


# -- rows ------------------------------------------------------------------------------


def _cell_options(layer):
    opts = []
    if layer.spec.reset_before is not None and not layer.reset_after:
        opts.append("reset_after=False")
    if layer.activation not in ("tanh", None):
        opts.append("activation=%s" % layer.activation)
    if layer.recurrent_activation not in (None, "sigmoid"):
        opts.append("recurrent_activation=%s" % layer.recurrent_activation)
    if layer.proj_size:
        opts.append("proj_size=%d" % layer.proj_size)
    return opts


def _params(node):
    """Parameters of a Keras node, as Keras counts them."""
    if getattr(node, "rnn_layers", None):
        return sum(layer.source_parameters for layer in node.rnn_layers)
    dense = getattr(node, "dense", None)
    if dense is not None:
        return int(dense.kernel.size + (dense.bias.size if dense.bias is not None else 0))
    table = getattr(node, "table", None)
    if table is not None:
        return int(table.size)
    inner = getattr(node, "inner", None)
    return _params(inner) if inner is not None else 0


def _keras_row(node):
    """(type, units, options) of one Keras node."""
    cls = node.keras_class
    opts = []
    if cls == "Bidirectional":
        fwd = node.forward_node
        _, units, inner = _keras_row(fwd)
        # Keras itself sets zero_output_for_mask inside Bidirectional: not worth a word
        opts = [o for o in inner.split(", ") if o and o != "zero_output_for_mask"]
        if node.merge_mode != "concat":
            opts.append("merge_mode=%s" % node.merge_mode)
        if node.fused is None:
            bwd = node.backward_node
            opts.append("backward_layer=%s(%s)" % (bwd.keras_class, _keras_row(bwd)[1]))
        return "Bidirectional(%s)" % fwd.keras_class, "2x%s" % units, ", ".join(opts)
    if getattr(node, "rnn_layers", None):
        layers = node.rnn_layers
        kind = cls if cls != "RNN" else "RNN(%s)" % "+".join(l.spec.keras_cell for l in layers)
        units = ",".join(str(l.units) for l in layers)
        for o in ("return_sequences", "return_state", "go_backwards", "zero_output_for_mask"):
            if getattr(node, o, False):
                opts.append(o)
        if len(layers) == 1:
            opts += _cell_options(layers[0])
        else:
            opts += ["cell %d: %s" % (i, o) for i, l in enumerate(layers) for o in _cell_options(l)]
        return kind, units, ", ".join(opts)
    if cls == "TimeDistributed":
        kind, units, o = _keras_row(node.inner)
        return "TimeDistributed(%s)" % kind, units, o
    if cls == "Dense":
        act = node.activation or node.dense.activation
        if act != "linear":
            opts.append("activation=%s" % act)
        if node.dense.bias is None:
            opts.append("use_bias=False")
        return "Dense", str(node.dense.kernel.shape[1]), ", ".join(opts)
    if cls == "Embedding":
        opts.append("input_dim=%d" % node.table.shape[0])
        if node.mask_zero:
            opts.append("mask_zero=True")
        return "Embedding", str(node.table.shape[1]), ", ".join(opts)
    if cls == "Masking":
        return "Masking", "", "mask_value=%g" % node.mask_value
    if hasattr(node, "activation") and isinstance(node.activation, str):
        return cls, "", "activation=%s" % node.activation
    return cls, "", ""


def layer_rows(model):
    """The rows of the layer table.

    Parameters
    ----------
    model : KerasModel or TorchRNN

    Returns
    -------
    list of dict
        Keys ``name``, ``type``, ``units`` (str), ``options`` (str), ``parameters``
        (int), ``dtype`` (str).
    """
    from .model_torch import TorchRNN

    rows = []
    if isinstance(model, TorchRNN):                  # one row per module layer
        kind = {"GRU": "GRU", "LSTM": "LSTM", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}[model.mode]
        for k, layer in enumerate(model.layers):
            opts = []
            if model.bidirectional:
                opts.append("bidirectional")
            if model.mode == "RNN_RELU":
                opts.append("nonlinearity=relu")
            if model.proj_size:
                opts.append("proj_size=%d" % model.proj_size)
            if not model.bias:
                opts.append("bias=False")
            rows.append(dict(name="l%d" % k, type=kind, units=str(layer.units), options=", ".join(opts),
                             parameters=layer.source_parameters, dtype=layer.dtype.name))
        return rows
    for node in model.layers:
        kind, units, opts = _keras_row(node)
        rows.append(dict(name=node.name, type=kind, units=units, options=opts,
                         parameters=_params(node), dtype=node.dtype.name))
    return rows


def _title(model):
    from .model_torch import TorchRNN

    if isinstance(model, TorchRNN):
        return repr(model)
    dt = model.dtype.name if model.dtype is not None else "mixed dtypes"
    shape = "(%s)" % ", ".join("batch" if i == 0 else ("any" if d is None else str(d))
                               for i, d in enumerate(model.input_shape))
    return "KerasModel %r: Keras %s, input %s, %s" % (model.name, model.keras_version, shape, dt)


def summary_text(model, source=None):
    """The layer table as text (what ``model.summary()`` prints and ``rnnfast info`` shows).

    Parameters
    ----------
    model : KerasModel or TorchRNN
    source : str, optional
        Where the model came from (a path is described with its format); default the
        model's ``source`` attribute.

    Returns
    -------
    str
        Lines without a final newline.
    """
    rows = layer_rows(model)
    head = dict(name="layer", type="type", units="units", options="options",
                parameters="parameters", dtype="dtype")
    cols = ["name", "type", "units", "options", "parameters", "dtype"]
    cells = [[str(r[c]) if c != "parameters" else "{:,}".format(r[c]) for c in cols] for r in rows]
    widths = [max([len(head[c])] + [len(cell[i]) for cell in cells]) for i, c in enumerate(cols)]
    right = {"units", "parameters"}

    def line(values):
        return "  ".join(v.rjust(w) if c in right else v.ljust(w)
                         for c, v, w in zip(cols, values, widths)).rstrip()

    sep = "-" * (sum(widths) + 2 * (len(cols) - 1))
    out = [_title(model)]
    src = _source_line(model, source)
    if src:
        out.append("source: " + src)
    out += [sep, line([head[c] for c in cols]), sep]
    out += [line(cell) for cell in cells]
    out.append(sep)
    out.append("total parameters: {:,}".format(sum(r["parameters"] for r in rows)))
    return "\n".join(out)


class Summarized:
    """Gives a model class ``summary()`` (KerasModel and TorchRNN)."""

    def summary(self, print_fn=None):
        """Print the layer table (what ``rnnfast info`` shows): per layer its name,
        type, units, options, parameters (counted as the source framework counts
        them) and dtype.

        Parameters
        ----------
        print_fn : callable, optional
            Called with the table's text (default ``print``), as in Keras.

        Returns
        -------
        None
        """
        (print if print_fn is None else print_fn)(summary_text(self))
