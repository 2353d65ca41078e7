"""The cell registry (rnnfast.cells) and the house's import rules.

- each cell agrees with the compiled core (code, gates) and with the frameworks' names;
- PyTorch's gate order and back (torch_convert.torch_state_dict) give a live torch
  module that computes what rnnfast computes;
- the reference runs each cell through its registry step;
- imports flow one way: no cycles, the models never import the loaders, no function-level
  imports of rnnfast's own modules (but the one that loads the compiled core).
"""

import ast
import os

import numpy as np
import pytest
import torch

import rnnfast
from rnnfast import _kernels, cells, reference
from rnnfast.io import keras_convert
from rnnfast.io.torch_convert import GATES, cell_weights_from_torch, torch_state_dict
from rnnfast.layers import RNNLayer

from _testing import TOL, assert_close, make_module, random_weights, torch_run

SRC = os.path.dirname(rnnfast.__file__)


def test_cells_agree_with_the_core():
    for cell in cells.CELLS.values():
        for kc in filter(None, (cell.kernel, cell.reset_before)):
            assert kc.code == int(getattr(_kernels, "RNN_CELL_" + kc.name.upper()))
            assert kc.code in {int(m) for m in _kernels.rnn_cell}
        assert cell.states[0] == "h" and 1 <= cell.num_states <= 2
        if cell.torch_module:
            assert sorted(cell.torch_order) == list(range(cell.num_gates))
        assert cell.step.__doc__  # the equations
    with pytest.raises(ValueError, match="cell must be one of"):
        cells.get("peephole")


def test_framework_names_come_from_the_registry():
    assert keras_convert.RECURRENT_CLASSES == {"GRU": "gru", "LSTM": "lstm", "SimpleRNN": "simple"}
    assert keras_convert.CELL_CLASSES == {"GRUCell": "gru", "LSTMCell": "lstm", "SimpleRNNCell": "simple"}
    assert GATES == {"GRU": 3, "LSTM": 4, "RNN_TANH": 1, "RNN_RELU": 1}
    for mode in GATES:
        cell, act = cells.by_torch_mode(mode)
        assert getattr(torch.nn, cell.torch_module)(2, 2).mode in cell.torch_modes
        assert act == ("relu" if mode == "RNN_RELU" else "tanh")
    assert cells.by_keras_layer("GRU") is cells.CELLS["gru"] and cells.by_keras_cell("Nope") is None


@pytest.mark.parametrize("name", sorted(cells.CELLS))
def test_gate_reorder_round_trips(name):
    cell = cells.CELLS[name]
    a = np.arange(cell.num_gates * 3 * 2).reshape(cell.num_gates * 3, 2)
    np.testing.assert_array_equal(cell.from_torch(cell.to_torch(a, 0), 0), a)
    np.testing.assert_array_equal(cell.to_torch(cell.from_torch(a.T, 1), 1), a.T)
    if name == "gru":  # PyTorch r, z, n -> Keras z, r, h
        np.testing.assert_array_equal(cell.from_torch(np.array([0, 1, 2]), 0), [1, 0, 2])


@pytest.mark.parametrize(
    "mode,kw",
    [
        ("GRU", {}),
        ("LSTM", dict(proj_size=3)),
        ("RNN_RELU", {}),
        ("LSTM", dict(bias=False, num_layers=2, bidirectional=True)),
        ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ],
)
def test_torch_state_dict_is_the_way_back(mode, kw, torch_one_thread):
    """Weights loaded from a module and written back give a module computing the same."""
    m = make_module(mode, 5, 6, seed=3, **kw)
    rnn = rnnfast.from_torch(m)
    sd = torch_state_dict(rnn.layers, bias=rnn.bias)
    assert set(sd) == set(m.state_dict())
    m2 = make_module(mode, 5, 6, seed=4, **kw)
    m2.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = np.random.default_rng(0).standard_normal((4, 7, 5)).astype(np.float32)
    want = torch_run(m, x)
    got = torch_run(m2, x)
    np.testing.assert_allclose(got[0], want[0], **TOL[np.dtype(np.float32)])
    for k, v in sd.items():  # the kernels as they were; biases up to folding
        if k.startswith("weight"):
            np.testing.assert_array_equal(v, m.state_dict()[k].numpy())


@pytest.mark.parametrize("name", sorted(cells.CELLS))
def test_reference_runs_the_registry_step(name, rng):
    """reference.run_layer steps through cells.<cell>.step: one step by hand equals it."""
    cell = cells.CELLS[name]
    w = random_weights(rng, name, 4, 5)
    x = rng.standard_normal((1, 3, 4))
    out, h, c = reference.run_layer(name, [w], x)
    states = (np.zeros((3, 5)),) * cell.num_states
    by_hand = cell.step(x[0], states, w, reference.ACT["tanh"], reference.ACT["sigmoid"], True)
    np.testing.assert_array_equal(h[0], by_hand[0])
    assert (c is None) == (cell.num_states == 1)
    layer = RNNLayer(name, [w], dtype=np.float64)
    assert_close(layer.forward(x)[0], out, np.float64, name)


def test_torch_weights_through_the_registry(rng):
    """cell_weights_from_torch reorders with the registry's gate order (GRU r, z, n)."""
    H, I = 3, 2
    w_ih = rng.standard_normal((3 * H, I))
    cw = cell_weights_from_torch("GRU", w_ih, rng.standard_normal((3 * H, H)))
    np.testing.assert_array_equal(cw.kernel[:, :H], w_ih[H : 2 * H].T)  # z
    np.testing.assert_array_equal(cw.kernel[:, H : 2 * H], w_ih[:H].T)  # r


# -- the house's import rules ------------------------------------------------------------------


def _imports():
    """{module: set of rnnfast modules it imports (top level), [function-level ones]}."""
    mods = {}
    for dp, _, files in os.walk(SRC):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dp, f)
                rel = os.path.relpath(path, os.path.dirname(SRC))[:-3].replace(os.sep, ".")
                mods[rel[:-9] if rel.endswith(".__init__") else rel] = path
    known = set(mods) | {"rnnfast._kernels"}
    graph, nested = {}, {}
    for mod, path in mods.items():
        pkg = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        deps, inner = set(), []
        top = {id(n) for n in tree.body}
        for node in tree.body:  # `if TYPE_CHECKING:` imports are read by type checkers only: top level
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                top |= {id(n) for n in node.body}
        lazy = set()  # io.load: a format's loader imported when a file of that format is loaded
        for node in tree.body:
            if mod == "rnnfast.io" and isinstance(node, ast.FunctionDef) and node.name == "load":
                lazy |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = ".".join(
                pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([node.module] if node.module else [])
            )
            names = {base + "." + a.name if base + "." + a.name in known else base for a in node.names}
            deps |= names - {mod}
            if id(node) not in top and id(node) not in lazy:
                inner.append(node.lineno)
        graph[mod], nested[mod] = deps, inner
    return graph, nested


def test_imports_flow_one_way():
    graph, nested = _imports()
    # no function-level imports of rnnfast's own modules (they only ever broke cycles),
    # but load_kernels(), which imports the compiled core on purpose, and rnnfast.load's
    # dispatch, which imports one format's loader (the PEP 562 ``__getattr__`` of rnnfast
    # and rnnfast.io import by name, through importlib)
    assert {m: n for m, n in nested.items() if n} == {"rnnfast._threads": nested["rnnfast._threads"]}
    # the models and the summary never import the loaders
    for mod in (
        "rnnfast.model",
        "rnnfast.model_keras",
        "rnnfast.model_torch",
        "rnnfast._summary",
        "rnnfast.layers",
        "rnnfast.cells",
        "rnnfast.reference",
    ):
        assert not any(d == "rnnfast.io" or d.startswith("rnnfast.io.") for d in graph[mod]), mod
    # no cycles among the submodules (the package's own __init__ aside)
    sub = {m: {d for d in ds if d != "rnnfast"} for m, ds in graph.items() if m != "rnnfast"}
    state = {}

    def visit(m, stack):
        state[m] = 1
        for d in sub.get(m, ()):
            assert state.get(d) != 1, "import cycle: %s" % " -> ".join(stack + [m, d])
            if not state.get(d):
                visit(d, stack + [m])
        state[m] = 2

    for m in sub:
        if not state.get(m):
            visit(m, [])
