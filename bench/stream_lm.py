"""Generation through streams: a language model stepped a token at a time.

The model is PyTorch's word_language_model shape, Embedding(V, H) -> GRU or LSTM(H)
-> Linear(H, V) (logits for every step), float32, seeded weights, exported once to
ONNX with dynamic batch and time axes. Each engine runs one token per call from the
state the previous call left:

- ``rnnfast``: ``model.step(token, stream)`` on ``rnnfast.load(path)`` (the stream
  runs the model's own products: a head whose weights do not fit the last-level
  cache beside the rest reads them past the caches at one row, and on two threads
  splits its columns with the partner thread);
- ``rnnfast kept``: the same, the model loaded with its L3 taken as unlimited (no
  weight streamed: ``_plan._l3``), in the same process;
- ``onnxruntime``: a one-step export of the same module with the state as an input
  and an output (``sess.run(None, {"ids": tok, "h": h})``, the state threaded by hand);
- ``torch``: eager ``module(tok, h)`` under ``torch.no_grad()``.

Calls are timed in loops, the engines' loops interleaved round after round
(``streaming.timed``); medians of wall time and of process CPU time, microseconds per
token. Every engine's logits are checked against PyTorch's first.

    python bench/stream_lm.py [--cell gru] [--vocab 8000] [--units 256] [--threads 1,2]
        [--rounds 15] [--calls 200] [--out bench]

Prints a table and writes stream_lm.json to --out.
"""

import argparse
import io
import json
import os
import platform
import sys
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from streaming import timed  # noqa: E402

import rnnfast  # noqa: E402
from rnnfast import _plan  # noqa: E402


def language_model(cell, vocab, units, torch):
    """The module (eval, seeded) and a one-step twin with the state in and out."""
    nn = torch.nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, units)
            self.rnn = getattr(nn, cell.upper())(units, units, batch_first=True)
            self.head = nn.Linear(units, vocab)

        def forward(self, ids, *state):
            y, new = self.rnn(self.emb(ids), *state)
            return (self.head(y), new) if state else self.head(y)

    torch.manual_seed(0)
    net = LM().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-0.08, 0.08)
    return net


def exports(net, cell, units, torch):
    """(the whole-sequence ONNX bytes, the one-step ONNX bytes with the state in and out)."""

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, ids, h, *c):
            if c:
                y, (h2, c2) = self.net(ids, (h, c[0]))
                return y, h2, c2
            y, h2 = self.net(ids, h)
            return y, h2

    ids = torch.zeros(1, 1, dtype=torch.long)
    zero = torch.zeros(1, 1, units)
    states = (zero, zero) if cell == "lstm" else (zero,)
    names = ["h", "c"][: len(states)]
    whole, step = io.BytesIO(), io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.zeros(2, 7, dtype=torch.long),), whole, dynamo=False, input_names=["ids"],
            dynamic_axes={"ids": {0: "b", 1: "t"}},
        )  # fmt: skip
        torch.onnx.export(
            Step(), (ids, *states), step, dynamo=False, input_names=["ids", *names],
            output_names=["y"] + [n + "_new" for n in names],
        )  # fmt: skip
    return whole.getvalue(), step.getvalue()


def stream_step(m, tokens, nth):
    """One token a call through a stream of ``m``, from the first of ``tokens``."""
    s, pos = m.stream(), [-1]

    def f():
        pos[0] = (pos[0] + 1) % len(tokens)
        return m.step(tokens[pos[0] : pos[0] + 1], s, num_threads=nth)

    return f


def ort_step(sess, nstate, units, tokens):
    """One token a call through ONNX Runtime's one-step session, the state threaded by
    hand, from the first of ``tokens``."""
    names = ["h", "c"][:nstate]
    st, pos = [np.zeros((1, 1, units), np.float32) for _ in range(nstate)], [-1]

    def f():
        pos[0] = (pos[0] + 1) % len(tokens)
        out = sess.run(None, {"ids": tokens[None, pos[0] : pos[0] + 1], **dict(zip(names, st))})
        st[:] = out[1:]
        return out[0]

    return f


def torch_step(net, nstate, units, tokens, torch):
    """One token a call through the module, eager, the state threaded by hand, from the
    first of ``tokens``."""
    zero = torch.zeros(1, 1, units)
    state, pos = [(zero, zero) if nstate == 2 else zero], [-1]

    def f():
        pos[0] = (pos[0] + 1) % len(tokens)
        with torch.no_grad():
            y, state[0] = net(torch.as_tensor(tokens[None, pos[0] : pos[0] + 1]), state[0])
        return y

    return f


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="gru", choices=["gru", "lstm"])
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--units", type=int, default=256)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=200, help="tokens per timed loop")
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args(argv)
    import onnxruntime as ort
    import torch

    net = language_model(args.cell, args.vocab, args.units, torch)
    whole, one = exports(net, args.cell, args.units, torch)
    model = rnnfast.from_onnx(whole)
    l3 = _plan.l3_bytes()
    _plan._l3[:] = [1 << 50]
    kept = rnnfast.from_onnx(whole)
    _plan._l3[:] = [l3]
    streamed = [op.name for op, *_ in model._compiled()[0] if getattr(op, "stream", False)]
    tokens = np.random.default_rng(0).integers(0, args.vocab, 4096)
    nstate = 2 if args.cell == "lstm" else 1
    with torch.no_grad():  # every engine's logits against PyTorch's, over 20 tokens
        want = net(torch.as_tensor(tokens[None, :20])).numpy()[0]
    rows = []
    for nth in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(nth)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = nth, 1
        sess = ort.InferenceSession(one, so, providers=["CPUExecutionProvider"])
        fns = {
            "rnnfast": stream_step(model, tokens, nth),
            "rnnfast kept": stream_step(kept, tokens, nth),
            "onnxruntime": ort_step(sess, nstate, args.units, tokens),
            "torch": torch_step(net, nstate, args.units, tokens, torch),
        }
        first = {  # every engine's logits against PyTorch's, from the first token
            "rnnfast": stream_step(model, tokens, nth),
            "rnnfast kept": stream_step(kept, tokens, nth),
            "onnxruntime": ort_step(sess, nstate, args.units, tokens),
        }
        for name, f in first.items():
            err = float(np.abs(np.concatenate([f().reshape(1, -1) for _ in range(20)]) - want).max())
            assert err < 1e-4, (name, err)
        wall, cpu = timed({k: (f, args.calls) for k, f in fns.items()}, args.rounds)
        for k in fns:
            rows.append(dict(engine=k, threads=nth, wall_us=wall[k], cpu_us=cpu[k]))
    print(
        "%s LM V=%d H=%d, one token per call; rnnfast streams %s (L3 %d KB); machine %s, %d CPUs"
        % (args.cell.upper(), args.vocab, args.units, streamed or "nothing", l3 >> 10, platform.processor()
           or platform.machine(), os.cpu_count())
    )  # fmt: skip
    print("%-14s %3s %12s %12s %16s" % ("engine", "thr", "wall us", "cpu us", "rnnfast speed-up"))
    for r in rows:
        base = [x for x in rows if x["engine"] == "rnnfast" and x["threads"] == r["threads"]][0]
        print(
            "%-14s %3d %12.1f %12.1f %15.2fx"
            % (r["engine"], r["threads"], r["wall_us"], r["cpu_us"], r["wall_us"] / base["wall_us"])
        )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "stream_lm.json"), "w") as f:
        json.dump(dict(args=vars(args), streamed=streamed, l3_bytes=l3, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
