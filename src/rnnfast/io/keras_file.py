"""Keras models from files and live objects: config parsing and graph wiring.

Sources (detected by content, see :func:`rnnfast.io.sniff`):

- Keras 3 ``.keras``: a zip of ``metadata.json`` (``keras_version``), ``config.json``
  (the model config) and ``model.weights.h5`` (``layers/<layer>/.../vars/<i>``);
- whole-model HDF5 (``model.save("m.h5")``) from Keras 2, tf.keras or Keras 3: root
  attributes ``model_config`` (JSON) and ``keras_version``, a layer's weights in
  ``model_weights/<layer>/`` listed in order by its ``weight_names`` attribute;
- a live ``keras.Model`` (:func:`from_keras`): its ``get_config()`` and each layer's
  ``get_weights()``, converted in memory.

HDF5 is read with h5py, imported here only; neither Keras nor TensorFlow is ever
imported. Before h5py reads anything of a file, its global heaps are checked
(:func:`check_global_heaps`, against an HDF5 library hang) and every link and dataset
(:func:`check_confined`: no external storage, external or soft links, virtual
datasets or filter plugins: the file is the only thing read); the loader then finds
objects in the checked tree. Costs are bounded by the file: at most MAX_H5_OBJECTS
objects, MAX_LAYERS layers, configs MAX_CONFIG_DEPTH deep, weights inflating at most
MAX_WEIGHT_INFLATE / MAX_IMAGE_INFLATE times. Config dialects: Keras 3 (``inbound_nodes`` as ``{"args", "kwargs"}``,
dtype policies as dicts, masks recorded as ``mask=`` arguments computed by
``NotEqual`` / ``Any`` operations) and Keras 2 (nested lists, dtypes as strings,
masks implicit). The config becomes a graph in :mod:`rnnfast.io.keras_graph`.
"""

import functools
import io
import json
import mmap
import os
import re
import struct
import sys
import zipfile

import numpy as np

from .._quant import check_precision
from ..errors import FormatError, UnsupportedLayerError
from ._json import json_depth
from ._zip import ZIP_ERRORS, check_zip_member, read_member
from .keras_convert import ConvertContext
from .keras_graph import MAX_LAYERS, MAX_PROBE_VALUES, build_model  # noqa: F401 (re-exported)
from .keras_layers import RECURRENT_CLASSES, expects_weights

__all__ = ["load_keras_file", "from_keras", "build_model"]

_H5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras files needs h5py (pip install h5py)") from None
    return h5py


# -- entry points ---------------------------------------------------------------------


def load_keras_file(path, dtype=None, **options):
    """Load a Keras ``.keras`` archive or whole-model HDF5 file.

    Parameters
    ----------
    path : str or os.PathLike
    dtype : {None, "float32", "float64"}
        Compute dtype for every layer (default: each layer's own dtype policy).

    Returns
    -------
    rnnfast.KerasModel
    """
    inputs_from = options.pop("inputs_from", None)
    config = options.pop("config", None)
    if options:
        raise TypeError(
            "unexpected option(s) for a Keras file: %s (Keras files take dtype=, config= "
            "and inputs_from=)" % ", ".join(sorted(options))
        )
    ConvertContext("3", dtype)  # an invalid dtype option is a ValueError, not a file's fault
    ctx_dtype = dtype
    with open(path, "rb") as f:
        head = f.read(8)
    try:
        if head.startswith(_H5_MAGIC) and config is not None:
            return _load_weights(path, config, ctx_dtype, inputs_from)
        if head.startswith(_H5_MAGIC):
            return _load_hdf5(path, ctx_dtype, inputs_from)
        if zipfile.is_zipfile(path):
            return _load_archive(path, ctx_dtype, inputs_from)
    except (FormatError, UnsupportedLayerError):
        raise
    except _MALFORMED as e:
        # a damaged HDF5 structure (h5py raises OSError, RuntimeError, KeyError, ...) or a
        # config value of an unexpected type, met below the checks that name the problem
        raise FormatError("%s: malformed Keras file (%s: %s)" % (path, type(e).__name__, str(e)[:300])) from None
    raise FormatError("%s is neither a Keras .keras archive nor an HDF5 file" % path)


#: What reading a damaged file or an ill-typed config can raise (see load_keras_file).
_MALFORMED = (
    AttributeError,
    TypeError,
    KeyError,
    IndexError,
    ValueError,
    RuntimeError,
    OSError,
    OverflowError,
    EOFError,
    struct.error,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
)
#: Largest config.json / metadata.json read (a config is a few kB to a few MB).
MAX_JSON_BYTES = 64 << 20
#: A stored weight may be at most this many times larger than the bytes the HDF5 file
#: holds for it (Keras writes weights uncompressed; a dataset that was never written
#: reads as its fill value and occupies nothing), beyond SMALL_WEIGHT bytes. Loading
#: makes a few copies of a weight on its way to the packed kernels, so this keeps a
#: file's memory within about 100 times its size.
MAX_WEIGHT_INFLATE = 10
SMALL_WEIGHT = 1 << 20
#: A deflated ``model.weights.h5`` may inflate at most this many times beyond
#: SMALL_WEIGHT bytes (Keras stores it uncompressed; float weights deflate about
#: 1.1 times): the image, a weight read from it and its converted copies stay within
#: about 100 times the file's size.
MAX_IMAGE_INFLATE = 10
#: Most objects (links) an HDF5 file may hold: every one is checked before anything is
#: read (see check_confined), at about 0.1 ms each. A Keras model has a few per layer.
MAX_H5_OBJECTS = 16384
#: Deepest group nesting in an HDF5 file (Keras writes 4 to 8 levels).
MAX_H5_DEPTH = 64
#: Deepest nesting of lists and dicts in a model config (Keras writes about 12).
MAX_CONFIG_DEPTH = 100


def from_keras(model, dtype=None, *, precision="float32", **options):
    """Convert a live Keras model (Keras 3, tf.keras or Keras 2 ``Sequential`` or
    functional model) without saving it; see :func:`~rnnfast.io.keras_file.load_keras_file`.
    ``precision``: as :func:`rnnfast.load`'s."""
    precision = check_precision(precision)
    inputs_from = options.pop("inputs_from", None)
    if options:
        raise TypeError("unexpected option(s) for from_keras: %s" % ", ".join(sorted(options)))
    if not (hasattr(model, "get_config") and hasattr(model, "layers") and hasattr(model, "get_layer")):
        raise TypeError("from_keras takes a keras.Model or Sequential, got %s" % type(model).__name__)
    cls = type(model).__name__
    framework = type(model).__module__.split(".")[0]
    if cls not in ("Sequential", "Functional", "Model") or framework not in ("keras", "tf_keras", "tensorflow"):
        # a subclass may compute anything in its call(): its config does not say what
        raise UnsupportedLayerError(
            cls,
            None,
            "a subclassed model: rnnfast loads Sequential and functional models, whose config says what they compute",
        )
    try:
        config = model.get_config()
    except NotImplementedError:
        config = None
    if not isinstance(config, (dict, list)) or (isinstance(config, dict) and "layers" not in config):
        raise UnsupportedLayerError(cls, None, "a model without a layer config")
    version = _live_version(model)
    built = build_model(
        {"class_name": cls, "config": config},
        _LiveWeights(model),
        version,
        dtype=dtype,
        source="live %s model" % framework,
        inputs_from=inputs_from,
    )
    return built if precision == "float32" else built.with_precision(precision)


class _LiveWeights:
    """The weights of a live model's layers (``model.get_layer(name)``); a nested
    model's through :meth:`nested`."""

    def __init__(self, model):
        self.model = model

    def __call__(self, name, _cls, _cfg):
        layer = self.model.get_layer(name)
        variables = list(layer.weights)
        arrays = layer.get_weights()
        if len(variables) != len(arrays):
            raise FormatError("layer %r: %d variables but %d weights" % (name, len(variables), len(arrays)))
        return [(getattr(v, "path", None) or getattr(v, "name", None), np.array(a)) for v, a in zip(variables, arrays)]

    def nested(self, name, _cls, _cfg):
        return _LiveWeights(self.model.get_layer(name))

    def distributed(self, name, _cls, _cfg):
        """The weights of the model a ``TimeDistributed`` layer ``name`` wraps."""
        return _LiveWeights(self.model.get_layer(name).layer)


def _live_version(model):
    top = type(model).__module__.split(".")[0]
    mod = sys.modules.get(top)
    version = getattr(mod, "__version__", None)
    if top == "keras" and version is None:
        version = "3"
    if version is None:
        raise FormatError("cannot tell which Keras version %s comes from" % type(model).__name__)
    if top == "tensorflow":  # tf.keras inside TensorFlow 2: Keras 2 semantics
        version = "2"
    return str(version)


def _read_member(z, name, size, limit=None):
    """One member's bytes, after checking its claimed sizes (zip bombs, see
    :func:`rnnfast.io._zip.check_zip_member`)."""
    info = z.getinfo(name)
    try:
        check_zip_member(info, size)
        if limit is not None and info.file_size > limit:
            raise FormatError("%s holds %d bytes (at most %d)" % (name, info.file_size, limit))
    except FormatError as e:
        raise FormatError("%s: %s" % (z.filename, e)) from None
    return read_member(z, info, "%s: %s" % (z.filename, name))


class _Image(io.RawIOBase):
    """A read-only file over a buffer, for h5py, without copying it (``io.BytesIO``
    copies anything but ``bytes``)."""

    def __init__(self, buf):
        super().__init__()
        self._buf = memoryview(buf).cast("B")
        self._pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        n = max(0, min(len(b), len(self._buf) - self._pos))
        memoryview(b).cast("B")[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, pos, whence=0):
        base = {0: 0, 1: self._pos, 2: len(self._buf)}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self):
        return self._pos

    def close(self):
        self._buf.release()
        super().close()


def _load_archive(path, dtype, inputs_from=None):
    h5py = _h5py()
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                raise FormatError("%s: a zip archive without config.json is not a Keras model" % path)
            config = _json(_read_member(z, "config.json", size, MAX_JSON_BYTES), path, "config.json")
            meta = (
                _json(_read_member(z, "metadata.json", size, MAX_JSON_BYTES), path, "metadata.json")
                if "metadata.json" in names
                else {}
            )
            if "model.weights.h5" not in names:
                raise FormatError(
                    "%s: no model.weights.h5 in the archive (sharded or weightless models are not supported)" % path
                )
            info = z.getinfo("model.weights.h5")
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(
                SMALL_WEIGHT, MAX_IMAGE_INFLATE * info.compress_size
            ):
                raise FormatError(
                    "%s: record model.weights.h5 would inflate %d compressed bytes to %d (more "
                    "than %d times; Keras stores it uncompressed)"
                    % (path, info.compress_size, info.file_size, MAX_IMAGE_INFLATE)
                )
            blob = _read_member(z, "model.weights.h5", size)
    except (FormatError, UnsupportedLayerError):
        raise
    except ZIP_ERRORS + (KeyError, RuntimeError) as e:
        raise FormatError("%s: unreadable .keras archive (%s: %s)" % (path, type(e).__name__, e)) from None
    version = meta.get("keras_version") if isinstance(meta, dict) else None
    if not version or not isinstance(version, str):
        raise FormatError("%s: metadata.json has no keras_version" % path)
    check_global_heaps(blob, "%s: model.weights.h5" % path)
    try:
        f = h5py.File(_Image(blob), "r")
    except OSError as e:
        raise FormatError("%s: model.weights.h5 is not a readable HDF5 file (%s)" % (path, e)) from None
    del blob
    with f:
        tree = check_confined(f, "%s: model.weights.h5" % path)
        source = _ArchiveWeights(tree.root, path)
        return build_model(config, source, version, dtype=dtype, source=str(path), inputs_from=inputs_from)


def _load_weights(path, config, dtype, inputs_from=None):
    """``save_weights`` HDF5 (Keras 3 ``.weights.h5``: ``layers/<name>/vars``; Keras 2:
    per-layer groups listed by ``layer_names``) beside the architecture ``to_json()``
    wrote (``config``: the JSON's path, its text, or the parsed dict)."""
    h5py = _h5py()
    if isinstance(config, (str, os.PathLike)) and os.path.exists(config):
        with open(config, "rb") as fh:
            raw = fh.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise FormatError("%s: a model config larger than %d bytes" % (config, MAX_JSON_BYTES))
        config = _json(raw, str(config), "config")
    elif isinstance(config, (str, bytes)):
        config = _json(config, path, "config")
    if not isinstance(config, dict) or "class_name" not in config:
        raise FormatError("config=: not a Keras model config (model.to_json()): %r" % (str(config)[:100],))
    version = config.get("keras_version")
    version = _str(version) if version is not None else None
    with open(path, "rb") as fh:
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            check_global_heaps(buf, path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FormatError("%s: unreadable HDF5 file (%s)" % (path, e)) from None
    with f:
        if "model_weights" in f:
            group, keras3 = f["model_weights"], False  # a whole-model file: its weights
        else:
            group, keras3 = f, "layers" in f and "layer_names" not in f.attrs
        if version is None:
            version = "3" if keras3 else "2"
        source = _ArchiveWeights(f, path) if keras3 else _H5Weights(group, path)
        return build_model(config, source, version, dtype=dtype, source=str(path), inputs_from=inputs_from)


def _load_hdf5(path, dtype, inputs_from=None):
    h5py = _h5py()
    with open(path, "rb") as fh:
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            check_global_heaps(buf, path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FormatError("%s: unreadable HDF5 file (%s)" % (path, e)) from None
    with f:
        tree = check_confined(f, path)
        if "model_config" not in f.attrs:
            raise FormatError(
                "%s: an HDF5 file without a model_config attribute: not a whole Keras "
                "model (weights-only files from save_weights() carry no architecture)" % path
            )
        config = _json(f.attrs["model_config"], path, "model_config")
        top = tree.root
        version = f.attrs.get("keras_version")
        if version is None and "model_weights" in top:
            version = top["model_weights"].attrs.get("keras_version")
        version = _str(version) if version is not None else None
        if version is None:
            # Keras >= 2.0 always writes it; a Keras 3 config is recognisable by its dtype dicts
            version = "3" if '"DTypePolicy"' in json.dumps(config) else "2"
        if _major_or_none(version) is not None and _major_or_none(version) < 2:
            raise FormatError("%s: written by Keras %s; rnnfast reads Keras 2 and 3 files" % (path, version))
        if not isinstance(top["model_weights"] if "model_weights" in top else None, _Group):
            raise FormatError("%s: no model_weights group: the model was saved without weights" % path)
        source = _H5Weights(top["model_weights"], path)
        return build_model(config, source, version, dtype=dtype, source=str(path), inputs_from=inputs_from)


def check_global_heaps(buf, what):
    """Refuse an HDF5 file whose global heap would make the HDF5 library loop forever.

    Variable-length strings (Keras 3's ``weight_names``, ``model_config``) live in
    global heap collections: ``GCOL``, version 1, 3 reserved bytes, the collection's
    size, then objects (index: 2 bytes, references: 2, reserved: 4, size, data padded
    to 8 bytes), the free space as object 0. HDF5 (2.0.0 at least) walks them to the
    collection's end, stepping past object 0 by its size alone (no header, no
    padding), so an object 0 of size 0 wherever the walk lands (one flipped bit in a
    size or an index suffices) makes it spin without end on the first string read. The
    collections are found by their signature and walked as HDF5 walks them; only files
    with 8-byte lengths (what h5py writes) are checked.

    Parameters
    ----------
    buf : bytes or mmap
        The whole file.
    what : str
        Names the file in the error.
    """
    if buf[:8] != _H5_MAGIC or len(buf) < 16:
        return
    lengths = buf[14] if buf[8] in (0, 1) else buf[10]  # superblock v0/1 vs v2/3
    if lengths != 8:
        return
    # Each walk steps forward through records by a rule that depends only on the bytes
    # at the record, so walks from different collections that meet go on alike: where a
    # walk from a position ends (at a free-space record of size 0, or past the file) is
    # remembered for every position it visits, and the whole check is linear in the
    # file's size (walking each collection afresh was quadratic: a megabyte of headers
    # inside each other's records took minutes).
    end_of: dict[int, int] = {}  # position -> the first bad record the walk from it meets, or -1
    limit = len(buf) - 16
    pos = buf.find(b"GCOL")
    while pos >= 0:
        size = int.from_bytes(buf[pos + 8 : pos + 16], "little") if pos + 16 <= len(buf) else 0
        if buf[pos + 4 : pos + 8] == b"\x01\x00\x00\x00" and size >= 4096:  # (HDF5's smallest collection)
            p, path = pos + 16, []
            while True:  # HDF5's own walk (H5HG__cache_heap_deserialize)
                bad = end_of.get(p)
                if bad is not None:
                    break
                if p > limit:
                    bad = -1
                    break
                path.append(p)
                idx = int.from_bytes(buf[p : p + 2], "little")
                n = int.from_bytes(buf[p + 8 : p + 16], "little")
                if idx == 0 and n == 0:
                    bad = p
                    break
                p += n if idx == 0 else 16 + ((n + 7) & ~7)
            for q in path:
                end_of[q] = bad
            # positions only grow along a walk, so the collection's own walk (which stops
            # at its end) meets the first bad record if and only if it lies inside
            if bad >= 0 and bad + 16 <= min(pos + size, len(buf)):
                raise FormatError(
                    "%s: damaged HDF5 global heap at byte %d (a free-space record of "
                    "size 0, on which the HDF5 library loops forever)" % (what, bad)
                )
        pos = buf.find(b"GCOL", pos + 4)


#: HDF5 filters whose code is part of the HDF5 library (any other is a plugin, which
#: HDF5 would load from HDF5_PLUGIN_PATH to read the dataset).
_BUILTIN_FILTERS = (1, 2, 3, 4, 5, 6)  # deflate, shuffle, fletcher32, szip, nbit, scaleoffset


def check_confined(f, what):
    """Refuse an HDF5 file any of whose objects would take bytes from outside the file;
    return the file's objects as a :class:`_Tree`.

    Every link is walked from the root group, iteratively, without following any:
    external links (an object, or a whole group such as ``model_weights``, in another
    file), soft links (Keras writes none; one may lead through an external link) and
    user-defined links are refused; every dataset reached by hard links has its
    creation properties checked: external storage (its bytes in a file the dataset
    names: a secret, a relative name looked up in the working directory, /dev/zero, a
    FIFO that would block forever), virtual datasets (mapped from datasets of other
    files, or of this one) and filters that are not part of the HDF5 library (plugins)
    are refused. Only object headers and link tables are read, never a dataset's data
    or an attribute. At most MAX_H5_OBJECTS links and MAX_H5_DEPTH levels of groups.

    The loader then finds groups and datasets in the returned tree (dictionary
    lookups, not HDF5 path traversals, which would follow links again and cost a
    tenth of a millisecond each).

    Parameters
    ----------
    f : h5py.File
    what : str
        Names the file in errors.
    """
    h5py = _h5py()
    h5g, h5l, h5o, h5d = h5py.h5g, h5py.h5l, h5py.h5o, h5py.h5d
    root = h5g.open(f.id, b"/")
    tree = _Tree(root)
    seen = {h5o.get_info(root).addr: root}
    stack = [(root, "/", 0)]
    count = 0
    while stack:
        gid, gpath, depth = stack.pop()
        count += gid.get_num_objs()
        if count > MAX_H5_OBJECTS:
            raise FormatError(
                "%s: the HDF5 file holds more than %d objects (a Keras model holds a few per "
                "layer)" % (what, MAX_H5_OBJECTS)
            )
        links = []
        gid.links.iterate(lambda name, info: links.append((name, info.type, info.u)), info=True)  # noqa: B023
        names = tree.children[gpath] = []
        for raw, typ, addr in links:
            name = raw.decode("utf-8", "surrogateescape")
            full = (gpath if gpath != "/" else "") + "/" + name
            if typ == h5l.TYPE_EXTERNAL:
                fname, target = gid.links.get_val(raw)
                raise FormatError(
                    "%s: %s is an external link to %s in the file %s: rnnfast reads only the "
                    "file it is given" % (what, _printable(full), _printable(_text(target)), _printable(_text(fname)))
                )
            if typ == h5l.TYPE_SOFT:
                raise FormatError(
                    "%s: %s is a soft link (to %s); Keras files have none"
                    % (what, _printable(full), _printable(_text(gid.links.get_val(raw))))
                )
            if typ != h5l.TYPE_HARD:
                raise FormatError("%s: %s is a user-defined HDF5 link (type %d)" % (what, _printable(full), typ))
            names.append(name)
            if addr in seen:
                # a second link to an object met before (a cycle, or a weight linked
                # twice): the same object, not walked again (its members are listed
                # under the first path only)
                tree.objects.setdefault(full, seen[addr])
                continue
            obj = seen[addr] = h5o.open(gid, raw)
            tree.objects[full] = obj
            if isinstance(obj, h5g.GroupID):
                if depth + 1 > MAX_H5_DEPTH:
                    raise FormatError(
                        "%s: %s: groups nested more than %d levels deep" % (what, _printable(full), MAX_H5_DEPTH)
                    )
                stack.append((obj, full, depth + 1))
            elif isinstance(obj, h5d.DatasetID):
                _check_dataset(obj, full, what)
    return tree


def _text(raw):
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


class _Tree:
    """An HDF5 file's objects as :func:`check_confined` found them: absolute path ->
    low-level object (``GroupID`` / ``DatasetID``), and group path -> link names in the
    file's order (listed for a group only under the first path it was met by)."""

    def __init__(self, root):
        self.objects = {"/": root}
        self.children = {}

    @property
    def root(self):
        return _Group(self, "/")

    def resolve(self, base, rel):
        """The absolute path of ``rel`` (relative to group ``base``, or absolute), as
        HDF5 resolves it: empty and "." components dropped."""
        if "/" not in rel and rel not in ("", "."):
            return (base if base != "/" else "") + "/" + rel
        parts = ([] if rel.startswith("/") else base.split("/")) + rel.split("/")
        return "/" + "/".join(p for p in parts if p not in ("", "."))

    def get(self, base, rel):
        if not isinstance(rel, str):
            return None
        path = self.resolve(base, rel)
        obj = self.objects.get(path)
        if obj is None:
            return None
        if isinstance(obj, _h5py().h5g.GroupID):
            return _Group(self, path)
        return _Dataset(obj, path)


class _Group:
    """A group of a :class:`_Tree`, with the parts of h5py's ``Group`` the loader uses."""

    __slots__ = ("tree", "name")

    def __init__(self, tree, name):
        self.tree, self.name = tree, name

    def __contains__(self, key):
        return self.tree.get(self.name, key) is not None

    def __getitem__(self, key):
        obj = self.tree.get(self.name, key)
        if obj is None:
            raise KeyError("%s has no member %s" % (_printable(self.name), _printable(str(key))))
        return obj

    def keys(self):
        return list(self.tree.children.get(self.name, ()))

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.tree.children.get(self.name, ()))

    @property
    def attrs(self):
        return _h5py().Group(self.tree.objects[self.name]).attrs


class _Dataset:
    """A dataset of a :class:`_Tree`: its low-level id and path."""

    __slots__ = ("id", "name")

    def __init__(self, dsid, name):
        self.id, self.name = dsid, name


def _check_dataset(ds, full, what):
    """Refuse a dataset whose bytes are not in the file, before reading any (see
    :func:`check_confined`)."""
    h5d = _h5py().h5d
    full = _printable(full)
    dcpl = ds.get_create_plist()
    if dcpl.get_external_count():
        name = dcpl.get_external(0)[0]
        raise FormatError(
            "%s: dataset %s keeps its data in the external file %s: rnnfast reads only the "
            "file it is given" % (what, full, _printable(name.decode("utf-8", "replace")))
        )
    if dcpl.get_layout() == h5d.VIRTUAL:
        raise FormatError(
            "%s: dataset %s is a virtual dataset (its data mapped from other datasets or "
            "files): rnnfast reads only the file it is given" % (what, full)
        )
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in _BUILTIN_FILTERS:
            raise FormatError("%s: dataset %s needs the HDF5 filter plugin %d" % (what, full, code))


def _printable(text):
    """``text`` (a name from the file) with anything outside printable ASCII escaped."""
    if text.isascii() and text.isprintable():
        return text
    return ascii(text)[1:-1]


def _json(raw, path, what):
    try:
        doc = json.loads(_str(raw))  # (the C parser refuses deep nesting with RecursionError)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise FormatError("%s: %s is not valid JSON (%s)" % (path, what, e)) from None
    depth = json_depth(doc, MAX_CONFIG_DEPTH)
    if depth > MAX_CONFIG_DEPTH:
        # the config walkers recurse on the result
        raise FormatError(
            "%s: %s nests lists and objects more than %d levels deep (a Keras config nests "
            "about 12)" % (path, what, MAX_CONFIG_DEPTH)
        )
    return doc


def _str(v):
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _str(v.item())
    return str(v)


def _major_or_none(version):
    digits = ""
    for ch in version:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


# -- weights from files ------------------------------------------------------------------


class _H5Weights:
    """``model_weights/<layer>/`` of a whole-model HDF5 file: the datasets named, in
    order, by the group's ``weight_names`` attribute."""

    def __init__(self, group, path):
        self.group, self.path = group, path

    def __call__(self, name, cls, cfg):
        if name not in self.group:
            return []
        g = self.group[name]
        names = [_str(n) for n in np.atleast_1d(g.attrs.get("weight_names", []))]
        out = []
        for wn in names:
            if wn not in g:
                raise FormatError("%s: layer %r lists weight %r, which the file lacks" % (self.path, name, wn))
            out.append((wn, _Stored(g[wn], self.path)))
        return out

    def nested(self, name, cls, cfg):
        """The weights of the layers of a model nested as layer ``name``: its group
        lists them all in ``weight_names``, each under its layer's name (Keras 3 puts a
        Sequential's own name first: ``enc/gru/gru_cell/kernel``; tf.keras writes
        ``gru/gru_cell/kernel:0``)."""
        return self._model_weights(name, name, cfg)

    def distributed(self, name, cls, cfg):
        """The weights of the model a ``TimeDistributed`` layer ``name`` wraps: listed
        in the layer's group as a nested model's are in its own."""
        model = cfg.get("name") if isinstance(cfg, dict) else None
        return self._model_weights(name, model, cfg)

    def _model_weights(self, group_name, model_name, cfg):
        if group_name not in self.group:
            return _H5Nested(None, [], self.path)
        g = self.group[group_name]
        names = [_str(n) for n in np.atleast_1d(g.attrs.get("weight_names", []))]
        layers = cfg.get("layers") if isinstance(cfg, dict) else None
        inner = {_layer_name(item) for item in layers} if isinstance(layers, list) else set()
        items = []
        for wn in names:
            parts = wn.split("/")
            if len(parts) >= 3 and parts[0] == model_name and model_name not in inner:
                parts = parts[1:]
            items.append((parts, wn))
        return _H5Nested(g, items, self.path)


def _layer_name(item):
    if not isinstance(item, dict):
        return None
    cfg = item.get("config")
    return item.get("name") or (cfg.get("name") if isinstance(cfg, dict) else None)


class _H5Nested:
    """The weights of a nested model's layers in a whole-model HDF5 file: ``items``,
    the model's ``weight_names`` as (path parts below the model, name in the group)."""

    def __init__(self, group, items, path):
        self.group, self.items, self.path = group, items, path

    def __call__(self, name, cls, cfg):
        out = []
        for parts, wn in self.items:
            if len(parts) >= 2 and parts[0] == name:
                if wn not in self.group:
                    raise FormatError("%s: weight %r is listed but missing" % (self.path, wn))
                out.append((wn, _Stored(self.group[wn], self.path)))
        return out

    def nested(self, name, cls, cfg):
        """A model nested in this one: its weights under its name (Keras 3), or -- as
        tf.keras lists them, by the innermost layer's name alone -- under the names of
        its layers."""
        prefixed = [(p[1:], wn) for p, wn in self.items if len(p) >= 3 and p[0] == name]
        if prefixed:
            return _H5Nested(self.group, prefixed, self.path)
        layers = cfg.get("layers") if isinstance(cfg, dict) else None
        inner = {_layer_name(item) for item in layers} if isinstance(layers, list) else set()
        return _H5Nested(self.group, [(p, wn) for p, wn in self.items if p and p[0] in inner], self.path)

    distributed = nested


class _Stored:
    """A weight in the HDF5 file, read only when a layer takes it: after its shape has
    been checked against the layer's config (:class:`~rnnfast.io.keras_convert.WeightList`),
    and after checking that the file holds the bytes it claims, so that a tiny file
    cannot declare a terabyte weight (an unwritten or compressed dataset). Read once,
    straight into the array returned (no further copy)."""

    __slots__ = ("ds", "path", "shape", "ndim", "dtype")

    def __init__(self, ds, path):
        if isinstance(ds, _h5py().Dataset):  # (an h5py group given directly, as in the tests)
            ds = _Dataset(ds.id, ds.name)
        if not isinstance(ds, _Dataset):
            raise FormatError("%s: %s is not a dataset" % (path, _printable(str(getattr(ds, "name", ds)))))
        h5s = _h5py().h5s
        self.ds, self.path = ds, path
        space = ds.id.get_space()
        null = space.get_simple_extent_type() == h5s.NULL
        self.shape = () if null else tuple(space.shape)
        self.ndim = len(self.shape)
        self.dtype = None if null else ds.id.dtype

    def __array__(self, dtype=None, copy=None):
        ds = self.ds
        if self.dtype is None or self.dtype.kind not in "fiub":
            raise FormatError(
                "%s: weight %s is a %s dataset, not numbers"
                % (self.path, _printable(ds.name), "null" if self.dtype is None else self.dtype)
            )
        nbytes = int(np.prod(self.shape, dtype=np.float64)) * self.dtype.itemsize
        stored = ds.id.get_storage_size()
        if nbytes > SMALL_WEIGHT and nbytes > MAX_WEIGHT_INFLATE * stored:
            raise FormatError(
                "%s: weight %s of shape %s claims %d bytes but the file stores %d for it"
                % (self.path, _printable(ds.name), self.shape, nbytes, stored)
            )
        _check_dataset(ds.id, ds.name, self.path)  # (check_confined saw it already)
        h5s = _h5py().h5s
        a = np.empty(self.shape, self.dtype)
        if a.size:
            ds.id.read(h5s.ALL, h5s.ALL, a)
        return a if dtype is None else a.astype(dtype, copy=False)


@functools.lru_cache(maxsize=1024)
def _snake(name):
    """Keras' snake_case of a class name (the .keras archive names sub-objects so):
    GRU -> gru, SimpleRNNCell -> simple_rnn_cell, SpatialDropout1D -> spatial_dropout1d."""
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _unique(names):
    """Keras' de-duplication of container entries: gru, gru_1, gru_2, ..."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append("%s_%d" % (n, seen[n]))
        else:
            seen[n] = 0
            out.append(n)
    return out


class _ArchiveWeights:
    """``model.weights.h5`` of a ``.keras`` archive. A layer lives in
    ``layers/<snake_case class>[_k]`` (k-th of its class in the model), its variables in
    ``vars/0..n``, those of its parts under ``cell/``, ``cell/cells/<cell class>[_k]/``,
    ``forward_layer/``, ``backward_layer/``, ``layer/``. Recent Keras also records
    each object's name in its ``vars`` group, which is checked where present."""

    def __init__(self, f, path):
        self.f, self.path = f, path
        self.paths = {}
        self._by_name = None

    def _recorded(self, layers):
        """Layer name -> group key, from the names the groups' ``vars`` record: built
        once, on the first layer not found where its class and position put it (a
        search per layer was quadratic: 1,500 layers took minutes)."""
        if self._by_name is None:
            self._by_name = {}
            for k in layers:
                n = _vars_name(layers[k])
                if n is not None:
                    self._by_name.setdefault(n, k)
        return self._by_name

    def bind(self, entries):
        """``entries``: [(name, class_name)] of the model's layers in config order."""
        self.paths = dict(zip([n for n, _ in entries], _unique([_snake(c) for _, c in entries])))

    def __call__(self, name, cls, cfg):
        if "layers" not in self.f:
            raise FormatError("%s: model.weights.h5 has no 'layers' group" % self.path)
        group = self._group(name)
        if group is None:
            if expects_weights(cls):
                raise FormatError("%s: no weights for layer %r in model.weights.h5" % (self.path, name))
            return []
        return [(None, a) for a in self._collect(group, cls, cfg)]

    def nested(self, name, cls, cfg):
        """The weights of the layers of a model nested as layer ``name``: its group
        holds ``layers/<snake_case class>[_k]`` as the model's own file does."""
        group = self._group(name)
        if group is None:
            raise FormatError("%s: no weights for nested model %r in model.weights.h5" % (self.path, name))
        return _ArchiveWeights(group, self.path)

    def distributed(self, name, cls, cfg):
        """The weights of the model a ``TimeDistributed`` layer ``name`` wraps: its
        group's ``layer/`` holds ``layers/...`` as a nested model's group does."""
        group = self._group(name)
        if group is None or "layer" not in group:
            raise FormatError("%s: no weights for the model in TimeDistributed %r" % (self.path, name))
        return _ArchiveWeights(group["layer"], self.path)

    def _group(self, name):
        layers = self.f["layers"]
        key = self.paths.get(name)
        group = layers[key] if key in layers else None
        recorded = _vars_name(group) if group is not None else None
        if group is None or (recorded is not None and recorded != name):
            k = self._recorded(layers).get(name)  # find it by the recorded name instead
            group = layers[k] if k is not None else None
        return group

    def _collect(self, g, cls, cfg):
        if cls in RECURRENT_CLASSES or cls == "RNN":
            cell = _sub(g, "cell", self.path)
            spec = cfg.get("cell") if cls == "RNN" else None
            if isinstance(spec, dict) and spec.get("class_name") == "StackedRNNCells":
                cells = spec.get("config", {}).get("cells", [])
                keys = _unique([_snake(c.get("class_name", "")) for c in cells if isinstance(c, dict)])
                box = _sub(cell, "cells", self.path)
                return [a for k in keys for a in _vars(_sub(box, k, self.path))]
            return _vars(cell)
        if cls == "Bidirectional":
            inner = cfg.get("layer") or {}
            back = cfg.get("backward_layer") or inner
            return self._part(g, "forward_layer", inner) + self._part(g, "backward_layer", back)
        if cls == "TimeDistributed":
            return self._part(g, "layer", cfg.get("layer") or {})
        if cls == "MultiHeadAttention":
            parts = ["query_dense", "key_dense"] + (["_gate_dense"] if cfg.get("use_gate") else [])
            parts += ["value_dense", "output_dense"]
            return [a for p in parts for a in _vars(_sub(g, p, self.path))]
        return _vars(g)

    def _part(self, g, key, spec):
        """The weights of a wrapped layer (``spec``: its serialized config)."""
        return self._collect(_sub(g, key, self.path), spec.get("class_name"), spec.get("config", {}))


def _vars_name(g):
    if "vars" in g:
        n = g["vars"].attrs.get("name")
        return _str(n) if n is not None else None
    return None


def _sub(g, key, path):
    if key not in g:
        raise FormatError("%s: model.weights.h5 lacks %s/%s" % (path, g.name, key))
    return g[key]


def _vars(g):
    """An object's own variables, ``vars/0``, ``vars/1``, ... in order."""
    if "vars" not in g:
        return []
    v = g["vars"]
    if sorted(v.keys(), key=lambda k: int(k) if k.isdigit() else -1) != [str(i) for i in range(len(v))]:
        raise FormatError("model.weights.h5: %s holds %s, expected 0..%d" % (v.name, sorted(v.keys()), len(v) - 1))
    return [_Stored(v[str(i)], "model.weights.h5") for i in range(len(v))]


# -- config parsing and graph wiring: rnnfast.io.keras_graph (build_model) ----------------
