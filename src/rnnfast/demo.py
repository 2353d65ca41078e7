"""`rnnfast demo`: two pretrained models on real data, and the seed's models on random weights.

The default demo loads the two models bundled in ``rnnfast/data`` (trained by
``examples/train_digits.py`` on scikit-learn's handwritten digits: each 8x8 image is
8 time steps of 8 features, scaled to [0, 1]) with :func:`rnnfast.load`, classifies
the held-out split and prints

- accuracy, and agreement with the probabilities each framework saved when it was
  trained (largest absolute difference; the contract is atol=1e-5, rtol=1e-4);
- latency at batch 1 and throughput at the full split, against the float64 numpy
  reference (:mod:`rnnfast.reference`) running the same weights.

The models:

- ``digits_bigru.keras`` (Keras 3): ``Bidirectional(GRU(32, return_sequences=True))
  -> Bidirectional(GRU(16)) -> Dense(10, softmax)``, input ``(batch, 8, 8)``;
- ``digits_lstm.pt``: the ``state_dict()`` of ``nn.LSTM(8, 32, num_layers=2,
  bidirectional=True, batch_first=True)``; its last layer's final states, forward
  then backward (``h_n[-2]``, ``h_n[-1]``), concatenated to 64 features, go through
  the linear head in ``digits_lstm_head.npz`` (``weight`` (10, 64), ``bias`` (10,)),
  applied here with numpy, and a softmax.

``digits_test.npz`` holds the split: ``x`` (450, 8, 8) float32, ``y`` (450,) int64,
and the frameworks' own probabilities ``keras_proba`` and ``torch_proba`` (450, 10).
None of scikit-learn, Keras or PyTorch is needed to run any of this (reading the
``.keras`` file needs h5py).

``rnnfast demo --seed-models`` runs the seed's two Keras-shaped models on random
weights instead (:func:`seed_models`, :func:`run_seed_demo`).
"""

import os
from typing import Union

import numpy as np

from . import reference
from ._bench import median_time
from ._threads import get_num_threads
from .io import load
from .layers import CellWeights, Dense, RNNLayer, merge_directions, softmax
from .model import Sequential

__all__ = [
    "DATA_DIR",
    "EXAMPLES",
    "data_path",
    "example",
    "examples",
    "load_digits_examples",
    "reference_keras",
    "reference_torch",
    "lstm_head_proba",
    "run_digits_demo",
    "seed_models",
    "run_seed_demo",
]

#: The folder of the bundled example files.
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

KERAS_FILE = "digits_bigru.keras"
TORCH_FILE = "digits_lstm.pt"
HEAD_FILE = "digits_lstm_head.npz"
TEST_FILE = "digits_test.npz"


def data_path(name):
    """The path of a bundled file (``digits_bigru.keras``, ``digits_lstm.pt``,
    ``digits_lstm_head.npz``, ``digits_test.npz``, ``digits_info.json``)."""
    return os.path.join(DATA_DIR, name)


#: The bundled example files by name (what :func:`rnnfast.example` takes), with what each holds.
EXAMPLES = {
    "digits_bigru": (
        KERAS_FILE,
        "Keras 3 model: Bidirectional(GRU(32)) -> Bidirectional(GRU(16)) -> Dense(10, softmax), input (batch, 8, 8)",
    ),
    "digits_lstm": (
        TORCH_FILE,
        "PyTorch state_dict of nn.LSTM(8, 32, num_layers=2, bidirectional=True, batch_first=True)",
    ),
    "digits_lstm_head": (HEAD_FILE, "the LSTM's nn.Linear(64, 10) head: weight (10, 64), bias (10,)"),
    "digits_test": (TEST_FILE, "held-out digits: x (450, 8, 8) float32, y (450,), keras_proba, torch_proba (450, 10)"),
    "digits_info": ("digits_info.json", "versions, hyperparameters and accuracies of the two models"),
}


def example(name: Union[str, os.PathLike]) -> str:
    """The path of a bundled example file, valid wherever rnnfast is installed.

    Parameters
    ----------
    name : str
        One of :data:`rnnfast.demo.EXAMPLES`: ``"digits_bigru"`` (a Keras ``.keras`` model),
        ``"digits_lstm"`` (a PyTorch ``.pt`` state_dict), ``"digits_lstm_head"``,
        ``"digits_test"`` (the held-out data, ``.npz``), ``"digits_info"``; the file
        name itself (``"digits_bigru.keras"``) is accepted too.

    Returns
    -------
    str
        An absolute path inside the installed package.

    Examples
    --------
    >>> import rnnfast
    >>> model = rnnfast.load(rnnfast.example("digits_bigru"))
    >>> model.input_shape
    (None, None, 8)
    """
    key = os.fspath(name)
    for k, (fname, _) in EXAMPLES.items():
        if key in (k, fname):
            return data_path(fname)
    raise ValueError("no bundled example %r; the examples are %s" % (name, ", ".join(EXAMPLES)))


def examples() -> dict[str, str]:
    """The bundled example files: a dict of name -> absolute path (see :func:`example`)."""
    return {k: data_path(fname) for k, (fname, _) in EXAMPLES.items()}


# -- the pretrained digits models --------------------------------------------------------


def lstm_head_proba(h_n, head):
    """Class probabilities of the PyTorch digits model from its LSTM's final states.

    Parameters
    ----------
    h_n : ndarray, shape (num_layers * 2, B, 32)
        The LSTM's final hidden states (PyTorch's order: layer-major, then direction).
    head : mapping
        ``weight`` (10, 64) and ``bias`` (10,) of the ``nn.Linear`` head.

    Returns
    -------
    ndarray, shape (B, 10), of ``h_n``'s dtype
    """
    feats = np.concatenate([h_n[-2], h_n[-1]], axis=-1)  # last layer: forward, backward
    w = np.asarray(head["weight"], dtype=feats.dtype)
    b = np.asarray(head["bias"], dtype=feats.dtype)
    return softmax(feats @ w.T + b)


def load_digits_examples():
    """Load the bundled models and the held-out split.

    Returns
    -------
    dict
        ``keras``: the :class:`~rnnfast.KerasModel`, or the reason it could not be
        loaded (a str: reading ``.keras`` files needs h5py); ``torch``: the
        :class:`~rnnfast.TorchRNN` (``batch_first=True``); ``head``: the torch head's
        arrays; ``x`` (450, 8, 8) float32, ``y`` (450,) int, ``keras_proba``,
        ``torch_proba`` (450, 10) float32.
    """
    with np.load(data_path(TEST_FILE)) as f:
        out = {k: f[k] for k in ("x", "y", "keras_proba", "torch_proba")}
    with np.load(data_path(HEAD_FILE)) as f:
        out["head"] = {k: f[k] for k in ("weight", "bias")}
    try:
        out["keras"] = load(data_path(KERAS_FILE))
    except ImportError as e:
        out["keras"] = str(e)
    out["torch"] = load(data_path(TORCH_FILE), batch_first=True)
    return out


def reference_keras(model, x):
    """The float64 numpy reference of a Keras chain of recurrent layers (plain or
    ``Bidirectional`` with ``merge_mode="concat"``, no masks) and Dense layers, such as
    the digits model, reading the weights of the loaded ``model``.

    Parameters
    ----------
    model : KerasModel
    x : array_like, shape (B, T, F)

    Returns
    -------
    ndarray, float64, the model's output
    """
    y = np.asarray(x, np.float64).transpose(1, 0, 2)  # time-major
    seq = True
    for node in model.layers:
        layers = getattr(node, "rnn_layers", None)
        if layers is not None:
            if (
                len(layers) != 1
                or getattr(node, "merge_mode", "concat") != "concat"
                or getattr(node, "return_state", False)
                or layers[0].go_backwards
            ):
                raise NotImplementedError("reference_keras: layer %r" % node.name)
            rl = layers[0]
            out, h_n, _ = reference.run_layer(
                rl.cell,
                rl.cell_weights(),
                y,
                act=rl.activation,
                ract=rl.recurrent_activation or "sigmoid",
                reset_after=rl.reset_after,
            )
            if node.return_sequences:
                y = out
            else:
                y, seq = np.concatenate(list(h_n), axis=-1), False
        elif getattr(node, "dense", None) is not None:
            d = node.dense
            y = y @ d.kernel.astype(np.float64)
            if d.bias is not None:
                y = y + d.bias
            act = node.activation or d.activation
            y = softmax(y) if act == "softmax" else reference.ACT[act](y)
        else:
            raise NotImplementedError("reference_keras: layer %r" % node.name)
    return y.transpose(1, 0, 2) if seq and y.ndim == 3 else y


def reference_torch(rnn, x):
    """The float64 numpy reference of a :class:`~rnnfast.TorchRNN` (without ``lengths``).

    Parameters
    ----------
    rnn : TorchRNN
    x : array_like
        ``(B, T, input_size)`` when ``rnn.batch_first``, else ``(T, B, input_size)``.

    Returns
    -------
    out : ndarray, float64, shaped as the model's ``out``
    h_n : ndarray, float64, ``(num_layers * num_directions, B, Ho)``
    """
    y = np.asarray(x, np.float64)
    if rnn.batch_first:
        y = y.transpose(1, 0, 2)
    hs = []
    for layer in rnn.layers:
        y, h_n, _ = reference.run_layer(
            layer.cell, layer.cell_weights(), y, act=layer.activation, ract=layer.recurrent_activation or "sigmoid"
        )
        hs.extend(h_n)
    return (y.transpose(1, 0, 2) if rnn.batch_first else y), np.stack(hs)


def _timed(fn, min_runs, budget=0.5):
    """Median seconds of ``fn`` over at least ``min_runs`` runs (more to fill about
    ``budget`` seconds), after one warm-up run."""
    return median_time(fn, budget_s=budget, min_repeats=min_runs, max_repeats=1000)


def _fmt_ms(s):
    return "%.3f ms" % (s * 1e3) if s < 0.01 else "%.1f ms" % (s * 1e3)


def run_digits_demo(repeats=20, batch=None, num_threads=None, out=print):
    """Run the pretrained-models demo and print its tables.

    Parameters
    ----------
    repeats : int
        Timed runs per measurement, at least (more while within half a second).
    batch : int, optional
        Rows for the throughput measurement (default: the whole held-out split).
        Accuracy and agreement are always over the whole split.
    num_threads : int, optional
        Threads for rnnfast (default :func:`rnnfast.get_num_threads`).
    out : callable
        Prints one line.

    Returns
    -------
    list of dict
        Per model: ``model``, ``accuracy``, ``framework_accuracy``, ``max_abs_diff``
        (from the framework's saved probabilities), ``agree`` (same class as the
        framework), ``n``, ``latency_s`` and ``reference_latency_s`` (batch 1),
        ``throughput`` and ``reference_throughput`` (sequences/s at the full split),
        ``reference_max_abs_diff``.
    """
    ex = load_digits_examples()
    x, y = ex["x"], ex["y"]
    n = len(y)
    nt = num_threads or get_num_threads()
    out("rnnfast demo: two small models trained on scikit-learn's handwritten digits")
    out(
        "(8x8 images read as 8 time steps of 8 features), run on the %d held-out images; "
        "%d thread%s." % (n, nt, "s" if nt != 1 else "")
    )
    out("")
    cases = []
    if isinstance(ex["keras"], str):
        out("Keras model skipped: %s" % ex["keras"])
        out("")
    else:
        km = ex["keras"]
        cases.append(
            dict(
                model="Keras BiGRU(32)->BiGRU(16)->Dense",
                file=KERAS_FILE,
                framework="Keras",
                saved=ex["keras_proba"],
                fast=lambda xb: km.predict(xb, num_threads=num_threads),
                ref=lambda xb: reference_keras(km, xb),
            )
        )
    tm, head = ex["torch"], ex["head"]
    cases.append(
        dict(
            model="PyTorch LSTM(32, 2 layers, bidir)+head",
            file=TORCH_FILE,
            framework="PyTorch",
            saved=ex["torch_proba"],
            fast=lambda xb: lstm_head_proba(tm(xb, num_threads=num_threads)[1][0], head),
            ref=lambda xb: lstm_head_proba(reference_torch(tm, xb)[1], head),
        )
    )

    rows = []
    for c in cases:
        p = c["fast"](x)
        p_ref = c["ref"](x)
        rows.append(
            dict(
                model=c["model"],
                file=c["file"],
                framework=c["framework"],
                n=n,
                accuracy=float((p.argmax(1) == y).mean()),
                framework_accuracy=float((c["saved"].argmax(1) == y).mean()),
                max_abs_diff=float(np.abs(p - c["saved"]).max()),
                agree=int((p.argmax(1) == c["saved"].argmax(1)).sum()),
                reference_max_abs_diff=float(np.abs(p - p_ref).max()),
            )
        )
    head1 = "%-38s %-20s %9s %10s %12s %9s" % ("model", "file", "accuracy", "framework", "max|diff|", "same class")
    out(head1)
    out("-" * len(head1))
    for r in rows:
        out(
            "%-38s %-20s %8.1f%% %9.1f%% %12.1e %5d/%d"
            % (
                r["model"],
                r["file"],
                100 * r["accuracy"],
                100 * r["framework_accuracy"],
                r["max_abs_diff"],
                r["agree"],
                r["n"],
            )
        )
    out("")
    out("accuracy: rnnfast's; framework: the accuracy of the probabilities the framework saved at training;")
    out("max|diff|: largest difference between rnnfast's probabilities and the framework's (float32; contract: 1e-5).")
    out("")

    nb = min(n, batch or n)
    xb = x[:nb]
    for c, r in zip(cases, rows):
        x1 = x[:1]
        fast, ref = c["fast"], c["ref"]
        r["latency_s"] = _timed(lambda: fast(x1), repeats)  # noqa: B023 (called here, in this iteration)
        r["reference_latency_s"] = _timed(lambda: ref(x1), max(3, repeats // 4))  # noqa: B023
        t_full = _timed(lambda: fast(xb), repeats)  # noqa: B023
        t_ref = _timed(lambda: ref(xb), max(3, repeats // 4))  # noqa: B023
        r["throughput"], r["reference_throughput"] = nb / t_full, nb / t_ref
    head2 = "%-38s %11s %11s %8s  %13s %13s %8s" % (
        "speed (medians)",
        "batch 1",
        "numpy",
        "",
        "batch %d" % nb,
        "numpy",
        "",
    )
    out(head2)
    out(
        "%-38s %11s %11s %8s  %13s %13s %8s"
        % ("", "rnnfast", "reference", "speed-up", "rnnfast seq/s", "reference", "speed-up")
    )
    out("-" * len(head2))
    for r in rows:
        out(
            "%-38s %11s %11s %7.0fx  %13.0f %13.0f %7.0fx"
            % (
                r["model"],
                _fmt_ms(r["latency_s"]),
                _fmt_ms(r["reference_latency_s"]),
                r["reference_latency_s"] / r["latency_s"],
                r["throughput"],
                r["reference_throughput"],
                r["throughput"] / r["reference_throughput"],
            )
        )
    out("")
    out("reference: rnnfast.reference, the float64 numpy model written like the equations, on the same weights")
    out("(largest difference from rnnfast: %s)." % ", ".join("%.1e" % r["reference_max_abs_diff"] for r in rows))
    return rows


# -- the seed's models on random weights ---------------------------------------------------

T, FEATURES = 10, 50


def _glorot(rng, fan_in, fan_out):
    s = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-s, s, (fan_in, fan_out))


def _gru_weights(rng, I, H):
    """Keras-initialised GRU weights (glorot kernels, small random biases)."""
    return CellWeights(
        _glorot(rng, I, 3 * H), _glorot(rng, H, 3 * H), rng.uniform(-0.1, 0.1, 3 * H), rng.uniform(-0.1, 0.1, 3 * H)
    )


def seed_models(seed=0):
    """Build both seed models on random weights, input ``(batch, 10, 50)``:

    1. ``GRU(128, return_sequences) -> GRU(64) -> Dense(1, sigmoid)``
    2. ``Bidirectional(GRU(128, return_sequences), concat) -> Bidirectional(GRU(64,
       return_sequences)) -> Dense(1, sigmoid)``

    Returns ``[(name, Sequential, reference_fn), ...]``; ``reference_fn`` maps a
    float64 ``(batch, 10, 50)`` input to the float64 numpy reference's output.
    """
    rng = np.random.default_rng(seed)
    w1, w2 = _gru_weights(rng, FEATURES, 128), _gru_weights(rng, 128, 64)
    d1 = (_glorot(rng, 64, 1), rng.uniform(-0.1, 0.1, 1))
    m1 = Sequential(
        [RNNLayer("gru", [w1]), (RNNLayer("gru", [w2]), dict(return_sequences=False)), Dense(*d1, activation="sigmoid")]
    )

    def ref1(x):
        s = reference.run_layer("gru", [w1], x.transpose(1, 0, 2))[0]
        h = reference.run_layer("gru", [w2], s)[1][0]
        return reference.ACT["sigmoid"](h @ d1[0] + d1[1])

    b1 = [_gru_weights(rng, FEATURES, 128) for _ in range(2)]
    b2 = [_gru_weights(rng, 256, 64) for _ in range(2)]
    d2 = (_glorot(rng, 128, 1), rng.uniform(-0.1, 0.1, 1))
    m2 = Sequential([RNNLayer("gru", b1), RNNLayer("gru", b2), Dense(*d2, activation="sigmoid")])

    def ref2(x):
        s = reference.run_layer("gru", b1, x.transpose(1, 0, 2))[0]
        s = merge_directions(reference.run_layer("gru", b2, s)[0], "concat", 64)
        return reference.ACT["sigmoid"](s @ d2[0] + d2[1]).transpose(1, 0, 2)

    return [("GRU(128)->GRU(64)->Dense(1)", m1, ref1), ("BiGRU(128)->BiGRU(64)->Dense(1)", m2, ref2)]


def _median_ms(fn, repeats):
    return 1e3 * median_time(fn, repeats)


def run_seed_demo(batch=256, repeats=15, seed=0, out=print):
    """Run the seed models' demo and print its table. Returns the rows as dicts."""
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, T, FEATURES)).astype(np.float32)
    out(
        "rnnfast demo --seed-models: the seed's two models on random weights, input (batch, %d, %d), "
        "%d threads" % (T, FEATURES, get_num_threads())
    )
    out("")
    head = "%-33s %14s %12s %12s %12s %8s" % (
        "model",
        "max|diff|",
        "rnnfast ms",
        "numpy ms",
        "rnnfast seq/s",
        "speed-up",
    )
    out(head)
    out("-" * len(head))
    rows = []
    for name, model, ref in seed_models(seed):
        got = model.predict(x)
        want = ref(x.astype(np.float64))
        diff = float(np.abs(got - want).max())
        t_fast = _median_ms(lambda: model.predict(x), repeats)  # noqa: B023 (called here, in this iteration)
        t_ref = _median_ms(lambda: ref(x.astype(np.float64)), max(3, repeats // 5))  # noqa: B023
        rows.append(dict(model=name, max_abs_diff=diff, rnnfast_ms=t_fast, numpy_ms=t_ref, batch=batch))
        out(
            "%-33s %14.2e %12.2f %12.2f %12.0f %7.1fx"
            % (name, diff, t_fast, t_ref, batch / t_fast * 1e3, t_ref / t_fast)
        )
    out("")
    out(
        "max|diff|: largest absolute difference from the float64 numpy reference "
        "(rnnfast computes in float32); times are medians over %d runs at batch %d." % (repeats, batch)
    )
    return rows
