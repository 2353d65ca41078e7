"""Whole Keras models: rnnfast against Keras 3 and ONNX Runtime on the same weights.

Three model shapes real users run (each built in Keras 3, random lively weights from a
seed, converted with ``rnnfast.from_keras``):

- toxic: the toxic-comment kernel, Embedding -> BiGRU -> [GlobalMax, GlobalAvg] ->
  Concatenate -> Dense(6, sigmoid) on token ids;
- crnn: Conv1D -> MaxPooling1D -> BiGRU -> Dense(softmax) on feature frames (keyword
  spotting);
- decoder step: the char-level seq2seq inference decoder, one step of LSTM with its
  states as inputs and outputs, then Dense(softmax).

Engines, timed interleaved in one process (each a few calls per round, rounds
rotating, medians): rnnfast ``predict``; Keras 3 ``predict_on_batch`` and ``model(x)``
(the backend of ``KERAS_BACKEND``: torch here, under ``torch.no_grad()``); ONNX Runtime
on ``model.export(format="onnx")`` where the export works (else the row says why).
Every engine's output is checked against Keras' first. Threads: ``--threads`` for
rnnfast, torch and ONNX Runtime alike.

    KERAS_BACKEND=torch python bench/whole_models.py [--quick] [--threads 1] [--out bench/results]

Also reached as ``python bench/compare.py --models``. Writes whole_models.json.
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


def _onnx(model, x, tmp):
    """An ONNX Runtime session on Keras' own ONNX export, or the reason there is none."""
    try:
        import onnxruntime as ort

        path = os.path.join(tmp, "m.onnx")
        model.export(path, format="onnx", verbose=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        xs = x if isinstance(x, list) else [x]
        feed = dict(zip(names, xs))
        return lambda: sess.run(None, feed), None
    except Exception as e:  # any failure of the export is a row note
        return None, "%s: %s" % (type(e).__name__, str(e).splitlines()[0][:120] if str(e) else "")


THREADS = 1


def main(argv=None):
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter sequences, less timing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--no-onnx", action="store_true", help="leave ONNX Runtime out")
    args = ap.parse_args(argv)
    THREADS = args.threads
    # (set here, not at import: compare.py imports this module and runs Keras on TensorFlow)
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import torch

    import rnnfast

    torch.set_num_threads(args.threads)
    rnnfast.set_num_threads(args.threads)
    # NumPy's BLAS (rnnfast's Dense, Conv1D and attention products outside the
    # recurrent core; rnnfast leaves it alone) at the same count as every engine: on a
    # busy machine its idle threads' wake-ups cost milliseconds per product
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads, user_api="blas")
    budget = 0.5 if args.quick else 2.0
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model, make) in enumerate(cases(args.quick)):
            _lively(model, i)
            fast = rnnfast.from_keras(model)
            for B in [int(b) for b in args.batches.split(",")]:
                x = _f32(make(rng, B))
                want = _flat(model.predict_on_batch(x))
                fns = {
                    "rnnfast": lambda fast=fast, x=x: fast.predict(x),
                    "keras predict_on_batch": lambda model=model, x=x: model.predict_on_batch(x),
                }

                def call(model=model, x=x):
                    with torch.no_grad():
                        return model(x, training=False)

                fns["keras model(x)"] = call
                note = None
                if not args.no_onnx:
                    run, note = _onnx(model, x, tmp)
                    if run is not None:
                        fns["onnxruntime"] = run
                errors = {}
                for k, f in fns.items():
                    got = f()
                    if k == "keras model(x)":
                        got = [a.detach().cpu().numpy() for a in got] if isinstance(got, (list, tuple)) else got
                        got = got if isinstance(got, list) else got.detach().cpu().numpy()
                    errors[k] = max(float(np.max(np.abs(g - w))) for g, w in zip(_flat(got), want))
                t0 = time.perf_counter()
                ms, repeats = interleaved(fns, budget_s=budget)
                row = dict(
                    case=name,
                    batch=B,
                    threads=args.threads,
                    ms=ms,
                    max_abs_error=errors,
                    repeats=repeats,
                    onnx_note=note,
                    ratio_vs_rnnfast={k: v / ms["rnnfast"] for k, v in ms.items()},
                    wall_s=time.perf_counter() - t0,
                )
                rows.append(row)
                print(
                    "%-48s B=%-3d %s%s"
                    % (
                        name,
                        B,
                        "  ".join("%s %.3g ms (x%.1f)" % (k, v, v / ms["rnnfast"]) for k, v in ms.items()),
                        "" if note is None else "  [onnx: %s]" % note,
                    ),
                    flush=True,
                )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "whole_models.json"), "w") as f:
        json.dump(
            dict(rows=rows, keras=keras.__version__, backend=keras.backend.backend(), argv=sys.argv[1:]), f, indent=1
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
