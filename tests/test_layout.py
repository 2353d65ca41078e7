"""PyTorch layout: one default (torch.nn's, time-major unless batch_first) across the API
and the command line; an input in the other layout is refused, saying so, wherever the
call carries a batch size of its own (hx, lengths); where it does not, the shapes
cannot be told apart and the module's layout is used (as torch.nn does)."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
import torch

import rnnfast
from rnnfast.cli import main


@pytest.fixture(scope="module")
def lstm_file(tmp_path_factory):
    torch.manual_seed(0)
    m = torch.nn.LSTM(8, 6, num_layers=2).eval()
    path = tmp_path_factory.mktemp("layout") / "lstm.pt"
    torch.save(m.state_dict(), path)
    return m, path


def test_load_defaults_to_time_major_like_torch(lstm_file):
    m, path = lstm_file
    rnn = rnnfast.load(path)
    assert rnn.batch_first is False
    x = np.random.default_rng(0).standard_normal((30, 4, 8)).astype(np.float32)  # (time, batch, F)
    out, (h_n, c_n) = rnn(x)
    with torch.no_grad():
        want, (wh, _) = m(torch.from_numpy(x))
    assert h_n.shape == (2, 4, 6)
    np.testing.assert_allclose(out, want.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(h_n, wh.numpy(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("batch_first", [False, True])
def test_other_layout_refused_when_hx_or_lengths_tell(lstm_file, batch_first):
    _, path = lstm_file
    rnn = rnnfast.load(path, batch_first=batch_first)
    # 4 sequences of 30 steps, in the layout the module does NOT take
    x = np.zeros((4, 30, 8) if not batch_first else (30, 4, 8), np.float32)
    h0 = np.zeros((2, 4, 6), np.float32)
    with pytest.raises(
        ValueError,
        match=r"h_0 gives a batch of 4, which fits the input of shape .* only if "
        r"it is .*batch_first=%s" % (not batch_first),
    ):
        rnn(x, (h0, h0))
    with pytest.raises(
        ValueError, match=r"lengths gives a batch of 4.*load the model with batch_first=%s" % (not batch_first)
    ):
        rnn(x, lengths=np.full(4, 3))
    with pytest.raises(ValueError, match=r"lengths gives a batch of 4"):
        rnn.predict(x, lengths=np.full(4, 3))
    # a batch size that fits neither layout: the usual shape message
    with pytest.raises(ValueError, match=r"must have shape"):
        rnn(x, lengths=np.full(5, 3))


def test_cli_default_is_time_major_and_says_so(lstm_file, tmp_path, capsys):
    m, path = lstm_file
    x = np.random.default_rng(1).standard_normal((9, 3, 8)).astype(np.float32)  # (time, batch, F)
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npz"), "-q"]) == 0
    with torch.no_grad():
        want, (wh, _) = m(torch.from_numpy(x))
    with np.load(tmp_path / "y.npz") as f:
        np.testing.assert_allclose(f["out"], want.numpy(), atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(f["h_n"], wh.numpy(), atol=1e-5, rtol=1e-4)
    # batch-first data with lengths, without --batch-first: refused, naming the flag
    xb = np.ascontiguousarray(x.swapaxes(0, 1))  # (3, 9, 8)
    np.savez(tmp_path / "in.npz", x=xb, n=np.array([9, 4, 2]))
    assert (
        main(
            [
                "predict",
                str(path),
                str(tmp_path / "in.npz"),
                "--key",
                "x",
                "--lengths",
                "n",
                "-o",
                str(tmp_path / "o.npz"),
            ]
        )
        == 1
    )
    assert "give --batch-first" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                str(path),
                str(tmp_path / "in.npz"),
                "--key",
                "x",
                "--lengths",
                "n",
                "--batch-first",
                "-o",
                str(tmp_path / "o.npz"),
                "-q",
            ]
        )
        == 0
    )
    assert main(["info", str(path)]) == 0
    assert "batch_first" not in capsys.readouterr().out
    assert main(["info", str(path), "--batch-first"]) == 0
    assert "batch_first=True" in capsys.readouterr().out
