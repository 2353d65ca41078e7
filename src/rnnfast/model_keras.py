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
from typing import Any, Optional, Union

import numpy as np

from . import _plan, _validation
from . import stream as _stream
from ._products import matmul
from ._progress import run_batched
from ._special import erf
from ._summary import Summarized
from .errors import UnsupportedLayerError
from .graph import TRUE, leaves, map_structure, mask_or
from .layers import ACTIVATIONS, SharedDirection, apply_activation, merge_directions, softmax
from .model import run_recurrent
from .ops import affine, conv1d, conv_padding, layer_norm, multi_head_attention, pool1d, unit_norm
from .precision import ReducedPrecision, recurrent_layers

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
    return 0.5 * x * (1 + erf(x / np.sqrt(x.dtype.type(2))))


def _glu(x):
    a, b = np.split(x, 2, axis=-1)
    return a * _sigmoid(b)


def _sparsemax(x):
    z = -np.sort(-x, axis=-1)  # descending
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
    summary_row: Optional[tuple] = None
    num_params = 0
    #: The Keras weights as the file held them, where a converter changed the op's own
    #: (a BatchNormalization folded into a Dense): what :meth:`get_weights` returns.
    source_weights: Optional[list] = None

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
    structure: Union[int, list[Any]] = 0

    @property
    def num_outputs(self):
        n = self.__dict__.get("_num_outputs")
        if n is None:  # counted once (the structure is set when the node is made)
            n = self._num_outputs = len(leaves(self.structure))
        return n

    def output_masks(self, mask, created=None):
        """The masks of this node's outputs given its input ``mask`` (an array, or at
        load time any token), ``created`` being the mask it makes itself."""
        if self.mask_rule == "keep":
            return [mask]
        if self.mask_rule == "create":
            return [created]
        return [None] * self.num_outputs

    def _cast(self, x):
        if x.dtype != self.dtype and x.dtype.kind == "f":
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

    def __init__(
        self,
        name,
        keras_class,
        rnn_layers,
        *,
        return_sequences,
        return_state,
        go_backwards,
        zero_output_for_mask,
        stacked=False,
        keras_biases=None,
        stateful=False,
    ):
        super().__init__(name, keras_class, rnn_layers[-1].dtype)
        self.rnn_layers = list(rnn_layers)
        # each cell's bias as Keras stores it (GRU reset-after: both rows), for get_weights
        self.keras_biases = list(keras_biases) if keras_biases is not None else [None] * len(self.rnn_layers)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.stacked = bool(stacked)
        self.stateful = bool(stateful)  # Keras stateful=True: the model carries its state (rnnfast.stream)
        counts = [layer.cell_spec.num_states for layer in self.rnn_layers]
        self.state_structure: list[Any] = []
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

    def run(self, x, mask, num_threads=None, initial_state=None, use_mask=True):
        """``use_mask=False``: run as if unmasked but pass ``mask`` on (Keras 3 gives a
        layer called with several tensors, e.g. ``initial_state=``, no mask)."""
        if x.ndim != 3:
            raise ValueError(
                "%s %r needs a sequence (batch, time, features), got an input of "
                "shape %s" % (self.keras_class, self.name, _batch_major_shape(x))
            )
        if x.dtype != self.dtype:
            x = self._cast(x)
        run_mask = mask if use_mask else None
        if initial_state is not None:
            return self._run_from(x, run_mask, num_threads, initial_state), self.output_masks(mask)
        states = []
        for layer in self.rnn_layers[:-1]:
            # StackedRNNCells: each cell but the last runs over the whole sequence; its
            # outputs stay aligned with input time (also going backwards), and the next
            # cell skips the masked steps just as this one did.
            x, h_n, c_n = layer.forward(x, mask=run_mask, num_threads=num_threads)
            states += [h_n[0]] + ([c_n[0]] if c_n is not None else [])
        out, last_states = run_recurrent(
            self.rnn_layers[-1],
            x,
            return_sequences=self.return_sequences,
            mask=run_mask,
            zero_output_for_mask=self.zero_output_for_mask,
            return_state=True,
            num_threads=num_threads,
        )
        outs = [out]
        if self.return_state:
            outs += states + last_states
        return outs, self.output_masks(mask)

    def _run_from(self, x, mask, num_threads, initial_state):
        """Run from the given states (Keras' ``initial_state``: per cell ``h`` or
        ``[h, c]``, batch-major (batch, units)); the outputs."""
        if len(initial_state) != self.num_states:
            raise ValueError(
                "%s %r takes %d initial states, got %d"
                % (self.keras_class, self.name, self.num_states, len(initial_state))
            )
        B = x.shape[1]
        out_states, i = [], 0
        out = None
        for k, layer in enumerate(self.rnn_layers):
            n = layer.cell_spec.num_states
            mine = []
            for s, want in zip(initial_state[i : i + n], (layer.output_size, layer.units)):
                if type(s) is not np.ndarray or s.dtype != self.dtype:
                    s = self._cast(np.asarray(s))
                if s.shape != (B, want):
                    raise ValueError(
                        "%s %r: initial state of shape %s, expected %s"
                        % (self.keras_class, self.name, s.shape, (B, want))
                    )
                mine.append(s[None])
            i += n
            h0 = mine[0]
            c0 = mine[1] if n > 1 else None
            last = k == len(self.rnn_layers) - 1
            out, h_n, c_n = layer.forward(
                x,
                h0,
                c0,
                mask=mask,
                num_threads=num_threads,
                zero_output_for_mask=self.zero_output_for_mask and last,
                return_sequences=not last or self.return_sequences,
            )
            out_states += [h_n[0]] + ([c_n[0]] if c_n is not None else [])
            if not last:
                x = out
        layer = self.rnn_layers[-1]
        if self.return_sequences:
            assert out is not None  # the last layer returned its sequence
            if layer.go_backwards:
                out = out[::-1]
        else:
            out = out_states[-layer.cell_spec.num_states]
            if mask is not None and self.zero_output_for_mask and len(mask):
                t = 0 if layer.go_backwards else -1
                out = np.where(np.asarray(mask, bool)[t][:, None], out, out.dtype.type(0))
        outs = [out]
        if self.return_state:
            outs += out_states
        return outs

    def describe(self):
        opts = [o for o in ("return_sequences", "return_state", "go_backwards", "stateful") if getattr(self, o)]
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

    def run(self, x, mask, num_threads=None, initial_state=None, use_mask=True):
        if x.ndim != 3:
            raise ValueError(
                "Bidirectional %r needs a sequence (batch, time, features), got an "
                "input of shape %s" % (self.name, _batch_major_shape(x))
            )
        if not use_mask:
            outs, _ = self.run(x, None, num_threads, initial_state)
            return outs, self.output_masks(mask)
        if initial_state is not None:
            nf = self.forward_node.num_states
            if len(initial_state) != nf + self.backward_node.num_states:
                raise ValueError(
                    "Bidirectional %r takes %d initial states, got %d"
                    % (self.name, nf + self.backward_node.num_states, len(initial_state))
                )
            fo, _ = self.forward_node.run(x, mask, num_threads, initial_state=initial_state[:nf])
            bo, _ = self.backward_node.run(x, mask, num_threads, initial_state=initial_state[nf:])
            y, y_rev = fo[0], bo[0]
            if self.return_sequences:
                y_rev = y_rev[::-1]
            out = merge_directions(np.concatenate([y, y_rev], axis=-1), self.merge_mode, y.shape[-1])
            outs = list(out) if self.merge_mode is None else [out]
            if self.return_state:
                outs += fo[1:] + bo[1:]
            return outs, self.output_masks(mask)
        if self.fused is not None:
            out, states = run_recurrent(
                self.fused,
                self._cast(x),
                return_sequences=self.return_sequences,
                merge_mode=self.merge_mode,
                mask=mask,
                zero_output_for_mask=self.return_sequences,
                return_state=True,
                num_threads=num_threads,
            )
        else:
            fo, _ = self.forward_node.run(x, mask, num_threads)
            bo, _ = self.backward_node.run(x, mask, num_threads)
            y, y_rev = fo[0], bo[0]
            if self.return_sequences:
                y_rev = y_rev[::-1]  # Keras flips the backward sequence back
            out = merge_directions(np.concatenate([y, y_rev], axis=-1), self.merge_mode, y.shape[-1])
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


def stream_weights(nodes):
    """Sets which ``Dense`` layers of a model's layers (``nodes``) read their kernel past
    the caches at one row (:attr:`rnnfast.layers.Dense.stream`): where the model's
    weights do not all fit the last-level cache (:func:`rnnfast._plan.streamed_weights`;
    an ``Embedding``'s table counted as none: a call reads the rows it picks)."""
    sizes = [0 if isinstance(n, EmbeddingNode) else int(n.num_params) * n.dtype.itemsize for n in nodes]
    can = [isinstance(n, DenseNode) for n in nodes]
    chosen = _plan.streamed_weights(sizes, can)
    for i, n in enumerate(nodes):
        if can[i]:
            n.dense.stream = i in chosen


class DenseNode(_Node):
    """Keras ``Dense`` (any input rank: acts on the last axis) or ``TimeDistributed(Dense)``.
    ``activation`` is applied after :class:`~rnnfast.layers.Dense` when that one cannot
    (an activation of :data:`KERAS_ACTIVATIONS` other than softmax)."""

    def __init__(self, name, dense, activation=None):
        super().__init__(name, "Dense", dense.dtype)
        self.dense = dense
        self.activation = activation

    def get_weights(self):
        if self.source_weights is not None:  # a batch normalisation folded in
            return [w.copy() for w in self.source_weights]
        d = self.dense
        return [d.kernel.copy()] + ([d.bias.copy()] if d.bias is not None else [])

    def run(self, x, mask, num_threads=None):
        y = self.dense.forward(self._cast(x), num_threads=num_threads)
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
            raise ValueError(
                "Embedding %r: ids must lie in [0, %d), got min %d max %d" % (self.name, n, ids.min(), ids.max())
            )
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
        if x.ndim == 3:  # time-major (T, B, F)
            x = x.transpose(1, 2, 0) if self.channels_first else x.transpose(1, 0, 2)
        return [np.ascontiguousarray(x).reshape(x.shape[0], -1)], [None]


class TimeDistributedNode(_Node):
    """Keras ``TimeDistributed``: the inner layer applied to each step's slice of a
    ``(batch, time, ...)`` tensor. A layer that acts per step on the last axis runs on
    the sequence as it is; any other (a Conv1D, a pooling, a Flatten, a recurrent
    layer, a nested model: one input, one output) runs once on the ``batch * time``
    slices stacked, and its output is split back into ``(batch, time, ...)``. The
    input's mask passes on with a sequence output (slices get none)."""

    def __init__(self, name, inner, per_step=True):
        super().__init__(name, "TimeDistributed", inner.dtype)
        self.inner = inner
        self.per_step = bool(per_step)
        self.takes_ids = inner.takes_ids  # a wrapped model taking ids: (batch, time, steps) ids

    def run(self, x, mask, num_threads=None):
        if x.ndim < 3:
            raise ValueError(
                "TimeDistributed %r needs a sequence (batch, time, ...), got an "
                "input of shape %s" % (self.name, _batch_major_shape(x))
            )
        if self.per_step and x.ndim == 3:
            outs, _ = self.inner.run(x, mask, num_threads)
            return outs, [mask]
        b = _swap(x)  # batch-major (B, T, ...)
        B, T = b.shape[:2]
        slices = np.ascontiguousarray(b).reshape((B * T,) + b.shape[2:])
        # the inner layer's input time-major: ids (steps, B*T) as well as sequences
        inner_x = np.ascontiguousarray(slices.T) if self.takes_ids else _swap(slices)
        outs, _ = self.inner.run(inner_x, None, num_threads)
        y = _batch_major(outs[0])
        y = _swap(y.reshape((B, T) + y.shape[1:]))
        return [np.ascontiguousarray(y)], [mask if y.ndim == 3 else None]

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
            raise ValueError(
                "%s %r needs a sequence (batch, time, features), got an input of "
                "shape %s" % (self.keras_class, self.name, _batch_major_shape(x))
            )
        x = self._cast(x)  # time-major (T, B, F)
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


def _swap(x):
    """Time-major <-> batch-major for a sequence (a view); other ranks as they are."""
    return np.swapaxes(x, 0, 1) if x.ndim == 3 else x


def _tm_axis(axis, ndim):
    """The internal axis of batch-major ``axis`` for a tensor of rank ``ndim``."""
    a = axis % ndim
    if ndim == 3 and a < 2:
        return 1 - a
    return a


class MergeNode(_Node):
    """Keras ``Add``, ``Subtract``, ``Multiply``, ``Average``, ``Maximum``,
    ``Minimum`` (elementwise over several tensors, broadcast as Keras does: a tensor of
    lower rank gets the missing axes after the batch) and ``Concatenate`` (``axis``).

    Masks as Keras 3: the elementwise merges give the OR of their inputs' masks, or
    none when any input has none; ``Concatenate`` gives none when no input has one,
    else per step the OR over the concatenated (a missing mask counts as all valid).
    """

    multi_input = True
    _REDUCE = {
        "add": np.add,
        "subtract": np.subtract,
        "multiply": np.multiply,
        "maximum": np.maximum,
        "minimum": np.minimum,
    }

    def __init__(self, name, keras_class, kind, dtype, axis=-1):
        super().__init__(name, keras_class, dtype)
        if kind not in ("add", "subtract", "multiply", "average", "maximum", "minimum", "concat"):
            raise ValueError("unknown merge %r" % (kind,))
        self.kind = kind
        self.axis = int(axis)

    def _features_axis(self, ndim):
        return self.axis % ndim == ndim - 1

    def output_masks(self, masks, created=None):
        """At load time: the token of the output mask from the input masks' tokens."""
        if all(m is None for m in masks):
            return [None]
        if self.kind != "concat":
            return [None if any(m is None for m in masks) else mask_or(masks)]
        if self.axis in (-1, 2):
            return [None if any(m is None for m in masks) else mask_or(masks)]
        return [("tconcat", tuple(TRUE if m is None else m for m in masks))]

    def _mask(self, xs, masks):
        if all(m is None for m in masks):
            return None
        if self.kind != "concat":
            if any(m is None for m in masks):
                return None
            out = np.asarray(masks[0], bool)
            for m in masks[1:]:
                out = out | np.asarray(m, bool)
            return out
        if self._features_axis(xs[0].ndim) and any(m is None for m in masks):
            return None  # an unmasked input makes every step valid
        full = []
        for x, m in zip(xs, masks):
            if m is None:
                full.append(np.ones(x.shape, bool))
            else:
                m = np.asarray(m, bool)
                full.append(np.broadcast_to(m.reshape(m.shape + (1,) * (x.ndim - m.ndim)), x.shape))
        ax = _tm_axis(self.axis, xs[0].ndim)
        return np.concatenate(full, axis=ax).any(axis=-1)

    def run(self, xs, masks, num_threads=None):
        xs = [self._cast(np.asarray(x)) for x in xs]
        if self.kind == "concat":
            ranks = {x.ndim for x in xs}
            if len(ranks) != 1:
                raise ValueError(
                    "%s %r: inputs of different ranks %s" % (self.keras_class, self.name, [x.ndim for x in xs])
                )
            y = np.concatenate(xs, axis=_tm_axis(self.axis, xs[0].ndim))
        else:
            if self.kind == "subtract" and len(xs) != 2:
                raise ValueError("Subtract %r takes exactly 2 inputs, got %d" % (self.name, len(xs)))
            # Keras gives a lower-rank input the missing axes after the batch; time-major
            # sequences broadcast against batch-major (batch, features) as numpy does
            if self.kind == "average":
                y = xs[0].copy()
                for x in xs[1:]:
                    y = y + x
                y = y / y.dtype.type(len(xs))
            elif self.kind in ("maximum", "minimum") and any(m is not None for m in masks):
                y = self._masked_extreme(xs, masks)
            elif self.kind == "multiply" and any(m is not None for m in masks):
                y = self._masked_product(xs, masks)
            else:
                f = self._REDUCE[self.kind]
                y = xs[0]
                for x in xs[1:]:
                    y = f(y, x)
                y = np.asarray(y, dtype=self.dtype)
        return [y], [self._mask(xs, masks)]

    @staticmethod
    def _feature_mask(x, m):
        if m is None:
            return None
        m = np.asarray(m, bool)
        return np.broadcast_to(m.reshape(m.shape + (1,) * (x.ndim - m.ndim)), x.shape)

    def _masked_extreme(self, xs, masks):
        """Keras' Maximum / Minimum under masks: a masked value takes the other side's."""
        f = self._REDUCE[self.kind]
        out, out_mask = xs[0], self._feature_mask(xs[0], masks[0])
        for x, m in zip(xs[1:], masks[1:]):
            m = self._feature_mask(x, m)
            if m is not None:
                x = np.where(m, x, out)
            if out_mask is not None:
                out = np.where(out_mask, out, x)
            out_mask = (out_mask | m) if (m is not None and out_mask is not None) else None
            out = f(out, x)
        return np.asarray(out, dtype=self.dtype)

    def _masked_product(self, xs, masks):
        """Keras' Multiply under masks: a masked value counts as 1; with every input
        masked, the steps masked in all of them are 0."""
        all_masked = all(m is not None for m in masks)
        out, out_mask = None, None
        one = self.dtype.type(1)
        for x, m in zip(xs, masks):
            m = self._feature_mask(x, m)
            if m is not None:
                x = np.where(m, x, one)
                if all_masked:
                    out_mask = m if out_mask is None else (out_mask | m)
            out = x if out is None else out * x
        if all_masked and out_mask is not None:
            out = np.where(out_mask, out, self.dtype.type(0))
        return np.asarray(out, dtype=self.dtype)

    def describe(self):
        return "%s(%s)" % (self.keras_class, "axis=%d" % self.axis if self.kind == "concat" else "")


class DotNode(_Node):
    """Keras ``Dot(axes, normalize)`` of two tensors (batch-wise, as Keras'
    ``batch_dot``). Drops the mask."""

    multi_input = True
    mask_rule = "drop"

    def __init__(self, name, axes, normalize, dtype):
        super().__init__(name, "Dot", dtype)
        self.axes = axes
        self.normalize = bool(normalize)

    def output_masks(self, masks, created=None):
        return [None]

    def run(self, xs, masks, num_threads=None):
        if len(xs) != 2:
            raise ValueError("Dot %r takes exactly 2 inputs, got %d" % (self.name, len(xs)))
        a, b = (_swap(self._cast(np.asarray(x))) for x in xs)  # batch-major
        axes = [self.axes, self.axes] if isinstance(self.axes, int) else list(self.axes)
        axes = [ax % t.ndim for ax, t in zip(axes, (a, b))]
        if min(axes) < 1:
            raise ValueError("Dot %r: cannot take the product over the batch axis" % self.name)
        if self.normalize:
            a = a / np.sqrt(np.maximum((a * a).sum(axis=axes[0], keepdims=True), a.dtype.type(1e-12)))
            b = b / np.sqrt(np.maximum((b * b).sum(axis=axes[1], keepdims=True), b.dtype.type(1e-12)))
        a = np.moveaxis(a, axes[0], -1)
        b = np.moveaxis(b, axes[1], 1)
        if a.ndim > 3 or b.ndim > 3:
            raise ValueError("Dot %r: rnnfast takes inputs of rank 2 or 3" % self.name)
        if a.ndim == 2 and b.ndim == 2:
            y = (a * b).sum(axis=-1, keepdims=True)
        elif a.ndim == 2:
            y = matmul(a[:, None, :], b, num_threads=num_threads)[:, 0]
        elif b.ndim == 2:
            y = matmul(a, b[:, :, None], num_threads=num_threads)[..., 0]
        else:
            y = matmul(a, b, num_threads=num_threads)
        y = np.asarray(y, dtype=self.dtype)
        return [np.ascontiguousarray(_swap(y))], [None]

    def describe(self):
        return "Dot(axes=%r%s)" % (self.axes, ", normalize=True" if self.normalize else "")


class RepeatVectorNode(_Node):
    """Keras ``RepeatVector(n)``: ``(batch, features)`` to ``(batch, n, features)``."""

    mask_rule = "drop"

    def __init__(self, name, n, dtype):
        super().__init__(name, "RepeatVector", dtype)
        self.n = int(n)

    def run(self, x, mask, num_threads=None):
        x = self._cast(x)
        if x.ndim != 2:
            raise ValueError("RepeatVector %r needs input (batch, features), got shape %s" % (self.name, x.shape))
        return [np.ascontiguousarray(np.broadcast_to(x[None], (self.n,) + x.shape))], [None]

    def describe(self):
        return "RepeatVector(%d)" % self.n


class ReshapeNode(_Node):
    """Keras ``Reshape(target_shape)`` (``Permute(dims)`` with ``permute``): acts on
    the batch-major tensor. Drops the mask (Keras' Reshape passes none on)."""

    mask_rule = "drop"

    def __init__(self, name, keras_class, dtype, target_shape=None, permute=None):
        super().__init__(name, keras_class, dtype)
        self.fixes_length = target_shape is not None  # a reshape needs the declared length
        self.target_shape = tuple(target_shape) if target_shape is not None else None
        self.permute = tuple(permute) if permute is not None else None

    def run(self, x, mask, num_threads=None):
        b = _swap(self._cast(x))
        if self.permute is not None:
            if len(self.permute) != b.ndim - 1:
                raise ValueError(
                    "Permute %r: dims %s for an input of shape %s" % (self.name, self.permute, _batch_major_shape(x))
                )
            y = np.transpose(b, (0,) + self.permute)
        else:
            assert self.target_shape is not None  # a Reshape: __init__ takes one or the other
            y = b.reshape((b.shape[0],) + self.target_shape)
        return [np.ascontiguousarray(_swap(y))], [None]

    def describe(self):
        if self.permute is not None:
            return "Permute(%s)" % (self.permute,)
        return "Reshape(%s)" % (self.target_shape,)


class _BatchMajorNode(_Node):
    """A layer computed on the batch-major tensor with channels last (a sequence is
    swapped out of and back into the time-major layout as views); subclasses define
    ``compute(x_bm)``. ``channels_first``: the layer's data_format."""

    mask_rule = "drop"
    channels_first = False
    # the one axis a normalisation acts on, as Keras numbers it from 0 (None: the last)
    positive_axis: Optional[int] = None

    def compute(self, x_bm):
        """The layer on the batch-major, channels-last tensor ``x_bm``."""
        raise NotImplementedError

    def run(self, x, mask, num_threads=None):
        x = self._cast(x)
        b = _swap(x)
        axis = self.positive_axis
        if axis is not None and axis != b.ndim - 1:
            raise UnsupportedLayerError(
                self.keras_class,
                "axis",
                "layer %r normalises axis %d; rnnfast "
                "normalises the last axis (here %d)" % (self.name, axis, b.ndim - 1),
            )
        if self.channels_first and b.ndim == 3:
            b = np.swapaxes(b, 1, 2)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            y = self.compute(b) if num_threads is None else self._compute_on(b, num_threads)
        if self.channels_first and y.ndim == 3:
            y = np.swapaxes(y, 1, 2)
        y = np.ascontiguousarray(_swap(np.asarray(y, dtype=self.dtype)))
        return [y], [mask if self.mask_rule == "keep" else None]

    #: The call's threads for the products of :meth:`compute` (None: the default).
    _num_threads = None

    def _compute_on(self, b, num_threads):
        """:meth:`compute` with its products on ``num_threads`` threads (a copy of the
        node carries them: a model may be called from several threads at once)."""
        node = copy.copy(self)
        node._num_threads = num_threads
        return node.compute(b)

    def _need_sequence(self, b):
        if b.ndim != 3:
            raise ValueError(
                "%s %r needs a sequence (batch, steps, channels), got an input of shape %s"
                % (self.keras_class, self.name, b.shape)
            )


class ConvNode(_BatchMajorNode):
    """Keras ``Conv1D``, ``DepthwiseConv1D`` and ``SeparableConv1D``: a depthwise stage
    (``depthwise``: kernel (k, 1, C*multiplier), grouped per channel) and/or a full
    stage (kernel (k, Cin/groups, Cout)), each a GEMM on an im2col view
    (:func:`rnnfast.ops.conv1d`), then the bias and the activation."""

    def __init__(
        self,
        name,
        keras_class,
        dtype,
        *,
        kernel=None,
        depthwise=None,
        bias=None,
        strides=1,
        dilation=1,
        padding="valid",
        groups=1,
        activation="linear",
        channels_first=False,
        keras_weights=(),
    ):
        super().__init__(name, keras_class, dtype)
        dt = self.dtype
        self.kernel = None if kernel is None else np.ascontiguousarray(kernel, dtype=dt)
        self.depthwise = None if depthwise is None else np.ascontiguousarray(depthwise, dtype=dt)
        self.bias = None if bias is None else np.asarray(bias, dtype=dt)
        self.strides, self.dilation, self.padding, self.groups = int(strides), int(dilation), padding, int(groups)
        self.activation = activation
        self.channels_first = bool(channels_first)
        self._keras_weights = [np.array(w, dtype=dt) for w in keras_weights]
        taps = self.depthwise if self.depthwise is not None else self.kernel
        assert taps is not None, "a convolution needs a kernel"
        k = taps.shape[0]
        self.kernel_size = k
        self.fixes_length = False

    def get_weights(self):
        return [w.copy() for w in self._keras_weights]

    def compute(self, b):

        self._need_sequence(b)
        pad = conv_padding(b.shape[1], self.kernel_size, self.strides, self.dilation, self.padding)
        # an activation of the kernels' is applied by the last product itself (the same
        # element-wise kernel keras_activation runs: the same bits), others after it
        fused = self.activation in ACTIVATIONS and self.activation != "linear"
        act = ACTIVATIONS[self.activation] if fused else -1
        nt = self._num_threads
        if self.depthwise is not None:
            C = b.shape[2]
            last = self.kernel is None
            b = conv1d(
                b,
                self.depthwise,
                self.bias if last else None,
                stride=self.strides,
                dilation=self.dilation,
                padding=pad,
                groups=C,
                num_threads=nt,
                act=act if last else -1,
            )
            if not last:
                b = conv1d(b, self.kernel, self.bias, num_threads=nt, act=act)  # pointwise
            y = b
        else:
            y = conv1d(
                b,
                self.kernel,
                self.bias,
                stride=self.strides,
                dilation=self.dilation,
                padding=pad,
                groups=self.groups,
                num_threads=nt,
                act=act,
            )
        if self.activation != "linear" and not fused:
            y = keras_activation(self.activation, y)
        return y

    def describe(self):
        return "%s(kernel_size=%d, strides=%d, dilation=%d, padding=%r%s)" % (
            self.keras_class,
            self.kernel_size,
            self.strides,
            self.dilation,
            self.padding,
            ", activation=%r" % self.activation if self.activation != "linear" else "",
        )


class PoolNode(_BatchMajorNode):
    """Keras ``MaxPooling1D`` / ``AveragePooling1D`` (:func:`rnnfast.ops.pool1d`)."""

    def __init__(self, name, keras_class, dtype, reduce, pool_size, strides, padding, channels_first=False):
        super().__init__(name, keras_class, dtype)
        self.reduce, self.pool_size, self.strides, self.padding = reduce, int(pool_size), int(strides), padding
        self.channels_first = bool(channels_first)

    def compute(self, b):

        self._need_sequence(b)
        pad = conv_padding(b.shape[1], self.pool_size, self.strides, 1, self.padding)
        if b.shape[1] + pad[0] + pad[1] < self.pool_size:
            raise ValueError(
                "%s %r: %d steps are fewer than the pool size %d"
                % (self.keras_class, self.name, b.shape[1], self.pool_size)
            )
        return pool1d(b, self.pool_size, self.strides, pad, self.reduce)

    def describe(self):
        return "%s(pool_size=%d, strides=%d, padding=%r)" % (
            self.keras_class,
            self.pool_size,
            self.strides,
            self.padding,
        )


class AffineNode(_BatchMajorNode):
    """``x * scale + shift`` over the last axis: Keras ``BatchNormalization`` (its
    moving statistics folded at load) and ``Normalization`` (adapted mean and
    variance). Keeps the mask (``keep_mask``)."""

    def __init__(self, name, keras_class, dtype, scale, shift, keep_mask=True, keras_weights=()):
        super().__init__(name, keras_class, dtype)
        self.scale = np.asarray(scale, dtype=self.dtype)
        self.shift = np.asarray(shift, dtype=self.dtype)
        self.mask_rule = "keep" if keep_mask else "drop"
        self._keras_weights = [np.array(w) for w in keras_weights]

    #: The name of the Dense / Conv1D this batch normalisation was folded into at load
    #: (it then passes its input on unchanged), else None.
    folded_into = None

    def get_weights(self):
        return [w.copy() for w in self._keras_weights]

    def run(self, x, mask, num_threads=None):
        if self.folded_into is not None:
            return [self._cast(x)], [mask]
        return super().run(x, mask, num_threads)

    def describe(self):
        return self.keras_class + ("(folded into %r)" % self.folded_into if self.folded_into else "")

    def compute(self, b):

        if self.scale.size != 1 and b.shape[-1] != self.scale.shape[-1]:
            raise ValueError(
                "%s %r expects %d features, got %d" % (self.keras_class, self.name, self.scale.shape[-1], b.shape[-1])
            )
        return affine(b, self.scale, self.shift)


class NormNode(_BatchMajorNode):
    """Keras ``LayerNormalization`` (last axis) and ``UnitNormalization``; keep the mask."""

    mask_rule = "keep"

    def __init__(self, name, keras_class, dtype, *, gamma=None, beta=None, epsilon=1e-3, rms_scaling=False, unit=False):
        super().__init__(name, keras_class, dtype)
        self.gamma = None if gamma is None else np.asarray(gamma, dtype=self.dtype)
        self.beta = None if beta is None else np.asarray(beta, dtype=self.dtype)
        self.epsilon, self.rms_scaling, self.unit = float(epsilon), bool(rms_scaling), bool(unit)

    def get_weights(self):
        return [w.copy() for w in (self.gamma, self.beta) if w is not None]

    def compute(self, b):

        if self.unit:
            return unit_norm(b)
        return layer_norm(b, self.gamma, self.beta, self.epsilon, self.rms_scaling)


class StepsNode(_BatchMajorNode):
    """Keras ``UpSampling1D`` (``repeat``), ``ZeroPadding1D`` (``pad``) and
    ``Cropping1D`` (``crop``): the steps of a sequence repeated, padded with zeros or
    cut."""

    def __init__(
        self, name, keras_class, dtype, *, repeat=1, pad=(0, 0), crop=(0, 0), channels_first=False, keep_mask=False
    ):
        super().__init__(name, keras_class, dtype)
        self.repeat, self.pad, self.crop = int(repeat), tuple(pad), tuple(crop)
        self.channels_first = bool(channels_first)
        self.mask_rule = "keep" if keep_mask else "drop"

    def compute(self, b):
        self._need_sequence(b)
        if self.repeat != 1:
            b = np.repeat(b, self.repeat, axis=1)
        if self.pad != (0, 0):
            b = np.pad(b, ((0, 0), self.pad, (0, 0)))
        if self.crop != (0, 0):
            T = b.shape[1]
            if sum(self.crop) >= T:
                raise ValueError(
                    "%s %r: cropping %s of %d steps leaves none" % (self.keras_class, self.name, self.crop, T)
                )
            b = b[:, self.crop[0] : T - self.crop[1]]
        return b


class AttentionNode(_Node):
    """Keras ``Attention`` (dot or concat scores, optional scale) and
    ``AdditiveAttention`` on ``[query, value]`` or ``[query, value, key]``: scores,
    the value mask (and ``use_causal_mask``) as ``-1e9``, softmax over the values,
    the weighted values; the query mask zeroes masked query steps and passes on."""

    multi_input = True
    #: keyword arguments of the call rnnfast honours, with their defaults
    call_options = {"use_causal_mask": False, "return_attention_scores": False}

    def __init__(
        self, name, keras_class, dtype, *, additive=False, score_mode="dot", scale=None, concat_score_weight=None
    ):
        super().__init__(name, keras_class, dtype)
        self.additive = bool(additive)
        self.score_mode = score_mode
        self.scale = None if scale is None else np.asarray(scale, dtype=self.dtype)
        self.concat_score_weight = (
            None if concat_score_weight is None else np.asarray(concat_score_weight, dtype=self.dtype)
        )

    def get_weights(self):
        return [w.copy() for w in (self.scale, self.concat_score_weight) if w is not None]

    def output_masks(self, masks, created=None):
        return [masks[0] if masks else None]

    def run(self, xs, masks, num_threads=None, use_causal_mask=False, return_attention_scores=False):
        if len(xs) not in (2, 3):
            raise ValueError(
                "%s %r takes [query, value] or [query, value, key], got %d tensors"
                % (self.keras_class, self.name, len(xs))
            )
        q, v = _swap(self._cast(xs[0])), _swap(self._cast(xs[1]))  # batch-major
        k = _swap(self._cast(xs[2])) if len(xs) > 2 else v
        if q.ndim != 3 or v.ndim != 3 or k.ndim != 3:
            raise ValueError("%s %r needs sequences (batch, steps, features)" % (self.keras_class, self.name))
        q_mask = masks[0] if masks else None
        v_mask = masks[1] if masks and len(masks) > 1 else None
        with np.errstate(over="ignore"):
            if self.additive or self.score_mode == "concat":
                t = np.tanh(
                    (q[:, :, None, :] + k[:, None, :, :])
                    if self.additive or self.scale is None
                    else self.scale * (q[:, :, None, :] + k[:, None, :, :])
                )
                if self.additive:
                    scores = (t * self.scale).sum(-1) if self.scale is not None else t.sum(-1)
                else:
                    scores = self.concat_score_weight * t.sum(-1)
            else:
                scores = matmul(q, np.swapaxes(k, 1, 2), num_threads=num_threads)
                if self.scale is not None:
                    scores = scores * self.scale
            valid = None
            if v_mask is not None:
                valid = np.swapaxes(np.asarray(v_mask, bool), 0, 1)[:, None, :]  # (B, 1, Tv)
            if use_causal_mask:
                Tq, Tv = scores.shape[1:]
                causal = np.arange(Tq)[:, None] >= np.arange(Tv)[None, :]
                valid = causal[None] if valid is None else (valid & causal[None])
            if valid is not None:
                scores = scores - self.dtype.type(1e9) * (~valid).astype(scores.dtype)
            w = softmax(np.asarray(scores, dtype=self.dtype))
            y = matmul(w, v, num_threads=num_threads)
        if q_mask is not None:
            y = y * np.swapaxes(np.asarray(q_mask, bool), 0, 1)[:, :, None].astype(y.dtype)
        y = np.ascontiguousarray(_swap(np.asarray(y, dtype=self.dtype)))
        return [y], [q_mask]

    def describe(self):
        return "%s(%s)" % (self.keras_class, "" if self.additive else "score_mode=%r" % self.score_mode)


# -- the model --------------------------------------------------------------------------


class KerasModel(ReducedPrecision, Summarized):
    """A Keras model converted to canonical layers; ``predict`` gives what Keras gives.

    Built by :func:`rnnfast.load` (``.keras`` and HDF5 files) and
    :func:`rnnfast.from_keras` (live models), not directly. Called the way a Keras
    model is: ``model.predict(x, batch_size=None, verbose="auto")``, ``model(x,
    training=False)``, ``model.count_params()``, ``model.get_weights()``,
    ``model.output_shape``, ``model.summary()``. A model with several inputs takes a
    list of arrays (or a dict by input name), as Keras does.

    The model is a :class:`~rnnfast.graph.Graph` of the nodes of this module: several
    inputs and outputs, branches, merges, shared layers (one node, several steps) and
    recurrent layers given ``initial_state`` run through the one executor.

    Attributes
    ----------
    name : str
        The Keras model's name.
    layers : list
        The converted layers in execution order (InputLayer left out; a shared layer
        once), each with ``name``, ``keras_class`` and, for recurrent ones,
        ``rnn_layers`` (:class:`~rnnfast.layers.RNNLayer`).
    input_shape : tuple, or a list of tuples for several inputs
        ``(None, time or None, features)``, or ``(None, time or None)`` for integer
        input (models that start with an Embedding). The time is None (any length
        runs) unless a layer needs the declared one (Flatten).
    input_names : list of str
        The InputLayers' names, in the order the model takes its inputs.
    dtype : numpy.dtype or None
        The compute dtype (None when layers differ).
    keras_version : str
        The Keras version that wrote the model.
    """

    framework = "Keras"

    def __init__(self, graph, *, inputs, name, keras_version, source=None):
        self._graph = graph
        # per input: dict(name, shape, dtype, integer, declared)
        self._inputs = [
            dict(spec, shape=tuple(spec["shape"]), dtype=np.dtype(spec["dtype"]), integer=bool(spec["integer"]))
            for spec in inputs
        ]
        for spec in self._inputs:
            spec["declared"] = _declared(spec.get("declared"), spec["shape"])
            spec["taken_shapes"] = {}  # the last shapes (past the batch) the fast path of predict took
        self.input_names = [spec["name"] for spec in self._inputs]
        self.name = name
        self.keras_version = keras_version
        self.source = source
        self._output_shape = None
        dts = {node.dtype for node in self.layers}
        first = self._inputs[0]
        self.dtype = dts.pop() if len(dts) == 1 else (first["dtype"] if not dts else None)
        # Keras stateful=True: the batch size the input declares, and the layers that
        # carry state between calls (rnnfast.stream; refused at load when it cannot)
        declared = [spec.get("declared") for spec in inputs]
        self._fixed_batch = next((int(d[0]) for d in declared if d and d[0] is not None), None)
        self.stateful_layers = _stream.stateful_layers(graph)
        _stream.check_stateful(self, self._stateful_program, self._fixed_batch)
        stream_weights(self.layers)

    # single-input views (the common case; tools read them)
    @property
    def input_shape(self):
        shapes = [spec["shape"] for spec in self._inputs]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def _integer_input(self):
        return self._inputs[0]["integer"]

    @property
    def _input_dtype(self):
        return self._inputs[0]["dtype"]

    @property
    def layers(self):
        return self._graph.ops

    def predict(self, x, batch_size=None, verbose="auto", *, num_threads=None):
        """Run the model, as ``keras_model.predict(x)`` does (same positional order).

        Parameters
        ----------
        x : array_like, shape (batch, time, features), or a list / dict of them
            Or integer ids of shape (batch, time) for a model that starts with an
            Embedding. Floating input is cast to the model's input dtype (float32
            unless the model's input is float64, as Keras does); a torch tensor is
            accepted. A model with several inputs takes a list in the order of
            :attr:`input_names`, or a dict keyed by them.
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
        if self.stateful_layers:
            return _stream.stateful_predict(
                self, self._validated(x), batch_size, num_threads, self._stateful_program, self._fixed_batch
            )
        if batch_size is None and (verbose == "auto" or not verbose):
            xs = self._as_taken(x)
            if xs is not None:  # arrays already as the model takes them: one pass, no copies
                return self._run(xs, num_threads)
        return self._predict_from_zero(x, batch_size, verbose, num_threads)

    def _predict_from_zero(self, x, batch_size=None, verbose=0, num_threads=None):
        """``predict`` with every state starting from zeros (a stateful model's too: the
        load-time probes run this, touching no carried state)."""
        xs = self._validated(x)
        return run_batched(
            lambda *parts: self._run(parts, num_threads), xs[0], batch_size, aligned=xs[1:], verbose=verbose
        )

    # -- streaming (rnnfast.stream) ---------------------------------------------------

    def stream(self):
        """A new :class:`~rnnfast.stream.Stream`: one sequence's state (every recurrent
        layer's, every causal Conv1D's last input frames), at its start. The model itself
        keeps no state and may be shared by threads. A model whose outputs need later
        steps (Bidirectional, go_backwards, pooling or Flatten over time, a convolution
        that is not causal, attention) is refused here with
        :class:`~rnnfast.UnsupportedLayerError` naming the layer."""
        return _stream.open_stream(self, self._stream_program)

    def step(self, x, stream, *, num_threads=None):
        """Run the next steps of one stream, or of many in one batched call.

        Parameters
        ----------
        x : array_like (time, features), or ids (time,) for a model that starts with an
            Embedding (a list / dict of them for several inputs); or, with a list of
            streams, a list of such chunks, one per stream (lengths may differ).
        stream : Stream or list of Stream
        num_threads : int, optional

        Returns
        -------
        The model's output for these steps, as ``predict`` gives it for one sample
        without the batch axis: ``(time, features)`` for a sequence output, the output
        as if the sequence ended here for a many-to-one model. With a list of streams:
        the outputs stacked on a first axis (streams in order) when the chunks have equal
        lengths, else a list of them. Bitwise what the whole sequence in one step gives,
        whatever the chunking and the streams sharing the call.
        """
        return _stream.step(self, x, stream, num_threads)

    def reset_states(self):
        """Keras ``reset_states()`` of a model with ``stateful=True`` layers: their
        states back to zeros (the start of new sequences). Nothing to do otherwise."""
        _stream.reset_stateful(self)

    reset_state = reset_states

    def _stateful_program(self):
        return _stream.Program(self._graph, self._stream_inputs(), self._what(), keras_activation, stateful=True)

    def _stream_inputs(self):
        return [
            dict(
                name=spec["name"],
                dtype=spec["dtype"],
                integer=spec["integer"],
                features=None if spec["integer"] else spec["shape"][-1],
            )
            for spec in self._inputs
        ]

    def _stream_program(self):
        inputs = self._stream_inputs()
        for spec in self._inputs:
            if not spec["integer"] and len(spec["shape"]) != 3:
                raise UnsupportedLayerError(
                    "InputLayer",
                    None,
                    "%s: input %r is not a sequence: nothing to stream" % (self._what(), spec["name"]),
                )
        return _stream.Program(self._graph, inputs, self._what(), keras_activation)

    def __call__(self, x, training=None, *, num_threads=None):
        """``model(x)``, ``model(x, training=False)``: :meth:`predict` in one pass.

        ``training`` may be None or False (rnnfast runs inference only: training=True
        is a ValueError)."""
        if training is not None and training is not False:
            raise ValueError(
                "%s runs inference only: training=%r is not supported (rnnfast has "
                "no training mode; dropout and noise layers are the identity)" % (self._what(), training)
            )
        return self.predict(x, num_threads=num_threads)

    def count_params(self):
        """The model's parameters, as Keras' ``model.count_params()`` counts them (a
        shared layer once)."""
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

    def _probe(self, length):
        """One all-zero sample per input, ``length`` steps where the length is free."""
        out = []
        for spec in self._inputs:
            shape = spec["declared"]
            if any(d is None for d in shape[2:]):
                raise ValueError(
                    "%s: the output shape is unknown (the input's features are not declared)" % self._what()
                )
            dt = np.int64 if spec["integer"] else spec["dtype"]
            out.append(np.zeros([1] + [length if d is None else d for d in shape[1:]], dt))
        return out if len(out) > 1 else out[0]

    def _infer_output_shape(self):
        # run one sample at two lengths (or the declared one): what varies is unknown
        y1, y2 = (self._predict_from_zero(self._probe(t), num_threads=1) for t in (16, 32))

        def merged(a, b):
            return tuple(None if i == 0 or a.shape[i] != b.shape[i] else int(n) for i, n in enumerate(a.shape))

        return map_structure(merged, y1, y2)

    # -- describing itself ------------------------------------------------------------

    def connections(self):
        """For each layer (as :attr:`layers`), the names of the layers (or inputs) whose
        outputs it reads, over all its calls: Keras' "Connected to" column."""
        producer = {}
        for spec, key in zip(self._inputs, self._graph.inputs):
            producer[key] = spec["name"]
        by_op: dict[int, list[str]] = {}
        for step in self._graph.steps:
            for k in step.outputs:
                producer[k] = step.op.name
        for step in self._graph.steps:
            names = by_op.setdefault(id(step.op), [])
            for k in step.inputs + step.states:
                src = producer.get(k, "?")
                if isinstance(k, tuple) and len(k) == 3:
                    src = "%s[%d][%d]" % (src, k[1], k[2])
                if src not in names:
                    names.append(src)
        return [by_op.get(id(node), []) for node in self.layers]

    @property
    def is_chain(self):
        """One input, and every layer reads the previous layer's only output (a
        Sequential-like model: the summary needs no "connected to" column)."""
        if len(self._graph.inputs) != 1:
            return False
        prev = self._graph.inputs[0]
        for step in self._graph.steps:
            if step.inputs != [prev] or step.states:
                return False
            prev = step.outputs[0]
        return True

    def layer_output_shapes(self):
        """Per layer (as :attr:`layers`) the shapes of its outputs as Keras gives them
        (None for the batch and any length the input does not fix): a list of tuples
        per layer (its first call), or None where they cannot be probed."""
        try:
            runs = []
            for t in (16, 32):
                probe = self._probe(t)
                feeds = []
                for spec, x in zip(self._inputs, probe if len(self._inputs) > 1 else [probe]):
                    if x.ndim >= 2 and (x.ndim == 3 or spec["integer"]):
                        x = np.ascontiguousarray(np.swapaxes(x, 0, 1))
                    feeds.append(x)
                runs.append(self._graph.run(feeds, 1, keep_all=True)[0])
        except (ValueError, TypeError):
            return [None] * len(self.layers)
        first: dict[int, list[Any]] = {}  # op -> the output keys of its first call
        for step in self._graph.steps:
            first.setdefault(id(step.op), step.outputs)

        def shape(k):
            a, b = (_batch_major(r[k]).shape for r in runs)
            return tuple(None if i == 0 or a[i] != b[i] else int(n) for i, n in enumerate(a))

        return [[shape(k) for k in first[id(node)]] for node in self.layers]

    def summary_rows(self):
        """The rows of the summary table, one per layer: dicts with ``name``, ``type``,
        ``units``, ``options`` (str), ``parameters`` (int, as Keras counts them),
        ``dtype`` (str), ``connected_to`` (list of str: the tensors it reads, as Keras'
        "Connected to" names them) and ``output_shape`` (str, as Keras prints it)."""
        rows = []
        shapes = self.layer_output_shapes()
        for node, conn, shp in zip(self.layers, self.connections(), shapes):
            kind, units, opts = node.summary_row  # left by the registry's converter
            if shp is None:
                text = "?"
            else:
                text = ", ".join("(%s)" % ", ".join("None" if d is None else str(d) for d in s) for s in shp)
                text = text if len(shp) == 1 else "[%s]" % text
            rows.append(
                dict(
                    name=node.name,
                    type=kind,
                    units=units,
                    options=opts,
                    parameters=int(node.num_params),
                    dtype=node.dtype.name,
                    precision=_node_precision(node),
                    connected_to=conn,
                    output_shape=text,
                )
            )
        return rows

    def summary_title(self):
        """The title line of the summary table."""
        dt = self.dtype.name if self.dtype is not None else "mixed dtypes"
        return "KerasModel %r: Keras %s, input %s, %s" % (self.name, self.keras_version, self._input_text(), dt)

    def _input_text(self):
        return ", ".join(_shape_str(spec["shape"]) for spec in self._inputs)

    def describe(self):
        """What the model is and takes, as a dict: ``framework`` ("Keras"), ``name``,
        ``input_shape`` (batch-major, None where any size runs; a list for several
        inputs), ``integer_input`` (ids for an Embedding), ``vocabulary`` (the
        Embedding's ``input_dim``, else None), ``dtype`` (of the input),
        ``layers`` (:meth:`summary_rows`)."""
        vocab = next((n.table.shape[0] for n in self.layers if n.takes_ids), None)
        return dict(
            framework=self.framework,
            name=self.name,
            input_shape=self.input_shape,
            integer_input=self._integer_input,
            vocabulary=vocab,
            dtype=np.dtype(np.int64) if self._integer_input else self._input_dtype,
            layers=self.summary_rows(),
        )

    def _validated(self, x):
        n = len(self._inputs)
        if n == 1:
            if isinstance(x, dict) and len(x) == 1:
                x = next(iter(x.values()))
            elif isinstance(x, (list, tuple)) and len(x) == 1 and not np.isscalar(x[0]) and np.ndim(x[0]) >= 2:
                x = x[0]  # Keras takes [x] as well as x
            xs = [x]
        else:
            if isinstance(x, dict):
                missing = [k for k in self.input_names if k not in x]
                if missing:
                    raise ValueError(
                        "%s: missing input(s) %s (inputs: %s)"
                        % (self._what(), ", ".join(missing), ", ".join(self.input_names))
                    )
                xs = [x[k] for k in self.input_names]
            elif isinstance(x, (list, tuple)) and len(x) == n:
                xs = list(x)
            else:
                raise ValueError(
                    "%s takes %d inputs (%s): pass a list or a dict of arrays"
                    % (self._what(), n, ", ".join(self.input_names))
                )
        out = []
        for spec, xi in zip(self._inputs, xs):
            what = self._what() if n == 1 else "%s input %r" % (self._what(), spec["name"])
            out.append(
                _validation.model_input(
                    xi,
                    spec["shape"],
                    spec["dtype"],
                    integer=spec["integer"],
                    what=what,
                    shape_text=_shape_str(spec["shape"]),
                )
            )
        if len({a.shape[0] for a in out}) > 1:
            raise ValueError("%s: the inputs have different batch sizes %s" % (self._what(), [a.shape[0] for a in out]))
        return out

    def _as_taken(self, x):
        """``x`` as a list of inputs when every one is already what :meth:`_validated`
        would make of it (a C-contiguous NumPy array of the input's dtype -- signed
        integer ids, made int64 -- and shape, at least one time step, one batch size),
        else None: the per-call fast path, a few attribute reads instead of the checks
        and casts."""
        n = len(self._inputs)
        if n == 1:
            if type(x) is not np.ndarray:
                return None
            xs = [x]
        elif type(x) is list and len(x) == n:
            xs = x
        else:
            return None
        B = None
        taken = []
        for spec, a in zip(self._inputs, xs):
            if type(a) is not np.ndarray or not a.flags.c_contiguous:
                return None
            if spec["integer"] and a.dtype.kind == "i":
                a = a.astype(np.int64, copy=False)  # as _validation.as_ids makes signed ids
            elif a.dtype != spec["dtype"] or spec["integer"]:
                return None
            shape = a.shape
            taken_shapes = spec["taken_shapes"]
            if shape[1:] not in taken_shapes:
                if len(shape) != len(spec["shape"]) or (len(shape) > 1 and shape[1] == 0):
                    return None
                if any(w is not None and w != g for w, g in zip(spec["shape"][1:], shape[1:])):
                    return None
                # checked once per shape while it is among the last few (a free sequence
                # length brings a new shape per length: the oldest is forgotten)
                if len(taken_shapes) >= _TAKEN_SHAPES or type(taken_shapes) is not dict:
                    taken_shapes = spec["taken_shapes"] = dict.fromkeys(list(taken_shapes)[1 - _TAKEN_SHAPES :], True)
                taken_shapes[shape[1:]] = True
            if B is None:
                B = shape[0]
            elif shape[0] != B:
                return None
            taken.append(a)
        return taken

    def _run(self, parts, num_threads):
        feeds = []
        for spec, x in zip(self._inputs, parts):
            if x.ndim >= 2 and (x.ndim == 3 or spec["integer"]):
                x = np.ascontiguousarray(np.swapaxes(x, 0, 1))  # time-major
            feeds.append(x)
        values, _ = self._graph.run(feeds, num_threads)
        return map_structure(_batch_major, values)

    def __getstate__(self):
        """For pickle (rnnfast.dask, rnnfast.ray): the canonical weights once. A fused
        ``Bidirectional`` keeps its forward and backward layers beside the two-direction
        one that runs; they travel as references to its directions. Packed copies are
        rebuilt on arrival (:meth:`RNNLayer.__setstate__ <rnnfast.layers.RNNLayer.__setstate__>`)."""
        state = self.__dict__.copy()
        graph = copy.copy(self._graph)
        travelling = {}  # a shared op travels once
        graph.steps = []
        for step in self._graph.steps:
            step = copy.copy(step)
            if id(step.op) not in travelling:
                travelling[id(step.op)] = _travelling(step.op)
            step.op = travelling[id(step.op)]
            graph.steps.append(step)
        state["_graph"] = graph
        return state

    def _what(self):
        return "KerasModel %r" % self.name

    def __repr__(self):
        dt = self.dtype.name if self.dtype is not None else "mixed dtypes"
        lines = ["KerasModel(%r, Keras %s, %s, input %s)" % (self.name, self.keras_version, dt, self._input_text())]
        width = max([len(n.name) for n in self.layers] + [4])
        for node in self.layers:
            lines.append("  %-*s  %s" % (width, node.name, node.describe()))
        return "\n".join(lines)


# -- helpers --------------------------------------------------------------------------

#: Input shapes (past the batch) ``KerasModel._as_taken`` remembers as checked, per input.
_TAKEN_SHAPES = 8


def _node_precision(node):
    """The precision of a node's products: its recurrent layers' (float32 for the rest)."""
    layers = recurrent_layers(node)
    return layers[0].precision if layers else "float32"


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
    return "(%s)" % ", ".join("batch" if i == 0 else ("any" if d is None else str(d)) for i, d in enumerate(shape))


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


def _shift(structure, by):
    if isinstance(structure, list):
        return [_shift(s, by) for s in structure]
    return structure + by


# -- nodes added after the graph (appended: multi-head attention) -------------------------


class MultiHeadAttentionNode(_Node):
    """Keras ``MultiHeadAttention`` (:func:`rnnfast.ops.multi_head_attention`) on
    sequences: called with ``query``, ``value`` and optionally ``key`` and
    ``attention_mask`` (tensors of the graph, by name: the step's ``arguments``),
    ``use_causal_mask``.

    Masks as Keras: the query's mask, the value's and the key's (when a key is given)
    and ``attention_mask`` (nonzero: may attend) and the causal mask are and-ed into the
    pairs a query step may attend to; a query step that may attend to none attends to
    every value step alike (Keras adds a large negative number to the scores, which in
    float32 swamps them); masked query steps are not zeroed; the output carries the
    query's mask. ``dropout`` is the identity at inference.

    Parameters
    ----------
    weights : dict
        ``query``, ``key``, ``value``, ``output`` (kernel, bias or None) and optionally
        ``gate``, in Keras' shapes (see :func:`rnnfast.ops.multi_head_attention`).
    large_negative : float
        What Keras adds to masked scores: -1e9 (tf.keras' Softmax), -0.7 * 3.38953e38
        (Keras 3's dot-product attention, taken without dropout).
    zero_masked : bool
        Keras 3's explicit path (taken with dropout > 0): its Softmax sets the masked
        weights to zero after the softmax, so a query step with nothing to attend to
        gives the output projection's bias.
    sliding_window : int, optional
        Keras 3's ``sliding_window``: a query step attends to value steps less than this
        far from it.
    """

    multi_input = True
    #: the tensors the layer may be called with, in Keras' positional order
    tensor_arguments = ("query", "value", "key", "attention_mask")
    call_options = {"use_causal_mask": False, "return_attention_scores": False}

    def __init__(
        self, name, dtype, weights, *, large_negative=-1e9, zero_masked=False, sliding_window=None, keras_weights=()
    ):
        super().__init__(name, "MultiHeadAttention", dtype)
        dt = self.dtype

        def cast(pair):
            return tuple(None if a is None else np.ascontiguousarray(a, dtype=dt) for a in pair)

        self.projections = {k: cast(v) for k, v in weights.items()}
        self.large_negative = float(large_negative)
        self.zero_masked = bool(zero_masked)
        self.sliding_window = sliding_window
        self._keras_weights = [np.array(w, dtype=dt) for w in keras_weights]
        self.num_heads, self.key_dim = self.projections["query"][0].shape[1:]
        self.value_dim = self.projections["value"][0].shape[2]
        self.output_dim = self.projections["output"][0].shape[2]

    def get_weights(self):
        return [w.copy() for w in self._keras_weights]

    def output_masks(self, masks, created=None):
        return [masks[0] if masks else None]

    def run(
        self,
        xs,
        masks,
        num_threads=None,
        use_causal_mask=False,
        return_attention_scores=False,
        arguments=("query", "value"),
    ):
        given = dict(zip(arguments, xs))
        gmask = dict(zip(arguments, masks))
        if "query" not in given or "value" not in given:
            raise ValueError("MultiHeadAttention %r needs a query and a value" % self.name)
        seqs = {}
        for k in ("query", "value", "key"):
            if k in given:
                x = self._cast(np.asarray(given[k]))
                if x.ndim != 3:
                    raise ValueError(
                        "MultiHeadAttention %r: %s must be a sequence (batch, steps, features), got shape %s"
                        % (self.name, k, _batch_major_shape(x))
                    )
                seqs[k] = _swap(x)  # batch-major views
        q, v = seqs["query"], seqs["value"]
        k = seqs.get("key", v)
        if k.shape[1] != v.shape[1]:
            raise ValueError("MultiHeadAttention %r: key and value lengths differ" % self.name)
        B, Tq, Tv = q.shape[0], q.shape[1], v.shape[1]
        valid = None

        def both(a, b):
            return b if a is None else a & b

        q_mask = gmask.get("query")
        if q_mask is not None:
            valid = np.swapaxes(np.asarray(q_mask, bool), 0, 1)[:, :, None]
        for name in ("value", "key"):
            m = gmask.get(name)
            if m is not None and name in given:
                valid = both(valid, np.swapaxes(np.asarray(m, bool), 0, 1)[:, None, :])
        if use_causal_mask:
            valid = both(valid, (np.arange(Tq)[:, None] >= np.arange(Tv)[None, :])[None])
        if self.sliding_window is not None:
            valid = both(valid, (np.abs(np.arange(Tq)[:, None] - np.arange(Tv)[None, :]) < self.sliding_window)[None])
        if "attention_mask" in given:
            am = np.asarray(given["attention_mask"])
            am = _swap(am) if am.ndim == 3 else am
            if am.shape[-2:] != (Tq, Tv) and am.shape[-1] != Tv:
                raise ValueError(
                    "MultiHeadAttention %r: attention_mask of shape %s for %d query and %d value steps"
                    % (self.name, am.shape, Tq, Tv)
                )
            valid = both(valid, am != 0)
        if valid is not None:
            valid = np.broadcast_to(valid, (B, Tq, Tv))
        w = self.projections
        with np.errstate(over="ignore"):
            y = multi_head_attention(
                q,
                v,
                k,
                *w["query"],
                *w["key"],
                *w["value"],
                *w["output"],
                valid=valid,
                gate=w.get("gate"),
                large_negative=self.large_negative,
                zero_masked=self.zero_masked,
                num_threads=num_threads,
            )
        return [np.ascontiguousarray(_swap(np.asarray(y, dtype=self.dtype)))], [q_mask]

    def describe(self):
        return "MultiHeadAttention(num_heads=%d, key_dim=%d%s)" % (
            self.num_heads,
            self.key_dim,
            ", value_dim=%d" % self.value_dim if self.value_dim != self.key_dim else "",
        )


class GraphNode(_Node):
    """A whole model of one input and one output run as one layer: the model a Keras
    ``TimeDistributed`` wraps (``model``: a :class:`KerasModel`, its graph run on the
    internal layout)."""

    def __init__(self, name, model):
        super().__init__(name, "Functional", model.dtype or np.float32)
        if len(model._graph.inputs) != 1 or isinstance(model._graph.outputs, (list, dict)):
            raise UnsupportedLayerError(
                "TimeDistributed",
                "layer",
                "wrapped model %r: rnnfast distributes models of one input and one output" % name,
            )
        self.model = model
        self.takes_ids = model._integer_input  # an Embedding first: slices of ids

    def get_weights(self):
        return self.model.get_weights()

    def run(self, x, mask, num_threads=None):
        y, _ = self.model._graph.run([x], num_threads, masks=[mask])
        return [y], [None]

    def describe(self):
        return "Model(%s)" % ", ".join(node.describe() for node in self.model.layers)
