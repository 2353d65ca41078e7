"""Models: layers wired together, with the calling conventions users know.

- :class:`Sequential` -- a chain of canonical layers run on batch-major input,
  the shape of a Keras ``Sequential`` (used by the demo and the tests).
- :class:`KerasModel` (model_keras.py) -- a loaded Keras model, ``predict()`` like Keras.
- :class:`TorchRNN` (model_torch.py) -- a loaded ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN``,
  called like the module.
"""
import numpy as np

from .layers import Dense, RNNLayer, merge_directions

__all__ = ["Sequential", "run_recurrent"]


def run_recurrent(layer, x_tm, *, return_sequences, merge_mode="concat", mask=None,
                  zero_output_for_mask=False, return_state=False, num_threads=None):
    """Run ``layer`` on time-major ``x_tm`` and shape its result as the Keras layer would.

    Parameters
    ----------
    layer : RNNLayer
    x_tm : array_like, shape (T, B, I)
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

    Returns
    -------
    out : ndarray (T, B, F) or (B, F), or a list [forward, backward] for ``merge_mode=None``
        The output sequence, time-major, in Keras' order: a ``go_backwards`` layer's
        sequence comes out reversed (its first element is the last input step), the
        backward half of a two-direction layer is aligned with input time. Without
        ``return_sequences`` the last output: the final state, or -- with
        ``zero_output_for_mask`` -- zeros for rows whose last processed step is masked.
    states : list of ndarray (B, Ho) / (B, H), only with ``return_state``
        Per direction (forward first): ``h``, then ``c`` for LSTM (Keras' order).
    """
    out, h_n, c_n = layer.forward(x_tm, mask=mask, zero_output_for_mask=zero_output_for_mask,
                                  return_sequences=return_sequences, num_threads=num_threads)
    D = layer.num_directions
    if return_sequences:
        if layer.go_backwards:
            out = out[::-1]
    else:
        last = list(h_n)
        if mask is not None and zero_output_for_mask:
            mask = np.asarray(mask, dtype=bool)
            for d in range(D if len(mask) else 0):
                t = 0 if (d == 1 or layer.go_backwards) else -1   # the last step processed
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


def _batch_major(y):
    return np.ascontiguousarray(np.swapaxes(y, 0, 1))


class Sequential:
    """Canonical layers run in order on batch-major input ``(batch, time, features)``.

    Recurrent layers are added with their Keras-level options
    (``return_sequences``, ``merge_mode``); :class:`~rnnfast.layers.Dense` layers act on
    the last axis. Internally the sequence stays time-major from the first recurrent
    layer to the last.
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
                raise ValueError("a recurrent layer needs a sequence: the previous one has "
                                 "return_sequences=False")
        self._steps.append((layer, {"return_sequences": return_sequences, "merge_mode": merge_mode}))
        return self

    @property
    def layers(self):
        return [s[0] for s in self._steps]

    def predict(self, x, num_threads=None):
        """Run the chain. ``x``: (batch, time, features) -> the last layer's output, batch-major."""
        y = np.asarray(x)
        if y.ndim != 3:
            raise ValueError("expected input of shape (batch, time, features), got %s" % (y.shape,))
        time_major = False
        for i, (layer, opt) in enumerate(self._steps):
            if isinstance(layer, RNNLayer):
                if not time_major:
                    y = np.ascontiguousarray(np.swapaxes(y, 0, 1), dtype=layer.dtype)
                    time_major = True
                y = run_recurrent(layer, y, num_threads=num_threads, **opt)
                if isinstance(y, list):         # merge_mode=None: [forward, backward]
                    if i != len(self._steps) - 1:
                        raise ValueError("merge_mode=None gives two outputs: it must be the last layer")
                    return [_batch_major(o) if time_major and o.ndim == 3 else o for o in y]
                if y.ndim == 2:
                    time_major = False          # (B, F): the last output
            else:
                y = layer.forward(y)
        return _batch_major(y) if time_major else y

    __call__ = predict

    def __repr__(self):
        return "Sequential([%s])" % ", ".join(repr(s[0]) for s in self._steps)
