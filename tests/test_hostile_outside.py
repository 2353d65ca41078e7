"""A file is the only thing read (issue 12, item 1).

HDF5 can take a dataset's bytes from elsewhere: external storage (a file name, absolute
or relative to the working directory, /dev/zero, a FIFO), external links (a dataset or
a whole group in another file), soft links (one may lead through an external link) and
virtual datasets (mapped from datasets in other files or the same one). Each attack is
built with h5py from a seed, in a whole-model ``.h5`` (Keras 3 and Keras 2 layouts) and
in the ``model.weights.h5`` image of a ``.keras`` archive, and must be a FormatError
naming the object, decided from the file's structure before any data is read: the FIFO
case, which would block forever on a read, runs in a subprocess with a timeout. Keras 3
itself refuses the same files.
"""
import io
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

import rnnfast
from rnnfast.io import keras_file

from fuzz import hostile as H


FORMATS = ("keras3h5", "keras2h5", "keras")
#: how -> the words the FormatError must hold
REFUSALS = {
    "external": r"keeps its data in the external file",
    "external-unlimited": r"keeps its data in the external file",
    "elink-dataset": r"is an external link to",
    "elink-group": r"is an external link to",
    "softlink": r"is a soft link",
    "softlink-outside": r"is an external link to|is a soft link",
    "vds": r"is a virtual dataset",
    "vds-self": r"is a virtual dataset",
}
SECRET = b"\x00\x00\x80\x3f" * 4096          # float32 1.0: visible in the outputs, were it read


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """A folder with a secret, donors for the links (the seeds' paths, all values 7)
    and a FIFO; the working directory (where relative external names are looked up)."""
    (tmp_path / "secret.bin").write_bytes(SECRET)
    for fmt in FORMATS:
        H.donor_for(fmt, str(tmp_path / ("donor-%s.h5" % fmt)))
    os.mkfifo(str(tmp_path / "fifo"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _target(d, fmt, how):
    if how.startswith("external"):
        return str(d / "secret.bin")
    return str(d / ("donor-%s.h5" % fmt))


def _write(d, fmt, data, name="attack"):
    p = d / (name + (".keras" if fmt == "keras" else ".h5"))
    p.write_bytes(data)
    return str(p)


def test_seeds_and_donors_load(outside):
    """The attacks start from files that load, and the donors hold other values: were
    a donor's bytes taken, the model would change."""
    for fmt in FORMATS:
        m = rnnfast.load(H.seed_path(fmt))
        assert m.predict(np.ones((1, 3) + tuple(m.input_shape[2:]) if len(m.input_shape) == 3 else (1, 3),
                                 dtype=np.float32 if len(m.input_shape) == 3 else np.int64)) is not None
        with h5py.File(str(outside / ("donor-%s.h5" % fmt)), "r") as f:
            assert f[H.weight_path(f)][()].ravel()[0] == 7.0


@pytest.mark.parametrize("how", sorted(REFUSALS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_data_from_outside_refused(fmt, how, outside):
    data = H.h5_outside(fmt, how, _target(outside, fmt, how))
    path = _write(outside, fmt, data)
    with pytest.raises(rnnfast.FormatError, match=REFUSALS[how]) as e:
        rnnfast.load(path)
    msg = str(e.value)
    assert "/" in msg.split(path, 1)[-1]            # names the object (a path inside the file)


@pytest.mark.parametrize("fmt", FORMATS)
def test_relative_external_name_refused(fmt, outside):
    """A relative name would be looked up in the working directory (here: the secret)."""
    path = _write(outside, fmt, H.h5_outside(fmt, "external", "secret.bin"))
    with pytest.raises(rnnfast.FormatError, match=r"external file secret\.bin"):
        rnnfast.load(path)


def test_whole_weights_group_from_another_file(outside):
    """``model_weights`` (a whole-model file) or ``layers`` (a .keras image) as an external
    link: named, with the file it points at."""
    for fmt, group in (("keras3h5", "/model_weights"), ("keras2h5", "/model_weights"), ("keras", "/layers")):
        path = _write(outside, fmt, H.h5_outside(fmt, "elink-group", _target(outside, fmt, "elink-group")))
        with pytest.raises(rnnfast.FormatError, match=r"%s is an external link to %s in the file .*donor-%s\.h5"
                                                     % (group, group, fmt)):
            rnnfast.load(path)


CHILD = textwrap.dedent(r"""
    import os, resource, sys, time
    import rnnfast
    rnnfast.set_num_threads(1)
    vm = [l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]
    limit = (int(vm) // 1024 + 300) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path in sys.argv[1:]:
        t = time.perf_counter()
        try:
            rnnfast.load(path)
            print("LOADED", path)
        except rnnfast.FormatError as e:
            print("FormatError %.2f s" % (time.perf_counter() - t), e)
        except BaseException as e:
            print("OTHER", type(e).__name__, e)
    print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
""")


def test_fifo_and_dev_zero_refused_without_reading(outside):
    """External storage on a FIFO (a read would block forever) and on /dev/zero (a few kB
    that read as 768 MB of zeros): refused in a subprocess under a timeout and a 300 MB
    address-space margin, quickly and without growing."""
    paths = [_write(outside, fmt, H.h5_outside(fmt, "external", str(outside / "fifo")), "fifo-" + fmt)
             for fmt in FORMATS]
    paths.append(_write(outside, "keras3h5", H.devzero_keras_h5(8000), "devzero"))
    paths.append(_write(outside, "keras3h5", H.devzero_keras_h5(8000, target="zero-relative"), "devzero-rel"))
    os.symlink("/dev/zero", str(outside / "zero-relative"))
    out = subprocess.run([sys.executable, "-c", CHILD] + paths, capture_output=True, text=True, timeout=120,
                         cwd=str(outside), env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stderr[-3000:]
    results = [l for l in lines if not l.startswith("GROWTH_KB")]
    assert len(results) == len(paths), out.stdout + out.stderr[-2000:]
    for line in results:
        assert line.startswith("FormatError") and "keeps its data in the external file" in line, line
        assert float(line.split()[1]) < 5, line
    growth_kb = int(lines[-1].split()[1])
    assert growth_kb < 50 << 10, growth_kb


def test_checked_before_any_read(outside, monkeypatch):
    """The structure is checked before an attribute or a dataset is read: for a good file
    the check comes first; for an attack nothing is read at all."""
    events = []
    check = keras_file.check_confined
    monkeypatch.setattr(keras_file, "check_confined", lambda f, what: events.append("check") or check(f, what))
    getitem, array = h5py.AttributeManager.__getitem__, keras_file._Stored.__array__
    monkeypatch.setattr(h5py.AttributeManager, "__getitem__",
                        lambda self, name: events.append("attr") or getitem(self, name))
    monkeypatch.setattr(keras_file._Stored, "__array__",
                        lambda self, *a, **k: events.append("data") or array(self, *a, **k))
    for fmt in FORMATS:
        del events[:]
        rnnfast.load(H.seed_path(fmt))
        assert events[0] == "check" and "data" in events, events
        del events[:]
        path = _write(outside, fmt, H.h5_outside(fmt, "vds", _target(outside, fmt, "vds")))
        with pytest.raises(rnnfast.FormatError, match="virtual dataset"):
            rnnfast.load(path)
        assert events == ["check"], events


def test_filter_plugins_refused(tmp_path):
    """A dataset needing a filter that is not part of the HDF5 library (HDF5 would load a
    plugin from HDF5_PLUGIN_PATH to read it)."""
    bio = io.BytesIO(H.read(H.seed_path("keras3h5")))
    with h5py.File(bio, "r+") as f:
        p = H.weight_path(f)
        a = f[p][()]
        del f[p]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(a.shape)
        dcpl.set_filter(32001, h5py.h5z.FLAG_OPTIONAL, ())
        space = h5py.h5s.create_simple(a.shape)
        h5py.h5d.create(f.id, p.encode(), h5py.h5t.py_create(a.dtype), space, dcpl=dcpl)
    path = tmp_path / "plugin.h5"
    path.write_bytes(bio.getvalue())
    with pytest.raises(rnnfast.FormatError, match="filter plugin 32001"):
        rnnfast.load(str(path))


def test_links_inside_the_file(tmp_path):
    """Hard links are the file's own: a group linked into itself (a cycle) is walked
    once, and a weight linked twice loads (the walk follows each object once)."""
    bio = io.BytesIO(H.read(H.seed_path("keras3h5")))
    with h5py.File(bio, "r+") as f:
        f["model_weights/loop"] = f["model_weights"]
        f["extra_link_to_kernel"] = f[H.weight_path(f)]
    path = tmp_path / "loops.h5"
    path.write_bytes(bio.getvalue())
    m = rnnfast.load(str(path))
    ref = rnnfast.load(H.seed_path("keras3h5"))
    x = np.linspace(-1, 1, 2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    np.testing.assert_array_equal(m.predict(x), ref.predict(x))


def test_object_count_and_group_depth_capped(tmp_path):
    """More than MAX_H5_OBJECTS links (here: links to one dataset, cheap to write) or
    groups nested deeper than MAX_H5_DEPTH: refused before walking them all."""
    bio = io.BytesIO(H.read(H.seed_path("keras3h5")))
    with h5py.File(bio, "r+") as f:
        g = f.create_group("many")
        target = f[H.weight_path(f)]
        for i in range(keras_file.MAX_H5_OBJECTS + 1):
            g["l%d" % i] = target
    path = tmp_path / "many.h5"
    path.write_bytes(bio.getvalue())
    with pytest.raises(rnnfast.FormatError, match="more than %d objects" % keras_file.MAX_H5_OBJECTS):
        rnnfast.load(str(path))
    bio = io.BytesIO(H.read(H.seed_path("keras3h5")))
    with h5py.File(bio, "r+") as f:
        g = f
        for _ in range(keras_file.MAX_H5_DEPTH + 2):
            g = g.create_group("d")
    path = tmp_path / "deep.h5"
    path.write_bytes(bio.getvalue())
    with pytest.raises(rnnfast.FormatError, match="groups nested more than %d levels" % keras_file.MAX_H5_DEPTH):
        rnnfast.load(str(path))


@pytest.mark.parametrize("how", ["external", "elink-dataset", "elink-group", "softlink", "softlink-outside",
                                 "vds", "vds-self"])
@pytest.mark.parametrize("fmt", ["keras", "keras3h5"])
def test_keras3_refuses_them_too(fmt, how, outside):
    """Keras 3 (3.15) refuses the same files: "Not allowed: H5 file with ..." (a whole
    ``layers`` group behind an external link it does not enter: no weights found)."""
    keras = pytest.importorskip("keras")
    path = _write(outside, fmt, H.h5_outside(fmt, how, _target(outside, fmt, how)))
    with pytest.raises(ValueError) as e:
        keras.saving.load_model(path, compile=False)
    if how != "elink-group":
        assert "Not allowed: H5 file with" in str(e.value)
    with pytest.raises(rnnfast.FormatError):
        rnnfast.load(path)
