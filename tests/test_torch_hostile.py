"""Hostile and broken PyTorch / safetensors files: every one is a FormatError, nothing
from the file runs (marker files prove it), nothing huge is allocated."""
import io
import json
import os
import pickle
import struct
import subprocess
import tracemalloc
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import torch  # noqa: E402  (the test install has it: a missing torch must fail, not skip)
import safetensors.torch as safetensors_torch  # noqa: E402

import rnnfast  # noqa: E402
from _testing import TOL


# -- writing torch-format files by hand --------------------------------------------------


class FakeStorage:
    """Pickled as a persistent id ('storage', <type>, key, 'cpu', numel)."""

    def __init__(self, key, numel, storage_type=None):
        self.key, self.numel = key, numel
        self.type = storage_type or torch.FloatStorage


class FakeTensor:
    """Pickled exactly as torch pickles a tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.type, obj.key, "cpu", obj.numel)
        return None


def torch_zip(path, obj=None, storages=None, *, pkl=None, protocol=2):
    """A zip laid out as torch.save lays it out: archive/data.pkl (``obj`` pickled with
    storages as persistent ids, or the raw bytes ``pkl``), archive/data/<key>,
    archive/byteorder, archive/version."""
    if pkl is None:
        buf = io.BytesIO()
        _Pickler(buf, protocol=protocol).dump(obj)
        pkl = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr("archive/data/%s" % key, data)
        z.writestr("archive/version", "3\n")
    return str(path)


def gru_state(hidden=4, inp=3):
    """A consistent GRU state_dict as FakeTensors over one float32 storage, and its bytes."""
    shapes = OrderedDict([("weight_ih_l0", (3 * hidden, inp)), ("weight_hh_l0", (3 * hidden, hidden)),
                          ("bias_ih_l0", (3 * hidden,)), ("bias_hh_l0", (3 * hidden,))])
    total = sum(int(np.prod(s)) for s in shapes.values())
    storage = FakeStorage("0", total)
    sd, pos = OrderedDict(), 0
    for k, s in shapes.items():
        stride = (s[1], 1) if len(s) == 2 else (1,)
        sd[k] = FakeTensor(storage, pos, s, stride)
        pos += int(np.prod(s))
    values = np.random.default_rng(0).uniform(-0.5, 0.5, total).astype("<f4")
    return sd, {"0": values.tobytes()}, values, shapes


def test_hand_written_file_is_a_real_torch_file(tmp_path):
    """The helper writes what torch itself reads (weights_only), so the hostile
    variants below differ from a valid file only where they mean to."""
    sd, storages, values, shapes = gru_state()
    path = torch_zip(tmp_path / "ok.pt", sd, storages)
    back = torch.load(path, weights_only=True)
    m = torch.nn.GRU(3, 4)
    m.load_state_dict(back)
    rnn = rnnfast.load(path)
    x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
    with torch.no_grad():
        want, h = m(torch.as_tensor(x))
    got, gh = rnn(x)
    np.testing.assert_allclose(got, want.numpy(), **TOL[np.dtype(np.float32)])
    np.testing.assert_allclose(gh, h.numpy(), **TOL[np.dtype(np.float32)])


# -- code execution attempts ---------------------------------------------------------------


class Reduce:
    """Pickles as ``func(*args)`` run at load time by a plain unpickler."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _attacks(marker):
    return {
        "os.system": Reduce(os.system, "touch %s" % marker),
        "subprocess.check_call": Reduce(subprocess.check_call, ["touch", marker]),
        "builtins.open": Reduce(open, marker, "w"),
        "builtins.eval": Reduce(eval, "open(%r, 'w').close()" % marker),
        "builtins.exec": Reduce(exec, "open(%r, 'w').close()" % marker),
        "builtins.getattr": Reduce(getattr, Reduce(__import__, "os"), "system"),
        "builtins.__import__": Reduce(__import__, "os"),
    }


#: Protocol 2 (torch's) writes Python 2 names for some globals (fix_imports).
PY2_NAMES = {"builtins": "__builtin__", "subprocess.check_call": "commands.check_call"}


@pytest.mark.parametrize("name", sorted(_attacks("x")))
@pytest.mark.parametrize("where,protocol", [("zip", 2), ("zip", 4), ("bare-pickle", 2), ("bare-pickle", 5),
                                            ("inside-state-dict", 2)])
def test_reduce_attack_is_refused(name, where, protocol, tmp_path):
    marker = str(tmp_path / "pwned")
    attack = _attacks(marker)[name]
    # a plain pickle.load would run it: prove the payload is live
    if name not in ("builtins.getattr", "builtins.__import__"):
        result = pickle.loads(pickle.dumps(attack, protocol=protocol))
        if hasattr(result, "close"):
            result.close()
        assert os.path.exists(marker)
        os.remove(marker)
    if where == "bare-pickle":
        path = tmp_path / "evil.pt"
        path.write_bytes(pickle.dumps(attack, protocol=protocol))
        path = str(path)
    else:
        sd, storages, _, _ = gru_state()
        obj = attack if where == "zip" else OrderedDict(sd, weight_hr_l0=attack)
        path = torch_zip(tmp_path / "evil.pt", obj, storages, protocol=protocol)
    refused = {"os.system": "posix.system", "builtins.open": "io.open"}.get(name, name)
    if protocol == 2:
        refused = PY2_NAMES.get(refused, PY2_NAMES.get(refused.split(".")[0], refused.split(".")[0])
                                + "." + refused.split(".")[1])
    with pytest.raises(rnnfast.FormatError, match=r"refused global '%s'" % refused.replace(".", r"\.")):
        rnnfast.load(path)
    assert not os.path.exists(marker)


def test_legacy_file_with_attack(tmp_path):
    """The legacy layout's object pickle carries the payload after a genuine header."""
    marker = str(tmp_path / "pwned")
    path = tmp_path / "legacy.pt"
    m = torch.nn.GRU(3, 4)
    torch.save(m.state_dict(), str(path), _use_new_zipfile_serialization=False)
    good = path.read_bytes()
    head = io.BytesIO(good)
    for _ in range(3):                     # magic, protocol, sys_info
        pickle.load(head)
    evil = good[: head.tell()] + pickle.dumps(Reduce(os.system, "touch %s" % marker), protocol=2)
    path.write_bytes(evil)
    with pytest.raises(rnnfast.FormatError, match="refused global"):
        rnnfast.load(str(path))
    assert not os.path.exists(marker)


@pytest.mark.parametrize("module,name", [
    ("torch.nn.modules.rnn", "GRU"), ("numpy.core.multiarray", "_reconstruct"),
    ("collections", "defaultdict"), ("copyreg", "_reconstructor"), ("torch", "load"),
    ("torch._utils", "_rebuild_qtensor")])
def test_unlisted_globals_named(module, name, tmp_path):
    pkl = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R."
    path = torch_zip(tmp_path / "g.pt", pkl=pkl)
    with pytest.raises(rnnfast.FormatError, match=r"refused global '%s\.%s'" % (module, name)):
        rnnfast.load(path)


def test_whole_module_and_torchscript(tmp_path):
    path = str(tmp_path / "whole.pt")
    torch.save(torch.nn.LSTM(3, 4), path)
    with pytest.raises(rnnfast.FormatError, match=r"torch\.nn\.modules\.rnn\.LSTM.*state_dict"):
        rnnfast.load(path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # torch.jit is deprecated in 2.13
        torch.jit.script(torch.nn.GRU(3, 4)).save(str(tmp_path / "ts.pt"))
    with pytest.raises(rnnfast.FormatError, match="TorchScript"):
        rnnfast.load(str(tmp_path / "ts.pt"))


# -- storages that lie -------------------------------------------------------------------------


def _limited(fn, limit=32 << 20):
    """Run ``fn`` and return the peak of Python-visible allocation (numpy included)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < limit, peak


def test_storage_claims_more_than_its_record(tmp_path):
    sd, storages, _, _ = gru_state()
    storages["0"] = storages["0"][:100]
    path = torch_zip(tmp_path / "short.pt", sd, storages)
    with pytest.raises(rnnfast.FormatError, match=r"storage '0' claims \d+ float32 elements .* "
                                                  r"holds 100 bytes"):
        rnnfast.load(path)


def test_absurd_storage_size_refused_before_allocating(tmp_path):
    sd, storages, _, _ = gru_state()
    huge = FakeStorage("0", 10 ** 15)
    for k in sd:
        sd[k].args = (huge,) + sd[k].args[1:]
    path = torch_zip(tmp_path / "huge.pt", sd, storages)

    def load():
        with pytest.raises(rnnfast.FormatError, match=r"storage '0' claims 1000000000000000"):
            rnnfast.load(path)
    _limited(load)


@pytest.mark.parametrize("offset,size,stride,msg", [
    (0, (10 ** 9, 3), (3, 1), "does not fit"),
    (10 ** 12, (4,), (1,), "does not fit"),
    (0, (4, 4), (100, 1), "does not fit"),
    (0, (4,), (-1,), "negative"),
    (-1, (4,), (1,), "negative"),
    (0, (4, 4), (1,), "differ in length"),
    (0, (4.0,), (1,), "integer"),
    (0, [2] * 40, [1] * 40, "dimensions"),
])
def test_views_outside_their_storage(offset, size, stride, msg, tmp_path):
    sd, storages, _, _ = gru_state()
    storage = sd["weight_ih_l0"].args[0]
    sd["weight_ih_l0"].args = (storage, offset, tuple(size), tuple(stride), False, OrderedDict())
    path = torch_zip(tmp_path / "view.pt", sd, storages)
    _limited(lambda: pytest.raises(rnnfast.FormatError, rnnfast.load, path).match(msg))


def test_missing_storage_record_and_bad_ids(tmp_path):
    sd, storages, _, _ = gru_state()
    path = torch_zip(tmp_path / "nostorage.pt", sd, {})
    with pytest.raises(rnnfast.FormatError, match="has no record archive/data/0"):
        rnnfast.load(path)
    # a persistent id that is not a storage
    pkl = b"\x80\x02X\x03\x00\x00\x00abcQ."
    with pytest.raises(rnnfast.FormatError, match="persistent id"):
        rnnfast.load(torch_zip(tmp_path / "pid.pt", pkl=pkl))
    # a storage type that is not one
    sd2 = OrderedDict(w=FakeTensor(FakeStorage("0", 4, storage_type=torch.nn.GRU), 0, (4,), (1,)))
    with pytest.raises(rnnfast.FormatError, match="refused global 'torch.nn.modules.rnn.GRU'"):
        rnnfast.load(torch_zip(tmp_path / "st.pt", sd2, {"0": b"\0" * 16}))


def test_bad_byteorder_and_several_archives(tmp_path):
    sd, storages, _, _ = gru_state()
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(sd)
    with zipfile.ZipFile(tmp_path / "bo2.pt", "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "middle")
        z.writestr("archive/data/0", storages["0"])
    with pytest.raises(rnnfast.FormatError, match="byteorder"):
        rnnfast.load(str(tmp_path / "bo2.pt"))
    with zipfile.ZipFile(tmp_path / "two.pt", "w") as z:
        z.writestr("a/data.pkl", buf.getvalue())
        z.writestr("b/data.pkl", buf.getvalue())
    with pytest.raises(rnnfast.FormatError, match="exactly one"):
        rnnfast.load(str(tmp_path / "two.pt"))


# -- truncated and random files ----------------------------------------------------------------


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    m = torch.nn.LSTM(3, 4, num_layers=2)
    torch.save(m.state_dict(), str(d / "m.pt"))
    torch.save(m.state_dict(), str(d / "legacy.pt"), _use_new_zipfile_serialization=False)
    safetensors_torch.save_file(m.state_dict(), str(d / "m.safetensors"))
    return {k: (d / f).read_bytes() for k, f in
            [("zip", "m.pt"), ("legacy", "legacy.pt"), ("safetensors", "m.safetensors")]}


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_truncated_files(kind, good_files, tmp_path):
    data = good_files[kind]
    path = tmp_path / "cut.bin"
    path.write_bytes(data)
    rnnfast.load(str(path))                     # the whole file loads
    cuts = sorted({1, 5, 9, 17, 40, 100, len(data) // 3, len(data) // 2, len(data) - 200, len(data) - 22,
                   len(data) - 5, len(data) - 1})
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(rnnfast.FormatError):
            rnnfast.load(str(path))


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_corrupted_bytes(kind, good_files, tmp_path):
    """Flipped bytes anywhere: a FormatError or a model, never another exception."""
    data = good_files[kind]
    rng = np.random.default_rng(12)
    path = tmp_path / "bad.bin"
    for _ in range(60):
        b = bytearray(data)
        for i in rng.integers(0, len(b), size=3):
            b[i] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(b))
        try:
            rnnfast.load(str(path))
        except rnnfast.FormatError:
            pass


@pytest.mark.parametrize("head", [b"", b"\x80\x02", b"\x80\x04", b"PK\x03\x04",
                                  b"\x10\x00\x00\x00\x00\x00\x00\x00{"])
def test_random_bytes(head, tmp_path):
    rng = np.random.default_rng(len(head))
    path = tmp_path / "random.bin"
    for n in (0, 3, 64, 5000):
        path.write_bytes(head + rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        with pytest.raises(rnnfast.FormatError):
            rnnfast.load(str(path))


def test_pickle_bombs_are_cheap(tmp_path):
    """Deep nesting and self-reference: a FormatError (no RNN), no crash or hang."""
    deep = b"\x80\x02" + b"]" * 200000 + b"a" * 199999 + b"."
    with pytest.raises(rnnfast.FormatError, match="nested more than 100 levels"):
        rnnfast.load(torch_zip(tmp_path / "deep.pt", pkl=deep))
    shallow = b"\x80\x02" + b"]" * 50 + b"a" * 49 + b"."
    with pytest.raises(rnnfast.FormatError, match="no nn.GRU"):
        rnnfast.load(torch_zip(tmp_path / "shallow.pt", pkl=shallow))
    loop = []
    loop.append(loop)
    cyc = {"a": loop, "b": {"c": loop}}
    with pytest.raises(rnnfast.FormatError, match="no nn.GRU"):
        rnnfast.load(torch_zip(tmp_path / "loop.pt", cyc))
    # a length field far beyond the data (legacy layout reads the file directly)
    path = tmp_path / "len.pt"
    for n in (1 << 34, 1 << 62):
        path.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", n) + b"abc")
        with pytest.raises(rnnfast.FormatError):
            rnnfast.load(str(path))


# -- safetensors -----------------------------------------------------------------------------


def _st(path, header, data=b"", raw_len=None):
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    n = len(h) if raw_len is None else raw_len
    path.write_bytes(struct.pack("<Q", n) + h + data)
    return str(path)


@pytest.mark.parametrize("header,data,msg", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "outside"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12 bytes"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid shape"),
    ({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid shape"),
    ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "data_offsets"),
    ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "exactly dtype"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "cover"),
    ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
])
def test_safetensors_header_checks(header, data, msg, tmp_path):
    with pytest.raises(rnnfast.FormatError, match=msg):
        rnnfast.load(_st(tmp_path / "h.safetensors", header, data))


def test_safetensors_sizes_and_json(tmp_path):
    path = tmp_path / "s.safetensors"
    _limited(lambda: pytest.raises(rnnfast.FormatError, rnnfast.load,
                                   _st(path, b"{" + b" " * 10, raw_len=1 << 62)).match("header claims"))
    with pytest.raises(rnnfast.FormatError, match="truncated"):
        rnnfast.load(_st(path, b"{}", raw_len=5000))
    with pytest.raises(rnnfast.FormatError, match="not valid JSON"):
        rnnfast.load(_st(path, b"{not json}"))
    with pytest.raises(rnnfast.FormatError, match="not valid JSON"):
        rnnfast.load(_st(path, b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}"))
    with pytest.raises(rnnfast.FormatError, match="not valid JSON"):
        rnnfast.load(_st(path, b"{\xff\xfe}"))
