"""Regenerate the fuzzing seed corpus (tests/fuzz/corpus/) from live PyTorch and Keras.

Run from the repository root (takes a few seconds)::

    KERAS_BACKEND=torch .venv/bin/python tests/fuzz/make_corpus.py

Each seed is a small valid file of one loader's format (a few kB; the largest about
40 kB), named ``<format>-<what>.<ext>``; the format prefix is what the fuzzer groups
seeds by: ``torchzip``, ``torchlegacy``, ``safetensors``, ``keras`` (.keras archive),
``keras3h5`` (Keras 3 ``model.save("m.h5")``), ``keras2h5`` and ``onnx``. The Keras 2 seeds are
copies of two tf.keras fixtures (tests/fixtures/keras2/, written by tf_keras 2.x
with its own script), since tf_keras is not installed here. Weights are seeded.
"""

import os
import shutil
import warnings

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
FIXTURES = os.path.join(HERE, "..", "fixtures", "keras2")


def torch_seeds():
    from safetensors.torch import save_file

    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 4)
    torch.save(gru.state_dict(), os.path.join(CORPUS, "torchzip-gru.pt"))
    lstm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    torch.save(lstm.state_dict(), os.path.join(CORPUS, "torchzip-lstm-proj-bi.pt"))
    rnn = torch.nn.RNN(2, 3, nonlinearity="relu")
    ckpt = {
        "epoch": 3,
        "model": {"enc.rnn." + k: v for k, v in rnn.state_dict().items()},
        "history": [0.5, 0.25],
        "name": "run-1",
    }
    torch.save(ckpt, os.path.join(CORPUS, "torchzip-rnn-checkpoint.pt"))
    torch.save(
        torch.nn.LSTM(3, 4).state_dict(),
        os.path.join(CORPUS, "torchlegacy-lstm.pt"),
        _use_new_zipfile_serialization=False,
    )
    torch.save(
        torch.nn.GRU(2, 3, bidirectional=True).state_dict(),
        os.path.join(CORPUS, "torchlegacy-gru-bi.pt"),
        _use_new_zipfile_serialization=False,
    )
    save_file(
        torch.nn.GRU(3, 4, bidirectional=True).state_dict(), os.path.join(CORPUS, "safetensors-gru-bi.safetensors")
    )
    sd = {k: v.half() for k, v in torch.nn.LSTM(3, 4, num_layers=2).state_dict().items()}
    save_file(sd, os.path.join(CORPUS, "safetensors-lstm-f16.safetensors"), metadata={"format": "pt"})


def keras_seeds():
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    models = {
        "gru": keras.Sequential([keras.Input((5, 3)), L.GRU(4)]),
        "lstm-dense": keras.Sequential(
            [keras.Input((None, 3)), L.LSTM(4, return_sequences=True), L.Dense(2, activation="softmax")]
        ),
        "embed-bigru": keras.Sequential(
            [
                keras.Input((6,), dtype="int32"),
                L.Embedding(10, 3, mask_zero=True),
                L.Bidirectional(L.GRU(3, reset_after=False)),
            ]
        ),
    }
    inp = keras.Input((4, 2))
    seq, h = L.SimpleRNN(3, return_sequences=True, return_state=True)(inp)
    models["simplernn-state"] = keras.Model(inp, [seq, h])
    for name, m in models.items():
        m.save(os.path.join(CORPUS, "keras-%s.keras" % name))
        if name in ("gru", "embed-bigru"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Keras 3 calls HDF5 saving legacy
                m.save(os.path.join(CORPUS, "keras3h5-%s.h5" % name))
    for name in ("gru_reset_before", "embedding_mask"):
        shutil.copy(
            os.path.join(FIXTURES, name + ".h5"), os.path.join(CORPUS, "keras2h5-%s.h5" % name.replace("_", "-"))
        )


def onnx_seeds():
    """ONNX seeds: PyTorch exports (TorchScript exporter, symbolic batch and time) and
    an onnx.helper LSTM with peepholes, clip and sequence_lens."""
    import io

    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(0)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(20, 4)
            self.lstm = torch.nn.LSTM(4, 6, batch_first=True, bidirectional=True)
            self.fc = torch.nn.Linear(12, 3)

        def forward(self, ids):
            y, _ = self.lstm(self.emb(ids))
            return torch.log_softmax(self.fc(y.mean(dim=1)), dim=-1)

    for name, m, x in [
        ("gru-bi", torch.nn.GRU(3, 4, bidirectional=True, num_layers=2), torch.randn(5, 2, 3)),
        ("classifier", Classifier(), torch.randint(0, 20, (2, 5))),
    ]:
        f = io.BytesIO()
        torch.onnx.export(m.eval(), (x,), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "a", 1: "b"}})
        with open(os.path.join(CORPUS, "onnx-%s.onnx" % name), "wb") as out:
            out.write(f.getvalue())
    rng = np.random.default_rng(0)
    H, I = 4, 3
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 4 * H, I)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.standard_normal((1, 8 * H)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((1, 3 * H)).astype(np.float32), "P"),
    ]
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "", "", "P"], ["y", "h"], hidden_size=H, clip=3.0)
    g = helper.make_graph(
        [node, helper.make_node("Relu", ["y"], ["r"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I])],
        [
            helper.make_tensor_value_info("r", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, None),
        ],
        inits,
    )
    onnx.save_model(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]), os.path.join(CORPUS, "onnx-lstm-peep.onnx")
    )


def onnx_control_seeds():
    """ONNX seeds with subgraphs: a hand-written RNN cell as a Scan body, and a copy of
    the tf2onnx fixture whose masked LSTM is a Loop (tests/fixtures/tf2onnx/)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    B, I, H = 2, 3, 4
    vi = helper.make_tensor_value_info
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_t", "W"], ["xw"]),
            helper.make_node("MatMul", ["h", "R"], ["hr"]),
            helper.make_node("Add", ["xw", "hr"], ["s"]),
            helper.make_node("Tanh", ["s"], ["h_next"]),
            helper.make_node("Identity", ["h_next"], ["y_t"]),
        ],
        "cell",
        [vi("h", TensorProto.FLOAT, [B, H]), vi("x_t", TensorProto.FLOAT, [B, I])],
        [vi("h_next", TensorProto.FLOAT, [B, H]), vi("y_t", TensorProto.FLOAT, [B, H])],
    )
    scan = helper.make_node("Scan", ["h0", "x"], ["h_last", "ys"], body=body, num_scan_inputs=1)
    g = helper.make_graph(
        [scan],
        "g",
        [vi("h0", TensorProto.FLOAT, [B, H]), vi("x", TensorProto.FLOAT, ["T", B, I])],
        [vi("h_last", TensorProto.FLOAT, None), vi("ys", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(rng.standard_normal((I, H)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal((H, H)).astype(np.float32), "R"),
        ],
    )
    onnx.save_model(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), os.path.join(CORPUS, "onnx-scan-cell.onnx")
    )
    shutil.copy(
        os.path.join(HERE, "..", "fixtures", "tf2onnx", "embedding_mask_lstm.onnx"),
        os.path.join(CORPUS, "onnx-tf2onnx-loop.onnx"),
    )


def main():
    os.makedirs(CORPUS, exist_ok=True)
    for f in os.listdir(CORPUS):
        os.remove(os.path.join(CORPUS, f))
    torch_seeds()
    keras_seeds()
    onnx_seeds()
    onnx_control_seeds()
    for f in sorted(os.listdir(CORPUS)):
        print("%8d  %s" % (os.path.getsize(os.path.join(CORPUS, f)), f))


if __name__ == "__main__":
    np.random.seed(0)  # noqa: NPY002 (the legacy global state the generators draw from)
    main()
