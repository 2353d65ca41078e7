"""TorchRNN from live PyTorch modules (rnnfast.from_torch) against the modules themselves.

Expected values come only from live torch (2.13): each case builds a random module,
runs it (packed when ``lengths`` is given) and compares rnnfast's result within the
contract tolerance.
"""

import itertools
import zlib

import numpy as np
import pytest
import torch

import rnnfast
from rnnfast.layers import RNNLayer

from _testing import TORCH_MODES, assert_same, make_module, torch_run

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def random_inputs(m, T, B, rng, *, with_hx, with_lengths, dtype):
    I = m.input_size
    D = 2 if m.bidirectional else 1
    Ho = m.proj_size or m.hidden_size
    x = rng.standard_normal((B, T, I) if m.batch_first else (T, B, I)).astype(dtype)
    hx = None
    if with_hx:
        h0 = rng.standard_normal((m.num_layers * D, B, Ho)).astype(dtype)
        if isinstance(m, torch.nn.LSTM):
            c0 = rng.standard_normal((m.num_layers * D, B, m.hidden_size)).astype(dtype)
            hx = (h0, c0)
        else:
            hx = h0
    lengths = None
    if with_lengths:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[rng.integers(B)] = T  # unsorted, at least one full row
    return x, hx, lengths


def torch_hx(hx):
    if hx is None:
        return None
    if isinstance(hx, tuple):
        return tuple(torch.as_tensor(s) for s in hx)
    return torch.as_tensor(hx)


# The grid: every cell x layers x direction, and the other options spread over it so
# that each value meets several cells (the index picks them deterministically).
GRID = []
for i, (mode, layers, bidi) in enumerate(itertools.product(TORCH_MODES, (1, 2, 3), (False, True))):
    GRID.append(
        dict(
            mode=mode,
            num_layers=layers,
            bidirectional=bidi,
            proj_size=(2 if i % 2 == 0 else 0) if mode == "LSTM" else 0,
            bias=i % 3 != 1,
            batch_first=i % 4 in (1, 2),
            dtype=np.float64 if i % 5 in (0, 3) else np.float32,
            lengths=i % 3 == 0,
            hx=i % 2 == 1,
            B=(1, 3, 4)[i % 3],
        )
    )


def _id(c):
    return "%s-L%d%s%s%s%s-%s%s%s-B%d" % (
        c["mode"],
        c["num_layers"],
        "-bi" if c["bidirectional"] else "",
        "-proj" if c["proj_size"] else "",
        "" if c["bias"] else "-nobias",
        "-bf" if c["batch_first"] else "",
        np.dtype(c["dtype"]).name,
        "-len" if c["lengths"] else "",
        "-hx" if c["hx"] else "",
        c["B"],
    )


@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_from_torch_matches_module(case):
    dtype = case["dtype"]
    m = make_module(
        case["mode"],
        5,
        6,
        seed=zlib.crc32(_id(case).encode()) % 1000,
        dtype=torch.float64 if dtype == np.float64 else torch.float32,
        num_layers=case["num_layers"],
        bidirectional=case["bidirectional"],
        proj_size=case["proj_size"],
        bias=case["bias"],
        batch_first=case["batch_first"],
    )
    rng = np.random.default_rng(zlib.crc32(_id(case).encode()))
    x, hx, lengths = random_inputs(m, 9, case["B"], rng, with_hx=case["hx"], with_lengths=case["lengths"], dtype=dtype)
    want = torch_run(m, x, torch_hx(hx), lengths)
    rnn = rnnfast.from_torch(m)
    assert rnn.dtype == dtype
    got = rnn(x, hx, lengths=lengths)
    assert_same(got, want, dtype)
    if lengths is not None:
        out = got[0] if not case["batch_first"] else np.swapaxes(got[0], 0, 1)
        for b, n in enumerate(lengths):
            assert not out[n:, b].any()  # padding is zeros, as pad_packed_sequence gives


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_long_sequence_T1000(mode):
    """One long case: T=1000, stacked, bidirectional, unsorted lengths, float32."""
    m = make_module(mode, 8, 16, seed=3, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(7)
    x, hx, lengths = random_inputs(m, 1000, 3, rng, with_hx=True, with_lengths=False, dtype=np.float32)
    lengths = np.array([613, 1000, 2])
    want = torch_run(m, x, torch_hx(hx), lengths)
    got = rnnfast.from_torch(m)(x, hx, lengths=lengths)
    assert_same(got, want, np.float32)


def test_attributes_and_repr():
    m = make_module("LSTM", 5, 7, num_layers=3, bidirectional=True, proj_size=3, batch_first=True, bias=False)
    rnn = rnnfast.from_torch(m)
    assert isinstance(rnn, rnnfast.TorchRNN)
    assert (
        rnn.mode,
        rnn.input_size,
        rnn.hidden_size,
        rnn.num_layers,
        rnn.bidirectional,
        rnn.proj_size,
        rnn.batch_first,
        rnn.bias,
    ) == ("LSTM", 5, 7, 3, True, 3, True, False)
    assert rnn.dtype == np.float32
    assert len(rnn.layers) == 3 and all(isinstance(l, RNNLayer) for l in rnn.layers)
    assert [l.input_size for l in rnn.layers] == [5, 6, 6]
    assert all(l.num_directions == 2 for l in rnn.layers)
    text = repr(rnn)
    assert text == (
        "TorchRNN(LSTM(5, 7, num_layers=3, bias=False, batch_first=True, bidirectional=True, "
        "proj_size=3), dtype=float32)"
    )
    relu = rnnfast.from_torch(make_module("RNN_RELU", 2, 3))
    assert relu.mode == "RNN_RELU" and relu.nonlinearity == "relu"
    assert "nonlinearity='relu'" in repr(relu)
    assert rnnfast.from_torch(make_module("GRU", 2, 3)).nonlinearity is None


@pytest.mark.parametrize("mode", ["GRU", "LSTM", "RNN_TANH"])
@pytest.mark.parametrize("with_hx", [False, True])
def test_unbatched_input(mode, with_hx):
    m = make_module(mode, 4, 5, num_layers=2, bidirectional=True, batch_first=True)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    hx = None
    if with_hx:
        h0 = rng.standard_normal((4, 5)).astype(np.float32)
        hx = (h0, rng.standard_normal((4, 5)).astype(np.float32)) if mode == "LSTM" else h0
    want = torch_run(m, x, torch_hx(hx))
    got = rnnfast.from_torch(m)(x, hx)
    assert got[0].shape == (6, 10)
    assert_same(got, want, np.float32)


def test_torch_tensors_accepted():
    m = make_module("LSTM", 3, 4, bidirectional=True)
    torch.manual_seed(1)
    x = torch.randn(7, 2, 3)
    hx = (torch.randn(2, 2, 4), torch.randn(2, 2, 4))
    lengths = torch.tensor([4, 7])
    want = torch_run(m, x, hx, lengths)
    got = rnnfast.from_torch(m)(x, hx, lengths=lengths)
    assert_same(got, want, np.float32)


def test_dropout_module_is_inference():
    m = make_module("GRU", 4, 6, num_layers=3, dropout=0.5)
    x = np.random.default_rng(2).standard_normal((5, 2, 4)).astype(np.float32)
    assert_same(rnnfast.from_torch(m)(x), torch_run(m, x), np.float32)


def test_threads_do_not_change_results():
    m = make_module("GRU", 6, 10, num_layers=2, bidirectional=True)
    x = np.random.default_rng(3).standard_normal((40, 5, 6)).astype(np.float32)
    rnn = rnnfast.from_torch(m)
    a = rnn(x, num_threads=1)
    b = rnn(x, num_threads=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert_same(a, torch_run(m, x), np.float32)


def test_dtype_option_and_float64_module():
    m = make_module("LSTM", 3, 5, num_layers=2, dtype=torch.float64)
    x = np.random.default_rng(4).standard_normal((8, 2, 3))
    rnn64 = rnnfast.from_torch(m)
    assert rnn64.dtype == np.float64
    assert_same(rnn64(x), torch_run(m, x), np.float64)
    rnn32 = rnnfast.from_torch(m, dtype="float32")
    assert rnn32.dtype == np.float32
    assert_same(rnn32(x), torch_run(m, x), np.float32)
    m32 = make_module("GRU", 3, 5)
    up = rnnfast.from_torch(m32, dtype=np.float64)
    assert up.dtype == np.float64
    assert_same(up(x), torch_run(m32.double(), x), np.float64)
    with pytest.raises(ValueError, match="float32 or float64"):
        rnnfast.from_torch(m32, dtype="int8")


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_module(half):
    m = make_module("GRU", 3, 5, bidirectional=True).to(half)
    rnn = rnnfast.from_torch(m)
    assert rnn.dtype == np.float32
    x = np.random.default_rng(5).standard_normal((6, 2, 3)).astype(np.float32)
    assert_same(rnn(x), torch_run(m.float(), x), np.float32)  # the same rounded weights in float32


def test_parametrized_weights(tmp_path):
    """from_torch reads the weights the module computes with (here weight_norm's);
    a file of such a state_dict is refused with a hint."""
    from torch.nn.utils.parametrizations import weight_norm

    m = make_module("GRU", 3, 4, num_layers=2)
    weight_norm(m, "weight_hh_l1")
    with torch.no_grad():
        m.parametrizations.weight_hh_l1.original0.mul_(1.7)
    x = np.random.default_rng(6).standard_normal((5, 2, 3)).astype(np.float32)
    assert_same(rnnfast.from_torch(m)(x), torch_run(m, x), np.float32)
    torch.save(m.state_dict(), str(tmp_path / "wn.pt"))
    with pytest.raises(rnnfast.FormatError, match="'weight_hh_l1' is missing.*parametrized"):
        rnnfast.load(str(tmp_path / "wn.pt"))


def test_from_torch_refuses_other_objects():
    with pytest.raises(rnnfast.UnsupportedLayerError, match="Linear"):
        rnnfast.from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(rnnfast.UnsupportedLayerError, match="Sequential"):
        rnnfast.from_torch(torch.nn.Sequential(torch.nn.GRU(3, 4)))
    with pytest.raises(TypeError):
        rnnfast.from_torch("not a module")


@pytest.fixture(scope="module")
def gru():
    return rnnfast.from_torch(make_module("GRU", 3, 4, num_layers=2))


@pytest.fixture(scope="module")
def lstm():
    return rnnfast.from_torch(make_module("LSTM", 3, 4, bidirectional=True))


class TestBadInput:
    def test_input_shapes(self, gru):
        with pytest.raises(ValueError, match="input"):
            gru(np.zeros(3))
        with pytest.raises(ValueError, match="input"):
            gru(np.zeros((2, 2, 2, 3)))
        with pytest.raises(ValueError, match="3 input features"):
            gru(np.zeros((5, 2, 4)))
        with pytest.raises(ValueError, match="numeric"):
            gru(np.array([[["a", "b", "c"]]]))

    def test_hx(self, gru, lstm):
        x = np.zeros((5, 2, 3), np.float32)
        with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\)"):
            gru(x, np.zeros((1, 2, 4)))
        with pytest.raises(ValueError, match="one array"):
            gru(x, (np.zeros((2, 2, 4)), np.zeros((2, 2, 4))))
        with pytest.raises(ValueError, match="tuple"):
            lstm(x, np.zeros((2, 2, 4)))
        with pytest.raises(ValueError, match="c_0"):
            lstm(x, (np.zeros((2, 2, 4)), np.zeros((2, 3, 4))))
        with pytest.raises(ValueError, match="2-D"):
            gru(np.zeros((5, 3)), np.zeros((2, 1, 4)))

    def test_lengths(self, gru):
        x = np.zeros((5, 2, 3), np.float32)
        with pytest.raises(ValueError, match="lengths"):
            gru(x, lengths=[6, 1])
        with pytest.raises(ValueError, match="lengths"):
            gru(x, lengths=[1, 2, 3])
        with pytest.raises(ValueError, match="lengths"):
            gru(np.zeros((5, 3)), lengths=[5])


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_stream_and_row_give_the_whole_calls_bits(precision):
    """The state is rounded to bf16 (or quantized) before each product, so a last-bit
    difference of the float32 parts can grow into a step of that precision (about 1e-4):
    a bf16 layer's float32 input projection runs on the packed W on every instruction set
    (BLAS's sums depend on the ISA and on the rows of the call), and a stream or a row
    alone gives the whole call's bits."""
    torch.manual_seed(0)
    model = rnnfast.from_torch(torch.nn.GRU(16, 32, num_layers=2)).with_precision(precision)
    x = np.random.default_rng(0).standard_normal((40, 3, 16)).astype(np.float32)
    want, _ = model(x)
    one, _ = model(x[:, 1:2])
    assert np.array_equal(one, want[:, 1:2])
    for chunk in (40, 7):
        s = model.stream()
        got = np.concatenate([model.step(x[t : t + chunk, 1], s) for t in range(0, 40, chunk)])
        assert np.array_equal(got, want[:, 1]), chunk
