"""Functional Keras graphs against live Keras 3 (torch backend): several inputs and
outputs, branches, merges (with masks), shared layers, recurrent layers called with
``initial_state`` and returning states (the seq2seq training model and its inference
decoder), RepeatVector / Reshape / Permute. Each case is built once with lively
weights, saved as ``.keras`` and ``.h5``, and the two files and the live model must
give what ``model.predict`` gives."""

import zlib

import keras
import numpy as np
import pytest

import rnnfast
from rnnfast.graph import Graph, Step

from _testing import KERAS_SOURCES, assert_like_keras, keras_model_from, lively, masked_input, save_keras
from _testing import SEQ_B as B
from _testing import SEQ_F as F
from _testing import SEQ_T as T

L = keras.layers


CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn

    return register


def _x(shape, seed):
    return masked_input(shape, seed=seed)


def _plain(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@case("branch-two-outputs")
def _():
    inp = keras.Input((T, F))
    return keras.Model(inp, [L.GRU(3)(inp), L.LSTM(3)(inp)]), _x((B, T, F), 1)


@case("branch-after-gru")
def _():
    inp = keras.Input((T, F))
    h = L.GRU(3, return_sequences=True)(L.Masking()(inp))
    return keras.Model(inp, [L.GRU(2)(h), L.Dense(2)(h)]), _x((B, T, F), 2)


@case("concat-masked-into-gru")
def _():
    inp = keras.Input((T, F))
    m = L.Masking()(inp)
    a, b = L.GRU(3, return_sequences=True)(m), L.Dense(3)(m)
    return keras.Model(inp, L.LSTM(2)(L.Concatenate()([a, b]))), _x((B, T, F), 3)


@case("concat-masked-and-unmasked")
def _():
    inp = keras.Input((T, F))
    a = L.GRU(3, return_sequences=True)(L.Masking()(inp))
    b = L.Dense(3)(inp)
    return keras.Model(inp, L.GRU(2)(L.Concatenate()([a, b]))), _x((B, T, F), 4)


@case("concat-time-axis")
def _():
    inp = keras.Input((T, F))
    a = L.GRU(3, return_sequences=True)(inp)
    b = L.Dense(3)(inp)
    return keras.Model(inp, L.Concatenate(axis=1)([a, b])), _x((B, T, F), 5)


@case("bigru-pooled-concat-head")
def _():
    ids = keras.Input((T,), dtype="int32")
    e = L.Embedding(20, 6, mask_zero=True)(ids)
    h = L.Bidirectional(L.GRU(4, return_sequences=True))(e)
    pooled = L.Concatenate()([L.GlobalMaxPooling1D()(h), L.GlobalAveragePooling1D()(h)])
    out = L.Dense(3, activation="sigmoid")(L.Dropout(0.2)(pooled))
    ids_x = np.random.default_rng(6).integers(1, 20, (B, T)).astype(np.int32)
    ids_x[1, T - 3 :] = 0
    return keras.Model(ids, out), ids_x


@case("two-inputs-add")
def _():
    a, b = keras.Input((T, F)), keras.Input((T, F))
    return keras.Model([a, b], L.Add()([L.GRU(3)(a), L.GRU(3)(b)])), [_x((B, T, F), 7), _plain((B, T, F), 8)]


@case("two-inputs-two-outputs")
def _():
    a, b = keras.Input((T, F)), keras.Input((T, 2))
    return keras.Model([a, b], [L.GRU(3)(a), L.LSTM(3)(b)]), [_x((B, T, F), 9), _plain((B, T, 2), 10)]


@case("shared-dense")
def _():
    inp = keras.Input((T, F))
    d = L.Dense(F)
    return keras.Model(inp, L.GRU(2)(d(d(inp)))), _x((B, T, F), 11)


@case("siamese-gru-merges")
def _():
    a, b = keras.Input((T, F)), keras.Input((T, F))
    g = L.GRU(4)
    ha, hb = g(a), g(b)
    outs = [
        L.Subtract()([ha, hb]),
        L.Multiply()([ha, hb]),
        L.Average()([ha, hb]),
        L.Maximum()([ha, hb]),
        L.Minimum()([ha, hb, L.Dense(4)(ha)]),
    ]
    return keras.Model([a, b], outs), [_x((B, T, F), 12), _plain((B, T, F), 13)]


@case("merges-of-masked-sequences")
def _():
    a, b = keras.Input((T, F)), keras.Input((T, F))
    ma, mb = L.Masking()(a), L.Masking()(b)
    sa, sb = L.Dense(3)(ma), L.Dense(3)(mb)
    outs = [
        L.GRU(2, return_sequences=True)(L.Add()([sa, sb])),
        L.GRU(2, return_sequences=True)(L.Maximum()([sa, L.Dense(3)(b)])),
        L.GRU(2, return_sequences=True)(L.Concatenate()([sa, sb])),
        L.GRU(2, return_sequences=True)(L.Minimum()([sa, sb, L.Dense(3)(a)])),
        L.GRU(2, return_sequences=True)(L.Multiply()([sa, sb])),
        L.GRU(2, return_sequences=True)(L.Multiply()([L.Dense(3)(b), sb])),
        L.GRU(2, return_sequences=True)(L.Average()([sa, sb])),
        L.GRU(2, return_sequences=True)(L.Subtract()([sa, sb])),
    ]
    return keras.Model([a, b], outs), [_x((B, T, F), 14), _x((B, T, F), 15)[::-1].copy()]


@case("broadcast-add-vector-to-sequence")
def _():
    a = keras.Input((T, F))
    seq = L.Dense(3)(a)
    vec = L.GRU(3)(a)
    return keras.Model(a, L.Add()([seq, vec])), _x((B, T, F), 16)


@case("dot-attention-like")
def _():
    a = keras.Input((T, F))
    q = L.GRU(4, return_sequences=True)(a)
    k = L.Dense(4)(a)
    scores = L.Activation("softmax")(L.Dot(axes=(2, 2))([q, k]))
    ctx = L.Dot(axes=(2, 1))([scores, k])
    v1, v2 = L.GRU(3)(a), L.Dense(3)(L.Flatten()(a))
    return keras.Model(a, [ctx, L.Dot(axes=1, normalize=True)([v1, v2]), L.Dot(axes=-1)([q, L.GRU(4)(a)])]), _plain(
        (B, T, F), 17
    )


@case("seq2seq-training")
def _():
    enc_in, dec_in = keras.Input((None, F)), keras.Input((None, 4))
    _, h, c = L.LSTM(6, return_state=True)(L.Masking()(enc_in))
    dec = L.LSTM(6, return_sequences=True, return_state=True)
    y, _, _ = dec(dec_in, initial_state=[h, c])
    out = L.Dense(4, activation="softmax")(y)
    return keras.Model([enc_in, dec_in], out), [_x((B, T, F), 18), _plain((B, 7, 4), 19)]


@case("seq2seq-inference-decoder")
def _():
    dec_in, h_in, c_in = keras.Input((None, 4)), keras.Input((6,)), keras.Input((6,))
    y, h, c = L.LSTM(6, return_sequences=True, return_state=True)(dec_in, initial_state=[h_in, c_in])
    out = L.Dense(4, activation="softmax")(y)
    return keras.Model([dec_in, h_in, c_in], [out, h, c]), [
        _plain((B, 1, 4), 20),
        _plain((B, 6), 21),
        _plain((B, 6), 22),
    ]


@case("gru-initial-state-masked")
def _():
    a, s = keras.Input((T, F)), keras.Input((3,))
    seq = L.GRU(3, return_sequences=True, go_backwards=True)(L.Masking()(a), initial_state=s)
    return keras.Model([a, s], [seq, L.SimpleRNN(3)(a, initial_state=[s])]), [_x((B, T, F), 23), _plain((B, 3), 24)]


@case("bidirectional-initial-state")
def _():
    a, h1, c1, h2, c2 = (keras.Input((T, F)),) + tuple(keras.Input((3,)) for _ in range(4))
    out = L.Bidirectional(L.LSTM(3, return_sequences=True, return_state=True))(a, initial_state=[h1, c1, h2, c2])
    return keras.Model([a, h1, c1, h2, c2], out), [_x((B, T, F), 25)] + [_plain((B, 3), 26 + i) for i in range(4)]


@case("lstm-autoencoder-repeatvector")
def _():
    a = keras.Input((T, F))
    z = L.LSTM(5)(L.Masking()(a))
    y = L.LSTM(5, return_sequences=True)(L.RepeatVector(T)(z))
    return keras.Model(a, L.TimeDistributed(L.Dense(F))(y)), _x((B, T, F), 30)


@case("reshape-permute")
def _():
    a = keras.Input((T, 6))
    r = L.Reshape((T * 2, 3))(a)
    p = L.Permute((2, 1))(L.GRU(4, return_sequences=True)(r))
    return keras.Model(a, [L.GRU(2)(p), L.Reshape((-1,))(p), L.Reshape((3, 2, T))(L.Permute((2, 1))(a))]), _plain(
        (B, T, 6), 31
    )


@case("attention-classifier-masked")
def _():
    ids = keras.Input((T,), dtype="int32")
    h = L.Bidirectional(L.LSTM(3, return_sequences=True))(L.Embedding(20, 4, mask_zero=True)(ids))
    att = L.Attention()([h, h])
    out = L.Dense(2, activation="softmax")(L.GlobalAveragePooling1D()(L.Concatenate()([h, att])))
    ids_x = np.random.default_rng(40).integers(1, 20, (B, T)).astype(np.int32)
    ids_x[1, T - 3 :] = 0
    ids_x[2, :2] = 0
    return keras.Model(ids, out), ids_x


@case("attention-options")
def _():
    q, v = keras.Input((T, 4)), keras.Input((7, 4))
    mq, mv = L.Masking()(q), L.Masking()(v)
    k = L.Dense(4)(v)
    outs = [
        L.Attention(use_scale=True)([mq, mv]),
        L.Attention(score_mode="concat", use_scale=True)([q, v, k]),
        L.Attention(score_mode="concat")([mq, mv], use_causal_mask=True),
        L.AdditiveAttention()([mq, mv, k]),
        L.AdditiveAttention(use_scale=False)([q, q], use_causal_mask=True),
        L.GRU(2)(L.AdditiveAttention()([mq, mv])),
    ]
    return keras.Model([q, v], outs), [_x((B, T, 4), 41), _x((B, 7, 4), 42)]


CASE_IDS = sorted(CASES)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("keras_graph")


@pytest.fixture(scope="module", params=CASE_IDS)
def built(request, workdir):
    model, x = CASES[request.param]()
    lively(model, seed=zlib.crc32(request.param.encode()))
    want = model.predict(x, verbose=0)
    return model, x, want, save_keras(model, workdir, request.param)


@pytest.mark.parametrize("source", KERAS_SOURCES)
def test_graph_matches_keras(built, source):
    model, x, want, paths = built
    m = keras_model_from(source, model, paths)
    assert_like_keras(m.predict(x), want, what=source)
    assert m.count_params() == model.count_params()


def test_several_inputs_by_name_and_batches(workdir):
    model, x = CASES["seq2seq-training"]()
    lively(model, seed=3)
    want = model.predict(x, verbose=0)
    m = rnnfast.from_keras(model)
    assert m.input_names == [t.name.split(":")[0] for t in model.inputs] or len(m.input_names) == 2
    by_name = dict(zip(m.input_names, x))
    assert_like_keras(m.predict(by_name), want)
    assert_like_keras(m.predict(x, batch_size=2), want)
    assert_like_keras(m(x), want)
    assert m.output_shape == (None, None, 4)
    with pytest.raises(ValueError, match="takes 2 inputs"):
        m.predict(x[0])
    with pytest.raises(ValueError, match="batch sizes"):
        m.predict([x[0], x[1][:2]])


def test_shared_layer_counted_once_and_summary():
    model, x = CASES["siamese-gru-merges"]()
    m = rnnfast.from_keras(model)
    assert [n.name for n in m.layers].count(model.layers[2].name) <= 1
    rows = m.summary_rows()
    assert sum(r["parameters"] for r in rows) == model.count_params()
    shared = [r for r in rows if r["type"] == "GRU"][0]
    assert len(shared["connected_to"]) == 2


def test_graph_executor_frees_and_checks():
    class Twice:
        multi_input = False
        name = "twice"

        def run(self, x, mask, num_threads=None):
            return [2 * x], [mask]

    class Sum:
        multi_input = True
        name = "sum"

        def run(self, xs, masks, num_threads=None):
            return [xs[0] + xs[1]], [None]

    t, s = Twice(), Sum()
    g = Graph([Step(t, ["x"], ["a"]), Step(t, ["a"], ["b"]), Step(s, ["a", "b"], ["c"])], ["x"], ["c", "a"])
    (c, a), _ = g.run([np.ones(3)])
    np.testing.assert_array_equal(c, 6)
    np.testing.assert_array_equal(a, 2)
    assert g.ops == [t, s]
    with pytest.raises(ValueError, match="before it is computed"):
        Graph([Step(t, ["y"], ["a"])], ["x"], ["a"])


def test_graph_executor_structures_states_options_and_freeing():
    """The compiled plan of the executor: nested and single outputs, masks in, states
    and options passed, keep_all, and a tensor dropped once its last reader ran."""
    import weakref

    seen = {}

    class Scale:
        multi_input = False

        def __init__(self, name, k):
            self.name, self.k = name, k

        def run(self, x, mask, num_threads=None, initial_state=None, offset=0):
            seen[self.name] = (mask, None if initial_state is None else list(initial_state), offset)
            y = self.k * x + offset + (0 if initial_state is None else sum(initial_state))
            seen[self.name + " out"] = weakref.ref(y)
            return [y], [mask]

    class Check:
        multi_input = True
        name = "check"

        def run(self, xs, masks, num_threads=None):
            seen["a alive at c"] = seen["a out"]() is not None
            return [xs[0] + xs[1]], [masks[0]]

    a, b, c = Scale("a", 2), Scale("b", 3), Check()
    steps = [
        Step(a, ["x"], ["ya"]),
        Step(b, ["ya"], ["yb"], states=["s"], options={"offset": 1}),
        Step(c, ["yb", "s"], ["yc"]),
    ]
    m = np.array([True, False])
    g = Graph(steps, ["x", "s"], {"out": ["yc", ["yb"]]})
    (out, mask) = g.run([np.ones(2), np.full(2, 10.0)], masks=[m, None])
    np.testing.assert_array_equal(out["out"][0], 27)  # ya = 2; yb = 3 * ya + 1 + s = 17; yc = yb + s
    np.testing.assert_array_equal(out["out"][1][0], 17)
    assert seen["b"][1] is not None and seen["b"][2] == 1 and seen["a"][0] is m
    assert mask["out"][0] is m and mask["out"][1][0] is m
    assert seen["a alive at c"] is False  # ya's last reader was b: freed before c ran
    one = Graph(steps[:1], ["x", "s"], "ya")
    y, mk = one.run([np.ones(2), None])
    np.testing.assert_array_equal(y, 2)
    assert mk is None
    values, masks = g.run([np.ones(2), np.zeros(2)], keep_all=True)
    assert set(values) == {"x", "s", "ya", "yb", "yc"} and set(masks) == set(values)
    np.testing.assert_array_equal(values["ya"], 2)


def test_predict_fast_path_matches_the_validated_one(monkeypatch):
    """Arrays already as the model takes them skip the checks and casts (one pass, no
    copies); anything else goes the validated way, with bitwise the same results and
    the same errors."""
    for name in ("seq2seq-inference-decoder", "bigru-pooled-concat-head"):
        model, x = CASES[name]()
        lively(model, seed=7)
        m = rnnfast.from_keras(model)
        slow = m._predict_from_zero(x)
        if isinstance(x, list):
            others = [[a.astype(np.float64) for a in x], [np.asfortranarray(a) for a in x], tuple(x)]
        else:
            others = [x.astype(np.int64), x.astype(np.int16), x.tolist(), x.astype(np.uint8)]
        for y in [m.predict(x), m(x), m.predict(x, batch_size=2)] + [m.predict(o) for o in others]:
            for got, want in zip(y if isinstance(y, list) else [y], slow if isinstance(slow, list) else [slow]):
                np.testing.assert_array_equal(got, want)
        with monkeypatch.context() as patch:  # the fast path is taken: no validation at all

            def refuse(self, x):
                raise AssertionError("validated")

            patch.setattr(type(m), "_validated", refuse)
            m.predict(x)
            with pytest.raises(AssertionError, match="validated"):
                m.predict(others[0] if isinstance(x, list) else x.tolist())
    model, x = CASES["seq2seq-inference-decoder"]()
    m = rnnfast.from_keras(lively(model, seed=7))
    m.predict(x)  # its shapes now known to the fast path: wrong ones still refused
    with pytest.raises(ValueError, match="batch sizes"):
        m.predict([x[0], x[1][:2], x[2]])
    with pytest.raises(ValueError, match="expected input of shape"):
        m.predict([x[0], x[1][:, :5].copy(), x[2]])
    with pytest.raises(ValueError, match="expected input of shape"):
        m.predict([x[0][..., :3].copy(), x[1], x[2]])


def _with_preprocessing():
    ids = keras.Input((T,), dtype="int32", name="text")
    pre = L.Lambda(lambda t: t, name="pre")(ids)
    h = L.GRU(3)(L.Embedding(20, 4, mask_zero=True, name="embedding")(pre))
    model = lively(keras.Model(ids, L.Dense(2)(h)), seed=5)
    x = np.random.default_rng(6).integers(0, 20, (B, T)).astype(np.int32)
    return model, x


def test_lambda_refused_and_inputs_from(tmp_path):
    model, x = _with_preprocessing()
    with pytest.raises(rnnfast.UnsupportedLayerError, match="Python code") as info:
        rnnfast.from_keras(model)
    assert info.value.layer_class == "Lambda"
    want = model.predict(x, verbose=0)
    p = str(tmp_path / "pre.keras")
    model.save(p)
    for m in (rnnfast.from_keras(model, inputs_from="embedding"), rnnfast.load(p, inputs_from="embedding")):
        assert_like_keras(m.predict(x), want)
        assert m.input_names == ["embedding_input"]
    with pytest.raises(ValueError, match="no such layer"):
        rnnfast.from_keras(model, inputs_from="nope")


def test_string_preprocessing_refused_with_a_hint():
    from rnnfast.io.keras_graph import build_model

    model, x = _with_preprocessing()
    cfg = model.get_config()
    for item in cfg["layers"]:
        if item["name"] == "pre":
            item["class_name"] = "TextVectorization"
            item["config"] = {"name": "pre", "max_tokens": 20}

    def weights(name, cls, c):
        return [(None, w) for w in model.get_layer(name).get_weights()]

    with pytest.raises(rnnfast.UnsupportedLayerError, match="inputs_from=") as info:
        build_model({"class_name": "Functional", "config": cfg}, weights, "3.0")
    assert info.value.layer_class == "TextVectorization"
    m = build_model({"class_name": "Functional", "config": cfg}, weights, "3.0", inputs_from="embedding")
    assert_like_keras(m.predict(x), model.predict(x, verbose=0))


def test_summary_of_a_graph():
    model, x = CASES["seq2seq-training"]()
    m = rnnfast.from_keras(model)
    assert not m.is_chain
    lines = []
    m.summary(print_fn=lines.append)
    text = lines[0]
    assert "connected to" in text and "output shape" in text
    rows = {r["name"]: r for r in m.summary_rows()}
    dense = [r for r in rows.values() if r["type"] == "Dense"][0]
    assert dense["output_shape"] == "(None, None, 4)"
    lstm = [n for n in m.layers if n.keras_class == "LSTM"][1]
    assert any(c.startswith(m.layers[0].name) or "[0][1]" in c for c in rows[lstm.name]["connected_to"])
    assert rows[lstm.name]["output_shape"].startswith("[(None, None, 6)")
    chain = rnnfast.from_keras(keras.Sequential([keras.Input((T, F)), L.GRU(2)]))
    assert chain.is_chain
    lines = []
    chain.summary(print_fn=lines.append)
    assert "connected to" not in lines[0]


@pytest.mark.parametrize("case_name", ["seq2seq-training", "bigru-pooled-concat-head"])
def test_save_weights_with_to_json(tmp_path, case_name):
    model, x = CASES[case_name]()
    lively(model, seed=9)
    want = model.predict(x, verbose=0)
    w = str(tmp_path / "m.weights.h5")
    model.save_weights(w)
    cfg = tmp_path / "m.json"
    cfg.write_text(model.to_json())
    for config in (str(cfg), model.to_json()):
        assert_like_keras(rnnfast.load(w, config=config).predict(x), want)
    with pytest.raises(rnnfast.FormatError, match="without a model_config"):
        rnnfast.load(w)


@pytest.mark.parametrize(
    "name", ["dot-attention-like", "attention-options", "attention-classifier-masked", "seq2seq-inference-decoder"]
)
def test_products_on_the_core_bitwise_for_any_thread_count(name, monkeypatch):
    """Dot, Attention, AdditiveAttention, Dense and the recurrent layers run on the
    core's products (never NumPy's matmul and its own BLAS threads), with the same bits
    for any thread count (test_graph_matches_keras holds them to Keras)."""
    model, x = CASES[name]()
    m = rnnfast.from_keras(lively(model, seed=zlib.crc32(name.encode())))

    def refuse(*a, **k):
        raise AssertionError("NumPy's matmul called")

    monkeypatch.setattr(np, "matmul", refuse)
    outs = [m.predict(x, num_threads=n) for n in (1, 2, 3)]
    for y in outs[1:]:
        for got, want in zip(y if isinstance(y, list) else [y], outs[0] if isinstance(outs[0], list) else [outs[0]]):
            np.testing.assert_array_equal(got, want)
