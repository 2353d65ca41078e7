"""Hostile files by structure class (issue 12), written from the seed corpus.

Shared by the tests (``tests/test_hostile_*.py``), the fuzzer's mutation operators
(``mutators.py``) and the bomb measurements (``measure_bombs.py``). Every builder
returns the bytes of a file (and writes the outside files it points at itself).

Classes:

- data from outside the file (HDF5): external storage (``external=`` of a dataset:
  a file name, absolute or relative, ``/dev/zero``, a FIFO), external links (a
  dataset, or the whole weights group, taken from another file), soft links, virtual
  datasets (sources in another file or in the same one) -- in a whole-model ``.h5``
  and in the ``model.weights.h5`` image of a ``.keras`` archive;
- depth: pickles nesting a tuple / list / dict ``n`` deep, a container appended into
  one already placed in another, JSON configs nesting ``n`` deep;
- counts: a pickle of ``n`` empty lists (deflated: a few bytes per thousand), a
  parameter name with a huge layer index, HDF5 global heap signatures that a naive
  walk visits quadratically, Keras configs of ``n`` layers;
- names: keys with a trailing newline or space, a stray projection tensor, duplicate
  keys in a safetensors header or a pickled dict, non-ASCII and lone surrogates.
"""
import io
import json
import os
import struct
import zipfile

import numpy as np

from .mutators import CORPUS, _write_zip, _zip_members
from .picklegen import TorchDoc

SEEDS = {"torchzip": "torchzip-gru.pt", "torchlegacy": "torchlegacy-lstm.pt",
         "safetensors": "safetensors-gru-bi.safetensors", "keras": "keras-gru.keras",
         "keras3h5": "keras3h5-gru.h5", "keras2h5": "keras2h5-gru-reset-before.h5"}


def seed_path(fmt):
    return os.path.join(CORPUS, SEEDS[fmt])


def read(path):
    with open(path, "rb") as f:
        return f.read()


# -- HDF5: bytes from outside the file --------------------------------------------------------

#: How a weight dataset may take its values from outside the file.
H5_OUTSIDE = ("external", "elink-dataset", "elink-group", "softlink", "softlink-outside", "vds",
              "vds-self", "external-unlimited")


def weight_path(f):
    """The first weight dataset of a Keras HDF5 file or weights image (the GRU kernel)."""
    found = []

    def visit(name, obj):
        if hasattr(obj, "shape") and not found:
            found.append(name)
    f.visititems(visit)
    return found[0]


def weights_group(f):
    """The group holding all the layers' weights: ``model_weights`` (whole-model file)
    or ``layers`` (a ``.keras`` weights image)."""
    return "model_weights" if "model_weights" in f else "layers"


def make_donor(path, seed_h5, value=7.0):
    """A copy of an HDF5 seed (bytes) with every float dataset set to ``value``: the
    other file that links point into. Returns ``path``."""
    import h5py

    bio = io.BytesIO(seed_h5)
    with h5py.File(bio, "r+") as f:
        def visit(name, obj):
            if hasattr(obj, "shape") and obj.dtype.kind == "f":
                obj[...] = value
        f.visititems(visit)
    with open(path, "wb") as out:
        out.write(bio.getvalue())
    return path


def point_outside(h5_bytes, how, target, *, path=None):
    """``h5_bytes`` with one weight (``path``, default the first) or the whole weights
    group taking its values from outside the file.

    ``target``: for ``external*``, the file name the dataset's storage names (anything:
    a secret file, a relative name, ``/dev/zero``, a FIFO); for links and ``vds``, an
    HDF5 file holding the same paths (see :func:`make_donor`).
    """
    import h5py

    bio = io.BytesIO(h5_bytes)
    with h5py.File(bio, "r+") as f:
        p = path or weight_path(f)
        ds = f[p]
        shape, dtype = ds.shape, ds.dtype
        if how in ("external", "external-unlimited"):
            nbytes = int(np.prod(shape)) * dtype.itemsize
            size = h5py.h5f.UNLIMITED if how == "external-unlimited" else nbytes
            del f[p]
            f.create_dataset(p, shape=shape, dtype=dtype, external=[(target, 0, size)])
        elif how == "elink-dataset":
            del f[p]
            f[p] = h5py.ExternalLink(target, "/" + p)
        elif how == "elink-group":
            g = weights_group(f)
            keep = dict(f[g].attrs)
            del f[g]
            f[g] = h5py.ExternalLink(target, "/" + g)
            del keep
        elif how == "softlink":             # to other values inside the file
            f.create_dataset("/stash/" + p, data=np.full(shape, 7.0, dtype))
            del f[p]
            f[p] = h5py.SoftLink("/stash/" + p)
        elif how == "softlink-outside":     # through an external link
            f["/elsewhere"] = h5py.ExternalLink(target, "/")
            del f[p]
            f[p] = h5py.SoftLink("/elsewhere/" + p)
        elif how in ("vds", "vds-self"):
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            if how == "vds":
                layout[...] = h5py.VirtualSource(target, "/" + p, shape=shape, dtype=dtype)
            else:
                f.create_dataset("/stash/" + p, data=np.full(shape, 7.0, dtype))
                layout[...] = h5py.VirtualSource(".", "/stash/" + p, shape=shape, dtype=dtype)
            del f[p]
            f.create_virtual_dataset(p, layout)
        else:
            raise ValueError(how)
    return bio.getvalue()


def keras_member(keras_bytes, name):
    return dict((n, d) for n, d, _ in _zip_members(keras_bytes))[name]


def keras_with(keras_bytes, **members):
    """A ``.keras`` archive with some members replaced (``model_weights_h5=`` for
    ``model.weights.h5``, ``config_json=``, ``metadata_json=``), stored as Keras does."""
    names = {"model_weights_h5": "model.weights.h5", "config_json": "config.json",
             "metadata_json": "metadata.json"}
    repl = {names[k]: v for k, v in members.items()}
    out = []
    for name, data, method in _zip_members(keras_bytes):
        out.append((name, repl.pop(name, data), method))
    out.extend((n, d, zipfile.ZIP_STORED) for n, d in repl.items())
    return _write_zip(out)


def h5_outside(fmt, how, target):
    """A Keras file (``fmt`` "keras3h5", "keras2h5" or "keras") whose first weight, or
    weights group, comes from ``target`` (see :func:`point_outside`)."""
    data = read(seed_path(fmt))
    if fmt == "keras":
        image = point_outside(keras_member(data, "model.weights.h5"), how, target)
        return keras_with(data, model_weights_h5=image)
    return point_outside(data, how, target)


def donor_for(fmt, path, value=7.0):
    """The other file for links / VDS of a ``fmt`` seed (same paths, all values
    ``value``)."""
    data = read(seed_path(fmt))
    if fmt == "keras":
        data = keras_member(data, "model.weights.h5")
    return make_donor(path, data, value)


# -- pickles: depth and counts ----------------------------------------------------------------


def _frame(body, protocol=2):
    return b"\x80" + bytes([protocol]) + body + b"."


def _get(i):
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def _put(i):
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def nested_body(depth, kind="tuple", memo_base=0):
    """Opcodes pushing one value nested ``depth`` deep, one or a few bytes a level:
    ``((((),),),)`` ("tuple"), ``[[[...]]]`` ("list"), ``{"a": {"a": ...}}`` ("dict"),
    ``{deep tuple: None}`` ("key": hashing the key recurses), ``set([deep tuple])``
    ("set", through an allowed global), lists placed into each other after they were
    placed ("late", see :func:`late_body`)."""
    deep = b")" + b"\x85" * depth
    if kind == "tuple":
        return deep
    if kind == "list":          # ] ( ] ( ] ... e ... e: each list appended into the one below
        return b"]" + b"(]" * depth + b"e" * depth
    if kind == "dict":
        return b"}" + b"(X\x01\x00\x00\x00a}" * depth + b"u" * depth
    if kind == "key":
        return b"}" + deep + b"Ns"
    if kind == "set":
        return b"c__builtin__\nset\n" + deep + b"\x85\x85R"
    if kind == "late":
        return late_body(depth, memo_base)
    raise ValueError(kind)


def nested_pickle(depth, kind="tuple"):
    """A whole pickle of :func:`nested_body`; kind "value" is a state_dict whose
    ``weight_ih_l0`` is a deep tuple."""
    if kind == "value":
        return _frame(b"}X\x0c\x00\x00\x00weight_ih_l0" + nested_body(depth) + b"s")
    return _frame(nested_body(depth, kind))


def late_body(depth, memo_base=0):
    """Lists created empty and memoised, then each appended into the previous one
    *after* that one was placed in its own parent: the nesting appears only once all
    are filled (what a depth count at construction time would miss). Memo indices from
    ``memo_base``."""
    body = bytearray(b"]" + _put(memo_base))
    for i in range(1, depth):
        body += b"]" + _put(memo_base + i) + b"0"          # made, memoised, popped
    for i in range(depth - 1):                              # list i .append(list i + 1)
        body += _get(memo_base + i) + _get(memo_base + i + 1) + b"a0"
    return bytes(body + _get(memo_base))


def late_nesting_pickle(depth):
    return _frame(late_body(depth))


def many_lists_body(n, maxrun=0, seed=0):
    """Opcodes pushing a list of ``n`` empty lists: one byte each (``]``), appended in
    batches of a thousand. With ``maxrun``, runs of 1..maxrun lists are separated by
    ``None`` (a pickle that deflates about ``maxrun / 5`` times rather than a thousand
    times, so that it passes a zip inflate-ratio limit)."""
    import random

    rng = random.Random(seed)
    items = bytearray()
    if maxrun:
        while len(items) < n:
            items += b"]" * rng.randint(1, maxrun) + b"N"
    else:
        items = bytearray(b"]" * n)
    body = bytearray(b"]")
    for i in range(0, len(items), 1000):
        body += b"(" + items[i:i + 1000] + b"e"
    return bytes(body)


def many_lists_pickle(n, maxrun=0, seed=0):
    return _frame(many_lists_body(n, maxrun, seed))


def torch_zip_with_pickle(pkl, compress=True):
    """A ``torch.save``-shaped zip whose ``data.pkl`` is ``pkl`` (deflated: a pickle of
    repeated opcodes shrinks a thousandfold)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    return _write_zip([("archive/data.pkl", pkl, method), ("archive/byteorder", b"little", zipfile.ZIP_STORED),
                       ("archive/version", b"3\n", zipfile.ZIP_STORED)])


def torch_doc():
    return TorchDoc.from_file(seed_path("torchzip"))


def torch_with_keys(rename=None, extra=None, layout="zip"):
    """The GRU seed's state_dict with keys renamed (``{old: new}``) and extra tensors
    (``{name: (copy of key, shape or None)}``), as a torch.save file."""
    import copy

    doc = torch_doc()
    root = doc.root
    items = [((rename or {}).get(k, k), v) for k, v in root.items()]
    for name, (src, shape) in (extra or {}).items():
        t = copy.deepcopy(root[src])
        if shape is not None:
            t.shape = tuple(shape)
            t.stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
        items.append((name, t))
    root.clear()
    root.update(items)
    return doc.zip_bytes() if layout == "zip" else doc.legacy_bytes()


def huge_layer_index_pt(index=999999999):
    """The GRU seed plus a copy of ``weight_ih_l0`` named ``weight_ih_l<index>``."""
    return torch_with_keys(extra={"weight_ih_l%d" % index: ("weight_ih_l0", None)})


# -- safetensors --------------------------------------------------------------------------------


def safetensors_from(entries, raw_header=None):
    """A safetensors file of ``entries``: [(name, float32 array)], in order; with
    ``raw_header`` (a function of the header dict -> JSON text) the header text is
    written as given (duplicate keys, escapes)."""
    header, data, pos = {}, b"", 0
    pairs = []
    for name, a in entries:
        a = np.ascontiguousarray(a, np.float32)
        b = a.tobytes()
        pairs.append((name, {"dtype": "F32", "shape": list(a.shape), "data_offsets": [pos, pos + len(b)]}))
        data += b
        pos += len(b)
    if raw_header is None:
        text = "{" + ", ".join("%s: %s" % (json.dumps(n), json.dumps(e)) for n, e in pairs) + "}"
    else:
        text = raw_header(pairs)
    raw = text.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw + data


def gru_state(hidden=4, inputs=3, seed=0):
    """A GRU state_dict (PyTorch layout) as [(name, array)]."""
    rng = np.random.default_rng(seed)
    g = 3 * hidden
    return [("weight_ih_l0", rng.standard_normal((g, inputs))), ("weight_hh_l0", rng.standard_normal((g, hidden))),
            ("bias_ih_l0", rng.standard_normal(g)), ("bias_hh_l0", rng.standard_normal(g))]


# -- HDF5: structure bombs -------------------------------------------------------------------


def gcol_records(size=1 << 20):
    """``size`` bytes of global heap collection signatures that a naive walk of every
    collection visits quadratically: 48-byte records (index 1, 32 data bytes) whose
    data holds a collection header (``GCOL``, version 1, claiming 2**40 bytes) and a
    16-byte empty record leading back onto the records' grid; the walk of every
    collection runs over all the records after it."""
    rec = (struct.pack("<HHIQ", 1, 0, 0, 32) + b"GCOL\x01\x00\x00\x00" + struct.pack("<Q", 1 << 40)
           + struct.pack("<HHIQ", 1, 0, 0, 0))
    return rec * (size // len(rec))


def gcol_into(h5_bytes, size=1 << 20):
    """A real HDF5 file followed by ``size`` bytes of :func:`gcol_records` (HDF5
    ignores bytes past its end-of-file address; the heap check reads them)."""
    return h5_bytes + gcol_records(size)


def keras_many_layers(n, cls="Dropout", weights=True):
    """A ``.keras`` archive: the GRU seed with ``n`` layers of class ``cls`` after the
    GRU (Dropout: no weights; with ``weights`` each gets its (empty) group in the
    weights image, as Keras writes it), in a Sequential model."""
    import h5py

    data = read(seed_path("keras"))
    cfg = json.loads(keras_member(data, "config.json"))
    layers = cfg["config"]["layers"]
    proto = {"module": "keras.layers", "class_name": cls,
             "config": {"name": None, "trainable": True, "dtype": "float32", "rate": 0.0, "seed": None,
                        "noise_shape": None}, "registered_name": None}
    for i in range(n):
        e = json.loads(json.dumps(proto))
        e["config"]["name"] = "dropout_x%d" % i
        layers.append(e)
    image = keras_member(data, "model.weights.h5")
    if weights:
        bio = io.BytesIO(image)
        with h5py.File(bio, "r+") as f:
            for i in range(n):
                g = f.create_group("layers/dropout" + ("_%d" % i if i else ""))
                g.create_group("vars")
        image = bio.getvalue()
    return keras_with(data, config_json=json.dumps(cfg).encode(), model_weights_h5=image)


def keras_renamed_layers(n):
    """``n`` GRU layers whose weight groups do not sit where their class and position
    say (``layers/gru_<k>``) but under shuffled names, each found by the name its
    ``vars`` group records: the by-name lookup of every layer."""
    import h5py

    data = read(seed_path("keras"))
    cfg = json.loads(keras_member(data, "config.json"))
    layers = cfg["config"]["layers"]
    gru = next(l for l in layers if l["class_name"] == "GRU")
    gi = layers.index(gru)
    gru["config"]["return_sequences"] = True
    image = keras_member(data, "model.weights.h5")
    src = io.BytesIO(image)
    bio = io.BytesIO()
    with h5py.File(src, "r") as f, h5py.File(bio, "w") as out:
        for k in f:
            if k != "layers":
                f.copy(f[k], out, k)
        for a, v in f.attrs.items():
            out.attrs[a] = v
        w = [f["layers/gru/cell/vars/%d" % i][()] for i in range(3)]
        first = dict(gru["config"])
        new_layers = []
        for i in range(n):
            c = json.loads(json.dumps(gru))
            c["config"]["name"] = "g%d" % i
            if i:
                c["config"].pop("batch_input_shape", None)
                h = w[1].shape[0]
                kern = np.zeros((h, w[0].shape[1]), np.float32)
            else:
                kern = w[0]
            new_layers.append(c)
            grp = out.create_group("layers/zz%d" % (n - i))           # not where Keras puts it
            v = grp.create_group("cell/vars")
            v["0"], v["1"], v["2"] = kern, w[1], w[2]
            grp.create_group("vars").attrs["name"] = "g%d" % i
        del first
    layers[gi:gi + 1] = new_layers
    return keras_with(data, config_json=json.dumps(cfg).encode(), model_weights_h5=bio.getvalue())


def keras_deflated_big(units=2000, density=0.006):
    """A ``.keras`` archive whose weights image (a GRU of ``units`` units, zeros but a
    ``density`` fraction of them) is deflated: a small file that inflates about 90
    times, within the zip limits."""
    import h5py

    data = read(seed_path("keras"))
    cfg = json.loads(keras_member(data, "config.json"))
    gru = next(l for l in cfg["config"]["layers"] if l["class_name"] == "GRU")
    gru["config"]["units"] = units
    image = keras_member(data, "model.weights.h5")
    bio = io.BytesIO(image)
    with h5py.File(bio, "r+") as f:
        v = f["layers/gru/cell/vars"]
        n_in = v["0"].shape[0]
        for k, shape in (("0", (n_in, 3 * units)), ("1", (units, 3 * units)), ("2", (2, 3 * units))):
            del v[k]
            rng = np.random.default_rng(0)
            a = np.where(rng.random(shape) < density, rng.standard_normal(shape), 0).astype(np.float32)
            v.create_dataset(k, data=a)
    members = [(n, (json.dumps(cfg).encode() if n == "config.json" else bio.getvalue() if n == "model.weights.h5"
                    else d), zipfile.ZIP_DEFLATED) for n, d, _ in _zip_members(data)]
    return _write_zip(members)


def deep_json_config(depth, where="output_layers"):
    """A functional ``.keras`` config whose ``where`` value nests ``depth`` lists deep."""
    data = read(os.path.join(CORPUS, "keras-lstm-dense.keras"))
    cfg = json.loads(keras_member(data, "config.json"))
    text = json.dumps(cfg)
    deep = "[" * depth + "]" * depth
    if where == "output_layers" and "output_layers" in cfg.get("config", {}):
        cfg["config"]["output_layers"] = "\x00DEEP\x00"
    else:
        cfg["config"]["layers"][-1]["config"]["extra"] = "\x00DEEP\x00"
    text = json.dumps(cfg).replace('"\\u0000DEEP\\u0000"', deep)
    return keras_with(data, config_json=text.encode())


def keras_gcol_deflated(size=1 << 20):
    """A ``.keras`` archive whose weights image carries ``size`` bytes of global heap
    signatures past its end, deflated (a few kB on disk)."""
    data = read(seed_path("keras"))
    image = gcol_into(keras_member(data, "model.weights.h5"), size)
    members = [(n, image if n == "model.weights.h5" else d, zipfile.ZIP_DEFLATED) for n, d, _ in _zip_members(data)]
    return _write_zip(members)


def devzero_keras_h5(units=8000, target="/dev/zero"):
    """A whole-model Keras 3 HDF5 file of a GRU with ``units`` units whose recurrent
    kernel (``units`` x 3 ``units`` float32) is external storage on ``target``: a few
    kB that read as hundreds of MB."""
    import h5py

    bio = io.BytesIO(read(seed_path("keras3h5")))
    with h5py.File(bio, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        gru = next(l for l in cfg["config"]["layers"] if l["class_name"] == "GRU")
        gru["config"]["units"] = units
        f.attrs["model_config"] = json.dumps(cfg)
        cell = f["model_weights/gru/sequential/gru/gru_cell"]
        n_in = cell["kernel"].shape[0]
        for k in ("kernel", "recurrent_kernel", "bias"):
            del cell[k]
        cell.create_dataset("kernel", data=np.zeros((n_in, 3 * units), np.float32))
        cell.create_dataset("bias", data=np.zeros((2, 3 * units), np.float32))
        cell.create_dataset("recurrent_kernel", shape=(units, 3 * units), dtype="f4",
                            external=[(target, 0, units * 3 * units * 4)])
    return bio.getvalue()


def h5_gzip_big(units=2000, density=0.006):
    """A whole-model Keras 3 HDF5 file of a GRU with ``units`` units whose weights (zeros
    but a ``density`` fraction) are gzip-compressed datasets: a small file whose
    weights inflate about 90 times (0.006) or 9 times (0.06)."""
    import h5py

    bio = io.BytesIO(read(seed_path("keras3h5")))
    with h5py.File(bio, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        gru = next(l for l in cfg["config"]["layers"] if l["class_name"] == "GRU")
        gru["config"]["units"] = units
        f.attrs["model_config"] = json.dumps(cfg)
        cell = f["model_weights/gru/sequential/gru/gru_cell"]
        n_in = cell["kernel"].shape[0]
        rng = np.random.default_rng(0)
        for k, shape in (("kernel", (n_in, 3 * units)), ("recurrent_kernel", (units, 3 * units)),
                         ("bias", (2, 3 * units))):
            del cell[k]
            a = np.where(rng.random(shape) < density, rng.standard_normal(shape), 0).astype(np.float32)
            cell.create_dataset(k, data=a, compression="gzip", chunks=True)
    return bio.getvalue()


def issue12_findings():
    """name -> bytes of the regression files of issue 12 kept in ``findings/`` (each a
    FormatError now; see findings/README.md). Files that name outside files use the fuzz
    worker's ``outside/`` folder."""
    import copy

    doc = torch_doc()
    root = doc.root
    shadow = dict(root)
    shadow["weight_ih_l0\n"] = copy.deepcopy(root["weight_ih_l0"])
    stray = dict(root)
    hh = root["weight_hh_l0"]
    t = copy.deepcopy(hh)
    t.shape, t.stride = (hh.shape[1], root["weight_ih_l0"].shape[0] // 4), (root["weight_ih_l0"].shape[0] // 4, 1)
    stray["weight_hr_l0"] = t
    st = gru_state()
    return {
        "torchzip-recursion-deep-tuple-key.bin": torch_zip_with_pickle(nested_pickle(5000, "key"), compress=False),
        "torchzip-bomb-million-lists.bin": torch_zip_with_pickle(many_lists_pickle(10 ** 6)),
        "torchzip-bomb-layer-index.bin": huge_layer_index_pt(),
        "torchzip-name-newline-shadow.bin": TorchDoc(shadow, doc.storages).zip_bytes(),
        "torchzip-name-stray-projection.bin": TorchDoc(stray, doc.storages).zip_bytes(),
        "safetensors-name-newline-shadow.bin": safetensors_from(st + [("weight_ih_l0\n", st[0][1] * 5)]),
        "safetensors-name-duplicate.bin": safetensors_from(
            st, raw_header=lambda pairs: "{" + ", ".join("%s: %s" % (json.dumps(n), json.dumps(e))
                                                         for n, e in pairs + pairs[:1]) + "}"),
        "keras3h5-outside-external-storage.bin": h5_outside("keras3h5", "external", "outside/secret.bin"),
        "keras3h5-outside-external-link-group.bin": h5_outside("keras3h5", "elink-group", "outside/donor.h5"),
        "keras-outside-virtual-dataset.bin": h5_outside("keras", "vds", "outside/donor.h5"),
        "keras2h5-outside-soft-link.bin": h5_outside("keras2h5", "softlink-outside", "outside/donor.h5"),
    }


def torch_deflated_big(hidden=1000, density=0.006, inputs=3):
    """A GRU(``inputs``, ``hidden``) state_dict whose storages (zeros but a ``density``
    fraction) are deflated zip records: a small .pt whose weights inflate about 90
    times (0.006) or 8 times (0.1), within the zip limits."""
    from .picklegen import Tensor

    rng = np.random.default_rng(0)
    g = 3 * hidden
    shapes = {"weight_ih_l0": (g, inputs), "weight_hh_l0": (g, hidden), "bias_ih_l0": (g,), "bias_hh_l0": (g,)}
    root, storages = {}, {}
    for i, (name, shape) in enumerate(shapes.items()):
        a = np.where(rng.random(shape) < density, rng.standard_normal(shape), 0).astype("<f4")
        storages[str(i)] = a.tobytes()
        stride = tuple(int(np.prod(shape[j + 1:])) for j in range(len(shape)))
        root[name] = Tensor(str(i), "FloatStorage", a.size, 0, shape, stride)
    return TorchDoc(root, storages).zip_bytes(compress=True)
