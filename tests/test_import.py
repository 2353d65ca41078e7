"""`import rnnfast` stays light: it imports none of the heavy modules it does not need.

Each check runs in a fresh interpreter (a module once imported stays in ``sys.modules``).
The compiled core takes its BLAS from ``scipy.linalg.cython_blas``, which rnnfast loads
without ``scipy.linalg``'s package (``_threads._load_cython_blas``): SciPy's linear
algebra, h5py (Keras files), the frameworks and the cluster engines load on first use.
"""

import json
import os
import subprocess
import sys

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

# what `import rnnfast` must not import: a name, or a package and everything under it
HEAVY = [
    "scipy.linalg",
    "scipy.special",
    "scipy.sparse",
    "numpy.f2py",
    "h5py",
    "threadpoolctl",
    "torch",
    "keras",
    "tensorflow",
    "jax",
    "onnx",
    "onnxruntime",
    "dask",
    "ray",
    "rnnfast.dask",
    "rnnfast.ray",
]


def fresh(code):
    """Run ``code`` in a new interpreter that finds this checkout's rnnfast first; its stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def heavy_in(modules):
    # the BLAS's extension module is the one part of scipy.linalg the core needs
    light = {"scipy.linalg.cython_blas"}
    return sorted(m for m in modules if m not in light and any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_import_rnnfast_imports_no_heavy_module():
    modules = json.loads(fresh("import sys, json, rnnfast; print(json.dumps(sorted(sys.modules)))"))
    assert "rnnfast._kernels" in modules  # the core is loaded, and with it its BLAS ...
    assert "scipy.linalg.cython_blas" in modules
    assert heavy_in(modules) == []  # ... but nothing heavy


def test_the_check_sees_a_heavy_import():
    # the same check, on an interpreter that did import SciPy's linear algebra: it must fail
    modules = json.loads(fresh("import sys, json, rnnfast, scipy.linalg; print(json.dumps(sorted(sys.modules)))"))
    assert "scipy.linalg" in heavy_in(modules)


def test_scipy_linalg_after_rnnfast_is_whole():
    # scipy.linalg imported after rnnfast works, and its cython_blas is the module the core
    # runs on, reachable as an attribute as after an ordinary import
    out = fresh(
        "import sys, numpy as np, rnnfast\n"
        "import scipy.linalg.cython_blas\n"
        "import scipy.linalg\n"
        "assert scipy.linalg.cython_blas is sys.modules['scipy.linalg.cython_blas']\n"
        "assert 'sgemm' in scipy.linalg.cython_blas.__pyx_capi__\n"
        "print(float(scipy.linalg.inv(np.diag([2.0, 4.0])).sum()))\n"
        "m = rnnfast.load(rnnfast.example('digits_lstm'), batch_first=True)\n"
        "x = np.load(rnnfast.example('digits_test'))['x']\n"
        "print(m(x)[0].shape)\n"
    )
    lines = out.splitlines()
    assert float(lines[0]) == pytest.approx(0.75)
    assert lines[1] == "(450, 8, 64)"  # (batch, time, 2 directions x 32)


def test_a_probe_of_scipy_linalg_does_not_spend_the_hook():
    # importlib.util.find_spec("scipy.linalg") (a feature probe, no import) and then the
    # import itself: the attribute is still set, and the hook is gone after the import
    out = fresh(
        "import sys, importlib.util, rnnfast\n"
        "assert importlib.util.find_spec('scipy.linalg') is not None\n"
        "import scipy.linalg.cython_blas\n"
        "assert scipy.linalg.cython_blas is sys.modules['scipy.linalg.cython_blas']\n"
        "print(sum(type(f).__name__ == '_LinalgAttribute' for f in sys.meta_path))\n"
    )
    assert out.strip() == "0"


def test_the_kernels_agree_whichever_import_came_first():
    # the BLAS loaded rnnfast's way and the ordinary way (scipy.linalg imported first)
    # give the same bits
    code = (
        "{pre}import numpy as np, rnnfast, hashlib\n"
        "m = rnnfast.load(rnnfast.example('digits_bigru'))\n"
        "x = np.load(rnnfast.example('digits_test'))['x']\n"
        "print(hashlib.sha256(np.ascontiguousarray(m.predict(x, num_threads=1)).tobytes()).hexdigest())\n"
    )
    assert fresh(code.format(pre="")) == fresh(code.format(pre="import scipy.linalg\n"))
