"""Regenerate the fuzzing seed corpus (tests/fuzz/corpus/) from live PyTorch and Keras.

Run from the repository root (takes a few seconds)::

    KERAS_BACKEND=torch .venv/bin/python tests/fuzz/make_corpus.py

Each seed is a small valid file of one loader's format (a few kB; the largest about
40 kB), named ``<format>-<what>.<ext>``; the format prefix is what the fuzzer groups
seeds by: ``torchzip``, ``torchlegacy``, ``safetensors``, ``keras`` (.keras archive),
``keras3h5`` (Keras 3 ``model.save("m.h5")``) and ``keras2h5``. The Keras 2 seeds are
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


def main():
    os.makedirs(CORPUS, exist_ok=True)
    for f in os.listdir(CORPUS):
        os.remove(os.path.join(CORPUS, f))
    torch_seeds()
    keras_seeds()
    for f in sorted(os.listdir(CORPUS)):
        print("%8d  %s" % (os.path.getsize(os.path.join(CORPUS, f)), f))


if __name__ == "__main__":
    np.random.seed(0)  # noqa: NPY002 (the legacy global state the generators draw from)
    main()
