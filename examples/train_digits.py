"""Train the two pretrained examples that ``rnnfast demo`` runs, on scikit-learn's digits.

Data: ``sklearn.datasets.load_digits`` (1797 handwritten digits, 8x8 pixels, values
0..16). Each image is a sequence: its 8 rows are 8 time steps of 8 features, scaled
to [0, 1] (divided by 16). A stratified quarter is held out (``random_state=0``).

Models (small on purpose: every file stays far under 1 MB):

- Keras 3, shaped like the seed's bidirectional GRU::

      Input((8, 8)) -> Bidirectional(GRU(32, return_sequences=True))
                    -> Bidirectional(GRU(16)) -> Dense(10, softmax)

  saved whole as ``digits_bigru.keras``.
- PyTorch: ``nn.LSTM(8, 32, num_layers=2, bidirectional=True, batch_first=True)``;
  the last layer's final states, forward then backward (``h_n[-2]``, ``h_n[-1]``),
  concatenated to 64 features, feed ``nn.Linear(64, 10)``. The LSTM's
  ``state_dict()`` is saved as ``digits_lstm.pt`` (what ``rnnfast.load`` reads: a
  TorchRNN is the recurrent module only); the head as ``digits_lstm_head.npz``
  (``weight`` (10, 64), ``bias`` (10,): ``logits = features @ weight.T + bias``),
  which the demo applies with numpy.

Also written: ``digits_test.npz`` -- the held-out split (``x`` (450, 8, 8) float32,
``y`` (450,) int64) and each framework's own class probabilities on it
(``keras_proba``, ``torch_proba``, (450, 10) float32, from ``keras_model.predict``
and from the torch modules + softmax) -- and ``digits_info.json`` (versions,
hyperparameters, accuracies).

Needs scikit-learn, keras (any backend; torch is used when KERAS_BACKEND is unset)
and torch -- only to retrain; the demo needs none of them::

    KERAS_BACKEND=torch python examples/train_digits.py [--out src/rnnfast/data]

Seeded (numpy, Python, Keras and torch seeds) and run on one thread: on the same
versions and machine the weights come out the same.
"""

import argparse
import json
import os
import platform
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np

SEED = 0
KERAS_UNITS = (32, 16)
TORCH_HIDDEN = 32
BATCH = 64
KERAS_EPOCHS, KERAS_LR = 40, 3e-3
TORCH_EPOCHS, TORCH_LR = 60, 1e-2


def digits_split():
    """The digits as (train_x, test_x, train_y, test_y); x (n, 8, 8) float32 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)  # (1797, 8, 8): rows are time steps
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)


def train_keras(xtr, ytr, xte):
    import keras
    from keras import layers

    keras.utils.set_random_seed(SEED)
    u1, u2 = KERAS_UNITS
    model = keras.Sequential(
        [
            keras.Input((8, 8)),
            layers.Bidirectional(layers.GRU(u1, return_sequences=True)),
            layers.Bidirectional(layers.GRU(u2)),
            layers.Dense(10, activation="softmax"),
        ],
        name="digits_bigru",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(KERAS_LR), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(xtr, ytr, epochs=KERAS_EPOCHS, batch_size=BATCH, verbose=0, shuffle=True)
    proba = model.predict(xte, verbose=0).astype(np.float32)
    return model, proba


class DigitsLSTM:
    """The PyTorch model: an nn.LSTM and a linear head on its last layer's final states."""

    def __init__(self, torch):
        nn = torch.nn
        self.torch = torch
        self.rnn = nn.LSTM(8, TORCH_HIDDEN, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * TORCH_HIDDEN, 10)

    def parameters(self):
        return list(self.rnn.parameters()) + list(self.head.parameters())

    def logits(self, x):
        _, (h_n, _) = self.rnn(x)
        feats = self.torch.cat([h_n[-2], h_n[-1]], dim=-1)  # last layer: forward, backward
        return self.head(feats)


def train_torch(xtr, ytr, xte):
    import torch

    torch.manual_seed(SEED)
    model = DigitsLSTM(torch)
    opt = torch.optim.Adam(model.parameters(), lr=TORCH_LR)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(SEED)
    model.rnn.train()
    for _ in range(TORCH_EPOCHS):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            loss = torch.nn.functional.cross_entropy(model.logits(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.rnn.eval()
    with torch.no_grad():
        proba = torch.softmax(model.logits(torch.from_numpy(xte)), dim=-1).numpy().astype(np.float32)
    return model, proba


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out",
        default=os.path.join(here, "..", "src", "rnnfast", "data"),
        help="where to write the files (default: the package's data folder)",
    )
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    import keras
    import sklearn
    import torch

    torch.set_num_threads(1)  # one thread: the same weights on every run
    xtr, xte, ytr, yte = digits_split()

    kmodel, kproba = train_keras(xtr, ytr, xte)
    kmodel.save(os.path.join(args.out, "digits_bigru.keras"))

    tmodel, tproba = train_torch(xtr, ytr, xte)
    torch.save(tmodel.rnn.state_dict(), os.path.join(args.out, "digits_lstm.pt"))
    np.savez(
        os.path.join(args.out, "digits_lstm_head.npz"),
        weight=tmodel.head.weight.detach().numpy(),
        bias=tmodel.head.bias.detach().numpy(),
    )

    np.savez_compressed(os.path.join(args.out, "digits_test.npz"), x=xte, y=yte, keras_proba=kproba, torch_proba=tproba)
    acc = {"keras": float((kproba.argmax(1) == yte).mean()), "torch": float((tproba.argmax(1) == yte).mean())}
    info = {
        "data": "sklearn.datasets.load_digits; rows = time steps, /16; stratified 25%% held out "
        "(random_state=%d)" % SEED,
        "train_size": int(len(xtr)),
        "test_size": int(len(xte)),
        "keras_model": "Bidirectional(GRU(%d, return_sequences=True)) -> Bidirectional(GRU(%d)) "
        "-> Dense(10, softmax)" % KERAS_UNITS,
        "torch_model": "nn.LSTM(8, %d, num_layers=2, bidirectional=True, batch_first=True); "
        "logits = cat(h_n[-2], h_n[-1]) @ weight.T + bias" % TORCH_HIDDEN,
        "batch_size": BATCH,
        "seed": SEED,
        "optimizer": "Adam",
        "keras_epochs": KERAS_EPOCHS,
        "keras_learning_rate": KERAS_LR,
        "torch_epochs": TORCH_EPOCHS,
        "torch_learning_rate": TORCH_LR,
        "test_accuracy": acc,
        "versions": {
            "keras": keras.__version__,
            "keras_backend": keras.backend.backend(),
            "torch": torch.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    with open(os.path.join(args.out, "digits_info.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
