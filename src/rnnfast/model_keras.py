"""KerasModel: a Keras model loaded into canonical layers, run with Keras' semantics.

The loader (``rnnfast.io.keras_file``, through the Keras layer registry
``rnnfast.io.keras_layers``) turns each Keras layer into one *node* below and wires the
nodes into a chain; :class:`KerasModel` runs them. This module imports nothing from
``rnnfast.io``. Inside the model every sequence is **time-major** ``(time, batch,
features)``, the layout the recurrent kernels want, and masks are ``(time, batch)``
booleans; the model transposes once on the way in and once on the way out, so
consecutive recurrent layers hand their outputs on without a copy.

Masks follow Keras: ``Masking`` and ``Embedding(mask_zero=True)`` create one, layers
that support masking (Dense, TimeDistributed, Activation, the dropout family) pass it
on, a recurrent layer passes it on with its output sequence (unchanged, also after
``go_backwards``) and consumes it otherwise, ``Flatten`` and the global poolings drop
it (``GlobalAveragePooling1D`` averages over the valid steps only).

Which Keras class becomes which node, and each class's summary row and parameter
count, is the Keras layer registry's business (:mod:`rnnfast.io.keras_layers`); the
converter leaves ``summary_row`` and ``num_params`` on each node.
"""
import copy

import numpy as np

from . import _validation
from ._progress import run_batched
from ._summary import Summarized
from .layers import ACTIVATIONS, SharedDirection, apply_activation, merge_directions, softmax
from .model import run_recurrent

__all__ = ["KerasModel", "KERAS_ACTIVATIONS", "keras_activation"]


# -- activations beyond the recurrent kernels' own (Dense and Activation layers) --------


def _sigmoid(x):
    return 0.5 * (np.tanh(0.5 * x) + 1)


def _softplus(x):
    return np.logaddexp(x, x.dtype.type(0))


def _log_softmax(x):
    y = x - x.max(axis=-1, keepdims=True)
    return y - np.log(np.exp(y).sum(axis=-1, keepdims=True))


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / np.sqrt(x.dtype.type(2))))


def _glu(x):
    a, b = np.split(x, 2, axis=-1)
    return a * _sigmoid(b)


def _sparsemax(x):
    z = -np.sort(-x, axis=-1)                                  # descending
    k = np.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    cs = np.cumsum(z, axis=-1)
    support = z - (cs - 1) / k > 0
    n = support.sum(axis=-1, keepdims=True)
    tau = (np.where(support, cs, 0).sum(axis=-1, keepdims=True) - 1) / n
    return np.maximum(x - tau, 0)


def _hard_sigmoid3(x):
    return np.clip(x + 3, 0, 6) / 6


#: Keras activations (Keras 3 meaning; Keras 2 files map ``hard_sigmoid`` to
#: ``hard_sigmoid_keras2``) that are not kernel activations, as numpy functions of
#: the last axis. The kernel ones (:data:`rnnfast.layers.ACTIVATIONS`) run in the
#: compiled core.
KERAS_ACTIVATIONS = {
    "softmax": softmax,
    "log_softmax": _log_softmax,
    "relu6": lambda x: np.clip(x, 0, 6),
    "leaky_relu": lambda x: np.where(x >= 0, x, x.dtype.type(0.2) * x),
    "silu": lambda x: x * _sigmoid(x),
    "gelu": _gelu,
    "celu": lambda x: np.maximum(x, 0) + np.minimum(np.expm1(np.minimum(x, 0)), 0),
    "glu": _glu,
    "tanh_shrink": lambda x: x - np.tanh(x),
    "hard_tanh": lambda x: np.clip(x, -1, 1),
    "hard_shrink": lambda x: np.where(np.abs(x) > 0.5, x, 0),
    "soft_shrink": lambda x: np.where(x > 0.5, x - 0.5, np.where(x < -0.5, x + 0.5, 0)),
    "sparse_plus": lambda x: np.where(x <= -1, 0, np.where(x < 1, (x + 1) ** 2 / 4, x)),
    "sparse_sigmoid": lambda x: np.where(x <= -1, 0, np.where(x >= 1, 1, (x + 1) / 2)),
    "squareplus": lambda x: (x + np.sqrt(x * x + 4)) / 2,
    "hard_silu": lambda x: x * _hard_sigmoid3(x),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "log_sigmoid": lambda x: -_softplus(-x),
    "sparsemax": _sparsemax,
}


def keras_activation(name, x):
    """Apply the Keras activation ``name`` (a key of :data:`rnnfast.layers.ACTIVATIONS`
    or :data:`KERAS_ACTIVATIONS`) to ``x`` (any shape; softmax-like ones act on the last
    axis). Returns a new array of ``x``'s dtype."""
    if name in ACTIVATIONS:
        return apply_activation(name, x)
    y = KERAS_ACTIVATIONS[name](x)
    return np.asarray(y, dtype=x.dtype)


# -- nodes: one per Keras layer -------------------------------------------------------


class _Node:
    """One Keras layer. ``run(x, mask, num_threads)`` takes the layer's (time-major)
    input and mask and returns ``(outputs, output_masks)``, two lists."""

    #: How the layer treats a mask: "keep" (pass it on), "drop", "create" (make its own);
    #: recurrent layers override :meth:`output_masks`.
    mask_rule = "keep"
    #: The layer takes integer ids (an Embedding first in the model).
    takes_ids = False
    #: The layer needs the sequence length the model declares (Flatten).
    fixes_length = False
    #: Its row of the summary table, ``(type, units, options)``, and its parameters as
    #: Keras counts them: left here by the converter (:mod:`rnnfast.io.keras_layers`).
    summary_row = None
    num_params = 0

    def __init__(self, name, keras_class, dtype):
        self.name = name
        self.keras_class = keras_class
        self.dtype = np.dtype(dtype)

    def mask_token(self, inbound):
        """What the mask this layer creates is computed from, as a comparable token
        (``inbound``: the key of its input), or None when it creates none. The loader
        checks the masks a Keras 3 config records against these."""
        return None

    def get_weights(self):
        """The layer's weights as Keras' ``layer.get_weights()`` gives them: a list of
        arrays, in Keras' order and shapes."""
        return []

    #: Flat output count and Keras' nesting of them (a list of indices; an int: one).
    structure = 0

    @property
    def num_outputs(self):
        return len(_flatten(self.structure))

    def output_masks(self, mask, created=None):
        """The masks of this node's outputs given its input ``mask`` (an array, or at
        load time any token), ``created`` being the mask it makes itself."""
        if self.mask_rule == "keep":
            return [mask]
        if self.mask_rule == "create":
            return [created]
        return [None] * self.num_outputs

    def _cast(self, x):
        if np.issubdtype(x.dtype, np.floating) and x.dtype != self.dtype:
            return x.astype(self.dtype)
        return x

    def describe(self):
        return self.keras_class

    def __repr__(self):
        return "<%s %r>" % (self.describe(), self.name)


class RecurrentNode(_Node):
    """A Keras GRU / LSTM / SimpleRNN / ``RNN(cell)`` layer: one canonical
    :class:`~rnnfast.layers.RNNLayer` per cell (``StackedRNNCells``: several, run in
    turn over the whole sequence with the same mask).

    Parameters
    ----------
    rnn_layers : list of RNNLayer
        One per cell, unidirectional, each with the layer's ``go_backwards``.
    stacked : bool
        ``RNN(StackedRNNCells)``: Keras nests the states per cell (a cell's ``h``, or
        ``[h, c]`` for an LSTM cell).
    """

    def __init__(self, name, keras_class, rnn_layers, *, return_sequences, return_state,
                 go_backwards, zero_output_for_mask, stacked=False, keras_biases=None):
        super().__init__(name, keras_class, rnn_layers[-1].dtype)
        self.rnn_layers = list(rnn_layers)
        # each cell's bias as Keras stores it (GRU reset-after: both rows), for get_weights
        self.keras_biases = list(keras_biases) if keras_biases is not None else [None] * len(self.rnn_layers)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.stacked = bool(stacked)
        counts = [layer.cell_spec.num_states for layer in self.rnn_layers]
        self.state_structure = []
        i = 1
        for n in counts:
            group = list(range(i, i + n))
            i += n
            if self.stacked:
                self.state_structure.append(group if n > 1 else group[0])
            else:
                self.state_structure.extend(group)
        self.num_states = i - 1
        self.structure = [0] + self.state_structure if self.return_state else 0

    def output_masks(self, mask, created=None):
        masks = [mask if self.return_sequences else None]
        return masks + [None] * (self.num_outputs - 1)

    def get_weights(self):
        out = []
        for layer, bias in zip(self.rnn_layers, self.keras_biases):
            w = layer.cell_weights()[0]
            out += [w.kernel, w.recurrent_kernel] + ([bias.copy()] if bias is not None else [])
        return out

    def run(self, x, mask, num_threads=None):
        if x.ndim != 3:
            raise ValueError("%s %r needs a sequence (batch, time, features), got an input of "
                             "shape %s" % (self.keras_class, self.name, _batch_major_shape(x)))
        x = self._cast(x)
        states = []
        for layer in self.rnn_layers[:-1]:
            # StackedRNNCells: each cell but the last runs over the whole sequence; its
            # outputs stay aligned with input time (also going backwards), and the next
            # cell skips the masked steps just as this one did.
            x, h_n, c_n = layer.forward(x, mask=mask, num_threads=num_threads)
            states += [h_n[0]] + ([c_n[0]] if c_n is not None else [])
        out, last_states = run_recurrent(
            self.rnn_layers[-1], x, return_sequences=self.return_sequences, mask=mask,
            zero_output_for_mask=self.zero_output_for_mask, return_state=True,
            num_threads=num_threads)
        outs = [out]
        if self.return_state:
            outs += states + last_states
        return outs, self.output_masks(mask)

    def describe(self):
        opts = [o for o in ("return_sequences", "return_state", "go_backwards") if getattr(self, o)]
        if self.zero_output_for_mask:
            opts.append("zero_output_for_mask")
        if self.keras_class == "RNN":
            cells = ["%s(%s)" % (layer.cell_spec.keras_cell, _cell_args(layer)) for layer in self.rnn_layers]
            inner = "[%s]" % ", ".join(cells) if self.stacked else cells[0]
        else:
            inner = _cell_args(self.rnn_layers[0])
        return "%s(%s)" % (self.keras_class, ", ".join([inner] + opts))


class BidirectionalNode(_Node):
    """Keras ``Bidirectional``: a forward and a backward :class:`RecurrentNode`, run as
    one two-direction :class:`~rnnfast.layers.RNNLayer` (``fused``) when the two are
    the same kind of cell, the usual case."""

    def __init__(self, name, forward, backward, merge_mode, fused=None):
        super().__init__(name, "Bidirectional", forward.dtype)
        self.forward_node, self.backward_node = forward, backward
        self.merge_mode = merge_mode
        self.fused = fused
        self.return_sequences = forward.return_sequences
        self.return_state = forward.return_state
        n_out = 2 if merge_mode is None else 1
        structure = list(range(n_out))
        if self.return_state:
            structure += _shift(forward.state_structure, n_out - 1)
            structure += _shift(backward.state_structure, n_out - 1 + forward.num_states)
        self.structure = structure if len(structure) > 1 else 0
        self.rnn_layers = [fused] if fused is not None else forward.rnn_layers + backward.rnn_layers

    def get_weights(self):
        return self.forward_node.get_weights() + self.backward_node.get_weights()

    def output_masks(self, mask, created=None):
        n_out = 2 if self.merge_mode is None else 1
        m = mask if self.return_sequences else None
        return [m] * n_out + [None] * (self.num_outputs - n_out)

    def run(self, x, mask, num_threads=None):
        if x.ndim != 3:
            raise ValueError("Bidirectional %r needs a sequence (batch, time, features), got an "
                             "input of shape %s" % (self.name, _batch_major_shape(x)))
        if self.fused is not None:
            out, states = run_recurrent(
                self.fused, self._cast(x), return_sequences=self.return_sequences,
                merge_mode=self.merge_mode, mask=mask, zero_output_for_mask=self.return_sequences,
                return_state=True, num_threads=num_threads)
        else:
            fo, _ = self.forward_node.run(x, mask, num_threads)
            bo, _ = self.backward_node.run(x, mask, num_threads)
            y, y_rev = fo[0], bo[0]
            if self.return_sequences:
                y_rev = y_rev[::-1]                 # Keras flips the backward sequence back
            out = merge_directions(np.concatenate([y, y_rev], axis=-1), self.merge_mode,
                                   y.shape[-1])
            states = fo[1:] + bo[1:]
        outs = list(out) if self.merge_mode is None else [out]
        if self.return_state:
            outs += states
        return outs, self.output_masks(mask)

    def describe(self):
        inner = self.forward_node.describe()
        if self.fused is None:
            inner += ", backward_layer=" + self.backward_node.describe()
        return "Bidirectional(%s, merge_mode=%r)" % (inner, self.merge_mode)


class DenseNode(_Node):
    """Keras ``Dense`` (any input rank: acts on the last axis) or ``TimeDistributed(Dense)``.
    ``activation`` is applied after :class:`~rnnfast.layers.Dense` when that one cannot
    (an activation of :data:`KERAS_ACTIVATIONS` other than softmax)."""

    def __init__(self, name, dense, activation=None):
        super().__init__(name, "Dense", dense.dtype)
        self.dense = dense
        self.activation = activation

    def get_weights(self):
        d = self.dense
        return [d.kernel.copy()] + ([d.bias.copy()] if d.bias is not None else [])

    def run(self, x, mask, num_threads=None):
        y = self.dense.forward(self._cast(x))
        if self.activation is not None:
            y = keras_activation(self.activation, y)
        return [y], [mask]

    def describe(self):
        act = self.activation or self.dense.activation
        extra = "" if act == "linear" else ", activation=%r" % act
        if self.dense.bias is None:
            extra += ", use_bias=False"
        return "Dense(%d%s)" % (self.dense.kernel.shape[1], extra)


class ActivationNode(_Node):
    """Keras ``Activation`` (or ``TimeDistributed(Activation)``)."""

    def __init__(self, name, activation, dtype):
        super().__init__(name, "Activation", dtype)
        self.activation = activation

    def run(self, x, mask, num_threads=None):
        return [keras_activation(self.activation, self._cast(x))], [mask]

    def describe(self):
        return "%s(%r)" % (self.keras_class, self.activation)


class IdentityNode(_Node):
    """A layer that is the identity at inference: Dropout and its kin, GaussianNoise,
    ActivityRegularization (it still casts to its dtype, as Keras does)."""

    def run(self, x, mask, num_threads=None):
        return [self._cast(x)], [mask]


class MaskingNode(_Node):
    """Keras ``Masking``: a step whose features all equal ``mask_value`` is masked and
    zeroed."""

    mask_rule = "create"

    def __init__(self, name, mask_value, dtype):
        super().__init__(name, "Masking", dtype)
        self.mask_value = float(mask_value)

    def mask_token(self, inbound):
        return ("any_ne", inbound, self.mask_value)

    def run(self, x, mask, num_threads=None):
        x = self._cast(x)
        keep = np.any(x != self.dtype.type(self.mask_value), axis=-1)
        return [x * keep[..., None].astype(x.dtype)], [keep]

    def describe(self):
        return "Masking(mask_value=%r)" % self.mask_value


class EmbeddingNode(_Node):
    """Keras ``Embedding``: integer ids (time-major ``(time, batch)`` here) to rows of
    ``table`` ``(input_dim, output_dim)``; ``mask_zero`` masks id 0."""

    def __init__(self, name, table, mask_zero, dtype):
        super().__init__(name, "Embedding", dtype)
        self.table = np.array(table, dtype=self.dtype, order="C")
        self.table.flags.writeable = False
        self.mask_zero = bool(mask_zero)
        self.mask_rule = "create" if self.mask_zero else "drop"

    takes_ids = True

    def mask_token(self, inbound):
        return ("ne", inbound, 0.0) if self.mask_zero else None

    def get_weights(self):
        return [self.table.copy()]

    def run(self, ids, mask, num_threads=None):
        n = self.table.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError("Embedding %r: ids must lie in [0, %d), got min %d max %d"
                             % (self.name, n, ids.min(), ids.max()))
        out = np.take(self.table, ids, axis=0)
        return [out], [ids != 0 if self.mask_zero else None]

    def describe(self):
        return "Embedding(%d, %d%s)" % (self.table.shape + (", mask_zero=True" if self.mask_zero else "",))


class FlattenNode(_Node):
    """Keras ``Flatten`` of a sequence: ``(batch, time, features)`` to
    ``(batch, time * features)`` (``channels_first``: features-major). Drops the mask."""

    mask_rule = "drop"
    fixes_length = True

    def __init__(self, name, dtype, channels_first=False):
        super().__init__(name, "Flatten", dtype)
        self.channels_first = bool(channels_first)

    def run(self, x, mask, num_threads=None):
        x = self._cast(x)
        if x.ndim == 3:                       # time-major (T, B, F)
            x = x.transpose(1, 2, 0) if self.channels_first else x.transpose(1, 0, 2)
        return [np.ascontiguousarray(x).reshape(x.shape[0], -1)], [None]


class TimeDistributedNode(_Node):
    """Keras ``TimeDistributed`` around a layer that acts per step on the last axis."""

    def __init__(self, name, inner):
        super().__init__(name, "TimeDistributed", inner.dtype)
        self.inner = inner

    def run(self, x, mask, num_threads=None):
        if x.ndim != 3:
            raise ValueError("TimeDistributed %r needs a sequence (batch, time, features), got an "
                             "input of shape %s" % (self.name, _batch_major_shape(x)))
        outs, _ = self.inner.run(x, mask, num_threads)
        return outs, [mask]

    def get_weights(self):
        return self.inner.get_weights()

    def describe(self):
        return "TimeDistributed(%s)" % self.inner.describe()


class GlobalPoolingNode(_Node):
    """Keras ``GlobalMaxPooling1D`` / ``GlobalAveragePooling1D`` (``channels_last``):
    the maximum or the mean over the steps of a sequence, ``(batch, time, features)``
    to ``(batch, features)`` (``(batch, 1, features)`` with ``keepdims``).

    Masks as Keras 3 treats them: the average is over the valid steps only (a row with
    none is NaN, 0/0, as in Keras); the maximum ignores the mask (Keras'
    ``GlobalMaxPooling1D`` does not support masking: it takes every step, masked ones
    with the values they carry). Both drop the mask.
    """

    mask_rule = "drop"

    def __init__(self, name, keras_class, reduce, dtype, keepdims=False):
        super().__init__(name, keras_class, dtype)
        if reduce not in ("max", "mean"):
            raise ValueError("reduce must be 'max' or 'mean', got %r" % (reduce,))
        self.reduce = reduce
        self.keepdims = bool(keepdims)

    def run(self, x, mask, num_threads=None):
        if x.ndim != 3:
            raise ValueError("%s %r needs a sequence (batch, time, features), got an input of "
                             "shape %s" % (self.keras_class, self.name, _batch_major_shape(x)))
        x = self._cast(x)                           # time-major (T, B, F)
        if self.reduce == "max":
            y = x.max(axis=0, keepdims=self.keepdims)
        elif mask is None:
            y = x.mean(axis=0, keepdims=self.keepdims)
        else:
            valid = np.asarray(mask, bool)[:, :, None]
            total = np.where(valid, x, x.dtype.type(0)).sum(axis=0, keepdims=self.keepdims)
            with np.errstate(invalid="ignore", divide="ignore"):
                y = total / valid.sum(axis=0, keepdims=self.keepdims).astype(x.dtype)
        return [y], [None]

    def describe(self):
        return "%s(%s)" % (self.keras_class, "keepdims=True" if self.keepdims else "")


# -- the model --------------------------------------------------------------------------


class KerasModel(Summarized):
    """A Keras model converted to canonical layers; ``predict`` gives what Keras gives.

    Built by :func:`rnnfast.load` (``.keras`` and HDF5 files) and
    :func:`rnnfast.from_keras` (live models), not directly. Called the way a Keras
    model is: ``model.predict(x, batch_size=None, verbose="auto")``, ``model(x,
    training=False)``, ``model.count_params()``, ``model.get_weights()``,
    ``model.output_shape``, ``model.summary()``.

    Attributes
    ----------
    name : str
        The Keras model's name.
    layers : list
        The converted layers in execution order (InputLayer left out), each with
        ``name``, ``keras_class`` and, for recurrent ones, ``rnn_layers``
        (:class:`~rnnfast.layers.RNNLayer`).
    input_shape : tuple
        ``(None, time or None, features)``, or ``(None, time or None)`` for integer
        input (models that start with an Embedding). The time is None (any length
        runs) unless a layer needs the declared one (Flatten).
    dtype : numpy.dtype or None
        The compute dtype (None when layers differ).
    keras_version : str
        The Keras version that wrote the model.
    """

    framework = "Keras"

    def __init__(self, steps, *, input_key, outputs, input_shape, input_dtype, integer_input,
                 name, keras_version, source=None, declared_input_shape=None):
        self._steps = list(steps)               # [(node, input key, [output keys])]
        self._input_key = input_key
        self._outputs = outputs                 # a key, or a nested list (dict) of keys
        self._output_keys = set(_flatten(outputs))
        self.input_shape = tuple(input_shape)
        # the shape the Keras model declares (its output_shape follows from it)
        self._declared_input_shape = _declared(declared_input_shape, self.input_shape)
        self._input_dtype = np.dtype(input_dtype)
        self._integer_input = bool(integer_input)
        self.name = name
        self.keras_version = keras_version
        self.source = source
        self._output_shape = None
        dts = {node.dtype for node, _, _ in self._steps}
        self.dtype = dts.pop() if len(dts) == 1 else (self._input_dtype if not dts else None)

    @property
    def layers(self):
        return [node for node, _, _ in self._steps]

    def predict(self, x, batch_size=None, verbose="auto", *, num_threads=None):
        """Run the model, as ``keras_model.predict(x)`` does (same positional order).

        Parameters
        ----------
        x : array_like, shape (batch, time, features)
            Or integer ids of shape (batch, time) for a model that starts with an
            Embedding. Floating input is cast to the model's input dtype (float32
            unless the model's input is float64, as Keras does); a torch tensor is
            accepted.
        batch_size : int, optional
            Rows per pass (default: all at once); bounds memory, not results.
        verbose : {"auto", 0, 1, 2}, optional
            1: a Keras-like progress bar over the batches, on standard error; 2: one
            line when done; "auto" (the default), 0 or None: silent.
        num_threads : int, optional, keyword only
            Threads for this call (default: :func:`rnnfast.get_num_threads`).

        Returns
        -------
        numpy.ndarray, or a list of them (nested like Keras' for several outputs)
            Batch-major, the shapes and values ``keras_model.predict(x)`` gives.
        """
        x = self._validated(x)
        return run_batched(lambda part: self._run(part, num_threads), x, batch_size, verbose=verbose)

    def __call__(self, x, training=None, *, num_threads=None):
        """``model(x)``, ``model(x, training=False)``: :meth:`predict` in one pass.

        ``training`` may be None or False (rnnfast runs inference only: training=True
        is a ValueError)."""
        if training is not None and training is not False:
            raise ValueError("%s runs inference only: training=%r is not supported (rnnfast has "
                             "no training mode; dropout and noise layers are the identity)"
                             % (self._what(), training))
        return self.predict(x, num_threads=num_threads)

    def count_params(self):
        """The model's parameters, as Keras' ``model.count_params()`` counts them."""
        return int(sum(node.num_params for node in self.layers))

    def get_weights(self):
        """The weights as Keras' ``model.get_weights()`` gives them: a list of arrays in
        Keras' order and shapes (per layer: GRU / LSTM / SimpleRNN ``kernel``,
        ``recurrent_kernel``, ``bias``; Dense ``kernel``, ``bias``; Embedding
        ``embeddings``; Bidirectional the forward layer's, then the backward layer's),
        in the compute dtype. Copies: changing them changes nothing in the model."""
        return [w for node in self.layers for w in node.get_weights()]

    @property
    def output_shape(self):
        """The output's shape as Keras gives it (``None`` for the batch and for any
        length the input does not fix); a list of them for several outputs."""
        if self._output_shape is None:
            self._output_shape = self._infer_output_shape()
        return self._output_shape

    def _infer_output_shape(self):
        # run one sample at two lengths (or the declared one): what varies is unknown
        shape = self._declared_input_shape
        if any(d is None for d in shape[2:]):
            raise ValueError("%s: the output shape is unknown (the input's features are not "
                             "declared)" % self._what())
        dt = np.int64 if self._integer_input else self._input_dtype
        probes = [np.zeros([1] + [t if d is None else d for d in shape[1:]], dt) for t in (1, 2)]
        y1, y2 = (self.predict(p, num_threads=1) for p in probes)

        def merged(a, b):
            return tuple(None if i == 0 or a.shape[i] != b.shape[i] else int(n)
                         for i, n in enumerate(a.shape))
        return _map_structure(merged, y1, y2)

    # -- describing itself ------------------------------------------------------------

    def summary_rows(self):
        """The rows of the summary table, one per layer: dicts with ``name``, ``type``,
        ``units``, ``options`` (str), ``parameters`` (int, as Keras counts them) and
        ``dtype`` (str)."""
        rows = []
        for node in self.layers:
            kind, units, opts = node.summary_row       # left by the registry's converter
            rows.append(dict(name=node.name, type=kind, units=units, options=opts,
                             parameters=int(node.num_params), dtype=node.dtype.name))
        return rows

    def summary_title(self):
        """The title line of the summary table."""
        dt = self.dtype.name if self.dtype is not None else "mixed dtypes"
        return "KerasModel %r: Keras %s, input %s, %s" % (self.name, self.keras_version,
                                                          _shape_str(self.input_shape), dt)

    def describe(self):
        """What the model is and takes, as a dict: ``framework`` ("Keras"), ``name``,
        ``input_shape`` (batch-major, None where any size runs), ``integer_input``
        (ids for an Embedding), ``vocabulary`` (the Embedding's ``input_dim``, else
        None), ``dtype`` (of the input), ``layers`` (:meth:`summary_rows`)."""
        vocab = next((n.table.shape[0] for n in self.layers if n.takes_ids), None)
        return dict(framework=self.framework, name=self.name, input_shape=self.input_shape,
                    integer_input=self._integer_input, vocabulary=vocab,
                    dtype=np.dtype(np.int64) if self._integer_input else self._input_dtype,
                    layers=self.summary_rows())

    def _validated(self, x):
        return _validation.model_input(x, self.input_shape, self._input_dtype, integer=self._integer_input,
                                       what=self._what(), shape_text=_shape_str(self.input_shape))

    def _run(self, x, num_threads):
        if x.ndim >= 2 and (x.ndim == 3 or self._integer_input):
            x = np.ascontiguousarray(np.swapaxes(x, 0, 1))        # time-major
        values = {self._input_key: x}
        masks = {self._input_key: None}
        for node, key_in, keys_out in self._steps:
            outs, out_masks = node.run(values[key_in], masks[key_in], num_threads)
            if key_in not in self._output_keys:
                del values[key_in]                  # a chain: nothing else reads it
            for k, v, m in zip(keys_out, outs, out_masks):
                values[k] = v
                masks[k] = m
        return _map_structure(lambda k: _batch_major(values[k]), self._outputs)

    def __getstate__(self):
        """For pickle (rnnfast.dask, rnnfast.ray): the canonical weights once. A fused
        ``Bidirectional`` keeps its forward and backward layers beside the two-direction
        one that runs; they travel as references to its directions. Packed copies are
        rebuilt on arrival (:meth:`RNNLayer.__setstate__ <rnnfast.layers.RNNLayer.__setstate__>`)."""
        state = self.__dict__.copy()
        state["_steps"] = [(_travelling(node), key_in, keys_out) for node, key_in, keys_out in self._steps]
        return state

    def _what(self):
        return "KerasModel %r" % self.name

    def __repr__(self):
        dt = self.dtype.name if self.dtype is not None else "mixed dtypes"
        lines = ["KerasModel(%r, Keras %s, %s, input %s)" % (
            self.name, self.keras_version, dt, _shape_str(self.input_shape))]
        width = max([len(n.name) for n in self.layers] + [4])
        for node in self.layers:
            lines.append("  %-*s  %s" % (width, node.name, node.describe()))
        return "\n".join(lines)


# -- helpers --------------------------------------------------------------------------


def _declared(declared, shape):
    """The declared input shape where it fits the one the model takes, else ``shape``."""
    try:
        d = tuple(None if v is None else int(v) for v in declared)
    except (TypeError, ValueError):
        return shape
    if len(d) != len(shape) or any(s is not None and s != v for s, v in zip(shape[1:], d[1:])):
        return shape
    return (None,) + d[1:]


def _travelling(node):
    """``node`` as it is pickled: a fused Bidirectional's forward and backward layers
    replaced by references to the fused layer's directions (copies of the nodes; the
    model itself is left as it is)."""
    inner = getattr(node, "inner", None)
    if isinstance(inner, _Node):
        node = copy.copy(node)
        node.inner = _travelling(inner)
        return node
    fused = getattr(node, "fused", None)
    if not isinstance(node, BidirectionalNode) or fused is None:
        return node
    node = copy.copy(node)
    for d, attr in enumerate(("forward_node", "backward_node")):
        sub = getattr(node, attr)
        if len(sub.rnn_layers) == 1 and sub.rnn_layers[0]._direction_matches(fused, d):
            sub = copy.copy(sub)
            sub.rnn_layers = [SharedDirection(fused, d, sub.rnn_layers[0])]
            setattr(node, attr, sub)
    return node



def _batch_major(y):
    return np.ascontiguousarray(np.swapaxes(y, 0, 1)) if y.ndim == 3 else y


def _batch_major_shape(x):
    s = list(x.shape)
    if x.ndim == 3:
        s[0], s[1] = s[1], s[0]
    return tuple(s)


def _shape_str(shape):
    return "(%s)" % ", ".join("batch" if i == 0 else ("any" if d is None else str(d))
                              for i, d in enumerate(shape))


def _cell_args(layer):
    """A cell's Keras arguments that differ from the defaults, for reprs."""
    args = ["%d" % layer.units]
    if layer.cell_spec.reset_before is not None and not layer.reset_after:
        args.append("reset_after=False")
    if layer.activation != "tanh":
        args.append("activation=%r" % layer.activation)
    if layer.recurrent_activation not in (None, "sigmoid"):
        args.append("recurrent_activation=%r" % layer.recurrent_activation)
    if layer.dtype != np.float32:
        args.append("dtype=%s" % layer.dtype.name)
    return ", ".join(args)


def _flatten(structure):
    """The leaves of a nested list (or dict) structure, in order."""
    if isinstance(structure, dict):
        structure = list(structure.values())
    if isinstance(structure, list):
        return [leaf for s in structure for leaf in _flatten(s)]
    return [structure]


def _shift(structure, by):
    if isinstance(structure, list):
        return [_shift(s, by) for s in structure]
    return structure + by


def _map_structure(fn, *structures):
    s0 = structures[0]
    if isinstance(s0, dict):
        return {k: _map_structure(fn, *(s[k] for s in structures)) for k in s0}
    if isinstance(s0, list):
        return [_map_structure(fn, *items) for items in zip(*structures)]
    return fn(*structures)
