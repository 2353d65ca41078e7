"""Whole Keras models: rnnfast against Keras 3, ONNX Runtime and OpenVINO on the same weights.

Three model shapes real users run (each built in Keras 3, random lively weights from a
seed, converted with ``rnnfast.from_keras``):

- toxic: the toxic-comment kernel, Embedding -> BiGRU -> [GlobalMax, GlobalAvg] ->
  Concatenate -> Dense(6, sigmoid) on token ids;
- crnn: Conv1D -> MaxPooling1D -> BiGRU -> Dense(softmax) on feature frames (keyword
  spotting);
- decoder step: the char-level seq2seq inference decoder, one step of LSTM with its
  states as inputs and outputs, then Dense(softmax).

Engines, per thread count (``--threads 1,2``; rnnfast, torch, NumPy's BLAS, ONNX
Runtime, OpenVINO and TensorFlow all held to it):

- in this process (``KERAS_BACKEND=torch``), timed interleaved (a call each per round,
  medians): rnnfast ``predict``; Keras 3 ``predict_on_batch`` and ``model(x)`` under
  ``torch.no_grad()``; ONNX Runtime on Keras' own ``model.export(format="onnx")`` and
  OpenVINO on the same file (``core.compile_model``, f32, latency hint); where the
  export fails the row says why;
- Keras 3 on TensorFlow, ``tf.function(model, jit_compile=True)`` (XLA), in a process of
  its own per thread count (``KERAS_BACKEND=tensorflow``; this script with
  ``--tf-worker``): the same weights, timed interleaved with rnnfast there, its ratio
  taken to that rnnfast;
- ``rnnfast recurrent only``: the model's recurrent layer alone, as a chain model
  (``Input -> layer``, same weights, the input it sees inside the model): the whole
  model's time over this is the cost of everything around the recurrent layer.

Every engine's output is asserted to agree with Keras' (max abs error below 1e-4)
before any timing.

    KERAS_BACKEND=torch python bench/whole_models.py [--quick] [--threads 1,2] [--out bench/results]
        [--cases seq2seq,crnn] [--batches 1,64] [--no-onnx] [--no-tf]

``--quick``: T=50 tokens (100 frames), about 0.3 s of timing per row (at least 5 calls
per engine); about 2 minutes on two quiet cores (130 s of CPU time measured). Also
reached as ``python bench/compare.py --models``. Writes
whole_models.json and whole_models.md (the table for bench/README.md) to ``--out``.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from _common import interleaved  # the script's folder is on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))


def _lively(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for w in layer.get_weights():
            fan_in = w.shape[0] if w.ndim == 2 else 1
            a = min(0.5, 1.5 / np.sqrt(fan_in))
            new.append(rng.uniform(-a, a, w.shape).astype(w.dtype))
        layer.set_weights(new)
    return model


def cases(quick):
    import keras

    L = keras.layers
    T = 50 if quick else 150
    out = []

    tok = keras.Input((T,), dtype="int32")
    e = L.Embedding(5000, 64)(tok)
    h = L.Bidirectional(L.GRU(64, return_sequences=True))(e)
    pooled = L.Concatenate()([L.GlobalMaxPooling1D()(h), L.GlobalAveragePooling1D()(h)])
    toxic = keras.Model(tok, L.Dense(6, activation="sigmoid")(pooled))
    out.append(("toxic Emb->BiGRU(64)->[max,avg]->Dense T=%d" % T, toxic, lambda rng, B: rng.integers(1, 5000, (B, T))))

    frames = keras.Input((2 * T, 40))
    h = L.Conv1D(32, 3, padding="same", activation="relu")(frames)
    h = L.MaxPooling1D(2)(h)
    h = L.Bidirectional(L.GRU(64))(h)
    crnn = keras.Model(frames, L.Dense(12, activation="softmax")(h))
    out.append(
        (
            "crnn Conv1D->MaxPool->BiGRU(64)->Dense T=%d" % (2 * T),
            crnn,
            lambda rng, B: rng.standard_normal((B, 2 * T, 40)),
        )
    )

    V, H = 70, 256
    dec_in, s_h, s_c = keras.Input((1, V)), keras.Input((H,)), keras.Input((H,))
    d, h_d, c_d = L.LSTM(H, return_sequences=True, return_state=True)(dec_in, initial_state=[s_h, s_c])
    step = keras.Model([dec_in, s_h, s_c], [L.Dense(V, activation="softmax")(d), h_d, c_d])
    out.append(
        (
            "seq2seq decoder step LSTM(256)->Dense(70)",
            step,
            lambda rng, B: [rng.standard_normal((B, 1, V)), rng.standard_normal((B, H)), rng.standard_normal((B, H))],
        )
    )
    return out


def _f32(x):
    if isinstance(x, list):
        return [_f32(a) for a in x]
    return x.astype(np.float32) if x.dtype == np.float64 else x.astype(np.int32)


def _flat(y):
    return [np.asarray(a) for a in y] if isinstance(y, (list, tuple)) else [np.asarray(y)]


def _flat_tensors(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def _error(got, want):
    return max(float(np.max(np.abs(g - w))) for g, w in zip(_flat(got), want))


TOLERANCE = 1e-4  # max abs error every engine's output must be within (float32)
COLUMNS = (
    "rnnfast",
    "keras predict_on_batch",
    "keras model(x)",
    "keras tf jit_compile",
    "onnxruntime",
    "openvino",
    "rnnfast recurrent only",
)


def _export(model, B, tmp):
    """Keras' own ONNX export of ``model`` (fixed to batch ``B``): the path, or the reason there is none."""
    try:
        path = os.path.join(tmp, "%s-%d.onnx" % (model.name, B))
        model.export(path, format="onnx", verbose=False)
        return path, None
    except Exception as e:  # any failure of the export is a row note
        return None, "%s: %s" % (type(e).__name__, str(e).splitlines()[0][:120] if str(e) else "")


def _onnxruntime(path, x, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = dict(zip([i.name for i in sess.get_inputs()], x if isinstance(x, list) else [x]))
    return lambda: sess.run(None, feed)


def _openvino(path, x, threads):
    import openvino as ov

    compiled = ov.Core().compile_model(
        ov.convert_model(path),
        "CPU",
        {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
    )
    req = compiled.create_infer_request()
    feed = dict(enumerate(x if isinstance(x, list) else [x]))
    n = len(compiled.outputs)
    return lambda: [req.infer(feed)[i] for i in range(n)]


def recurrent_chain(model):
    """The model's (first) recurrent layer alone as a chain model ``Input -> layer``
    (same config, returning no states; same weights), and the index of the input it
    takes: rnnfast's time on it is what the recurrent layer costs inside the model."""
    import keras

    for layer in model.layers:
        name = type(layer).__name__
        if name in ("GRU", "LSTM", "SimpleRNN", "Bidirectional"):
            config = layer.get_config()
            if name == "Bidirectional":
                config["layer"]["config"]["return_state"] = False
            else:
                config["return_state"] = False
            inp = layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input
            chain = keras.Sequential([keras.Input(tuple(inp.shape[1:])), type(layer).from_config(config)])
            chain.layers[-1].set_weights(layer.get_weights())
            return chain, inp
    raise ValueError("no recurrent layer in %s" % model.name)


def _chain_input(model, inp, x):
    """The tensor ``inp`` (a tensor of ``model``) for the model's input ``x``, as numpy."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(keras.Model(model.inputs, inp)(x)))


def _time_rows(args, built, threads, tmp):
    """One row per (case, batch) at ``threads``: every in-process engine, checked, then timed."""
    import torch

    rows = []
    for name, model, fast, chain, batches in built:
        for B, (x, want, chain_x, path, note) in batches.items():
            fns = {
                "rnnfast": lambda fast=fast, x=x: fast.predict(x),
                "keras predict_on_batch": lambda model=model, x=x: model.predict_on_batch(x),
            }

            def call(model=model, x=x):
                with torch.no_grad():
                    y = model(x, training=False)
                return [a.detach().cpu().numpy() for a in _flat_tensors(y)]

            fns["keras model(x)"] = call
            if path is not None:
                fns["onnxruntime"] = _onnxruntime(path, x, threads)
                try:
                    fns["openvino"] = _openvino(path, x, threads)
                except Exception as e:  # OpenVINO refusing the export is a row note
                    note = (note + "; " if note else "") + "openvino: %s: %s" % (type(e).__name__, str(e)[:120])
            errors = {k: _error(f(), want) for k, f in fns.items()}
            bad = {k: e for k, e in errors.items() if not e <= TOLERANCE}
            if bad:
                raise AssertionError("%s B=%d: outputs differ from Keras' by %s" % (name, B, bad))
            fns["rnnfast recurrent only"] = lambda chain=chain, cx=chain_x: chain.predict(cx)
            ms, repeats = interleaved(fns, budget_s=args.budget)
            rows.append(
                dict(
                    case=name,
                    batch=B,
                    threads=threads,
                    ms=ms,
                    max_abs_error=errors,
                    repeats=repeats,
                    note=note,
                    load_average=os.getloadavg(),
                    recurrent_share=ms["rnnfast recurrent only"] / ms["rnnfast"],
                )
            )
            print(
                "%-44s B=%-3d %dt  %s%s"
                % (
                    name[:44],
                    B,
                    threads,
                    "  ".join("%s %.3g" % (k, v) for k, v in ms.items()),
                    "" if note is None else "  [%s]" % note,
                ),
                flush=True,
            )
    return rows


def _tf_rows(args, threads, tmp):
    """Keras on TensorFlow, jit_compile=True, in a process of its own (its thread
    settings are per process): ``{(case, batch): (ms, rnnfast ms there, error)}``."""
    import subprocess

    out = os.path.join(tmp, "tf-%d.json" % threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--tf-worker", tmp, "--threads", str(threads)]
    cmd += ["--batches", args.batches, "--budget", str(args.budget)] + (["--quick"] if args.quick else [])
    cmd += ["--cases", args.cases] if args.cases is not None else []
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return None, "tensorflow worker failed: %s" % (done.stderr.strip().splitlines() or ["?"])[-1][:200]
    with open(out) as f:
        return {(r["case"], r["batch"]): r for r in json.load(f)}, None


def tf_worker(args):
    """``--tf-worker DIR``: Keras on TensorFlow with ``jit_compile=True`` on the weights and
    inputs the parent left in DIR, checked against the parent's Keras outputs, timed
    interleaved with rnnfast; writes DIR/tf-<threads>.json."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from threadpoolctl import threadpool_limits

    import rnnfast

    rnnfast.set_num_threads(args.threads)
    threadpool_limits(args.threads, user_api="blas")
    rows = []
    for i, (name, model, _make) in enumerate(cases(args.quick)):
        if args.cases is not None and name.split(" ")[0] not in args.cases.split(","):
            continue
        saved = np.load(os.path.join(args.tf_worker, "case%d.npz" % i))
        model.set_weights([saved["w%d" % k] for k in range(int(saved["nw"]))])
        fast = rnnfast.from_keras(model)
        fn = tf.function(lambda x, model=model: model(x, training=False), jit_compile=True)
        for B in [int(b) for b in args.batches.split(",")]:
            data = np.load(os.path.join(args.tf_worker, "case%d-B%d.npz" % (i, B)))
            x = [data["x%d" % k] for k in range(int(data["nx"]))]
            x = x[0] if len(x) == 1 else x
            want = [data["y%d" % k] for k in range(int(data["ny"]))]

            def jit(x=x, fn=fn):
                y = fn([tf.constant(a) for a in x] if isinstance(x, list) else tf.constant(x))
                return [a.numpy() for a in _flat_tensors(y)]

            fns = {"rnnfast": lambda fast=fast, x=x: fast.predict(x), "keras tf jit_compile": jit}
            errors = {k: _error(f(), want) for k, f in fns.items()}
            if not max(errors.values()) <= TOLERANCE:
                raise AssertionError("%s B=%d (tensorflow): outputs differ from Keras' by %s" % (name, B, errors))
            ms, _ = interleaved(fns, budget_s=args.budget)
            rows.append(dict(case=name, batch=B, ms=ms, max_abs_error=errors))
    with open(os.path.join(args.tf_worker, "tf-%d.json" % args.threads), "w") as f:
        json.dump(rows, f)
    return 0


def _cell(ms, base):
    if ms is None:
        return "-"
    text = "%.3g" % ms if ms < 100 else "%.0f" % ms
    return text if base is None else "%s (%.1fx)" % (text, ms / base)


def table(rows):
    """The markdown table of ``rows``: ms, and each peer's ratio to rnnfast."""
    short = {"case": "model", "keras predict_on_batch": "Keras predict_on_batch", "keras model(x)": "Keras model(x)"}
    short.update({"keras tf jit_compile": "Keras TF jit_compile", "onnxruntime": "ONNX Runtime"})
    short.update({"openvino": "OpenVINO", "rnnfast recurrent only": "rnnfast recurrent layer only"})
    lines = [
        "| model | batch | threads | " + " | ".join(short.get(c, c) for c in COLUMNS) + " |",
        "| --- | --- | --- |" + " --- |" * len(COLUMNS),
    ]
    for r in rows:
        ms = r["ms"]
        base = ms["rnnfast"]
        cells = []
        for c in COLUMNS:
            if c == "rnnfast":
                cells.append(_cell(base, None))
            elif c == "keras tf jit_compile" and c in ms:  # its ratio to the rnnfast of its process
                cells.append(_cell(ms[c], r["tf_rnnfast_ms"]))
            elif c == "rnnfast recurrent only":
                cells.append("%s (%.0f%%)" % (_cell(ms[c], None), 100 * ms[c] / base))
            else:
                cells.append(_cell(ms.get(c), base))
        lines.append("| %s | %d | %d | %s |" % (r["case"].split(" ")[0], r["batch"], r["threads"], " | ".join(cells)))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter sequences, less timing (under 3 minutes)")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--budget", type=float, default=None, help="seconds of timing per row")
    ap.add_argument("--no-onnx", action="store_true", help="leave ONNX Runtime and OpenVINO out")
    ap.add_argument("--no-tf", action="store_true", help="leave Keras on TensorFlow out")
    ap.add_argument(
        "--cases", default=None, help="the models to time, by the first word of their name (toxic,crnn,seq2seq)"
    )
    ap.add_argument("--tf-worker", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.budget is None:
        args.budget = 0.3 if args.quick else 2.0
    if args.tf_worker:
        args.threads = int(args.threads)
        return tf_worker(args)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    # (set here, not at import: compare.py imports this module and runs Keras on TensorFlow)
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import torch
    from threadpoolctl import threadpool_limits

    import rnnfast
    from rnnfast._bench import disclosure

    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        built = []
        for i, (name, model, make) in enumerate(cases(args.quick)):
            if args.cases is not None and name.split(" ")[0] not in args.cases.split(","):
                continue
            _lively(model, i)
            weights = model.get_weights()
            saved = {"w%d" % k: w for k, w in enumerate(weights)}
            np.savez(os.path.join(tmp, "case%d.npz" % i), nw=len(weights), **saved)
            chain, inp = recurrent_chain(model)
            batches = {}
            for B in [int(b) for b in args.batches.split(",")]:
                x = _f32(make(rng, B))
                want = _flat(model.predict_on_batch(x))
                xs = x if isinstance(x, list) else [x]
                np.savez(
                    os.path.join(tmp, "case%d-B%d.npz" % (i, B)),
                    nx=len(xs),
                    ny=len(want),
                    **{"x%d" % k: a for k, a in enumerate(xs)},
                    **{"y%d" % k: a for k, a in enumerate(want)},
                )
                path, note = (None, "left out") if args.no_onnx else _export(model, B, tmp)
                batches[B] = (x, want, _chain_input(model, inp, x), path, note)
            built.append((name, model, rnnfast.from_keras(model), rnnfast.from_keras(chain), batches))
        print("[built, exported: %.0f s]" % (time.perf_counter() - t_start), flush=True)
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            rnnfast.set_num_threads(threads)
            # NumPy's BLAS at the same count as every engine: on a busy machine its idle
            # threads' wake-ups cost milliseconds per product
            with threadpool_limits(threads, user_api="blas"):
                part = _time_rows(args, built, threads, tmp)
            print("[%d thread(s) timed: %.0f s]" % (threads, time.perf_counter() - t_start), flush=True)
            tf, note = (None, "left out") if args.no_tf else _tf_rows(args, threads, tmp)
            print("[tensorflow worker done: %.0f s]" % (time.perf_counter() - t_start), flush=True)
            for r in part:
                got = (tf or {}).get((r["case"], r["batch"]))
                if got is not None:
                    r["ms"]["keras tf jit_compile"] = got["ms"]["keras tf jit_compile"]
                    r["tf_rnnfast_ms"] = got["ms"]["rnnfast"]
                    r["max_abs_error"]["keras tf jit_compile"] = got["max_abs_error"]["keras tf jit_compile"]
                    ms = (got["ms"]["keras tf jit_compile"], got["ms"]["rnnfast"])
                    print(
                        "%-44s B=%-3d %dt  keras tf jit_compile %.3g (rnnfast there %.3g)"
                        % ((r["case"][:44], r["batch"], threads) + ms),
                        flush=True,
                    )
                elif note:
                    r["tf_note"] = note
            rows += part
    load_after = os.getloadavg()
    text = table(rows)
    foot = "%s (%.1f before the run); %.0f s in all" % (disclosure(), load_before[0], time.perf_counter() - t_start)
    print("\n" + text + "\n\n" + foot)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "whole_models.json"), "w") as f:
        json.dump(
            dict(
                rows=rows,
                keras=keras.__version__,
                backend=keras.backend.backend(),
                argv=sys.argv[1:] if argv is None else list(argv),
                load_average=dict(before=load_before, after=load_after),
                machine=foot,
            ),
            f,
            indent=1,
        )
    with open(os.path.join(args.out, "whole_models.md"), "w") as f:
        f.write(text + "\n\n" + foot + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
