"""The engine against live PyTorch modules (nn.GRU, nn.LSTM incl. proj_size, nn.RNN).

Weights go through the one PyTorch converter (rnnfast.io.torch_convert) into
canonical layers; the loaders and TorchRNN are tested in their own modules.
"""

import numpy as np
import pytest
import torch  # make test installs it: a missing torch must fail, not skip

from rnnfast import cells
from rnnfast.io.torch_convert import cell_weights_from_torch
from rnnfast.layers import RNNLayer

from _testing import assert_close, seed_of

MODES = {"GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM, "RNN_TANH": torch.nn.RNN, "RNN_RELU": torch.nn.RNN}


def layers_from_module(m, dtype):
    """Canonical layers of a live module, one RNNLayer per torch layer."""
    sd = {k: v.detach().cpu().numpy() for k, v in m.state_dict().items()}
    cell, act = cells.by_torch_mode(m.mode)
    out = []
    for k in range(m.num_layers):
        ws = []
        for sfx in [""] + (["_reverse"] if m.bidirectional else []):
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
            ws.append(cell_weights_from_torch(m.mode, *[sd.get("%s_l%d%s" % (n, k, sfx)) for n in names]))
        out.append(RNNLayer(cell.name, ws, activation=act, dtype=dtype))
    return out


def run_stack(layers, x, h0=None, c0=None, num_threads=None):
    D = layers[0].num_directions
    hs, cs = [], []
    for k, layer in enumerate(layers):
        hk = None if h0 is None else h0[k * D : (k + 1) * D]
        ck = None if c0 is None else c0[k * D : (k + 1) * D]
        x, h, c = layer.forward(x, hk, ck, num_threads=num_threads)
        hs.append(h)
        cs.append(c)
    return x, np.concatenate(hs), (np.concatenate(cs) if cs[0] is not None else None)


CASES = [
    # mode, I, H, layers, bidirectional, bias, proj, T, B
    ("GRU", 7, 11, 1, False, True, 0, 9, 3),
    ("GRU", 7, 11, 2, True, True, 0, 9, 1),
    ("GRU", 5, 9, 3, True, False, 0, 6, 4),
    ("LSTM", 7, 11, 1, False, True, 0, 9, 3),
    ("LSTM", 7, 11, 2, True, True, 0, 9, 2),
    ("LSTM", 7, 11, 2, True, True, 5, 9, 3),
    ("LSTM", 6, 8, 1, False, False, 3, 9, 3),
    ("RNN_TANH", 7, 11, 2, True, True, 0, 9, 3),
    ("RNN_RELU", 7, 11, 2, False, True, 0, 9, 3),
    ("RNN_RELU", 4, 6, 1, True, False, 0, 9, 1),
]


def build(mode, I, H, L, bi, bias, proj, dtype):
    torch.manual_seed(seed_of(mode, I, H, L, bi, bias, proj))
    kw = dict(num_layers=L, bidirectional=bi, bias=bias)
    if mode.startswith("RNN"):
        kw["nonlinearity"] = "relu" if mode == "RNN_RELU" else "tanh"
    if proj:
        kw["proj_size"] = proj
    m = MODES[mode](I, H, **kw).to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():  # lively weights: wider than torch's default init
        for p in m.parameters():
            p.uniform_(-1.5 / np.sqrt(H), 1.5 / np.sqrt(H))
    return m.eval()


@pytest.mark.parametrize("case", CASES, ids=[" ".join(map(str, c)) for c in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_torch(case, dtype, with_state):
    mode, I, H, L, bi, bias, proj, T, B = case
    m = build(mode, I, H, L, bi, bias, proj, dtype)
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I))
    D = 2 if bi else 1
    h0 = rng.standard_normal((L * D, B, proj or H)) if with_state else None
    c0 = rng.standard_normal((L * D, B, H)) if with_state and mode == "LSTM" else None
    with torch.no_grad():
        args = [torch.tensor(x, dtype=tdt)]
        if with_state:
            hx = torch.tensor(h0, dtype=tdt)
            args.append((hx, torch.tensor(c0, dtype=tdt)) if mode == "LSTM" else hx)
        t_out, t_state = m(*args)
    t_h = (t_state[0] if mode == "LSTM" else t_state).numpy()
    out, h, c = run_stack(layers_from_module(m, dtype), x, h0, c0)
    assert_close(out, t_out.numpy(), dtype, "out")
    assert_close(h, t_h, dtype, "h_n")
    if mode == "LSTM":
        assert_close(c, t_state[1].numpy(), dtype, "c_n")


@pytest.mark.parametrize("mode", ["GRU", "LSTM", "RNN_TANH"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch_over_1000_steps(mode, dtype):
    m = build(mode, 16, 32, 2, True, True, 8 if mode == "LSTM" else 0, dtype)
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    x = np.random.default_rng(1).standard_normal((1000, 3, 16))
    with torch.no_grad():
        t_out, _ = m(torch.tensor(x, dtype=tdt))
    for threads in (1, 2):
        out, _, _ = run_stack(layers_from_module(m, dtype), x, num_threads=threads)
        assert_close(out, t_out.numpy(), dtype, "T=1000 threads=%d" % threads)


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_lengths_match_packed_sequence(mode):
    """lengths= equals pack_padded_sequence(enforce_sorted=False) -> module -> pad_packed."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    m = build(mode, 5, 7, 1, True, True, 0, np.float64)
    x = np.random.default_rng(2).standard_normal((8, 4, 5))
    lengths = np.array([3, 8, 1, 5])
    with torch.no_grad():
        packed = pack_padded_sequence(torch.tensor(x), torch.tensor(lengths), enforce_sorted=False)
        t_out, t_state = m(packed)
        t_out, _ = pad_packed_sequence(t_out, total_length=8)
    t_h = t_state[0] if mode == "LSTM" else t_state
    (layer,) = layers_from_module(m, np.float64)
    out, h, _ = layer.forward(x, lengths=lengths)
    assert_close(out, t_out.numpy(), np.float64, "out")
    assert_close(h, t_h.numpy(), np.float64, "h_n")
