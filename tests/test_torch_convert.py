"""The canonical -> PyTorch converter (rnnfast.io.torch_convert.torch_state_dict and
to_torch_module), the inverse of loading: a live module through rnnfast and back
is the same network, and a canonical layer made into a module computes what rnnfast
computes. Sizes from 128 units up take the kernels' unit-block layout, which the
converter must undo."""

import numpy as np
import pytest
import torch

import rnnfast
from rnnfast.io.torch_convert import cell_weights_from_torch, to_torch_module, torch_mode, torch_state_dict
from rnnfast.layers import CellWeights, RNNLayer

from _testing import TORCH_MODES, assert_same, make_module, random_weights, seed_of, tol, torch_run

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CASES = [
    (mode, H, bi, proj)
    for mode in TORCH_MODES
    for H in (7, 130)
    for bi in (False, True)
    for proj in ((0, 3) if mode == "LSTM" else (0,))
]


@pytest.mark.parametrize("mode,H,bi,proj", CASES)
def test_module_round_trip(mode, H, bi, proj):
    """nn module -> rnnfast -> nn module: the same weights, the same outputs."""
    m = make_module(mode, 5, H, num_layers=2, bidirectional=bi, proj_size=proj, seed=seed_of(mode, H, bi, proj))
    rnn = rnnfast.from_torch(m)
    back = to_torch_module(rnn)
    assert type(back) is type(m) and back.mode == m.mode and not back.training
    assert (back.num_layers, back.bidirectional, back.proj_size) == (m.num_layers, m.bidirectional, m.proj_size)
    sd, back_sd = m.state_dict(), back.state_dict()
    assert set(back_sd) == set(sd)
    for name in sd:
        if name.startswith("weight_"):  # weights come back exactly
            assert torch.equal(back_sd[name], sd[name]), name
    for name in (n for n in sd if n.startswith("bias_ih")):  # biases: their sum where they add
        hh = name.replace("bias_ih", "bias_hh")
        np.testing.assert_allclose(
            (back_sd[name] + back_sd[hh]).numpy(), (sd[name] + sd[hh]).numpy(), rtol=1e-6, atol=1e-7
        )
    x = np.random.default_rng(seed_of(mode, H)).standard_normal((6, 3, 5)).astype(np.float32)
    assert_same(torch_run(back, x), torch_run(m, x), np.float32)
    assert_same(rnn(x), torch_run(back, x), np.float32)


@pytest.mark.parametrize("cell,act", [("gru", "tanh"), ("lstm", "tanh"), ("simple", "relu")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_to_module_computes_the_same(cell, act, dtype, rng):
    """A canonical layer (random weights, both directions, 150 units: unit blocks) made
    into a module gives rnnfast's outputs."""
    ws = [random_weights(rng, cell, 9, 150) for _ in range(2)]
    layer = RNNLayer(cell, ws, activation=act, dtype=dtype)
    m = to_torch_module(layer)
    assert next(m.parameters()).dtype == (torch.float64 if dtype == np.float64 else torch.float32)
    x = rng.standard_normal((7, 4, 9)).astype(dtype)
    out, h, c = layer.forward(x)
    t_out, t_h = torch_run(m, x)
    if cell == "lstm":
        t_h, t_c = t_h
        np.testing.assert_allclose(c, t_c, **tol(dtype))
    np.testing.assert_allclose(out, t_out, **tol(dtype))
    np.testing.assert_allclose(h, t_h, **tol(dtype))


@pytest.mark.parametrize("mode", TORCH_MODES)
def test_torch_state_dict_inverts_cell_weights_from_torch(mode, rng):
    """Weights come back exactly, in PyTorch's gate order; biases as their sum where
    they add (GRU keeps its candidate part of bias_hh apart)."""
    G = {"GRU": 3, "LSTM": 4}.get(mode, 1)
    H, P = 6, (2 if mode == "LSTM" else 0)
    t = {
        "weight_ih": rng.standard_normal((G * H, 4)),
        "weight_hh": rng.standard_normal((G * H, P or H)),
        "bias_ih": rng.standard_normal(G * H),
        "bias_hh": rng.standard_normal(G * H),
        "weight_hr": rng.standard_normal((P, H)) if P else None,
    }
    cell = {"GRU": "gru", "LSTM": "lstm"}.get(mode, "simple")
    layer = RNNLayer(
        cell,
        [cell_weights_from_torch(mode, **t)],
        activation="relu" if mode == "RNN_RELU" else "tanh",
        dtype=np.float64,
    )
    sd = torch_state_dict([layer])
    for k in ("weight_ih", "weight_hh", "weight_hr"):
        if t[k] is None:
            assert k + "_l0" not in sd
        else:
            np.testing.assert_array_equal(sd[k + "_l0"], t[k], err_msg=k)
            assert sd[k + "_l0"].flags.c_contiguous
    np.testing.assert_allclose(sd["bias_ih_l0"] + sd["bias_hh_l0"], t["bias_ih"] + t["bias_hh"], rtol=1e-12)
    if mode == "GRU":  # the candidate's recurrent bias stays apart: r * (h U_n + b_hn)
        np.testing.assert_array_equal(sd["bias_hh_l0"][2 * H :], t["bias_hh"][2 * H :])


def test_batch_first_and_bias_follow_the_model():
    m = make_module("GRU", 3, 4, batch_first=True, bias=False)
    back = to_torch_module(rnnfast.from_torch(m))
    assert back.batch_first and not back.bias
    assert not to_torch_module(rnnfast.from_torch(m), batch_first=False).batch_first


def test_refusals(rng):
    gru_rb = RNNLayer("gru", [random_weights(rng, "gru", 3, 4)], reset_after=False)
    with pytest.raises(ValueError, match="not a layer PyTorch has"):
        torch_mode(gru_rb)
    backwards = RNNLayer("lstm", [random_weights(rng, "lstm", 3, 4)], go_backwards=True)
    with pytest.raises(ValueError, match="not a layer PyTorch has"):
        to_torch_module(backwards)
    with_bias = RNNLayer("simple", [random_weights(rng, "simple", 3, 4)])
    with pytest.raises(ValueError, match="bias=False"):
        to_torch_module(with_bias, bias=False)
    no_bias = RNNLayer("simple", [CellWeights(rng.standard_normal((3, 4)), rng.standard_normal((4, 4)))])
    m = to_torch_module(no_bias, bias=False)
    assert m.mode == "RNN_TANH" and sorted(m.state_dict()) == ["weight_hh_l0", "weight_ih_l0"]
    mixed = [RNNLayer("gru", [random_weights(rng, "gru", 3, 4)]), RNNLayer("lstm", [random_weights(rng, "lstm", 4, 4)])]
    with pytest.raises(ValueError, match="is not a GRU layer"):
        to_torch_module(mixed)
