"""Whole-model HDF5 files written by Keras 2 (tf.keras / tf_keras 2.21) against the
outputs Keras 2 computed for them (tests/fixtures/keras2, made by make_fixtures.py):
GRU reset_after True and False, LSTM with return_state, Bidirectional (concat, sum,
None with states), Keras 2's hard_sigmoid, Embedding(mask_zero), masks with gaps, and
the seed's two architectures."""

import glob
import json
import os

import numpy as np
import pytest

import rnnfast

from _testing import TOL

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "keras2")
FIXTURES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(HERE, "*.h5")))


def _expected(name):
    d = np.load(os.path.join(HERE, name + ".npz"))
    ys = [d["y%d" % i] for i in range(sum(k.startswith("y") for k in d.files))]
    return d["x"], ys, str(d["keras_version"])


def test_all_fixtures_present():
    assert set(FIXTURES) >= {
        "gru_reset_after",
        "gru_reset_before",
        "lstm",
        "bidirectional",
        "bidirectional_none_state",
        "hard_sigmoid",
        "embedding_mask",
        "seed_stacked_gru",
        "seed_bidirectional_gru",
    }


@pytest.mark.parametrize("name", FIXTURES)
def test_keras2_fixture(name):
    x, ys, version = _expected(name)
    assert version.startswith("2.")
    m = rnnfast.load(os.path.join(HERE, name + ".h5"))
    assert m.keras_version == version
    got = m.predict(x)
    if len(ys) == 1:
        assert isinstance(got, np.ndarray)
        got = [got]
    else:
        assert isinstance(got, list) and len(got) == len(ys)
    for i, (g, y) in enumerate(zip(got, ys)):
        assert g.shape == y.shape and g.dtype == y.dtype, (i, g.shape, y.shape, g.dtype, y.dtype)
        np.testing.assert_allclose(g, y, err_msg="%s output %d" % (name, i), **TOL[np.dtype(np.float32)])


def test_hard_sigmoid_means_keras2():
    """The hard_sigmoid fixture tells the two meanings apart: read as Keras 3 it is wrong."""
    import h5py

    from rnnfast.io.keras_file import _H5Weights, build_model

    x, ys, _ = _expected("hard_sigmoid")
    path = os.path.join(HERE, "hard_sigmoid.h5")
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        as2 = build_model(config, _H5Weights(f["model_weights"], path), "2.21.0")
        as3 = build_model(config, _H5Weights(f["model_weights"], path), "3.0.0")
    assert "hard_sigmoid_keras2" in repr(as2) and "hard_sigmoid_keras2" not in repr(as3)
    np.testing.assert_allclose(as2.predict(x), ys[0], **TOL[np.dtype(np.float32)])
    assert np.abs(as3.predict(x) - ys[0]).max() > 1e-3  # 100x the tolerance


def test_seed_models_accept_other_lengths():
    """Keras 2 models built for (10, 50) take other sequence lengths, as tf.keras
    functional models do (the declared length only binds a Flatten)."""
    x = np.random.default_rng(0).standard_normal((2, 1000, 50)).astype(np.float32)
    out = rnnfast.load(os.path.join(HERE, "seed_bidirectional_gru.h5")).predict(x)
    assert out.shape == (2, 1000, 1) and np.all((out > 0) & (out < 1))
    assert rnnfast.load(os.path.join(HERE, "seed_stacked_gru.h5")).predict(x[:, :3]).shape == (2, 1)
