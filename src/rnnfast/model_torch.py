"""TorchRNN: a loaded ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN``, called like the module.

Each of the module's layers is one :class:`~rnnfast.layers.RNNLayer` (both
directions in one compiled call when bidirectional). Layers run one after the
other on the data in the module's own layout (time-major, or batch-major with
``batch_first``: the kernels read and write either): a layer's output, written by
the kernel with the directions already side by side, is the next layer's input as
it is.
"""

import types
from collections.abc import Mapping

import numpy as np

from . import _validation
from . import stream as _stream
from ._progress import run_batched
from ._summary import Summarized
from .layers import RNNLayer
from .precision import ReducedPrecision

__all__ = ["TorchRNN", "TorchCell", "ignored_notes"]


def _torch_mode(layer):
    """The ``torch.nn.RNNBase.mode`` that computes what ``layer`` computes, or None."""
    cell = layer.cell_spec
    if cell.reset_before is not None and not layer.reset_after:
        return None
    if cell.recurrent_activation and layer.recurrent_activation != "sigmoid":
        return None
    return next((mode for mode, act in cell.torch_modes.items() if act == layer.activation), None)


#: ``ignored_tensors`` of a model pickled before the attribute existed (nothing left out).
_NOTHING: Mapping[str, tuple] = types.MappingProxyType({})
#: Tensors named one by one in the summary's "left out" line; the rest are counted.
NOTES_SHOWN = 8


def ignored_notes(ignored):
    """The summary's lines for the tensors a load left out (``ignored_tensors``: name ->
    shape): none when nothing was left out."""
    if not ignored:
        return []
    items = list(ignored.items())
    shown = ", ".join("%s %s" % (n, list(shape)) for n, shape in items[:NOTES_SHOWN])
    more = ", ... (%d more)" % (len(items) - NOTES_SHOWN) if len(items) > NOTES_SHOWN else ""
    return [
        "left out: %d tensor%s of the file that are not this module's: %s%s"
        % (len(items), "" if len(items) == 1 else "s", shown, more)
    ]


class TorchRNN(ReducedPrecision, Summarized):
    """An ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` for inference, called like the module.

    Made by :func:`rnnfast.load` (a state_dict file) or :func:`rnnfast.from_torch`
    (a live module); it can also be built from canonical layers.

    Parameters
    ----------
    layers : list of RNNLayer
        One per module layer, all of the same cell, directions and sizes as a
        PyTorch module has them (GRU reset-after with tanh / sigmoid, LSTM with tanh /
        sigmoid, SimpleRNN with tanh or relu); layer ``k > 0`` takes the previous
        layer's ``num_directions * output_size`` features.
    batch_first : bool
        Input and output are ``(batch, time, features)`` instead of time-major.
    bias : bool
        Whether the module had biases (reported only; the layers hold them).

    Attributes
    ----------
    mode : {"GRU", "LSTM", "RNN_TANH", "RNN_RELU"}
        As ``torch.nn.RNNBase.mode``.
    input_size, hidden_size, num_layers, proj_size : int
        ``proj_size`` is 0 without an LSTM projection.
    bidirectional, batch_first, bias : bool
    nonlinearity : str or None
        ``"tanh"`` or ``"relu"`` for an ``nn.RNN``, else None.
    dtype : numpy.dtype
        The compute dtype (float32 or float64); inputs are cast to it.
    layers : list of RNNLayer
    source : str or None
        Where the weights came from (a file path), when known.
    ignored_tensors : dict of str -> tuple of int
        The tensors of the file that are not this module's (an embedding, a head,
        optimizer state ... of a checkpoint), dotted name -> shape, in file order;
        empty when nothing was left out. ``summary()`` names them too.
    """

    ignored_tensors: Mapping[str, tuple] = _NOTHING

    def __init__(self, layers, *, batch_first=False, bias=True, source=None):
        layers = list(layers)
        if not layers or not all(isinstance(l, RNNLayer) for l in layers):
            raise ValueError("TorchRNN needs a non-empty list of RNNLayer")
        first = layers[0]
        mode = _torch_mode(first)
        if mode is None:
            raise ValueError("%r is not a layer PyTorch has" % (first,))
        D, Ho = first.num_directions, first.output_size
        for k, l in enumerate(layers):
            same = (
                l.cell,
                l.reset_after,
                l.activation,
                l.recurrent_activation,
                l.num_directions,
                l.units,
                l.proj_size,
                l.dtype,
                l.go_backwards,
            )
            ref = (
                first.cell,
                first.reset_after,
                first.activation,
                first.recurrent_activation,
                D,
                first.units,
                first.proj_size,
                first.dtype,
                False,
            )
            if same != ref:
                raise ValueError("layer %d (%r) differs from layer 0 (%r)" % (k, l, first))
            if k and l.input_size != D * Ho:
                raise ValueError("layer %d takes %d features but layer %d gives %d" % (k, l.input_size, k - 1, D * Ho))
        self.layers = layers
        self.mode = mode
        self.input_size = first.input_size
        self.hidden_size = first.units
        self.proj_size = first.proj_size
        self.num_layers = len(layers)
        self.bidirectional = D == 2
        self.num_directions = D
        self.batch_first = bool(batch_first)
        self.bias = bool(bias)
        self.nonlinearity = first.activation if len(first.cell_spec.torch_modes) > 1 else None
        self.dtype = first.dtype
        self.source = source
        self.ignored_tensors = {}
        self._Ho = Ho
        self._module = first.cell_spec.torch_module
        self._with_c = first.cell_spec.num_states > 1

    def __repr__(self):
        args = "%d, %d" % (self.input_size, self.hidden_size)
        if self.num_layers != 1:
            args += ", num_layers=%d" % self.num_layers
        if self.nonlinearity not in (None, "tanh"):
            args += ", nonlinearity=%r" % self.nonlinearity
        if not self.bias:
            args += ", bias=False"
        if self.batch_first:
            args += ", batch_first=True"
        if self.bidirectional:
            args += ", bidirectional=True"
        if self.proj_size:
            args += ", proj_size=%d" % self.proj_size
        return "TorchRNN(%s(%s), dtype=%s)" % (self.layers[0].cell_spec.torch_module, args, self.dtype.name)

    # -- describing itself ------------------------------------------------------------

    framework = "PyTorch"

    def summary_rows(self):
        """The rows of the summary table, one per module layer: dicts with ``name``
        (``l0``, ``l1``, ...), ``type``, ``units``, ``options`` (str), ``parameters``
        (int, the sum of the module's ``numel()`` for the layer) and ``dtype`` (str)."""
        opts = []
        if self.bidirectional:
            opts.append("bidirectional")
        if self.nonlinearity not in (None, "tanh"):
            opts.append("nonlinearity=%s" % self.nonlinearity)
        if self.proj_size:
            opts.append("proj_size=%d" % self.proj_size)
        if not self.bias:
            opts.append("bias=False")
        return [
            dict(
                name="l%d" % k,
                type=self._module,
                units=str(layer.units),
                options=", ".join(opts),
                parameters=layer.source_parameters,
                dtype=layer.dtype.name,
                precision=layer.precision,
            )
            for k, layer in enumerate(self.layers)
        ]

    def summary_title(self):
        """The title line of the summary table."""
        return repr(self)

    def summary_notes(self):
        """Lines printed under the summary table: the tensors of the file left out."""
        return ignored_notes(self.ignored_tensors)

    def describe(self):
        """What the module is and takes, as a dict: ``framework`` ("PyTorch"), ``name``
        (its repr), ``input_shape`` ``(None, None, input_size)`` (time and batch in the
        module's order, ``batch_first`` or not), ``integer_input`` (False),
        ``vocabulary`` (None), ``dtype``, ``batch_first``, ``layers`` (:meth:`summary_rows`)."""
        return dict(
            framework=self.framework,
            name=repr(self),
            input_shape=(None, None, self.input_size),
            integer_input=False,
            vocabulary=None,
            dtype=self.dtype,
            batch_first=self.batch_first,
            layers=self.summary_rows(),
        )

    # -- running --------------------------------------------------------------------

    def _states(self, hx, B, unbatched):
        """hx -> (h0, c0), each (L*D, B, .) or None."""
        if hx is None:
            return None, None
        LD, Ho, H = self.num_layers * self.num_directions, self._Ho, self.hidden_size
        if self._with_c:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError(
                    "an LSTM takes hx as a tuple (h_0, c_0), got %s"
                    % (
                        type(hx).__name__
                        if not isinstance(hx, (tuple, list))
                        else "a %s of %d" % (type(hx).__name__, len(hx))
                    )
                )
            parts = [(hx[0], (LD, B, Ho), "h_0"), (hx[1], (LD, B, H), "c_0")]
        else:
            if isinstance(hx, (tuple, list)):
                raise ValueError("an %s takes hx as one array h_0, not a %s" % (self._module, type(hx).__name__))
            parts = [(hx, (LD, B, Ho), "h_0")]
        out = []
        for s, shape, name in parts:
            s = _validation.as_input(s, self.dtype, name)
            if unbatched:
                if s.ndim != 2:
                    raise ValueError(
                        "for unbatched 2-D input, %s must be 2-D %s, got shape %s"
                        % (name, (shape[0], shape[2]), s.shape)
                    )
                s = s[:, None, :]
            if s.shape != shape:
                raise ValueError("%s must have shape %s, got %s" % (name, shape, s.shape))
            out.append(s)
        return (out[0], out[1]) if len(out) == 2 else (out[0], None)

    def _check_layout(self, shape, B, hx, lengths):
        """A batch size carried by ``hx`` or ``lengths`` that fits only the other layout
        (batch-first for a time-major module, or the reverse) is an error that says so.
        Without them the two readings of a 3-D input cannot be told apart."""
        other = shape[0] if not self.batch_first else shape[1]  # the batch under the other layout
        if other == B:
            return
        sizes = []
        for name, a in (("h_0", hx[0] if isinstance(hx, (tuple, list)) and hx else hx), ("lengths", lengths)):
            try:
                shape_a = np.shape(a) if a is not None else ()
            except (ValueError, TypeError):  # not an array: _validation says what is wrong
                continue
            if len(shape_a) == (3 if name == "h_0" else 1):
                sizes.append((name, shape_a[-2 if name == "h_0" else 0]))
        for name, n in sizes:
            if n == other:
                mine, theirs = (
                    ("(batch, time, features)", "(time, batch, features)")
                    if self.batch_first
                    else ("(time, batch, features)", "(batch, time, features)")
                )
                raise ValueError(
                    "%s gives a batch of %d, which fits the input of shape %s only if it is %s; this "
                    "module has batch_first=%s and reads it as %s, a batch of %d. Pass the input as "
                    "%s, or load the model with batch_first=%s"
                    % (name, n, tuple(shape), theirs, self.batch_first, mine, B, mine, not self.batch_first)
                )

    def forward(self, x, hx=None, *, lengths=None, num_threads=None):
        """Run the module, as ``module(x, hx)`` does.

        Parameters
        ----------
        x : array_like or torch.Tensor
            ``(T, B, input_size)``, or ``(B, T, input_size)`` when ``batch_first``, or
            unbatched ``(T, input_size)``. Cast to :attr:`dtype`.
        hx : array_like, or tuple (h_0, c_0) for an LSTM, optional
            ``h_0``: ``(num_layers * num_directions, B, Ho)`` (``Ho`` is ``proj_size``
            if set, else ``hidden_size``); ``c_0``: ``(num_layers * num_directions, B,
            hidden_size)``; without the batch axis for unbatched input. Zeros if omitted.
            Never batch-first (as in PyTorch). Its batch axis (and that of ``lengths``)
            is checked against the input's: one that fits only the other layout
            (a batch-first input given to a time-major module, or the reverse) is a
            ``ValueError`` saying so. Without ``hx`` or ``lengths`` the two layouts
            cannot be told apart by shape: the input is read in the module's layout.
        lengths : array_like of int, shape (B,), optional
            Valid steps per row, in any order: the result equals
            ``pack_padded_sequence(x, lengths, enforce_sorted=False)`` -> module ->
            ``pad_packed_sequence(..., total_length=T)``: ``out`` is zero past each
            row's length, ``h_n`` / ``c_n`` are each row's states at its last valid step
            (the reverse direction starts there). A length of 0 (which PyTorch refuses)
            gives zeros and the initial state.
        num_threads : int, optional
            Threads for this call (default :func:`rnnfast.get_num_threads`).

        Returns
        -------
        out : ndarray
            ``(T, B, D * Ho)`` (``(B, T, D * Ho)`` when ``batch_first``;
            ``(T, D * Ho)`` unbatched): the last layer's outputs, directions
            concatenated (forward first).
        h_n : ndarray, ``(num_layers * num_directions, B, Ho)``
            Final hidden states, layer-major then direction, as PyTorch orders them.
            An LSTM returns ``(h_n, c_n)`` in its place, ``c_n`` of shape
            ``(num_layers * num_directions, B, hidden_size)``.
        """
        dt = self.dtype
        layers = self.layers
        if (
            hx is None
            and lengths is None
            and len(layers) == 1
            and type(x) is np.ndarray
            and x.dtype == dt
            and x.ndim == 3
            and x.shape[2] == self.input_size
        ):
            # the common call: one layer, no states given, a batched array of the dtype.
            # Its final states are the module's (num_layers * D = D), no copy into h_n
            out, h, c = layers[0].forward(x, num_threads=num_threads, batch_first=self.batch_first)
            return (out, (h, c)) if self._with_c else (out, h)
        x = _validation.as_input(x, dt)
        unbatched = x.ndim == 2
        bfirst = self.batch_first and not unbatched  # the kernels read it as it is
        if unbatched:
            if lengths is not None:
                raise ValueError("lengths needs batched 3-D input, got shape %s" % (x.shape,))
            x = x[:, None, :]
        elif x.ndim != 3:
            raise ValueError(
                "expected input of shape %s or unbatched (time, %d), got shape %s"
                % (
                    "(batch, time, %d)" % self.input_size
                    if self.batch_first
                    else "(time, batch, %d)" % self.input_size,
                    self.input_size,
                    x.shape,
                )
            )
        B, T, I = x.shape if bfirst else (x.shape[1], x.shape[0], x.shape[2])
        if I != self.input_size:
            raise ValueError(
                "expected %d input features, got input of shape %s"
                % (self.input_size, (x[:, 0] if unbatched else x).shape)
            )
        if not unbatched:
            self._check_layout(x.shape, B, hx, lengths)
        h0, c0 = self._states(hx, B, unbatched)
        if lengths is not None:
            lengths = _validation.as_lengths(lengths, T, B)
        D = self.num_directions
        LD = self.num_layers * D
        h_n = np.empty((LD, B, self._Ho), dt)
        c_n = np.empty((LD, B, self.hidden_size), dt) if self._with_c else None
        y = x
        for k, layer in enumerate(self.layers):
            part = slice(k * D, (k + 1) * D)
            y, h, c = layer.forward(
                y,
                None if h0 is None else h0[part],
                None if c0 is None else c0[part],
                lengths=lengths,
                num_threads=num_threads,
                batch_first=bfirst,
            )
            h_n[part] = h
            if c_n is not None:
                c_n[part] = c
        out = y
        if unbatched:
            out, h_n = out[:, 0], h_n[:, 0]
            c_n = None if c_n is None else c_n[:, 0]
        return (out, (h_n, c_n)) if self._with_c else (out, h_n)

    __call__ = forward

    def predict(self, x, *, lengths=None, batch_size=None, verbose=0, num_threads=None):
        """The output sequence only, computed in batches if asked (Keras-style).

        ``rnn.predict(x)`` is ``rnn(x)[0]``: the last layer's outputs, zero initial
        states. For the final states (what a classifier head usually reads) call the
        model itself.

        Parameters
        ----------
        x : array_like or torch.Tensor
            ``(T, B, input_size)``, or ``(B, T, input_size)`` when ``batch_first``, or
            unbatched ``(T, input_size)`` (computed in one pass).
        lengths : array_like of int, shape (B,), optional
            Valid steps per row, as for :meth:`forward`.
        batch_size : int, optional
            Rows per pass (default: all at once). Bounds memory; results are the same.
        verbose : {0, 1, 2, "auto"}
            1: a Keras-like progress bar over the batches on standard error; 2: one line
            when done; 0 or "auto": silent.
        num_threads : int, optional
            Threads for this call (default :func:`rnnfast.get_num_threads`).

        Returns
        -------
        out : ndarray
            ``(T, B, D * Ho)`` (``(B, T, D * Ho)`` when ``batch_first``; ``(T, D * Ho)``
            unbatched), as :meth:`forward` returns it.
        """
        xa = _validation.as_input(x, self.dtype)
        if xa.ndim != 3:
            return self.forward(xa, lengths=lengths, num_threads=num_threads)[0]
        if lengths is not None:
            B, T = xa.shape[:2] if self.batch_first else xa.shape[1::-1]
            self._check_layout(xa.shape, B, None, lengths)
            lengths = _validation.as_lengths(lengths, T, B)
        return run_batched(
            lambda part, lens: self.forward(part, lengths=lens, num_threads=num_threads)[0],
            xa,
            batch_size,
            axis=0 if self.batch_first else 1,
            aligned=(lengths,),
            verbose=verbose,
        )

    # -- streaming (rnnfast.stream) ---------------------------------------------------

    def stream(self):
        """A new :class:`~rnnfast.stream.Stream`: every layer's state (``h``, and ``c``
        for an LSTM) at the start of a sequence. A bidirectional module is refused
        (:class:`~rnnfast.UnsupportedLayerError`): its backward direction needs the future."""
        return _stream.open_stream(self, lambda: _stream.torch_program(self))

    def step(self, x, stream, *, num_threads=None):
        """Run the next steps of one stream (``x``: ``(time, input_size)``), or of many
        in one batched call (lists of chunks and streams). Returns the last layer's
        outputs for these steps, ``(time, D * Ho)`` (stacked ``(streams, time, .)`` when
        the chunks have equal lengths, else a list); the states stay in the stream
        (``stream.state``: ``{"l0": [h] or [h, c], ...}``). See :meth:`rnnfast.KerasModel.step`."""
        return _stream.step(self, x, stream, num_threads)


class TorchCell(ReducedPrecision, Summarized):
    """An ``nn.GRUCell`` / ``nn.LSTMCell`` / ``nn.RNNCell`` for inference, called like
    the module: ``h = cell(x, h)``, or ``h, c = cell(x, (h, c))`` for an LSTM cell.

    One call is one step of the compiled core: the layer's sequence call with one time
    step (:meth:`RNNLayer.forward <rnnfast.layers.RNNLayer.forward>` with ``T = 1``),
    the same kernels and gate math as :class:`TorchRNN`.

    Made by :func:`rnnfast.load` (a cell's state_dict: ``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh``) or :func:`rnnfast.from_torch` (a live cell).

    Parameters
    ----------
    layer : RNNLayer
        One direction, of a cell PyTorch has (as for :class:`TorchRNN`), no projection.
    bias : bool
        Whether the cell had biases (reported only; the layer holds them).
    source : str, optional

    Attributes
    ----------
    mode : {"GRU", "LSTM", "RNN_TANH", "RNN_RELU"}
    input_size, hidden_size : int
    bias : bool
    nonlinearity : str or None
        ``"tanh"`` or ``"relu"`` for an ``nn.RNNCell``, else None.
    dtype : numpy.dtype
    layer : RNNLayer
    source : str or None
    ignored_tensors : dict of str -> tuple of int
        As ``TorchRNN.ignored_tensors``.
    """

    ignored_tensors: Mapping[str, tuple] = _NOTHING

    def __init__(self, layer, *, bias=True, source=None):
        if not isinstance(layer, RNNLayer):
            raise ValueError("TorchCell needs an RNNLayer, got %s" % type(layer).__name__)
        mode = _torch_mode(layer)
        if mode is None or layer.go_backwards:
            raise ValueError("%r is not a layer PyTorch has" % (layer,))
        if layer.num_directions != 1 or layer.proj_size:
            raise ValueError("a PyTorch cell has one direction and no projection, got %r" % (layer,))
        self.layer = layer
        self.mode = mode
        self.input_size = layer.input_size
        self.hidden_size = layer.units
        self.bias = bool(bias)
        self.nonlinearity = layer.activation if len(layer.cell_spec.torch_modes) > 1 else None
        self.dtype = layer.dtype
        self.source = source
        self.ignored_tensors = {}
        self._module = layer.cell_spec.torch_module + "Cell"
        self._with_c = layer.cell_spec.num_states > 1

    def __repr__(self):
        args = "%d, %d" % (self.input_size, self.hidden_size)
        if not self.bias:
            args += ", bias=False"
        if self.nonlinearity not in (None, "tanh"):
            args += ", nonlinearity=%r" % self.nonlinearity
        return "TorchCell(%s(%s), dtype=%s)" % (self._module, args, self.dtype.name)

    # -- describing itself ------------------------------------------------------------

    framework = "PyTorch"

    def summary_rows(self):
        """One row, as :meth:`TorchRNN.summary_rows` gives them (name ``cell``)."""
        opts = []
        if self.nonlinearity not in (None, "tanh"):
            opts.append("nonlinearity=%s" % self.nonlinearity)
        if not self.bias:
            opts.append("bias=False")
        return [
            dict(
                name="cell",
                type=self._module,
                units=str(self.hidden_size),
                options=", ".join(opts),
                parameters=self.layer.source_parameters,
                dtype=self.dtype.name,
            )
        ]

    def summary_title(self):
        """The title line of the summary table."""
        return repr(self)

    def summary_notes(self):
        """Lines printed under the summary table: the tensors of the file left out."""
        return ignored_notes(self.ignored_tensors)

    def describe(self):
        """As :meth:`TorchRNN.describe`; ``input_shape`` is ``(None, input_size)`` and
        ``one_step`` is True: a call is one step with the caller's state."""
        return dict(
            one_step=True,
            framework=self.framework,
            name=repr(self),
            input_shape=(None, self.input_size),
            integer_input=False,
            vocabulary=None,
            dtype=self.dtype,
            batch_first=False,
            layers=self.summary_rows(),
        )

    # -- running --------------------------------------------------------------------

    def _state(self, s, B, unbatched, name, size):
        s = _validation.as_input(s, self.dtype, name)
        shape = (size,) if unbatched else (B, size)
        if s.shape != shape:
            raise ValueError(
                "%s must have shape %s for input of %s, got %s"
                % (name, shape, "shape (%d,)" % self.input_size if unbatched else "batch %d" % B, s.shape)
            )
        return s.reshape(1, B, size)

    def forward(self, x, hx=None, *, num_threads=None):
        """One step, as ``cell(x, hx)`` does.

        Parameters
        ----------
        x : array_like or torch.Tensor
            ``(B, input_size)``, or unbatched ``(input_size,)``. Cast to :attr:`dtype`.
        hx : array_like, or tuple (h, c) for an LSTM cell, optional
            ``(B, hidden_size)`` each (``(hidden_size,)`` unbatched); zeros if omitted.
        num_threads : int, optional
            Threads for this call (default :func:`rnnfast.get_num_threads`).

        Returns
        -------
        h : ndarray ``(B, hidden_size)`` (``(hidden_size,)`` unbatched)
            The next hidden state; an LSTM cell returns the tuple ``(h, c)``.
        """
        x = _validation.as_input(x, self.dtype)
        unbatched = x.ndim == 1
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(
                "%s expects input of shape (batch, %d) or (%d,), got shape %s"
                % (self._module, self.input_size, self.input_size, x.shape)
            )
        B = 1 if unbatched else x.shape[0]
        H = self.hidden_size
        h0 = c0 = None
        if hx is not None:
            if self._with_c:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise ValueError("an LSTMCell takes hx as a tuple (h, c), got %s" % type(hx).__name__)
                h0 = self._state(hx[0], B, unbatched, "h", H)
                c0 = self._state(hx[1], B, unbatched, "c", H)
            else:
                if isinstance(hx, (tuple, list)):
                    raise ValueError("an %s takes hx as one array h, not a %s" % (self._module, type(hx).__name__))
                h0 = self._state(hx, B, unbatched, "h", H)
        _, h, c = self.layer.forward(
            x.reshape(1, B, self.input_size), h0, c0, return_sequences=False, num_threads=num_threads
        )
        shape = (H,) if unbatched else (B, H)
        h = h.reshape(shape)
        return (h, c.reshape(shape)) if self._with_c else h

    __call__ = forward
