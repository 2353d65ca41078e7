"""The fast paths of an ONNX model's load and call: files mapped (not read) and closed
by the end of the load, the view ops after a recurrent node run as one step
(``model_onnx.fuse_views``), a product's bias and activation applied by the product
(``model_onnx.fuse_products``), attention in one compiled call (``model_onnx.fuse_attention``)
and the plain call's checks, once per signature, and its plan's function
(``OnnxModel._plain_run``, ``model_onnx.plan_runner``).
Every result against ONNX Runtime; outputs are the caller's own (never a view a later
call writes into), as ONNX Runtime's are."""

import io
import mmap
import os
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

import rnnfast
import rnnfast.io.onnx as onnx_io
from rnnfast.model_onnx import FnOp as _FnOp
from rnnfast.model_onnx import _Fused, _FusedAttention, _FusedProduct

from _testing import assert_close


class Net(torch.nn.Module):
    """Batch-major in and out around a time-major torch RNN, as bench/compare.py exports."""

    def __init__(self, cls, bidirectional, I=16, H=24, layers=1):
        super().__init__()
        self.rnn = cls(I, H, num_layers=layers, bidirectional=bidirectional)

    def forward(self, x):
        y, _ = self.rnn(x.transpose(0, 1))
        return y.transpose(0, 1)


def export(net, x, dynamic=None):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (x,),
            f,
            input_names=["x"],
            output_names=["y"],
            opset_version=17,
            dynamo=False,
            dynamic_axes=dynamic,
        )
    return f.getvalue()


def _ort(data, feed):
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


def _recording(monkeypatch):
    """The maps the loader makes from now on (a list)."""
    made = []
    real = onnx_io._mapped

    def mapped(f):
        made.append(real(f))
        return made[-1]

    monkeypatch.setattr(onnx_io, "_mapped", mapped)
    return made


@pytest.mark.parametrize("cls", [torch.nn.GRU, torch.nn.LSTM])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("B", [1, 3])
def test_fused_recurrent_views_match_onnxruntime_and_outputs_are_the_callers(seed, cls, bidirectional, B):
    torch.manual_seed(seed % 2**31)
    x = torch.randn(B, 7, 16)
    data = export(Net(cls, bidirectional, layers=2), x)
    model = rnnfast.from_onnx(data)
    feed = {"x": x.numpy()}
    want = _ort(data, feed)[0]
    got = [model.run(None, feed)[0] for _ in range(4)]  # load-time shapes, then the fused steps (memo)
    fused = [op for op, *_ in model._fast[0] if isinstance(op, _Fused)]
    assert len(fused) == 2 and all(f.views for f in fused)
    assert fused[-1]._memo  # the last chain ends in the kernel's array: remembered
    for g in got:
        assert g.shape == want.shape and g.dtype == np.float32
        assert_close(g, want, np.float32, "vs ONNX Runtime")
        np.testing.assert_array_equal(g, got[0])
        assert g.flags.c_contiguous and g.flags.writeable
    for a in range(len(got)):
        for b in range(a + 1, len(got)):
            assert not np.shares_memory(got[a], got[b])
    keep = got[-1].copy()
    got[-1][...] = 7.0  # the caller's own array: writing it changes no later call
    np.testing.assert_array_equal(model.run(None, feed)[0], keep)
    np.testing.assert_array_equal(model.predict(x.numpy()), keep)


class States(torch.nn.Module):
    """A batch-first recurrent layer's output sequence and final states, all model outputs."""

    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(16, 24, batch_first=True)

    def forward(self, x):
        y, s = self.rnn(x)
        return (y,) + (tuple(s) if isinstance(s, tuple) else (s,))


@pytest.mark.parametrize("cls", [torch.nn.GRU, torch.nn.LSTM])
def test_a_fused_recurrent_step_gives_the_nodes_states(seed, cls):
    """The fused step's later calls (``_Fused._wants``: Y_h, and an LSTM's Y_c, as the
    kernel gives them) give ONNX Runtime's values and the bits of the first call (the
    view chain run, its layout not yet remembered)."""
    torch.manual_seed(seed % 2**31)
    x = torch.randn(3, 7, 16)
    data = export(States(cls), x)
    model = rnnfast.from_onnx(data)
    feed = {"x": x.numpy()}
    want = _ort(data, feed)
    got = [model.run(None, feed) for _ in range(3)]
    fused = [op for op, *_ in model._fast[0] if isinstance(op, _Fused)]
    assert len(fused) == 1 and fused[0]._memo and fused[0]._wants == (True,) * (len(want) - 1)
    for outs in got:
        assert len(outs) == len(want)
        for g, w, first in zip(outs, want, got[0]):
            assert_close(g, w, np.float32)
            np.testing.assert_array_equal(g, first)


def test_fused_views_follow_the_input_shapes(seed):
    torch.manual_seed(seed % 2**31)
    net = Net(torch.nn.LSTM, True)
    data = export(net, torch.randn(2, 5, 16), dynamic={"x": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"}})
    model = rnnfast.from_onnx(data)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for B, T in [(1, 4), (3, 9), (1, 4), (2, 1), (3, 9), (5, 3), (2, 1), (5, 3)]:
        x = torch.randn(B, T, 16).numpy()  # (a new shape runs the whole graph; its next call the fused step)
        for _ in range(2):
            got = model.run(None, {"x": x})[0]
            assert_close(got, sess.run(None, {"x": x})[0], np.float32, "B=%d T=%d" % (B, T))
    (fused,) = [op for op, *_ in model._fast[0] if isinstance(op, _Fused)]
    assert len(fused._memo) >= 4


def test_a_view_the_graph_also_outputs_is_not_fused(seed):
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(6, 8)

        def forward(self, x):
            y, _ = self.rnn(x)
            return y, y.transpose(0, 1) * 2

    torch.manual_seed(seed % 2**31)
    x = torch.randn(5, 2, 6)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Two().eval(), (x,), f, input_names=["x"], opset_version=17, dynamo=False)
    data = f.getvalue()
    model = rnnfast.from_onnx(data)
    want = _ort(data, {"x": x.numpy()})
    for _ in range(3):
        got = model.run(None, {"x": x.numpy()})
        for g, w in zip(got, want):
            assert_close(g, w, np.float32)
        assert not np.shares_memory(got[0], got[1])


def test_plain_and_checked_calls_agree(seed):
    torch.manual_seed(seed % 2**31)
    x = torch.randn(2, 6, 16)
    data = export(Net(torch.nn.GRU, False), x)
    model = rnnfast.from_onnx(data)
    xn = x.numpy()
    want = model.run(None, {"x": xn})[0]
    want = model.run(None, {"x": xn})[0]
    # each of these leaves the plain path (checked, converted) with the same result
    for feed in (
        {"x": xn.astype(np.float64)},
        {"x": np.asfortranarray(xn)},
        {"x": xn.tolist()},
        {"x": x},
    ):
        np.testing.assert_array_equal(model.run(None, feed)[0], want)
    np.testing.assert_array_equal(model.run(["y"], {"x": xn})[0], want)
    with pytest.raises(ValueError, match="unknown input"):
        model.run(None, {"x": xn, "z": xn})
    with pytest.raises(ValueError, match="missing input"):
        model.run(None, {})
    with pytest.raises(ValueError, match="expected shape"):
        model.run(None, {"x": xn[:, :, :5].copy()})
    with pytest.raises(ValueError, match="expected shape"):
        model.run(None, {"x": xn[0].copy()})
    with pytest.raises(ValueError, match="run_options"):
        model.run(None, {"x": xn}, object())
    out = model.run(None, {"x": xn})[0]
    assert not np.shares_memory(out, xn)


def test_the_plain_call_checks_each_shape_signature_once(seed, monkeypatch):
    """The plain call tests a signature's shapes against the declared ones once and then
    remembers it (``OnnxModel._feed_sigs``, bounded as the shape cache): a fitting one
    runs unchecked (no ``_validated``) and matches ONNX Runtime, the first time, again
    and after the memo is cleared; one that does not fit is refused every time with the
    checked call's error, before or after fitting ones, and is never remembered."""
    from rnnfast import model_onnx

    monkeypatch.setattr(model_onnx, "SHAPE_CACHE_SIZE", 2)
    torch.manual_seed(seed % 2**31)
    data = export(Net(torch.nn.GRU, False), torch.randn(2, 6, 16), {"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}})
    model = rnnfast.from_onnx(data)
    checked = model._validated
    calls: list = []

    def validated(spec, x):
        calls.append(x.shape)
        return checked(spec, x)

    monkeypatch.setattr(model, "_validated", validated)
    rng = np.random.default_rng(seed)
    for shape in [(2, 6, 16), (2, 6, 5), (3, 4, 16), (2, 6, 16), (1, 9, 16), (2, 6, 16), (2, 6, 5), (2, 6)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        if shape[-1] != 16 or len(shape) != 3:
            with pytest.raises(ValueError, match="expected shape"):
                model.run(None, {"x": x})
            assert calls.pop() == shape and (shape,) not in model._feed_sigs
            continue
        for _ in range(2):
            got = model.run(None, {"x": x})[0]
            assert_close(got, _ort(data, {"x": x})[0], np.float32)
        assert not calls and (shape,) in model._feed_sigs and len(model._feed_sigs) <= 2


def _plans():
    """Hand-made flat plans (``model_onnx.flat_plan``'s form) whose steps note what they
    are given: constants, an absent input (None), a tensor no step gives, a tensor freed
    and read again, outputs freed by their own step, and several-output steps giving
    fewer, as many and more results than they have outputs (a list, a tuple)."""
    from rnnfast.model_onnx import _getter

    def step(res):
        def call(args, num_threads):
            seen.append((args, num_threads))
            return res(args)

        return call

    seen: list = []
    n, consts = 9, [None, "c"]

    def one(i, idx, out, free=()):
        return (step(lambda a: ("op%d" % i, a)), _getter(list(idx)), out, tuple(free), True, tuple(idx))

    def several(i, idx, outs, res, free=()):
        return (step(res), _getter(list(idx)), tuple(outs), tuple(free), False, tuple(idx))

    steps = [
        one(0, (0, 10), 3),  # an input and a constant
        several(1, (3, 9, 8), (4, 5), lambda a: ["y"], free=(3,)),  # fewer results: 5 keeps its None
        several(2, (4, 5), (6, 7), lambda a: ("p", "q", "extra"), free=(4,)),  # more (a tuple)
        one(3, (3, 6, 1), 8, free=(6, 8)),  # 3 freed: None; 8 freed by its own step: set after
        several(4, (7, 2), (5, 4), lambda a: [a, "w"]),  # as many (a list); 5 and 4 given again
        several(5, (), (), lambda a: []),  # no inputs, no outputs
    ]
    return (steps, n, [8, 5, 4, 7, 0, 3], consts), seen


def test_a_plans_function_runs_it_as_run_plan_does(monkeypatch):
    """``plan_runner``'s function of straight-line code calls a plan's steps on the
    arguments ``run_plan`` gives them, in its order, and gives its outputs (the same
    objects), for the plan's inputs split between feeds and shape results any way, and
    for a plan longer than ``RUNNER_MAX_STEPS`` (``run_plan`` itself)."""
    from rnnfast import model_onnx

    for limit in (256, 0):
        monkeypatch.setattr(model_onnx, "RUNNER_MAX_STEPS", limit)
        for k in range(4):
            plan, seen = _plans()
            ins = ["in0", "in1", "in2"]
            want = model_onnx.run_plan(plan, ins[:k], 2, ins[k:])
            wanted = list(seen)
            seen.clear()
            got = model_onnx.plan_runner(plan, k, 3 - k)(ins[:k], ins[k:], 2)
            assert seen == wanted and got == want
            args = [a for a, threads in seen]
            assert args[:4] == [("in0", "c"), (("op0", ("in0", "c")), None, None), ("y", None), (None, "p", "in1")]
            assert want == [("op3", (None, "p", "in1")), ("q", "in2"), "w", "q", "in0", None]


def test_the_plain_call_runs_the_models_current_plan(seed):
    """The plain call's remembered function is the current plan's (``OnnxModel._plan``:
    one with a step swapped in, as ``bench/onnx_steps.py`` clocks them, runs that step,
    and the plan put back runs the plan again), with the same bits; a pickled copy makes
    its own."""
    import pickle

    torch.manual_seed(seed % 2**31)
    x = torch.randn(3, 5, 16).numpy()
    model = rnnfast.from_onnx(export(Net(torch.nn.LSTM, True), torch.randn(3, 5, 16)))
    want = model.run(None, {"x": x})[0]
    plan = model._plan
    counted: list = []

    def counting(call):
        def counted_call(args, num_threads):
            counted.append(1)
            return call(args, num_threads)

        return counted_call

    model._plan = ([(counting(s[0]),) + tuple(s[1:]) for s in plan[0]],) + tuple(plan[1:])
    for _ in range(3):
        np.testing.assert_array_equal(model.run(None, {"x": x})[0], want)
    assert len(counted) == 3 * len(plan[0])
    model._plan = plan
    np.testing.assert_array_equal(model.run(None, {"x": x})[0], want)
    assert len(counted) == 3 * len(plan[0])
    copy = pickle.loads(pickle.dumps(model))
    for _ in range(2):
        np.testing.assert_array_equal(copy.run(None, {"x": x})[0], want)


def test_the_plain_call_ignores_floating_point_errors_as_the_checked_one():
    """Division by zero, 0/0, overflow and the log of a negative number give ONNX
    Runtime's inf and nan, without a warning, on the first call of a signature and on
    later ones (the plan's function, in NumPy's "ignore" error state), and leave the
    caller's error state as it was."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Div", ["x", "z"], ["q"]),
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("Mul", ["sq", "sq"], ["big"]),
        helper.make_node("Log", ["x"], ["log"]),
    ]
    info = helper.make_tensor_value_info
    g = helper.make_graph(
        nodes,
        "g",
        [info("x", TensorProto.FLOAT, [4]), info("z", TensorProto.FLOAT, [4])],
        [info(n, TensorProto.FLOAT, None) for n in ("q", "big", "log")],
    )
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    model = rnnfast.from_onnx(data)
    feed = {"x": np.array([1.0, 0.0, -2.0, 3e10], np.float32), "z": np.zeros(4, np.float32)}
    want = _ort(data, feed)
    with np.errstate(all="raise"):
        for _ in range(3):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = model.run(None, feed)
            for g_, w in zip(got, want):  # (inf and nan where ONNX Runtime has them)
                np.testing.assert_allclose(g_, w, rtol=1e-6)
        assert np.geterr()["divide"] == "raise"


def test_a_file_is_mapped_and_the_model_keeps_nothing_of_it(tmp_path, seed, monkeypatch):
    torch.manual_seed(seed % 2**31)
    x = torch.randn(3, 5, 16)
    net = Net(torch.nn.LSTM, True, I=16, H=48)
    data = export(net, x)
    assert len(data) >= onnx_io.MAP_MIN_BYTES
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    made = _recording(monkeypatch)
    model = rnnfast.load(path)
    assert len(made) == 1 and isinstance(made[0], mmap.mmap)
    assert made[0].closed  # closed by the end of the load: the model holds no view of it
    want = _ort(data, {"x": x.numpy()})[0]
    assert_close(model.run(None, {"x": x.numpy()})[0], want, np.float32)
    # the file changes (in place, as a later export would write it): the model does not
    with open(path, "r+b") as f:
        f.write(b"\x7f" * len(data))
    for _ in range(2):
        assert_close(model.run(None, {"x": x.numpy()})[0], want, np.float32)
    os.remove(path)
    assert_close(model.run(None, {"x": x.numpy()})[0], want, np.float32)


def test_small_and_mapped_files_load_the_same_model(tmp_path, seed, monkeypatch):
    torch.manual_seed(seed % 2**31)
    x = torch.randn(2, 4, 16)
    data = export(Net(torch.nn.GRU, True), x)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    made = _recording(monkeypatch)
    monkeypatch.setattr(onnx_io, "MAP_MIN_BYTES", 0)
    mapped = rnnfast.load(path).run(None, {"x": x.numpy()})[0]
    monkeypatch.setattr(onnx_io, "MAP_MIN_BYTES", 1 << 40)
    read = rnnfast.load(path).run(None, {"x": x.numpy()})[0]
    assert isinstance(made[0], mmap.mmap) and made[0].closed and isinstance(made[1], bytes)
    np.testing.assert_array_equal(mapped, read)
    np.testing.assert_array_equal(mapped, rnnfast.from_onnx(data).run(None, {"x": x.numpy()})[0])


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_mapped_truncated_file_is_refused(tmp_path, seed, monkeypatch, cut):
    torch.manual_seed(seed % 2**31)
    data = export(Net(torch.nn.GRU, False), torch.randn(1, 3, 16))
    path = tmp_path / "m.onnx"
    path.write_bytes(data[: int(len(data) * cut)])
    monkeypatch.setattr(onnx_io, "MAP_MIN_BYTES", 0)
    with pytest.raises(rnnfast.FormatError):
        rnnfast.load(path)
    with pytest.raises(rnnfast.FormatError):  # (past the format's sniff: the loader itself)
        onnx_io.load_onnx_file(path)


class Head(torch.nn.Module):
    """Conv1d + ReLU, a GRU, then Linear (MatMul + Add on 3-D input) + Tanh, Linear +
    Sigmoid, a softmax; the final state through Linear (Gemm) + ReLU, read twice."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(6, 8, 3, padding=1)
        self.rnn = torch.nn.GRU(8, 12, batch_first=True)
        self.a = torch.nn.Linear(12, 10)
        self.b = torch.nn.Linear(10, 9)
        self.c = torch.nn.Linear(12, 7)

    def forward(self, x):
        y = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        y, h = self.rnn(y)
        z = torch.sigmoid(self.b(torch.tanh(self.a(y))))
        last = torch.relu(self.c(h[0]))
        return torch.softmax(z, -1), last + last.sum()


@pytest.mark.parametrize("B", [1, 4])
def test_products_apply_their_activation_and_match_onnxruntime(seed, B):
    torch.manual_seed(seed % 2**31)
    x = torch.randn(B, 5, 6)
    data = export(Head(), x)
    model = rnnfast.from_onnx(data)
    feed = {"x": x.numpy()}
    want = _ort(data, feed)
    got = [model.run(None, feed, num_threads=n) for n in (1, 2, 1)]
    fused = {op.prod.op_type: op for op, *_ in model._fast[0] if isinstance(op, _FusedProduct)}
    kinds = sorted(tuple(o.op_type for o in op.tail) for op in fused.values())
    # (a MatMul's Add is added to the product's result, in place: not the product's
    # starting sums, which give other bits, and the first call of new shapes runs the
    # ops one by one)
    assert ("Relu",) in kinds and "Conv" in fused and ("Add", "Sigmoid") in kinds, kinds
    dyn = rnnfast.from_onnx(export(Head(), x, dynamic={"x": {0: "b"}}))
    first = dyn.run(None, feed)  # a new batch size: the graph's ops one by one
    for g, f in zip(dyn.run(None, feed), first):  # then the fused program
        np.testing.assert_array_equal(g, f)
    for g, w in zip(got[0], want):
        assert_close(g, w, np.float32)
    for other in got[1:]:
        for g, o in zip(got[0], other):
            np.testing.assert_array_equal(g, o)


def test_a_fused_product_off_its_packed_path_runs_its_ops_one_by_one(seed):
    """Where the packed path declines a call (made to, here), the fused ops run one by
    one: the same values, within a few ulp (the product off the packed weights)."""
    torch.manual_seed(seed % 2**31)
    x = torch.randn(2, 5, 6)
    data = export(Head(), x)
    model, off = rnnfast.from_onnx(data), rnnfast.from_onnx(data)
    feed = {"x": x.numpy()}
    first = model.run(None, feed)
    off.run(None, feed)
    declined: list = []
    for op, *_ in off._fast[0]:
        if isinstance(op, _FusedProduct) and type(op.prod) is not _FnOp:
            op.prod.packed = lambda *a, **k: declined.append(1)
    del off._plan  # (a new plan, whose steps call this packed)
    off.run(None, feed)
    again = off.run(None, feed)
    assert declined
    for g, w in zip(again, _ort(data, feed)):
        assert_close(g, w, np.float32)
    for a, b in zip(first, again):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("B", [1, 3])
def test_a_fused_products_step_is_one_call_with_computes_bits(seed, B):
    """A decoder's Linear + tanh and head + softmax each run as one call of the plan that
    gives the output itself (:meth:`_FusedProduct.one`): bitwise what the step's
    ``compute`` gives on the same arguments, and where the packed path declines (a 1-D
    MatMul input) the ops one by one, against ONNX Runtime."""
    data = _decoder(seed, False)
    model = rnnfast.from_onnx(data)
    feed = _decoder_feeds(np.random.default_rng(seed), B)
    model.run(None, feed)
    want = model.run(None, feed)
    steps = [(s[0], s[4], s[5]) for s in model._plan[0]]
    ops = [op for op, *_ in model._fast[0]]
    products = [(op, call, one) for op, (call, one, _) in zip(ops, steps) if isinstance(op, _FusedProduct)]
    assert len(products) == 2 and all(one and not hasattr(call, "__self__") for _, call, one in products)
    seen: list = []
    plan = model._plan

    def keeping(call):
        def kept(args, num_threads):
            seen.append((call, args))
            return call(args, num_threads)

        return kept

    model._plan = ([(keeping(s[0]),) + tuple(s[1:]) for s in plan[0]],) + tuple(plan[1:])
    for g, w in zip(model.run(None, feed), want):
        np.testing.assert_array_equal(g, w)
    for op, call, _ in products:
        args = next(a for c, a in seen if c is call)
        for n in (1, 2):
            np.testing.assert_array_equal(call(args, n), op.compute(args, n)[0])

    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((6, 4)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Relu", ["p"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    one_d = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    m = rnnfast.from_onnx(one_d)
    for x in (np.linspace(-1, 1, 6, dtype=np.float32), np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)):
        for _ in range(2):
            assert_close(m.run(None, {"x": x})[0], _ort(one_d, {"x": x})[0], np.float32)
    assert any(isinstance(op, _FusedProduct) and op.act >= 0 for op, *_ in m._fast[0])


def test_a_fused_recurrent_step_calls_the_layers_bound_entry_where_forward_would(seed):
    """Where the layer's ``forward`` took its bound entry for X of the shapes a fused step
    remembers (time-major, in place, no lengths: the decoder's GRU step), later calls of
    those shapes call that entry straight away (``_Fused``'s ``plain``): no ``forward``,
    the same bits at 1 and 2 threads, ONNX Runtime's values; other shapes call ``forward``."""
    data = _decoder(seed, False)
    model = rnnfast.from_onnx(data)
    rng = np.random.default_rng(seed)
    feeds = [_decoder_feeds(rng, B) for B in (1, 3)]
    want = [model.run(None, f) for f in feeds + feeds][2:]  # (a first call runs the graph)
    (fused,) = [op for op, *_ in model._fast[0] if isinstance(op, _Fused)]
    assert [v[4] for v in fused._memo.values()] == [True, True]
    layer, calls = fused.rec.layer, []
    real = layer.forward
    layer.forward = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        for f, w in zip(feeds, want):
            for n in (1, 2):
                for g, o in zip(model.run(None, f, num_threads=n), w):
                    np.testing.assert_array_equal(g, o)
            for g, o in zip(w, _ort(data, f)):
                assert_close(g, o, np.float32)
        assert not calls
        model.run(None, _decoder_feeds(rng, 2))  # new shapes: the node's own call
        assert calls
    finally:
        del layer.forward


class Decoder(torch.nn.Module):
    """One step of a Luong "dot" attention decoder (bench/compare.py's, smaller): Embedding
    -> GRU step -> softmax(y @ enc^T) @ enc -> Linear + tanh -> Linear -> softmax or
    log-softmax; the probabilities and the new state out. (test_onnx_if exports it with a
    free batch axis: its squeeze(1) is an If there.)"""

    def __init__(self, log, V=50, H=16):
        super().__init__()
        self.log = log
        self.emb = torch.nn.Embedding(V, H)
        self.rnn = torch.nn.GRU(H, H, batch_first=True)
        self.concat = torch.nn.Linear(2 * H, H)
        self.out = torch.nn.Linear(H, V)

    def forward(self, tok, h, enc):
        y, h = self.rnn(self.emb(tok), h)
        attn = torch.softmax(torch.bmm(y, enc.transpose(1, 2)), -1)
        context = torch.bmm(attn, enc).squeeze(1)
        z = self.out(torch.tanh(self.concat(torch.cat([y.squeeze(1), context], -1))))
        return (torch.log_softmax(z, -1) if self.log else torch.softmax(z, -1)), h


def _decoder(seed, log):
    torch.manual_seed(seed % 2**31)
    net = Decoder(log).eval()
    feeds = _decoder_feeds(np.random.default_rng(seed), 2)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            tuple(torch.from_numpy(v) for v in feeds.values()),
            f,
            input_names=list(feeds),
            output_names=["y", "state"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={"tok": {0: "B"}, "h": {1: "B"}, "enc": {0: "B", 1: "S"}, "y": {0: "B"}},
        )
    return f.getvalue()


def _decoder_feeds(rng, B, S=7):
    return {
        "tok": rng.integers(0, 50, (B, 1), dtype=np.int64),
        "h": rng.standard_normal((1, B, 16)).astype(np.float32),
        "enc": rng.standard_normal((B, S, 16)).astype(np.float32),
    }


@pytest.mark.parametrize("log", [False, True])
def test_a_decoder_step_fuses_attention_and_softmax_and_matches_onnxruntime(seed, log):
    """The attention block is one compiled step and the head's (log-)softmax runs in
    place on its product; against ONNX Runtime on the first call of each batch size (the
    graph's ops one by one) and later ones (the fused program), which give the same bits,
    as 1 and 2 threads do, and as a row alone does (its batch never changes its bits)."""
    data = _decoder(seed, log)
    model = rnnfast.from_onnx(data)
    rng = np.random.default_rng(seed)
    feeds = {B: _decoder_feeds(rng, B) for B in (1, 3, 64)}
    feeds[5] = _decoder_feeds(rng, 5, S=11)
    for feed in feeds.values():
        first = model.run(None, feed)  # a new batch size: the graph's ops one by one
        later = [model.run(None, feed, num_threads=n) for n in (1, 2, 1)]
        for g, w in zip(first, _ort(data, feed)):
            assert_close(g, w, np.float32)
        for again in later:
            for a, b in zip(first, again):
                np.testing.assert_array_equal(a, b)
    steps = [op for op, *_ in model._fast[0]]
    assert any(isinstance(op, _FusedAttention) for op in steps)
    heads = [op for op in steps if isinstance(op, _FusedProduct) and op.tail[0].op_type.endswith("Softmax")]
    assert len(heads) == 1
    three = feeds[3]
    alone = model.run(None, {"tok": three["tok"][1:2], "h": three["h"][:, 1:2], "enc": three["enc"][1:2]})
    full = model.run(None, three)
    np.testing.assert_array_equal(alone[0], full[0][1:2])
    np.testing.assert_array_equal(alone[1], full[1][:, 1:2])


def test_a_decoder_steps_largest_weights_stream_past_a_full_last_level_cache(seed, monkeypatch):
    """Where a model's weights overflow the last-level cache (here made small), its
    largest products read theirs past the caches at one row (``ProductOp.stream``,
    _plan.streamed_weights) so that the others stay; the outputs are bit for bit those
    of the model that streams nothing, at 1 and 2 threads, and match ONNX Runtime."""
    from rnnfast import _plan
    from rnnfast.model_onnx import ProductOp, _weight_bytes

    data = _decoder(seed, False)
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(_plan, "_l3", [1 << 40])
    kept = rnnfast.from_onnx(data)
    for _ in range(3):  # (the plan, and its choice, made on a later call than the first)
        kept.run(None, _decoder_feeds(rng, 1))
    ops = [op for op, *_ in kept._compiled()[0]]
    total = sum(_weight_bytes(op) for op in ops)
    assert not any(getattr(op, "stream", False) for op in ops)
    monkeypatch.setattr(_plan, "_l3", [total - 1])
    model = rnnfast.from_onnx(data)
    for _ in range(3):
        model.run(None, _decoder_feeds(rng, 1))
    ops = [op for op, *_ in model._compiled()[0]]
    streamed = [op for op in ops if isinstance(op, ProductOp) and op.stream]
    assert streamed and all(op._packed is not None for op in streamed)
    assert sum(_weight_bytes(op) for op in ops if op not in streamed) <= _plan.KEEP_L3_SHARE * (total - 1)
    for B in (1, 1, 3):
        feed = _decoder_feeds(rng, B)
        want = kept.run(None, feed)
        for g, w in zip(want, _ort(data, feed)):
            assert_close(g, w, np.float32)
        for n in (1, 2):
            for a, b in zip(model.run(None, feed, num_threads=n), want):
                assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_fused_attention_off_its_compiled_path_runs_its_ops_one_by_one(seed):
    """A call the compiled attention does not take (4-D, here through its ops' own
    kernels) runs the three ops: ONNX Runtime's values."""
    data = _decoder(seed, False)
    model = rnnfast.from_onnx(data)
    feed = _decoder_feeds(np.random.default_rng(seed), 2)
    model.run(None, feed)
    model.run(None, feed)  # (the second call of these shapes runs the fused program)
    fused = [op for op, *_ in model._fast[0] if isinstance(op, _FusedAttention)][0]
    q = np.random.default_rng(seed).standard_normal((2, 1, 3, 16)).astype(np.float32)
    kt = np.random.default_rng(seed + 1).standard_normal((2, 1, 16, 5)).astype(np.float32)
    v = np.random.default_rng(seed + 2).standard_normal((2, 1, 5, 16)).astype(np.float32)
    got = fused.compute([q, kt, v], 1)[0]
    s = q.astype(np.float64) @ kt
    p = np.exp(s - s.max(-1, keepdims=True))
    assert_close(got, (p / p.sum(-1, keepdims=True)) @ v, np.float32)


@pytest.mark.parametrize("G", [2, 40])
def test_attention_on_constant_keys_and_values_matches_onnxruntime(G):
    """The attention block with its keys and values initializers (the plan fetches them
    from its constants) on a batch of 2 and of 40 (split between 2 threads): ONNX
    Runtime's values, and the bits of 1 thread on 2."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(G)
    kt = rng.standard_normal((G, 8, 5)).astype(np.float32)
    v = rng.standard_normal((G, 5, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Softmax", ["s"], ["p"], name="soft", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"], name="mix"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [G, 1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(kt, "kt"), numpy_helper.from_array(v, "v")],
    )
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    model = rnnfast.from_onnx(data)
    feed = {"q": rng.standard_normal((G, 1, 8)).astype(np.float32)}
    got = [model.run(None, feed, num_threads=n)[0] for n in (1, 2, 1)]
    assert any(isinstance(op, _FusedAttention) for op, *_ in model._fast[0])
    assert_close(got[0], _ort(data, feed)[0], np.float32)
    for again in got[1:]:
        np.testing.assert_array_equal(again, got[0])


def test_bound_kernels_give_the_ops_own_arrays():
    """The flat plan's short calls of the view ops, Concat and Gather (``_bind``) give
    what the op's compute gives (values, dtype, a view where it is one) and fall back to
    the kernel (its checks and messages) off their common case."""
    from rnnfast.model_onnx import _bind

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 1, 3)).astype(np.float32)
    ids = np.array([[1, 0]], dtype=np.int64)
    one, two = [("key", 0)], [("key", 0), ("key", 1)]
    cases = [
        (_FnOp("Transpose", "t", one, 1, {"perm": [2, 0, 1]}), [x]),
        (_FnOp("Transpose", "t", one, 1, {"perm": None}), [x]),
        (_FnOp("Squeeze", "s", one, 1, {"axes": [1]}), [x]),
        (_FnOp("Unsqueeze", "u", one, 1, {"axes": [0, -1]}), [x]),
        (_FnOp("Unsqueeze", "u", one, 1, {"axes": [0, -1]}), [x[0]]),
        (_FnOp("Identity", "i", one, 1, {}), [x]),
        (_FnOp("Concat", "c", two, 1, {"axis": 2}), [x, x]),
        (_FnOp("Concat", "c", two, 1, {"axis": -1}), [x, x]),
        (_FnOp("Concat", "c", two, 1, {"axis": -3}), [x, x]),
        (_FnOp("Concat", "c", two, 1, {"axis": 0}), [x, x.astype(np.float64)]),  # (two dtypes: the kernel)
        (_FnOp("Gather", "g", two, 1, {"axis": 0, "_name": "g"}), [x, ids]),
        (_FnOp("Gather", "g", two, 1, {"axis": 2, "_name": "g"}), [x, np.array(-1)]),
        (_FnOp("Gather", "g", two, 1, {"axis": -1, "_name": "g"}), [x, ids]),
        (_FnOp("Softmax", "m", one, 1, {"axis": -1}), [x]),
        (_FnOp("Add", "a", two, 1, {}), [x, x]),
    ]
    for op, args in cases:
        call, single = _bind(op)
        assert single
        got, (want,) = call(args, 1), op.compute(args, 1)
        assert got.shape == want.shape and got.dtype == want.dtype, op
        np.testing.assert_array_equal(got, want)
        assert np.shares_memory(got, x) == np.shares_memory(want, x), op
    split = _FnOp("Split", "p", one, 2, {"axis": 0, "split": None, "_num_outputs": 2, "_name": "p"})
    call, single = _bind(split)
    assert not single and [a.shape for a in call([x], 1)] == [(1, 1, 3), (1, 1, 3)]
    for op, args in [
        (_FnOp("Gather", "g", two, 1, {"axis": 0, "_name": "g"}), [x, np.array([2])]),
        (_FnOp("Squeeze", "s", one, 1, {"axes": [0]}), [x]),
        (_FnOp("Concat", "c", two, 1, {"axis": -4}), [x, x]),
        (_FnOp("Unsqueeze", "u", one, 1, {"axes": [0, 0]}), [x]),
    ]:
        with pytest.raises(ValueError) as want:
            op.compute(args, 1)
        with pytest.raises(ValueError) as got:
            _bind(op)[0](args, 1)
        assert str(got.value) == str(want.value)


def _conv_model(B, C, T, cout, k, attrs):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(B * 100 + k)
    w = rng.standard_normal((cout, C, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", **attrs),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, C, T])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    return data, rng.standard_normal((B, C, T)).astype(np.float32)


@pytest.mark.parametrize(
    "B, attrs",
    [
        (1, {"pads": [2, 2]}),
        (1, {"strides": [2], "dilations": [2]}),
        (2, {"auto_pad": "SAME_UPPER"}),
        (9, {}),  # (more rows than the weights' columns: conv1d's product, in place)
    ],
)
def test_a_conv_on_its_weights_packed_at_load_matches_onnxruntime_and_conv1d(B, attrs):
    """A Conv of few output rows multiplies its im2col rows on the weights packed at load
    (no packing per call): ONNX Runtime's values, and conv1d's bits (the same rows on the
    same product), the activation fused or not."""
    from rnnfast.model_onnx import _conv

    data, x = _conv_model(B, 5, 12, 24, 3, attrs)
    model = rnnfast.from_onnx(data)
    want = _ort(data, {"x": x})[0]
    for _ in range(2):
        assert_close(model.run(None, {"x": x})[0], want, np.float32)
    (conv,) = [op for op in model.layers if op.op_type == "Conv"]
    assert conv.attrs["_packed"] is not None
    args = [x, conv.slots[1][1], conv.slots[2][1]]
    plain = {k: v for k, v in conv.attrs.items() if k != "_packed"}
    for act in (-1, 1):
        np.testing.assert_array_equal(_conv(args, conv.attrs, act), _conv(args, plain, act))
    np.testing.assert_array_equal(model.run(None, {"x": x})[0], np.maximum(_conv(args, plain), 0))


def test_outputs_never_share_the_callers_inputs():
    """An output that is an input, a view of one, or made in the call: the caller's own
    array, whether or not the inputs own their memory (the overlap test is skipped only
    for outputs made in the call from inputs that do)."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Identity", ["x"], ["same"], name="same"),
        helper.make_node("Transpose", ["x"], ["view"], name="view", perm=[1, 0]),
        helper.make_node("Relu", ["x"], ["made"], name="made"),
        helper.make_node("Squeeze", ["made"], ["made_view"], name="made_view"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("same", "view", "made", "made_view")],
    )
    model = rnnfast.from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    base = np.arange(-6, 6, dtype=np.float32)
    for x in (np.array([[1.0], [-2.0], [3.0]], np.float32), base[:3].reshape(3, 1), base[::4].reshape(3, 1)):
        for _ in range(2):
            outs = model.run(None, {"x": x})
            for o in outs:
                assert not np.shares_memory(o, x) and not np.shares_memory(o, base)
                assert o.flags.writeable and o.flags.c_contiguous
            np.testing.assert_array_equal(outs[0], x)
            np.testing.assert_array_equal(outs[3], np.maximum(x, 0).reshape(3))


@pytest.mark.parametrize("B", [1, 9])
@pytest.mark.parametrize("relu", [False, True])
def test_a_conv_runs_on_the_calls_thread_count(monkeypatch, B, relu):
    """A Conv's product (on the packed weights, B=1, or conv1d's, B=9) takes the call's
    ``num_threads`` (it took the default count before), fused with its Relu or not."""
    import onnx
    from onnx import TensorProto, helper

    import rnnfast._products as products
    import rnnfast.ops as ops

    data, x = _conv_model(B, 5, 12, 24, 3, {"pads": [1, 1]})
    if not relu:  # the Conv alone, its output the graph's
        m = onnx.load_from_string(data)
        del m.graph.node[1]
        m.graph.output[0].CopyFrom(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
        data = m.SerializeToString()
    model = rnnfast.from_onnx(data)
    want = model.run(None, {"x": x})[0]
    seen = []
    for module, name, at in ((products, "dense", 5), (ops, "matmul", 3)):
        real = getattr(module, name)

        def spy(*args, _real=real, _at=at, **kw):
            seen.append(kw["num_threads"] if "num_threads" in kw else args[_at] if len(args) > _at else None)
            return _real(*args, **kw)

        monkeypatch.setattr(module, name, spy)
    for n in (1, 2):
        np.testing.assert_array_equal(model.run(None, {"x": x}, num_threads=n)[0], want)
        assert seen and seen[-1] == n


@pytest.mark.parametrize("bias_shape", [(5,), (1, 1, 5), (2, 1, 5)])
@pytest.mark.parametrize(
    "tail",
    [None, ("Sigmoid", None), ("Tanh", None), ("Relu", None), ("Softmax", -1), ("LogSoftmax", -1), ("Softmax", 1)],
)
def test_a_matmul_its_bias_and_activation_run_as_one_call_with_the_ops_bits(seed, bias_shape, tail):
    """PyTorch's Linear on a 3-D input (MatMul, then the Add of its bias), and the
    activation or (log-)softmax after it: one call of the plan (:meth:`_FusedProduct.one`)
    where the bias is one row (its values added to the product's rounded sums in the
    product's call, then the activation) or, with no activation, NumPy's add of the
    constant in place where it keeps the output's shape, else the Add as its op computes
    it (a bias that broadcasts the output wider). Bitwise the ops one by one (the first
    call of new shapes) on any thread count, and ONNX Runtime's values. A wider bias
    before an activation, or a softmax over another axis: the ops one by one."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    c = rng.standard_normal(bias_shape).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "c"], ["q"])]
    if tail is not None:
        kind, axis = tail
        nodes.append(helper.make_node(kind, ["q"], ["y"], **({} if axis is None else {"axis": axis})))
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 6])],
        [helper.make_tensor_value_info("y" if tail else "q", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")],
    )
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    model = rnnfast.from_onnx(data)
    xs = [rng.standard_normal(shape).astype(np.float32) for shape in [(1, 1, 6), (2, 4, 6), (1, 3, 6)]]
    firsts = [model.run(None, {"x": x})[0] for x in xs]  # (new shapes: the ops one by one)
    for x, first in zip(xs, firsts):
        assert_close(first, sess.run(None, {"x": x})[0], np.float32)
        for n in (1, 2):
            assert np.array_equal(model.run(None, {"x": x}, num_threads=n)[0], first), (x.shape, n)
    (fused,) = [op for op, *_ in model._fast[0] if isinstance(op, _FusedProduct)]
    assert [op.op_type for op in fused.tail] == ["Add"] + ([tail[0]] if tail else [])
    call = fused.one()
    if tail is not None and (bias_shape == (2, 1, 5) or tail[1] == 1):
        assert call is None
        return
    assert call is not None and not hasattr(call, "__self__")
    for x, first in zip(xs, firsts):
        for n in (1, 2):
            assert np.array_equal(call([x, w], n), first), (x.shape, n)
