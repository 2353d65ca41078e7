"""The ``rnnfast`` command (also ``python -m rnnfast``): info, predict, bench, demo.

Exit status: 0 on success; 1 when the model or the input cannot be used (a missing
file, a file that is not a model, an unsupported layer, an input of the wrong shape:
the message says which, without a traceback); 2 for a command line argparse refuses;
130 when interrupted.
"""

import argparse
import os
import sys

import numpy as np

from . import _validation, demo
from ._bench import PEERS, run_bench
from ._progress import run_batched
from ._summary import summary_text
from ._threads import set_num_threads
from ._version import __version__
from .errors import FormatError, UnsupportedLayerError
from .io import detect, load
from .precision import PRECISIONS, precision_error

__all__ = ["main", "build_parser", "read_input", "write_output"]

EPILOG_MAIN = """\
examples:
  rnnfast demo                                  the bundled pretrained models, accuracy and speed
  rnnfast info model.keras                      the layers of a Keras model
  rnnfast predict model.keras x.npy -o y.npy    run a model on an array file
  rnnfast bench lstm.pt --batch 64 --time 200   rnnfast against PyTorch on the same weights
  rnnfast info --example digits_bigru           a bundled model ('rnnfast example' lists them)

Model files: Keras .keras and HDF5 (.h5) files (whole models), PyTorch state_dicts of
one nn.GRU / nn.LSTM / nn.RNN (torch.save(module.state_dict(), "m.pt")) and .safetensors
files of them; the format is read from the content, not the name.
'rnnfast COMMAND --help' tells more about each command.
"""


EPILOG_BENCH = """\
how each peer is timed (the same rule for all: the way its users run inference fast,
on the thread count rnnfast runs, --threads N or all cores; the table names the mode):
  torch        the module in eval mode under torch.no_grad(); torch.set_num_threads(N)
  onnxruntime  InferenceSession.run; intra_op_num_threads=N, inter_op_num_threads=1
  keras        TensorFlow backend: predict_on_batch(x), and tf.function(jit_compile=True)
               of model(x, training=False) (XLA), as two rows; intra-op threads N,
               inter-op 1, set before TensorFlow starts
               torch backend: model(x, training=False) under torch.no_grad() (Keras has
               no compiled inference call there); torch.set_num_threads(N)
               JAX backend: predict_on_batch(x) (jit-compiled by Keras); its threads
               cannot be set once JAX runs: the table says so
Every engine runs the same input; medians of interleaved runs after a warm-up.

examples:
  rnnfast bench model.keras --batch 32
  rnnfast bench lstm.pt --batch 1 --time 1000 --threads 2 --vs torch,onnxruntime
  rnnfast bench gru.pt --plot bench.png
  rnnfast bench --example digits_bigru --threads 1
"""


class UserError(Exception):
    """A problem with the command's input, reported as one line (exit status 1)."""


# -- loading ---------------------------------------------------------------------------


def _add_model_options(p, torch_layout=False, example=False):
    if example:
        p.add_argument(
            "model",
            metavar="MODEL",
            nargs="?",
            help="the model file (.keras, .h5, .pt, .safetensors, ...), or --example NAME",
        )
    else:
        p.add_argument("model", metavar="MODEL", help="the model file (.keras, .h5, .pt, .safetensors, ...)")
    g = p.add_argument_group("model options")
    if example:
        g.add_argument(
            "--example",
            metavar="NAME",
            choices=("digits_bigru", "digits_lstm"),
            help="a bundled model instead of MODEL: digits_bigru (Keras) or digits_lstm "
            "(PyTorch, batch-first); 'rnnfast example' lists the bundled files",
        )
    g.add_argument("--dtype", choices=("float32", "float64"), help="compute dtype (default: the model's own)")
    g.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        help="the recurrent layers' weights: float32 (default, exact), bf16 or int8 "
        "(gate math and states stay float32; 'rnnfast precision' measures the error)",
    )
    g.add_argument(
        "--prefix",
        metavar="P",
        help="PyTorch checkpoints holding several recurrent modules: the one whose "
        "tensors start with P (e.g. 'encoder.rnn.')",
    )
    g.add_argument(
        "--nonlinearity",
        choices=("tanh", "relu"),
        help="nn.RNN weights: the module's nonlinearity (a file cannot record it; default tanh)",
    )
    if torch_layout:
        lay = g.add_mutually_exclusive_group()
        lay.add_argument(
            "--batch-first",
            action="store_true",
            help="PyTorch models: the module was built with batch_first=True: input "
            "(and output) (batch, time, features). Default: (time, batch, "
            "features), as torch.nn and rnnfast.load (a state_dict cannot record it)",
        )
        lay.add_argument(
            "--time-major",
            action="store_true",
            help="PyTorch models: (time, batch, features), the default (say it explicitly)",
        )


def _load(args, batch_first=True):
    """Load args.model (or the bundled --example); Keras-only / PyTorch-only options are
    checked against the file."""
    example = getattr(args, "example", None)
    if example is not None:
        if args.model is not None:
            raise UserError("give MODEL or --example, not both")
        args.model = demo.example(example)
        if example == "digits_lstm":
            batch_first = True  # it was trained as nn.LSTM(..., batch_first=True)
    elif args.model is None:
        raise UserError("give a MODEL file (or --example NAME for a bundled one)")
    path = args.model
    if not os.path.exists(path):
        raise UserError("no such file: %s" % path)
    try:  # (a directory too: detect says what it is, a TensorFlow SavedModel say)
        kind = detect(path)
        is_keras = kind.startswith("keras")
    except FormatError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError("%s: %s" % (path, e.strerror or e)) from None
    options = {}
    if kind == "onnx":  # an ONNX model takes no load options
        for flag, value in (("--dtype", args.dtype), ("--prefix", args.prefix), ("--nonlinearity", args.nonlinearity)):
            if value is not None:
                raise UserError("%s is not an option of ONNX models; %s is one" % (flag, path))
        try:
            return load(path)
        except (FormatError, UnsupportedLayerError, ValueError, ImportError) as e:
            raise UserError(str(e)) from None
        except OSError as e:
            raise UserError("%s: %s" % (path, e.strerror or e)) from None
    if args.dtype:
        options["dtype"] = args.dtype
    if getattr(args, "precision", None):
        options["precision"] = args.precision
    torch_only = [("--prefix", "prefix", args.prefix), ("--nonlinearity", "nonlinearity", args.nonlinearity)]
    for flag, key, value in torch_only:
        if value is not None:
            if is_keras:
                raise UserError("%s is for PyTorch files; %s is a Keras model" % (flag, path))
            options[key] = value
    if not is_keras:
        options["batch_first"] = batch_first
    try:
        return load(path, **options)
    except (FormatError, UnsupportedLayerError, ValueError) as e:
        raise UserError(str(e)) from None
    except ImportError as e:  # h5py for Keras files
        raise UserError("%s: %s" % (path, e)) from None
    except OSError as e:
        raise UserError("%s: %s" % (path, e.strerror or e)) from None


def _is_torch(model):
    return model.framework == "PyTorch"


def _no_cell(model, path):
    """A cell (nn.GRUCell ...) takes one step with the caller's state: no sequence to
    predict over or time, so only `info` takes it (the model says so in describe())."""
    if model.describe().get("one_step"):
        raise UserError(
            "%s holds an nn.%s: a cell takes one step, h = cell(x, h), run from Python "
            "(rnnfast.load(path)); `rnnfast info` describes it" % (path, model.summary_rows()[0]["type"])
        )


# -- input and output files -------------------------------------------------------------


def _read_csv(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    fields = [s.strip() for s in first.split(",")]
    header = 0
    try:
        [float(s) for s in fields if s]
    except ValueError:
        header = 1  # a header row of column names
    try:
        a = np.loadtxt(path, delimiter=",", ndmin=2, skiprows=header, dtype=np.float64)
    except ValueError as e:
        raise UserError("%s: not a CSV table of numbers (%s)" % (path, e)) from None
    return a


def read_input(path, key=None):
    """Read an input array from ``.npy``, ``.npz`` (the array named ``key``, or its only
    one) or ``.csv`` (rows of numbers, comma-separated, an optional header row).

    Returns
    -------
    ndarray
        As stored: a CSV file gives a 2-D float64 table, one row per sample.
    """
    if not os.path.exists(path):
        raise UserError("no such file: %s" % path)
    if os.path.isdir(path):
        raise UserError("%s is a directory, not an input file" % path)
    with open(path, "rb") as f:
        head = f.read(6)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        if key:
            raise UserError("--key is for .npz input; %s is a CSV file" % path)
        return _read_csv(path)
    if head.startswith(b"\x93NUMPY"):
        if key:
            raise UserError("--key is for .npz input; %s is an .npy file" % path)
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as e:
            raise UserError("%s: %s" % (path, e)) from None
    if head.startswith(b"PK\x03\x04"):
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                if key is None:
                    if len(names) != 1:
                        raise UserError(
                            "%s holds %d arrays (%s): choose one with --key"
                            % (path, len(names), ", ".join(names) or "none")
                        )
                    key = names[0]
                if key not in names:
                    raise UserError("%s has no array %r; it has %s" % (path, key, ", ".join(names)))
                return z[key]
        except ValueError as e:
            raise UserError("%s: %s" % (path, e)) from None
    raise UserError("%s: unknown input format: give an .npy, .npz or .csv file" % path)


def _shape_input(model, a, path):
    """Bring a CSV table (one flattened sample per row) to the model's input shape."""
    d = model.describe()
    if d["integer_input"]:  # ids (batch, time): Embedding models
        return a
    shape = d["input_shape"]
    F, T = shape[-1], shape[1]
    if F is None or a.shape[1] % F:
        raise UserError("%s: rows of %d values cannot be sequences of %s features" % (path, a.shape[1], F))
    a = a.reshape(a.shape[0], a.shape[1] // F, F)
    if T is not None and a.shape[1] != T:
        raise UserError(
            "%s: rows of %d values are %d steps of %d features; the model takes %d steps"
            % (path, a.shape[1] * F, a.shape[1], F, T)
        )
    return np.ascontiguousarray(a)


def _flat_outputs(y, name="output"):
    """Name the arrays of a (nested) model output: [(name, array)]."""
    if isinstance(y, dict):
        out = []
        for k, v in y.items():
            out += _flat_outputs(v, "%s_%s" % (name, k))
        return out
    if isinstance(y, (list, tuple)):
        out = []
        for i, v in enumerate(y):
            out += _flat_outputs(v, "%s_%d" % (name, i))
        return out
    return [(name, y)]


def write_output(path, arrays):
    """Write ``[(name, array)]`` to ``path``: ``.npz`` (every array under its name),
    ``.npy`` or ``.csv`` (exactly one array; CSV: one row per sample, the rest of the
    array's axes flattened into columns)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".npz", ".csv"):
        raise UserError("output %s: give a file name ending in .npy, .npz or .csv" % path)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise UserError("output %s: no such folder %s" % (path, d))
    if ext == ".npz":
        np.savez(path, **dict(arrays))
        return
    if len(arrays) != 1:
        raise UserError(
            "the model gives %d arrays (%s): write them to an .npz file"
            % (len(arrays), ", ".join(n for n, _ in arrays))
        )
    a = arrays[0][1]
    if ext == ".npy":
        np.save(path, a)
    else:
        a2 = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
        np.savetxt(path, a2, delimiter=",", fmt="%.9g")


# -- commands ------------------------------------------------------------------------------


def _info(args):
    model = _load(args, batch_first=args.batch_first)  # as torch.nn: time-major unless told otherwise
    print(summary_text(model, source=args.model))
    return 0


def _precision(args):
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    wanted = [w.strip() for w in args.compare.split(",") if w.strip()]
    for w in wanted:
        if w not in PRECISIONS:
            raise UserError("--compare: unknown precision %r (known: %s)" % (w, ", ".join(PRECISIONS)))
    model = _load(args, batch_first=args.batch_first)
    x = read_input(args.input, args.key)
    print("%s against float32 on %s (%s)" % (args.model, args.input, "x".join(map(str, np.shape(x)))))
    print("%-9s %12s %12s %18s" % ("precision", "max |diff|", "mean |diff|", "argmax agreement"))
    for w in wanted:
        try:
            r = precision_error(model, x, w, num_threads=args.threads)
        except ValueError as e:
            raise UserError(str(e)) from None
        agree = "-" if r["argmax_agreement"] is None else "%.4f" % r["argmax_agreement"]
        print("%-9s %12.3g %12.3g %18s" % (w, r["max_abs"], r["mean_abs"], agree))
    return 0


def _predict(args):
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    model = _load(args)
    _no_cell(model, args.model)
    x = read_input(args.input, args.key)
    csv_input = os.path.splitext(args.input)[1].lower() == ".csv"
    if csv_input:
        x = _shape_input(model, x, args.input)
    lengths = None
    if args.lengths:
        if not _is_torch(model):
            raise UserError("--lengths is for PyTorch models (Keras models mask by their own layers)")
        if os.path.exists(args.lengths):
            lengths = read_input(args.lengths).reshape(-1)
        elif args.input.lower().endswith(".npz"):
            lengths = read_input(args.input, args.lengths)
        else:
            raise UserError("--lengths %s: no such file (nor a key of an .npz input)" % args.lengths)
    torch_model = _is_torch(model)
    # PyTorch models: time-major as torch.nn unless --batch-first; a CSV file is one sample a row
    args.time_major = torch_model and not args.batch_first and not csv_input
    if args.time_major:
        if x.ndim != 3:
            raise UserError(
                "expected input of shape (time, batch, %d), got shape %s (give "
                "--batch-first for (batch, time, %d))" % (model.input_size, x.shape, model.input_size)
            )
        if lengths is not None and np.ndim(lengths) == 1 and len(lengths) != x.shape[1] and len(lengths) == x.shape[0]:
            raise UserError(
                "%d lengths for an input of shape %s read as (time, batch, features): "
                "%d sequences; if the input is (batch, time, features), give --batch-first"
                % (len(lengths), x.shape, x.shape[1])
            )
        x = np.swapaxes(x, 0, 1)  # the model runs batch-first
    elif (
        torch_model
        and lengths is not None
        and x.ndim == 3
        and np.ndim(lengths) == 1
        and len(lengths) != x.shape[0]
        and len(lengths) == x.shape[1]
    ):
        raise UserError(
            "%d lengths for an input of shape %s read as (batch, time, features): "
            "%d sequences; if the input is (time, batch, features), leave out --batch-first"
            % (len(lengths), x.shape, x.shape[0])
        )
    show = args.progress or (sys.stderr.isatty() and not args.quiet)
    verbose = 1 if show else 0
    try:
        if torch_model:
            arrays = _predict_torch(model, x, lengths, args, verbose)
        else:
            # a model that cannot tell its batch axis (ONNX) runs the input in one pass
            bs = args.batch_size if getattr(model, "splits_batches", True) else None
            y = model.predict(x, num_threads=args.threads, batch_size=bs, verbose=verbose)
            arrays = _flat_outputs(y)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        write_output(args.output, arrays)
    except OSError as e:
        raise UserError("cannot write %s: %s" % (args.output, e.strerror or e)) from None
    if not args.quiet:
        print(
            "wrote %s: %s" % (args.output, ", ".join("%s %s %s" % (n, a.shape, a.dtype) for n, a in arrays)),
            file=sys.stderr,
        )
    return 0


def _predict_torch(model, x, lengths, args, verbose):
    """``out`` (time-major, or batch-major with --batch-first) and, for an .npz output,
    the final states ``h_n`` (and ``c_n``) as PyTorch shapes them."""
    with_states = args.output.lower().endswith(".npz")
    xa = _validation.as_input(x, model.dtype)
    if xa.ndim != 3:
        raise ValueError("expected input of shape (batch, time, %d), got shape %s" % (model.input_size, xa.shape))
    if lengths is not None:
        lengths = _validation.as_lengths(lengths, xa.shape[1], xa.shape[0])

    def run(part, lens):
        out, h = model.forward(part, lengths=lens, num_threads=args.threads)
        if not with_states:
            return [out]
        states = h if isinstance(h, tuple) else (h,)
        return [out] + [np.swapaxes(s, 0, 1) for s in states]  # batch first, to join batches

    res = run_batched(run, xa, args.batch_size, aligned=(lengths,), verbose=verbose)
    out = res[0]
    if args.time_major:
        out = np.swapaxes(out, 0, 1)
    arrays = [("out", np.ascontiguousarray(out))]
    for name, s in zip(("h_n", "c_n"), res[1:]):
        arrays.append((name, np.ascontiguousarray(np.swapaxes(s, 0, 1))))
    return arrays


def _bench(args):
    peers = None
    if args.vs is not None:
        peers = [p.strip().lower() for p in args.vs.split(",") if p.strip()]
        unknown = [p for p in peers if p not in PEERS]
        if unknown:
            raise UserError("--vs: unknown peer %s (known: %s)" % (", ".join(unknown), ", ".join(PEERS)))
    for flag, v in (
        ("--batch", args.batch),
        ("--time", args.time),
        ("--threads", args.threads),
        ("--repeats", args.repeats),
    ):
        if v is not None and v < 1:
            raise UserError("%s must be at least 1" % flag)
    model = _load(args)
    _no_cell(model, args.model)
    try:
        run_bench(
            model,
            args.model,
            batch=args.batch,
            time_steps=args.time,
            threads=args.threads,
            peers=peers,
            repeats=args.repeats,
            plot=args.plot,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    return 0


def _example(args):
    if args.name is not None:
        print(demo.example(args.name))
        return 0
    for k, path in demo.examples().items():
        print("%-17s %s" % (k, path))
    return 0


def _demo(args):
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        set_num_threads(args.threads)
    if args.seed_models:
        demo.run_seed_demo(batch=args.batch or 256, repeats=args.repeats or 15)
    else:
        if args.batch is not None and args.batch < 1:
            raise UserError("--batch must be at least 1")
        demo.run_digits_demo(repeats=args.repeats or 20, batch=args.batch)
    return 0


# -- the parser --------------------------------------------------------------------------


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser():
    """The ``rnnfast`` argument parser (subcommands info, predict, bench, demo)."""
    p = argparse.ArgumentParser(
        prog="rnnfast",
        formatter_class=_formatter,
        epilog=EPILOG_MAIN,
        description="Fast CPU inference for GRU, LSTM and SimpleRNN models trained in Keras or "
        "PyTorch, with the numbers the framework gives.",
    )
    p.add_argument("--version", action="version", version="rnnfast %s" % __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    i = sub.add_parser(
        "info",
        help="show a model's layers",
        formatter_class=_formatter,
        description="Load a model file and print its layers: type, units, options, parameters "
        "(counted as the source framework counts them) and dtype, with the file's "
        "format.",
        epilog="examples:\n  rnnfast info model.keras\n  rnnfast info lstm.pt\n"
        "  rnnfast info checkpoint.pt --prefix encoder.rnn.\n"
        "  rnnfast info rnn.safetensors --nonlinearity relu\n"
        "  rnnfast info --example digits_bigru       a bundled model",
    )
    _add_model_options(i, torch_layout=True, example=True)
    i.set_defaults(func=_info)

    pr = sub.add_parser(
        "predict",
        help="run a model on an input file",
        formatter_class=_formatter,
        description="Run a model on the arrays in INPUT and write what it returns to OUT.\n\n"
        "INPUT: .npy; .npz (the array named by --key, or its only array); .csv (one "
        "sample per row,\nits time steps' features side by side; an optional header "
        "row). Keras models take\n(batch, time, features), or integer ids (batch, "
        "time) when they start with an Embedding.\nPyTorch models take (time, batch, "
        "features)\nas torch.nn does, or (batch, time, features) with --batch-first (a module built with\n"
        "batch_first=True). A CSV file is one sample per row whichever the layout.\n\n"
        "OUT, by its extension: .npy (one array), .csv (one array, a row per sample) "
        "or .npz\n(every output by name: Keras 'output' or 'output_0', 'output_1', ...; "
        "PyTorch 'out',\n'h_n' and for an LSTM 'c_n'). For a PyTorch model, .npy and "
        ".csv get 'out', the\nlast layer's output sequence.",
        epilog="examples:\n"
        "  rnnfast predict model.keras x.npy -o proba.npy\n"
        "  rnnfast predict model.keras data.npz --key x_test -o proba.csv --batch-size 256\n"
        "  rnnfast predict lstm.pt x.npy -o states.npz --threads 4\n"
        "  rnnfast predict gru.pt batch.npz --key x --lengths lengths --batch-first -o out.npz\n"
        '  rnnfast predict "$(rnnfast example digits_bigru)" "$(rnnfast example digits_test)" '
        "--key x -o p.npy\n\n"
        "A progress bar goes to stderr when it is a terminal (or with --progress).",
    )
    _add_model_options(pr, torch_layout=True)
    pr.add_argument("input", metavar="INPUT", help="input array file (.npy, .npz or .csv)")
    pr.add_argument("-o", "--output", metavar="OUT", required=True, help="output file (.npy, .npz or .csv)")
    pr.add_argument("--key", metavar="NAME", help=".npz input: the array to use")
    pr.add_argument(
        "--lengths",
        metavar="FILE|KEY",
        help="PyTorch models: valid steps per row (right padding), from an .npy/.csv file or a key of the .npz input",
    )
    pr.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        default=1024,
        help="rows per pass (default 1024); bounds memory, not results",
    )
    pr.add_argument("--threads", type=int, metavar="N", help="threads (default: all cores)")
    pr.add_argument("--progress", action="store_true", help="draw the progress bar even when stderr is not a terminal")
    pr.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    pr.set_defaults(func=_predict)

    q = sub.add_parser(
        "precision",
        help="measure a model's error in bf16 and int8 against float32",
        formatter_class=_formatter,
        description="Run MODEL on the arrays in INPUT in float32 and in each reduced precision, and "
        "print the\nlargest and the mean absolute difference of the outputs and, for a classifier, "
        "how often\nthe argmax agrees (rnnfast.precision_error). INPUT as for 'rnnfast predict'.",
        epilog="examples:\n  rnnfast precision model.keras x.npy\n"
        '  rnnfast precision --example digits_bigru "$(rnnfast example digits_test)" --key x\n'
        "  rnnfast precision lstm.pt x.npy --compare int8",
    )
    _add_model_options(q, torch_layout=True, example=True)
    q.add_argument("input", metavar="INPUT", help="input array file (.npy, .npz or .csv)")
    q.add_argument("--key", metavar="NAME", help=".npz input: the array to use")
    q.add_argument("--compare", metavar="P,...", default="bf16,int8", help="precisions to measure (default bf16,int8)")
    q.add_argument("--threads", type=int, metavar="N", help="threads (default: all cores)")
    q.set_defaults(func=_precision)

    b = sub.add_parser(
        "bench",
        help="time a model against PyTorch, ONNX Runtime, Keras",
        formatter_class=_formatter,
        description="Time MODEL on random input of unit scale, against the peers that run the same "
        "weights:\n  torch        the equivalent torch.nn module built from the weights "
        "(PyTorch models)\n  onnxruntime  that module exported with torch.onnx (needs "
        "torch, onnx, onnxruntime)\n  keras        Keras itself loading the same file "
        "(Keras models; needs keras and a\n               backend)\n"
        "A peer that is not installed or does not apply is reported and skipped. "
        "Prints median\ntimes, sequences per second, how many times faster rnnfast is, "
        "and how far each peer's\noutput is from rnnfast's.",
        epilog=EPILOG_BENCH,
    )
    _add_model_options(b, example=True)
    b.add_argument("--batch", type=int, metavar="B", default=None, help="batch size (default 32)")
    b.add_argument(
        "--time", type=int, metavar="T", default=None, help="time steps per sequence (default: the model's, else 100)"
    )
    b.add_argument("--threads", type=int, metavar="N", help="threads for every engine (default: all cores)")
    b.add_argument(
        "--vs",
        metavar="PEERS",
        default=None,
        help="comma-separated peers: torch, onnxruntime, keras (default: the ones that apply to the model)",
    )
    b.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        default=None,
        help="timed runs per engine (default: as many as fit in about a second, 5 to 100)",
    )
    b.add_argument("--plot", metavar="PNG", help="also draw the medians as a bar chart (needs matplotlib)")
    b.set_defaults(func=_bench)

    e = sub.add_parser(
        "example",
        help="print the path of a bundled example file",
        formatter_class=_formatter,
        description="Print the path of the bundled example file NAME (installed with rnnfast), or "
        "list them all.\n\n" + "\n".join("  %-17s %s" % (k, v[1]) for k, v in demo.EXAMPLES.items()),
        epilog='examples:\n  rnnfast example\n  rnnfast info "$(rnnfast example digits_lstm)" '
        '--batch-first\n  rnnfast predict "$(rnnfast example digits_bigru)" '
        '"$(rnnfast example digits_test)" --key x -o p.npy',
    )
    e.add_argument(
        "name", metavar="NAME", nargs="?", choices=list(demo.EXAMPLES), help="one of: %s" % ", ".join(demo.EXAMPLES)
    )
    e.set_defaults(func=_example)

    d = sub.add_parser(
        "demo",
        help="run the bundled pretrained models (what `make demo` runs)",
        formatter_class=_formatter,
        description="Classify the held-out handwritten digits with the two bundled models (a Keras "
        "bidirectional GRU\nand a PyTorch LSTM, trained by examples/train_digits.py), "
        "loaded with rnnfast.load: accuracy,\nagreement with the probabilities the "
        "frameworks saved, and speed against the float64 numpy\nreference. With "
        "--seed-models: the seed's two Keras-shaped models on random weights.",
        epilog="examples:\n  rnnfast demo\n  rnnfast demo --threads 1\n  rnnfast demo --seed-models --batch 64",
    )
    d.add_argument(
        "--seed-models",
        action="store_true",
        help="the seed's GRU and bidirectional-GRU models on random weights instead",
    )
    d.add_argument(
        "--batch",
        type=int,
        default=None,
        help="batch size of the throughput measurement (default: the whole held-out split, 450; --seed-models: 256)",
    )
    d.add_argument(
        "--repeats", type=int, default=None, help="timed runs per measurement (default 20; 15 for --seed-models)"
    )
    d.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    d.set_defaults(func=_demo)
    return p


def main(argv=None):
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UserError as e:
        print("rnnfast %s: error: %s" % (args.command, e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rnnfast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
