"""`import rnnfast` stays light: it imports none of the heavy modules it does not need.

Each check runs in a fresh interpreter (a module once imported stays in ``sys.modules``).
The compiled core calls the OpenBLAS of the scipy-openblas32 wheel, opened as a library
(``_threads._load_blas``): SciPy is not imported (nor needed), and h5py (Keras files), the
frameworks and the cluster engines load on first use.
"""

import json
import os
import subprocess
import sys

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

# what `import rnnfast` must not import: a name, or a package and everything under it
HEAVY = [
    "scipy",
    "scipy_openblas32",  # its library is opened, its Python package never imported
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
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_import_rnnfast_imports_no_heavy_module():
    modules = json.loads(fresh("import sys, json, rnnfast; print(json.dumps(sorted(sys.modules)))"))
    assert "rnnfast._kernels" in modules  # the core is loaded ...
    assert heavy_in(modules) == []  # ... but nothing heavy


def test_the_check_sees_a_heavy_import():
    # the same check, on an interpreter that did import SciPy's linear algebra: it must fail
    modules = json.loads(fresh("import sys, json, rnnfast, scipy.linalg; print(json.dumps(sorted(sys.modules)))"))
    assert "scipy.linalg" in heavy_in(modules)


def test_the_core_calls_scipy_openblas32_on_one_thread_and_starts_no_blas_threads():
    # the library opened is the scipy-openblas32 wheel's (not NumPy's, not SciPy's), it
    # runs one thread, and opening it started no OpenBLAS worker thread: the process has
    # as many threads after `import rnnfast` as after `import numpy` (the OpenMP runtime
    # starts none before its first parallel region). (Importing the scipy_openblas32
    # package first opens the library with its default threads; rnnfast's first call
    # then sets it to one: test_threads.)
    out = fresh(
        "import os, importlib.util\n"
        "os.environ.pop('OPENBLAS_NUM_THREADS', None)  # as a user who never set it\n"
        "import numpy\n"
        "lib = importlib.util.find_spec('scipy_openblas32').submodule_search_locations[0]\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "import rnnfast\n"
        "from rnnfast import _threads\n"
        "after = len(os.listdir('/proc/self/task'))\n"
        "ours = os.path.realpath(_threads._blas._name)\n"
        "print(ours.startswith(os.path.realpath(lib)))\n"
        "print(_threads._blas.scipy_openblas_get_num_threads(), after - before)\n"
        "print(os.environ.get('OPENBLAS_NUM_THREADS'))\n"
    )
    assert out.split("\n")[:3] == ["True", "1 0", "None"]  # and the environment as it was


def test_the_user_s_openblas_threads_setting_is_kept_for_numpy():
    # OPENBLAS_NUM_THREADS=1 is set only while rnnfast opens its own library: NumPy's
    # OpenBLAS, and the environment child processes see, keep the user's value
    out = fresh(
        "import os; os.environ['OPENBLAS_NUM_THREADS'] = '2'\n"
        "import numpy, rnnfast\n"
        "from threadpoolctl import threadpool_info\n"
        "from rnnfast import _threads\n"
        "ours = os.path.realpath(_threads._blas._name)\n"
        "print(sorted(i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'\n"
        "             and os.path.realpath(i['filepath']) != ours), os.environ['OPENBLAS_NUM_THREADS'])\n"
    )
    assert out.strip() == "[2] 2"


def test_without_scipy_openblas32_the_import_says_what_to_install():
    out = fresh(
        "import importlib.util as u\n"
        "find = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'scipy_openblas32' else find(name, *a)\n"
        "try:\n"
        "    import rnnfast\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    assert "pip install scipy-openblas32" in out


def test_the_kernels_agree_whichever_import_came_first():
    # SciPy's own OpenBLAS (another copy of the library) loaded first, or not at all:
    # the core calls its own, and gives the same bits
    code = (
        "{pre}import numpy as np, rnnfast, hashlib\n"
        "m = rnnfast.load(rnnfast.example('digits_bigru'))\n"
        "x = np.load(rnnfast.example('digits_test'))['x']\n"
        "print(hashlib.sha256(np.ascontiguousarray(m.predict(x, num_threads=1)).tobytes()).hexdigest())\n"
    )
    assert fresh(code.format(pre="")) == fresh(code.format(pre="import scipy.linalg\n"))
