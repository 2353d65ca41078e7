"""Files that claim enormous sizes: refused with FormatError before anything large is
allocated, in every loader.

Each hostile file is small (the zip bombs, the largest, about 70 kB). The checks run
in a subprocess under an address-space limit (RLIMIT_AS, a few hundred MB above the
interpreter's baseline) and report their peak RSS, so an allocation of the claimed size would fail the test either way (a
MemoryError is not a FormatError; touched memory shows in the peak). Shapes that do
not fit the architecture are refused at load with the tensor named.
"""
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile

import h5py
import numpy as np
import pytest

import rnnfast

from fuzz.mutators import CORPUS, seeds
from fuzz.picklegen import TorchDoc

# -- building hostile files ----------------------------------------------------------------


def _seed(fmt):
    """The simplest seed of a format (one GRU layer where there is one)."""
    names = {"torchzip": "torchzip-gru.pt", "torchlegacy": "torchlegacy-lstm.pt",
             "safetensors": "safetensors-gru-bi.safetensors", "keras": "keras-gru.keras",
             "keras3h5": "keras3h5-gru.h5", "keras2h5": "keras2h5-gru-reset-before.h5"}
    path = os.path.join(CORPUS, names[fmt])
    assert path in seeds(fmt)
    return path


def _torch_doc():
    return TorchDoc.from_file(_seed("torchzip"))


def _tensors(doc):
    return [v for v in doc.root.values()]


def _zip_with_bomb(members, bomb_name, bomb_size):
    """A zip of ``members`` (stored) plus ``bomb_name``: ``bomb_size`` zero bytes deflated
    (a genuine zip bomb: the declared size is the true one)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            z.writestr(name, data)
        info = zipfile.ZipInfo(bomb_name, (1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(bomb_size >> 20):
                f.write(chunk)
    return buf.getvalue()


def _patch_sizes(data, name, file_size):
    """Make member ``name`` declare ``file_size`` uncompressed bytes (local and central
    headers): a zip bomb by declaration."""
    b = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(name)
    struct.pack_into("<I", b, info.header_offset + 22, file_size)
    pos = b.find(b"PK\x01\x02")
    while pos >= 0:
        if struct.unpack_from("<I", b, pos + 42)[0] == info.header_offset:
            struct.pack_into("<I", b, pos + 24, file_size)
        pos = b.find(b"PK\x01\x02", pos + 4)
    return bytes(b)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _zip_members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _keras_with_config(path, edit, h5edit=None):
    """A copy of a .keras seed whose config.json is ``edit(config)`` and whose weights
    file is changed by ``h5edit(h5py.File)``."""
    with open(_seed("keras"), "rb") as f:
        members = _zip_members(f.read())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            if name == "config.json":
                cfg = json.loads(data)
                edit(cfg)
                data = json.dumps(cfg).encode()
            elif name == "model.weights.h5" and h5edit is not None:
                bio = io.BytesIO(data)
                with h5py.File(bio, "r+") as f:
                    h5edit(f)
                data = bio.getvalue()
            z.writestr(name, data)
    path.write_bytes(buf.getvalue())
    return str(path)


def _layer(cfg, cls):
    return next(l for l in cfg["config"]["layers"] if l["class_name"] == cls)["config"]


def _unwritten(f, path, shape):
    """Replace dataset ``path`` by one of ``shape`` that was never written: a few bytes
    on disk, reading it would allocate the whole shape."""
    del f[path]
    f.create_dataset(path, shape=shape, dtype="f4", chunks=(1,) * len(shape), compression="gzip")


def _hostile_files(d):
    """name -> (path, regex the FormatError must match). Every file is small."""
    files = {}
    doc = _torch_doc()
    # -- PyTorch zip: a storage whose record claims 10^12 elements, and tensors of 10^12 elements
    t = _tensors(doc)[0]
    t.numel = 10 ** 12
    p = d / "numel.pt"
    p.write_bytes(doc.zip_bytes())
    files["torch storage of 10^12 elements"] = (str(p), r"claims 1000000000000 float32 elements")
    doc = _torch_doc()
    t = _tensors(doc)[0]
    t.shape, t.stride = (10 ** 6, 10 ** 6), (10 ** 6, 1)
    p = d / "shape.pt"
    p.write_bytes(doc.zip_bytes())
    files["torch tensor of 10^12 elements"] = (str(p), r"tensor of size \(1000000, 1000000\).* does not fit")
    # -- zip bombs: declared (a lie) and genuine (deflated zeros), storage and pickle records
    good = _torch_doc().zip_bytes()
    p = d / "declared.pt"
    p.write_bytes(_patch_sizes(good, "archive/data/0", 0xFFFFFFF0))
    files["torch zip member declaring 4 GB"] = (str(p), r"record archive/data/0: stored sizes disagree")
    members = [(n, b) for n, b in _zip_members(good) if n != "archive/data/0"]
    p = d / "bomb.pt"
    p.write_bytes(_zip_with_bomb(members, "archive/data/0", 64 << 20))
    files["torch zip bomb (storage)"] = (str(p), r"archive/data/0 would inflate \d+ compressed bytes to 67108864")
    members = [(n, b) for n, b in _zip_members(good) if n != "archive/data.pkl"]
    p = d / "pklbomb.pt"
    p.write_bytes(_zip_with_bomb(members, "archive/data.pkl", 64 << 20))
    files["torch zip bomb (data.pkl)"] = (str(p), r"archive/data.pkl would inflate")
    # -- pickles that make the C unpickler allocate what they declare
    for name, pkl, msg in [
            ("memo index 2^28", b"\x80\x02]r\x00\x00\x00\x10.", r"memo index 268435456 out of range"),
            ("BINBYTES8 of 2^40 bytes", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc.", r"expected 1099511627776 bytes"),
            ("BYTEARRAY8 of 2^40 bytes", b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b"abc.", r"expected 1099511627776 bytes"),
            ("BINUNICODE8 of 2^40 bytes", b"\x80\x04\x8d" + struct.pack("<Q", 1 << 40) + b"abc.", r"expected 1099511627776 bytes"),
            ("FRAME of 2^40 bytes", b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.", r"corrupt|truncated")]:
        p = d / ("pkl%d.pt" % len(files))
        p.write_bytes(_torch_doc().zip_bytes(pkl=pkl))
        files["torch pickle: " + name] = (str(p), msg)
        p = d / ("legacy%d.pt" % len(files))
        p.write_bytes(pkl)
        files["legacy pickle: " + name] = (str(p), msg)
    # -- legacy layout: an on-disk element count of 2^62
    legacy = TorchDoc.from_file(_seed("torchlegacy"))
    p = d / "legacy-numel.pt"
    p.write_bytes(legacy.legacy_bytes(numels={k: 1 << 62 for k in legacy.storages}))
    files["legacy storage count 2^62"] = (str(p), r"holds 4611686018427387904 elements on disk")
    # -- safetensors: shapes of 10^12 elements, a header length of 2^62
    with open(_seed("safetensors"), "rb") as f:
        raw = f.read()
    n = struct.unpack_from("<Q", raw)[0]
    header = json.loads(raw[8:8 + n])
    name = sorted(k for k in header if k != "__metadata__")[0]
    header[name]["shape"] = [10 ** 6, 10 ** 6]
    h = json.dumps(header).encode()
    p = d / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    files["safetensors tensor of 10^12 elements"] = (str(p), r"needs 4000000000000 bytes")
    p = d / "len.safetensors"
    p.write_bytes(struct.pack("<Q", 1 << 62) + raw[8:])
    files["safetensors header of 2^62 bytes"] = (str(p), r"header claims 4611686018427387904 bytes")
    # -- Keras: absurd units, with and without weights to match (never written: tiny on disk)
    files["keras units=10^9"] = (
        _keras_with_config(d / "units.keras", lambda c: _layer(c, "GRU").update(units=10 ** 9)),
        r"layer 'gru': weight 'kernel' has shape \(3, 12\), expected \(3, 3000000000\)")

    def unwritten_gru(f):
        _unwritten(f, "layers/gru/cell/vars/0", (3, 3 * 10 ** 9))
        _unwritten(f, "layers/gru/cell/vars/1", (10 ** 9, 3 * 10 ** 9))
        _unwritten(f, "layers/gru/cell/vars/2", (2, 3 * 10 ** 9))
    files["keras units=10^9 with matching unwritten weights"] = (
        _keras_with_config(d / "units2.keras", lambda c: _layer(c, "GRU").update(units=10 ** 9), unwritten_gru),
        r"weight /layers/gru/cell/vars/0 of shape \(3, 3000000000\) claims 36000000000 bytes but the file "
        r"stores 0")
    files["keras unwritten kernel of 24 MB"] = (
        _keras_with_config(d / "units3.keras", lambda c: _layer(c, "GRU").update(units=666667),
                           lambda f: _unwritten(f, "layers/gru/cell/vars/0", (3, 3 * 666667))),
        r"claims 24000012 bytes but the file stores 0")
    files["keras input of 10^9 features"] = (
        _keras_with_config(d / "steps.keras", lambda c: c["config"]["layers"][0]["config"].update(
            batch_shape=[None, 5, 10 ** 9])),
        r"declares input of shape \(batch, any, 1000000000\): 1000000000 values per sample")
    keras = _zip_members(_read(_seed("keras")))
    p = d / "bomb.keras"
    p.write_bytes(_zip_with_bomb([m for m in keras if m[0] != "model.weights.h5"], "model.weights.h5",
                                       64 << 20))
    files["keras zip bomb (model.weights.h5)"] = (str(p), r"model.weights.h5 would inflate")
    p = d / "bomb2.keras"
    p.write_bytes(_zip_with_bomb([m for m in keras if m[0] != "config.json"], "config.json", 64 << 20))
    files["keras zip bomb (config.json)"] = (str(p), r"config.json would inflate")
    p = d / "declared.keras"
    p.write_bytes(_patch_sizes(_read(_seed("keras")), "model.weights.h5", 0xFFFFFFF0))
    files["keras member declaring 4 GB"] = (str(p), r"model.weights.h5|sizes disagree")
    # -- Keras HDF5: a weight replaced by an unwritten 10^12-element dataset of the right rank
    p = d / "unwritten.h5"
    with open(_seed("keras3h5"), "rb") as f:
        bio = io.BytesIO(f.read())
    with h5py.File(bio, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        _layer(cfg, "GRU").update(units=10 ** 6)
        f.attrs["model_config"] = json.dumps(cfg)
        names = [n.decode() if isinstance(n, bytes) else n for n in f["model_weights/gru"].attrs["weight_names"]]
        _unwritten(f, "model_weights/gru/" + names[0], (3, 3 * 10 ** 6))
        _unwritten(f, "model_weights/gru/" + names[1], (10 ** 6, 3 * 10 ** 6))
    p.write_bytes(bio.getvalue())
    files["keras h5 units=10^6 with unwritten weights"] = (str(p), r"claims 36000000 bytes but the file stores 0")
    return files


CHILD = textwrap.dedent(r"""
    import json, os, resource, sys, traceback
    import rnnfast, h5py, numpy
    import rnnfast.io.keras_file, rnnfast.io.torch_file
    rnnfast.set_num_threads(1)          # no thread stacks or malloc arenas to count against the limit
    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    vm = [l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]
    limit = (int(vm) // 1024 + int(sys.argv[2])) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results = {}
    for name, path in json.loads(sys.argv[1]).items():
        try:
            rnnfast.load(path)
            results[name] = ["loaded", ""]
        except rnnfast.FormatError as e:
            results[name] = ["FormatError", str(e)]
        except BaseException as e:
            results[name] = [type(e).__name__, traceback.format_exc()[-1500:]]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"results": results, "peak_growth_mb": peak - peak_before}))
""")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return _hostile_files(tmp_path_factory.mktemp("hostile"))


def test_hostile_files_are_small(hostile):
    for name, (path, _) in hostile.items():
        assert os.path.getsize(path) < 300_000, (name, os.path.getsize(path))


def test_enormous_claims_refused_without_allocating(hostile):
    """All of them in one child process with 400 MB of address space to spare: each is
    a FormatError naming the claim, and the peak RSS grows by less than 100 MB."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    arg = json.dumps({k: p for k, (p, _) in hostile.items()})
    out = subprocess.run([sys.executable, "-c", CHILD, arg, "400"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    import re

    for name, (path, msg) in hostile.items():
        kind, text = report["results"][name]
        assert kind == "FormatError", (name, kind, text)
        assert re.search(msg, text), (name, text)
    assert report["peak_growth_mb"] < 100, report["peak_growth_mb"]


# -- shapes against the architecture -------------------------------------------------------


def test_keras_shape_mismatch_names_the_weight(tmp_path):
    def grow(f):
        a = f["layers/gru/cell/vars/1"][()]
        del f["layers/gru/cell/vars/1"]
        f["layers/gru/cell/vars/1"] = np.zeros((a.shape[0] + 1, a.shape[1]), a.dtype)
    path = _keras_with_config(tmp_path / "m.keras", lambda c: None, grow)
    with pytest.raises(rnnfast.FormatError, match=r"layer 'gru': weight 'recurrent_kernel' has shape \(5, 12\), "
                                                  r"expected \(4, 12\)"):
        rnnfast.load(path)


def test_torch_shape_mismatch_names_the_tensor(tmp_path):
    doc = _torch_doc()
    t = doc.root["bias_hh_l0"]
    t.shape = (t.shape[0] - 1,)
    p = tmp_path / "m.pt"
    p.write_bytes(doc.zip_bytes())
    with pytest.raises(rnnfast.FormatError, match=r"tensor 'bias_hh_l0' has shape \(11,\); an GRU\(3, 4\) "
                                                  r"needs \(12,\)"):
        rnnfast.load(str(p))


def test_keras_huge_fixed_sequence_refused_without_allocating(tmp_path):
    """A Flatten fixes the sequence length; a declared length of 10^9 steps is refused
    by the load-time shape probe instead of allocated."""
    import keras

    m = keras.Sequential([keras.Input((4, 3)), keras.layers.SimpleRNN(2, return_sequences=True),
                          keras.layers.Flatten()])
    m.save(tmp_path / "f.keras")
    members = _zip_members((tmp_path / "f.keras").read_bytes())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            if name == "config.json":
                cfg = json.loads(data)
                cfg["config"]["layers"][0]["config"]["batch_shape"] = [None, 10 ** 9, 3]
                data = json.dumps(cfg)
            z.writestr(name, data)
    (tmp_path / "g.keras").write_bytes(buf.getvalue())
    assert rnnfast.load(str(tmp_path / "f.keras")).input_shape == (None, 4, 3)
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(rnnfast.FormatError, match=r"input of shape \(batch, 1000000000, 3\): 3000000000 "
                                                      r"values per sample"):
            rnnfast.load(str(tmp_path / "g.keras"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, peak


# -- the HDF5 library's endless loop on a damaged global heap -------------------------------


def _damage_free_space(data, how):
    """Damage the free-space record (object 0) of the first global heap collection so
    that HDF5 2.0 loops forever on the next string read: its size set to 0, or made
    64 bytes short, so that HDF5's walk lands in the (zero) free space and reads a
    record of index 0 and size 0 there."""
    b = bytearray(data)
    pos = b.find(b"GCOL")
    end = pos + struct.unpack_from("<Q", b, pos + 8)[0]
    p = pos + 16
    while p + 16 <= end:
        idx, size = struct.unpack_from("<H", b, p)[0], struct.unpack_from("<Q", b, p + 8)[0]
        if idx == 0:
            assert size > 64 and not any(b[end - 64:end])
            struct.pack_into("<Q", b, p + 8, 0 if how == "zero" else size - 64)
            return bytes(b)
        p += 16 + ((size + 7) & ~7)
    raise AssertionError("no free-space record")


@pytest.mark.parametrize("how", ["zero", "short"])
@pytest.mark.parametrize("fmt", ["keras3h5", "keras2h5", "keras"])
def test_damaged_global_heap_refused(fmt, how, tmp_path):
    """Checked in a subprocess with a timeout: were the check missing, HDF5 would spin."""
    with open(_seed(fmt), "rb") as f:
        data = f.read()
    if fmt == "keras":
        members = _zip_members(data)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, blob in members:
                z.writestr(name, _damage_free_space(blob, how) if name == "model.weights.h5" else blob)
        data = buf.getvalue()
    else:
        data = _damage_free_space(data, how)
    path = tmp_path / "heap.bin"
    path.write_bytes(data)
    code = ("import rnnfast, sys\ntry:\n    rnnfast.load(sys.argv[1])\nexcept rnnfast.FormatError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert "damaged HDF5 global heap" in out.stdout, out.stdout + out.stderr[-2000:]
