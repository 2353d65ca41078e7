"""Helpers shared by the PyTorch test modules: building modules, running them (packed
when lengths are given) and comparing rnnfast's results within the contract's tolerance."""
import numpy as np
import pytest

import torch  # noqa: E402  (the test install has it: a missing torch must fail, not skip)

from conftest import TOL  # noqa: E402  (the contract's tolerances, one table)

CLASSES = {"GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM, "RNN_TANH": torch.nn.RNN, "RNN_RELU": torch.nn.RNN}


@pytest.fixture(scope="module")
def torch_one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)         # the machine is shared; torch is only the reference here
    yield
    torch.set_num_threads(n)


def make_module(mode, input_size, hidden_size, *, seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    if mode != "LSTM" and not kw.pop("proj_size", 0) == 0:
        raise ValueError("proj_size is an LSTM option")
    if mode.startswith("RNN"):
        kw["nonlinearity"] = "relu" if mode == "RNN_RELU" else "tanh"
    m = CLASSES[mode](input_size, hidden_size, **kw).to(dtype)
    return m.eval()


def torch_run(m, x, hx=None, lengths=None):
    """The module's result, as numpy: (out, h_n) or (out, (h_n, c_n))."""
    x = torch.as_tensor(x)
    with torch.no_grad():
        if lengths is None:
            out, h = m(x, hx)
        else:
            from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

            T = x.shape[1] if m.batch_first else x.shape[0]
            packed = pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=m.batch_first,
                                          enforce_sorted=False)
            out, h = m(packed, hx)
            out, _ = pad_packed_sequence(out, batch_first=m.batch_first, total_length=T)
    if isinstance(h, tuple):
        return out.numpy(), tuple(s.numpy() for s in h)
    return out.numpy(), h.numpy()


def assert_same(got, want, dtype):
    """Compare (out, h_n) or (out, (h_n, c_n)) structures."""
    tol = TOL[np.dtype(dtype)]
    out, h = got
    w_out, w_h = want
    assert isinstance(out, np.ndarray)
    assert out.dtype == dtype and out.shape == w_out.shape
    np.testing.assert_allclose(out, w_out, **tol)
    if isinstance(w_h, tuple):
        assert isinstance(h, tuple) and len(h) == 2
        for a, b in zip(h, w_h):
            assert a.shape == b.shape and a.dtype == dtype
            np.testing.assert_allclose(a, b, **tol)
    else:
        assert isinstance(h, np.ndarray) and h.shape == w_h.shape and h.dtype == dtype
        np.testing.assert_allclose(h, w_h, **tol)
