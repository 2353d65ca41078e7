"""``rnnfast bench``: one model against the peers that run the same weights.

Peers (each optional; one that is not installed, or does not apply to the model, is
reported and skipped):

- ``torch``: for a :class:`~rnnfast.TorchRNN`, the equivalent ``torch.nn`` module
  built from the loaded weights (:func:`torch_module`);
- ``onnxruntime``: that module exported with ``torch.onnx.export`` (float32 only);
- ``keras``: for a :class:`~rnnfast.KerasModel`, Keras loading the same file
  (``KERAS_BACKEND`` when set, else TensorFlow, else torch or jax if installed).

The rule, the same for every peer: it is timed the way its users run inference
fast, on the thread count rnnfast runs, and the table says which mode each ran in
(:data:`MODES`):

- PyTorch: the module in eval mode under ``torch.no_grad()``, ``torch.set_num_threads(n)``;
- ONNX Runtime: ``InferenceSession.run`` with ``intra_op_num_threads=n``,
  ``inter_op_num_threads=1``;
- Keras on TensorFlow: ``predict_on_batch(x)`` and a ``tf.function(jit_compile=True)``
  of ``model(x, training=False)`` (XLA), two rows; intra-op threads ``n`` and
  inter-op 1, set before TensorFlow starts (where it has started already, the table
  says the threads are TensorFlow's own);
- Keras on torch: ``model(x, training=False)`` under ``torch.no_grad()`` (Keras has no
  compiled inference call on that backend), ``torch.set_num_threads(n)``;
- Keras on JAX: ``predict_on_batch(x)``, which Keras jit-compiles; JAX's threads
  cannot be set once it runs (said in the table).

Every engine runs the same input; timings are medians of interleaved runs after a
warm-up. Peers' calls are not capped below what they do by default in any other way.
"""

import importlib.util
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, Optional

import numpy as np

from ._threads import _blas_controllers, get_num_threads, load_kernels
from .io.torch_convert import torch_state_dict

__all__ = ["PEERS", "MODES", "torch_module", "run_bench", "timeit", "median_time", "disclosure"]

PEERS = ("torch", "onnxruntime", "keras")
_INSTALL = {
    "torch": "pip install torch",
    "onnxruntime": "pip install onnxruntime onnx",
    "keras": "pip install keras (and a backend: tensorflow, torch or jax)",
}


#: How each engine is called, by its mode tag (the tag ends the engine's name in the table).
MODES = {
    "rnnfast": "model(x) for a PyTorch model, model.predict(x) for a Keras one",
    "no_grad": "the torch.nn module in eval mode, called under torch.no_grad()",
    "session": "onnxruntime.InferenceSession.run of the torch.onnx export",
    "keras-torch": "keras model(x, training=False) under torch.no_grad() (the torch backend has no "
    "compiled inference call)",
    "predict_on_batch": "keras model.predict_on_batch(x) (compiled by Keras' backend)",
    "xla": "tf.function(lambda x: model(x, training=False), jit_compile=True), compiled once by XLA",
}


class PeerUnavailable(Exception):
    """Why a peer is skipped (a sentence)."""


def _have(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# -- torch -------------------------------------------------------------------------------


def torch_module(rnn):
    """The ``torch.nn.GRU`` / ``LSTM`` / ``RNN`` equivalent to a :class:`~rnnfast.TorchRNN`,
    built from its weights (:func:`rnnfast.io.torch_convert.torch_state_dict`: canonical
    layout back to PyTorch's, gate order r, z, n for GRU, kernels transposed), in eval
    mode, of the model's dtype.

    The biases come as rnnfast holds them: ``bias_ih`` carries the sum of both biases
    where they add, ``bias_hh`` only GRU's candidate part (the same function, up to
    rounding).
    """
    import torch

    kw = dict(num_layers=rnn.num_layers, bias=rnn.bias, batch_first=rnn.batch_first, bidirectional=rnn.bidirectional)
    if rnn.proj_size:
        kw["proj_size"] = rnn.proj_size
    if rnn.nonlinearity is not None:
        kw["nonlinearity"] = rnn.nonlinearity
    m = getattr(torch.nn, rnn.layers[0].cell_spec.torch_module)(rnn.input_size, rnn.hidden_size, **kw)
    tdtype = torch.float64 if rnn.dtype == np.float64 else torch.float32
    m = m.to(tdtype)
    sd = torch_state_dict(rnn.layers, bias=rnn.bias)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    return m.eval()


def _torch_peer(rnn, x, threads):
    if not _have("torch"):
        raise PeerUnavailable("not installed (%s)" % _INSTALL["torch"])
    import torch

    torch.set_num_threads(threads)
    m = torch_module(rnn)
    xt = torch.from_numpy(x)

    def run():
        with torch.no_grad():
            return m(xt)

    def output():
        return run()[0].numpy()

    return [
        (
            "torch %s no_grad" % torch.__version__.split("+")[0],
            "no_grad",
            run,
            output,
            "torch.set_num_threads(%d)" % torch.get_num_threads(),
        )
    ]


def _onnx_peer(rnn, x, threads, tmpdir):
    missing = [m for m in ("torch", "onnx", "onnxruntime") if not _have(m)]
    if missing:
        raise PeerUnavailable("needs %s, not installed (%s)" % (" and ".join(missing), _INSTALL["onnxruntime"]))
    if rnn.dtype != np.float32:
        raise PeerUnavailable(
            "ONNX Runtime runs its recurrent operators in float32 only; the model is %s" % rnn.dtype.name
        )
    if rnn.proj_size:
        raise PeerUnavailable("ONNX has no LSTM projection (proj_size)")
    import warnings

    import onnxruntime as ort
    import torch

    m = torch_module(rnn)
    path = os.path.join(tmpdir, "model.onnx")
    xt = torch.from_numpy(x)
    errors = []
    exporters: tuple[dict[str, Any], ...] = (dict(dynamo=False), {})
    for extra in exporters:  # the TorchScript exporter, else the default one
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    m,
                    (xt,),
                    path,
                    input_names=["x"],
                    output_names=["out"],
                    dynamic_axes={"x": {0: "a", 1: "b"}},
                    **extra,
                )
            break
        except Exception as e:
            errors.append("%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
    else:
        raise PeerUnavailable("torch.onnx.export failed (%s)" % "; ".join(errors))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}

    def run():
        return sess.run(None, feed)

    return [
        (
            "onnxruntime %s session" % ort.__version__,
            "session",
            run,
            lambda: run()[0],
            "intra_op_num_threads=%d, inter_op_num_threads=1" % threads,
        )
    ]


def _keras_peer(path, x, threads):
    if not _have("keras"):
        raise PeerUnavailable("not installed (%s)" % _INSTALL["keras"])
    if "keras" not in sys.modules and not os.environ.get("KERAS_BACKEND") and not _have("tensorflow"):
        backend = next((b for b in ("torch", "jax") if _have(b)), None)
        if backend is None:
            raise PeerUnavailable("keras is installed but none of its backends (tensorflow, torch, jax)")
        os.environ["KERAS_BACKEND"] = backend
    import warnings

    tf_threads = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if (
            os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow"
            and "keras" not in sys.modules
            and _have("tensorflow")
        ):
            tf_threads = _tf_set_threads(threads)  # before Keras (and TensorFlow) start
        import keras

        backend = keras.backend.backend()
        try:
            km = keras.saving.load_model(path, compile=False)
        except Exception as e:
            raise PeerUnavailable(
                "Keras %s cannot load %s (%s: %s)" % (keras.__version__, path, type(e).__name__, e)
            ) from None
    name = "keras %s (%s)" % (keras.__version__, {"tensorflow": "tf"}.get(backend, backend))

    def first(y):
        y = y[0] if isinstance(y, (list, tuple)) else y
        return keras.ops.convert_to_numpy(y)

    if backend == "torch":
        import torch

        torch.set_num_threads(threads)

        def run():
            with torch.no_grad():
                return km(x, training=False)

        return [
            (
                name + " no_grad",
                "keras-torch",
                run,
                lambda: first(run()),
                "torch.set_num_threads(%d)" % torch.get_num_threads(),
            )
        ]

    def on_batch():
        return km.predict_on_batch(x)

    if backend == "tensorflow":
        import tensorflow as tf

        if tf_threads is None:
            tf_threads = _tf_set_threads(threads)
        xt = tf.constant(x)
        compiled = tf.function(lambda t: km(t, training=False), jit_compile=True)

        def run_xla():
            return compiled(xt)

        engines: list[tuple[str, str, Optional[Callable[[], Any]], Optional[Callable[[], Any]], Any]] = [
            (name + " predict_on_batch", "predict_on_batch", on_batch, lambda: first(on_batch()), tf_threads)
        ]
        try:
            run_xla()  # compile now: a model XLA cannot compile is said so
        except Exception as e:
            engines.append(
                (
                    name + " xla",
                    "xla",
                    None,
                    None,
                    "not run: XLA could not compile the model "
                    "(%s: %s)" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""),
                )
            )
        else:
            engines.append((name + " xla", "xla", run_xla, lambda: first(run_xla()), tf_threads))
        return engines
    return [
        (
            name + " predict_on_batch",
            "predict_on_batch",
            on_batch,
            lambda: first(on_batch()),
            "threads not set: %s cannot change them once it runs" % backend,
        )
    ]


def _tf_set_threads(threads):
    """Hold TensorFlow to ``threads`` intra-op threads and one inter-op thread; the
    setting it runs with, as a phrase (TensorFlow refuses once it has started)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        have = tf.config.threading.get_intra_op_parallelism_threads()
        return "TensorFlow's own threads (intra-op %s): it had started before rnnfast could set %d" % (
            have or "default",
            threads,
        )
    return "intra-op threads %d, inter-op 1" % threads


# -- running -----------------------------------------------------------------------------


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def disclosure():
    """One line for under a timing table: the machine and how rnnfast ran on it.

    The CPU model and logical CPUs; the kernels' instruction set in use (and the best
    this CPU has, where ``RNNFAST_ISA`` chose a lower one); the BLAS rnnfast calls
    (library, version, the kernel it picked for this CPU, its threads now: rnnfast holds
    it to one inside its own parallel region); the load average (1, 5, 15 minutes), which
    says whether other work shared the cores while the table was measured.
    """
    k = load_kernels()
    isa = k.isa()
    best = k.best_isa()
    kernels = isa if isa == best else "%s (RNNFAST_ISA; the CPU has %s)" % (isa, best)
    blas = []
    try:
        for c in _blas_controllers():
            arch = getattr(c, "architecture", None)
            blas.append(
                "%s %s%s, %s thread%s"
                % (
                    c.internal_api,
                    c.version or "",
                    " (%s kernel)" % arch if arch else "",
                    c.num_threads,
                    "" if c.num_threads == 1 else "s",
                )
            )
    except ImportError:  # threadpoolctl is a dependency; a broken install says so here
        blas.append("unknown (threadpoolctl missing)")
    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "unknown"
    return "machine: %s, %d logical CPUs; rnnfast kernels: %s; BLAS: %s; load average %s" % (
        cpu_model(),
        os.cpu_count() or 0,
        kernels,
        ("; ".join(blas) + " (1 inside rnnfast's parallel region)") if blas else "none found",
        load,
    )


def _input(model, batch, time_steps, rng):
    """Random input of unit scale for ``model`` (batch-major; integer ids for an Embedding)."""
    d = model.describe()
    shape = d["input_shape"]
    fixed = shape[1]
    if time_steps and fixed is not None and time_steps != fixed:
        raise ValueError("the model takes %d time steps; --time %d does not fit" % (fixed, time_steps))
    T = fixed or time_steps or 100
    if d["integer_input"]:  # integer ids for an Embedding
        vocab = d["vocabulary"] or 2
        return rng.integers(1, max(vocab, 2), size=(batch, T)).astype(np.int64)
    dt = d["dtype"] if d["dtype"] is not None else np.float32
    return rng.standard_normal((batch, T, shape[-1])).astype(dt)


def timeit(fns, repeats=None, budget_s=1.0, min_repeats=5, max_repeats=100):
    """Interleaved median and 10-90% spread (seconds) of each callable, after one
    warm-up each: the one timing loop of rnnfast (``rnnfast bench``, the demo, the
    scripts in bench/).

    Parameters
    ----------
    fns : dict of str -> callable
    repeats : int, optional
        Timed rounds; None: as many as fit in about ``budget_s`` seconds, within
        ``[min_repeats, max_repeats]``.

    Returns
    -------
    stats : dict of str -> (median, p10, p90)
    repeats : int
    """
    first = {}
    for k, f in fns.items():
        t0 = time.perf_counter()
        f()
        first[k] = time.perf_counter() - t0
    if repeats is None:
        per_round = max(sum(first.values()), 1e-6)
        repeats = int(min(max_repeats, max(min_repeats, budget_s / per_round)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {
        k: (float(np.median(v)), float(np.percentile(v, 10)), float(np.percentile(v, 90))) for k, v in times.items()
    }, repeats


def median_time(fn, repeats=None, budget_s=1.0, min_repeats=5, max_repeats=100):
    """Median seconds of one callable (see :func:`timeit`)."""
    return timeit({"f": fn}, repeats, budget_s, min_repeats, max_repeats)[0]["f"][0]


def _plot(rows, title, path, out):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        out("plot: matplotlib is not installed (pip install matplotlib); no plot written")
        return
    names = [r["engine"] for r in rows]
    ms = [r["median_s"] * 1e3 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(rows)))
    bars = ax.barh(range(len(rows)), ms, color=["C2"] + ["C0"] * (len(rows) - 1))
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("median ms per call (lower is better)")
    for b, r in zip(bars, rows):
        ax.text(
            b.get_width(), b.get_y() + b.get_height() / 2, " %.3g ms" % (r["median_s"] * 1e3), va="center", fontsize=8
        )
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as e:
        out("plot: could not write %s (%s)" % (path, e))
    else:
        out("plot: %s" % path)
    finally:
        plt.close(fig)


def run_bench(
    model, path, *, batch=None, time_steps=None, threads=None, peers=None, repeats=None, plot=None, out=print, seed=0
):
    """Time ``model`` (loaded from ``path``) and its peers; print the table.

    Parameters
    ----------
    model : KerasModel or TorchRNN
        A TorchRNN must be batch-first (the input is ``(batch, time, features)``).
    path : str
        The model file (the Keras peer loads it itself).
    batch : int, optional
        Batch size (default 32).
    time_steps : int, optional
        Sequence length (default: the model's fixed one, else 100).
    threads : int, optional
        Threads for every engine (default :func:`rnnfast.get_num_threads`).
    peers : list of str, optional
        From :data:`PEERS` (default: those that apply to the model).
    repeats : int, optional
        Timed runs per engine (default: about a second's worth, 5 to 100).
    plot : str, optional
        Write a bar chart of the medians there (needs matplotlib).
    out : callable
        Prints one line.

    Returns
    -------
    list of dict
        Per engine that ran: ``engine``, ``median_s``, ``p10_s``, ``p90_s``,
        ``seq_per_s``, ``speedup`` (the engine's median over rnnfast's),
        ``max_abs_diff`` (from rnnfast's output; None for rnnfast).
    """
    is_torch = model.framework == "PyTorch"
    batch = batch or 32
    threads = threads or get_num_threads()
    rng = np.random.default_rng(seed)
    x = _input(model, batch, time_steps, rng)
    applicable = ("torch", "onnxruntime") if is_torch else ("keras",)
    if peers is None:
        peers = list(applicable)
    kind = "PyTorch" if is_torch else "Keras"
    out("rnnfast bench: %s" % (repr(model).splitlines()[0]))
    out(
        "input %s %s, %d thread%s; %s, %s, %d cores"
        % (
            x.shape,
            x.dtype,
            threads,
            "s" if threads != 1 else "",
            platform.machine(),
            platform.python_implementation() + " " + platform.python_version(),
            os.cpu_count() or 0,
        )
    )

    if is_torch:

        def fast():
            return model(x, num_threads=threads)

        def fast_out():
            return fast()[0]
    else:

        def fast():
            return model.predict(x, num_threads=threads)

        def fast_out():
            y = fast()
            return y[0] if isinstance(y, list) else y

    engines = {"rnnfast": fast}
    outputs = {"rnnfast": fast_out}
    skipped = []
    modes = [("rnnfast", "rnnfast", "num_threads=%d" % threads)]
    with tempfile.TemporaryDirectory() as tmp:
        for p in peers:
            try:
                if p not in applicable:
                    raise PeerUnavailable(
                        "runs %s models; %s is a %s model"
                        % ("PyTorch" if p != "keras" else "Keras", os.path.basename(path), kind)
                    )
                if p == "torch":
                    ran = _torch_peer(model, x, threads)
                elif p == "onnxruntime":
                    ran = _onnx_peer(model, x, threads, tmp)
                else:
                    ran = _keras_peer(path, x, threads)
            except PeerUnavailable as e:
                skipped.append((p, str(e)))
                continue
            for name, mode, run, output, thread_note in ran:
                modes.append((name, mode, thread_note))
                if run is None:
                    skipped.append((name, thread_note))
                    continue
                engines[name] = run
                outputs[name] = output
        want = np.asarray(outputs["rnnfast"](), np.float64)
        diffs = {}
        for name, output in outputs.items():
            if name != "rnnfast":
                got = np.asarray(output(), np.float64)
                diffs[name] = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
        stats, n = timeit(engines, repeats)
    base = stats["rnnfast"][0]
    rows = []
    for name, (med, p10, p90) in stats.items():
        rows.append(
            dict(
                engine=name,
                median_s=med,
                p10_s=p10,
                p90_s=p90,
                seq_per_s=batch / med,
                speedup=med / base,
                max_abs_diff=diffs.get(name),
            )
        )
    out("")
    head = "%-36s %11s %19s %12s %13s %11s" % ("engine", "median ms", "p10-p90 ms", "seq/s", "rnnfast is", "max|diff|")
    out(head)
    out("-" * len(head))
    for r in rows:
        vs = (
            "-"
            if r["engine"] == "rnnfast"
            else "%.2fx faster" % r["speedup"]
            if r["speedup"] >= 1
            else "%.2fx slower" % (1 / r["speedup"])
        )
        out(
            "%-36s %11.3f %19s %12.0f %13s %11s"
            % (
                r["engine"],
                r["median_s"] * 1e3,
                "%.3f-%.3f" % (r["p10_s"] * 1e3, r["p90_s"] * 1e3),
                r["seq_per_s"],
                vs,
                "-" if r["max_abs_diff"] is None else "%.1e" % r["max_abs_diff"],
            )
        )
    out(disclosure())
    out("")
    out("medians of %d interleaved runs after a warm-up; 'rnnfast is': the peer's median over rnnfast's;" % n)
    out("max|diff|: the largest difference of the peer's output from rnnfast's.")
    out("how each engine ran (every peer as its users run inference fast, on rnnfast's thread count):")
    for name, mode, thread_note in modes:
        if name in engines:
            how = MODES[mode] if mode != "rnnfast" else "model(x)" if is_torch else "model.predict(x)"
            out("  %s: %s; %s" % (name, how, thread_note))
    for p, why in skipped:
        out("skipped %s: %s" % (p, why))
    if plot:
        _plot(rows, "%s, input %s, %d threads" % (repr(model).splitlines()[0], x.shape, threads), plot, out)
    return rows
