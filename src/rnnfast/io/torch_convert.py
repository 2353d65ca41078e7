"""The one converter for PyTorch recurrent weights -> canonical CellWeights (numpy only).

PyTorch stores, per layer k and direction (suffix ``_reverse`` for backward):
``weight_ih_l{k}`` (G*H, I), ``weight_hh_l{k}`` (G*H, Ho), ``bias_ih_l{k}`` (G*H,),
``bias_hh_l{k}`` (G*H,), and for an LSTM with ``proj_size`` ``weight_hr_l{k}`` (P, H).
Gate order: GRU r, z, n; LSTM i, f, g, o; RNN one gate. Canonical (Keras) order:
GRU z, r, h; LSTM i, f, c, o (the same as PyTorch's). Kernels are transposed to
(I, G*H) / (Ho, G*H); the projection to (H, P).
"""
import numpy as np

from ..layers import CellWeights

__all__ = ["GATES", "cell_weights_from_torch"]

#: gates per PyTorch mode
GATES = {"GRU": 3, "LSTM": 4, "RNN_TANH": 1, "RNN_RELU": 1}


def _reorder(a, mode, axis):
    """PyTorch gate order -> canonical along ``axis`` (only GRU differs: r,z,n -> z,r,n)."""
    if mode != "GRU":
        return a
    r, z, n = np.split(a, 3, axis=axis)
    return np.concatenate([z, r, n], axis=axis)


def cell_weights_from_torch(mode, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None):
    """One direction of one layer of a PyTorch RNN module, as :class:`CellWeights`.

    Parameters
    ----------
    mode : {"GRU", "LSTM", "RNN_TANH", "RNN_RELU"}
    weight_ih : array (G*H, I)
    weight_hh : array (G*H, Ho)
    bias_ih, bias_hh : array (G*H,) or None
    weight_hr : array (P, H) or None
    """
    w_ih = np.asarray(weight_ih)
    w_hh = np.asarray(weight_hh)
    return CellWeights(
        kernel=_reorder(w_ih, mode, 0).T,
        recurrent_kernel=_reorder(w_hh, mode, 0).T,
        bias=None if bias_ih is None else _reorder(np.asarray(bias_ih), mode, 0),
        recurrent_bias=None if bias_hh is None else _reorder(np.asarray(bias_hh), mode, 0),
        projection=None if weight_hr is None else np.asarray(weight_hr).T,
    )
