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


def run_recurrent(layer, x_tm, *, return_sequences, merge_mode="concat", num_threads=None):
    """Run ``layer`` on time-major ``x_tm`` and shape its result as a Keras layer would
    (no masks): the output sequence (T, B, F), or the last output (B, F)."""
    out, h_n, _ = layer.forward(x_tm, return_sequences=return_sequences, num_threads=num_threads)
    if not return_sequences:
        out = np.concatenate(list(h_n), axis=-1) if layer.num_directions == 2 else h_n[0]
    if layer.num_directions == 2:
        out = merge_directions(out, merge_mode, layer.output_size)
    return out


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
