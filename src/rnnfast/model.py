"""Models: layers wired together, with the calling conventions users know.

- :class:`Sequential` -- a chain of canonical layers run on batch-major input,
  the shape of a Keras ``Sequential`` (used by the demo and the tests).
- :class:`KerasModel` (model_keras.py) -- a loaded Keras model, ``predict()`` like Keras.
- :class:`TorchRNN` (model_torch.py) -- a loaded ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN``,
  called like the module.
"""

import numpy as np

from ._progress import run_batched
from ._summary import Summarized
from ._validation import as_numeric
from .layers import Dense, RNNLayer, merge_directions
from .precision import ReducedPrecision

__all__ = ["Sequential", "run_recurrent"]


def run_recurrent(
    layer,
    x_tm,
    *,
    return_sequences,
    merge_mode="concat",
    mask=None,
    zero_output_for_mask=False,
    return_state=False,
    num_threads=None,
    batch_first=False,
):
    """Run ``layer`` on time-major ``x_tm`` and shape its result as the Keras layer would.

    Parameters
    ----------
    layer : RNNLayer
    x_tm : array_like, shape (T, B, I), or (B, T, I) with ``batch_first``
    return_sequences : bool
    merge_mode : {"concat", "sum", "mul", "ave", None}
        For a two-direction layer (Keras ``Bidirectional``).
    mask : array_like of bool, shape (T, B), optional
        Keras mask: a masked step carries the state over.
    zero_output_for_mask : bool
        Masked steps output zeros (Keras sets it on the layers inside ``Bidirectional``
        to ``return_sequences``), else the row's previous output.
    return_state : bool
        Also return the final states.
    num_threads : int, optional
    batch_first : bool
        ``x_tm`` and the output sequence are batch-major (the mask stays (T, B)).

    Returns
    -------
    out : ndarray (T, B, F) or (B, F), or a list [forward, backward] for ``merge_mode=None``
        The output sequence, time-major (batch-major with ``batch_first``), in Keras' order: a ``go_backwards`` layer's
        sequence comes out reversed (its first element is the last input step), the
        backward half of a two-direction layer is aligned with input time. Without
        ``return_sequences`` the last output: the final state, or -- with
        ``zero_output_for_mask`` -- zeros for rows whose last processed step is masked.
    states : list of ndarray (B, Ho) / (B, H), only with ``return_state``
        Per direction (forward first): ``h``, then ``c`` for LSTM (Keras' order).
    """
    out, h_n, c_n = layer.forward(
        x_tm,
        mask=mask,
        zero_output_for_mask=zero_output_for_mask,
        return_sequences=return_sequences,
        num_threads=num_threads,
        batch_first=batch_first,
    )
    D = layer.num_directions
    if return_sequences:
        if layer.go_backwards:
            out = out[:, ::-1] if batch_first else out[::-1]
    else:
        last = list(h_n)
        if mask is not None and zero_output_for_mask:
            mask = np.asarray(mask, dtype=bool)
            for d in range(D if len(mask) else 0):
                t = 0 if (d == 1 or layer.go_backwards) else -1  # the last step processed
                last[d] = np.where(mask[t][:, None], last[d], last[d].dtype.type(0))
        out = np.concatenate(last, axis=-1) if D == 2 else last[0]
    if D == 2:
        out = merge_directions(out, merge_mode, layer.output_size)
    if not return_state:
        return out
    states = []
    for d in range(D):
        states.append(h_n[d])
        if c_n is not None:
            states.append(c_n[d])
    return out, states


class Sequential(ReducedPrecision, Summarized):
    """Canonical layers run in order on batch-major input ``(batch, time, features)``.

    Recurrent layers are added with their Keras-level options
    (``return_sequences``, ``merge_mode``); :class:`~rnnfast.layers.Dense` layers act on
    the last axis. The recurrent kernels read and write the batch-major sequence as it
    is: nothing is transposed.
    """

    def __init__(self, steps=()):
        self._steps = []
        for s in steps:
            if isinstance(s, tuple):
                self.add(s[0], **s[1])
            else:
                self.add(s)

    def add(self, layer, *, return_sequences=True, merge_mode="concat"):
        if not isinstance(layer, (RNNLayer, Dense)):
            raise TypeError("Sequential takes RNNLayer or Dense, got %r" % type(layer).__name__)
        if isinstance(layer, RNNLayer) and self._steps:
            prev = self._steps[-1]
            if isinstance(prev[0], RNNLayer) and not prev[1]["return_sequences"]:
                raise ValueError("a recurrent layer needs a sequence: the previous one has return_sequences=False")
        self._steps.append((layer, {"return_sequences": return_sequences, "merge_mode": merge_mode}))
        return self

    @property
    def layers(self):
        return [s[0] for s in self._steps]

    def predict(self, x, batch_size=None, verbose="auto", *, num_threads=None):
        """Run the chain, Keras-style. ``x``: (batch, time, features) -> the last layer's
        output, batch-major. ``batch_size`` (rows per pass) and ``verbose`` (1: a
        progress bar) as in :meth:`rnnfast.KerasModel.predict`; ``num_threads`` for
        this call."""
        y = as_numeric(x, "input")
        if y.ndim != 3:
            raise ValueError("expected input of shape (batch, time, features), got %s" % (y.shape,))
        return run_batched(lambda part: self._run(part, num_threads), y, batch_size, verbose=verbose)

    def __call__(self, x, *, num_threads=None):
        return self.predict(x, num_threads=num_threads)

    def _run(self, y, num_threads):
        for i, (layer, opt) in enumerate(self._steps):
            if isinstance(layer, RNNLayer):
                y = run_recurrent(layer, y, num_threads=num_threads, batch_first=True, **opt)
                if isinstance(y, list):  # merge_mode=None: [forward, backward]
                    if i != len(self._steps) - 1:
                        raise ValueError("merge_mode=None gives two outputs: it must be the last layer")
                    return y
            else:
                y = layer.forward(y, num_threads=num_threads)
        return y

    # -- describing itself ------------------------------------------------------------

    framework = None

    def summary_rows(self):
        """The rows of the summary table, one per layer (see :meth:`rnnfast.KerasModel.summary_rows`)."""
        rows = []
        for k, (layer, opt) in enumerate(self._steps):
            if isinstance(layer, RNNLayer):
                kind = ("Bidirectional(%s)" if layer.num_directions == 2 else "%s") % layer.cell_spec.title
                units = ("2x%d" if layer.num_directions == 2 else "%d") % layer.units
                opts = [o for o in ("return_sequences",) if opt[o]]
                if layer.num_directions == 2 and opt["merge_mode"] != "concat":
                    opts.append("merge_mode=%s" % opt["merge_mode"])
                params = layer.source_parameters
            else:
                kind, units = "Dense", str(layer.kernel.shape[1])
                opts = [] if layer.activation == "linear" else ["activation=%s" % layer.activation]
                params = layer.kernel.size + (layer.bias.size if layer.bias is not None else 0)
            rows.append(
                dict(
                    name="l%d" % k,
                    type=kind,
                    units=units,
                    options=", ".join(opts),
                    parameters=int(params),
                    dtype=layer.dtype.name,
                    precision=getattr(layer, "precision", "float32"),
                )
            )
        return rows

    def summary_title(self):
        return "Sequential of %d layers" % len(self._steps)

    def describe(self):
        """What the chain is and takes (see :meth:`rnnfast.KerasModel.describe`)."""
        first = self._steps[0][0] if self._steps else None
        features = (
            first.input_size if isinstance(first, RNNLayer) else (first.kernel.shape[0] if first is not None else None)
        )
        return dict(
            framework=self.framework,
            name=repr(self),
            input_shape=(None, None, features),
            integer_input=False,
            vocabulary=None,
            dtype=first.dtype if first is not None else None,
            layers=self.summary_rows(),
        )

    def __repr__(self):
        return "Sequential([%s])" % ", ".join(repr(s[0]) for s in self._steps)
