"""`import rnnfast` stays light: it imports none of the heavy modules it does not need.

Each check runs in a fresh interpreter (a module once imported stays in ``sys.modules``).
The compiled core calls the OpenBLAS of the scipy-openblas32 wheel, opened as a library
(``_threads._load_blas``): SciPy is not imported (nor needed), and h5py (Keras files), the
frameworks and the cluster engines load on first use. rnnfast's own loaders and model code
load on first use too (``rnnfast/__init__.py``'s PEP 562 ``__getattr__``): ``import
rnnfast`` is the compiled core, the thread settings and the errors, and ``rnnfast.load``
imports the loader of the one format it finds in the file. (``numpy.linalg`` and the
``numpy.lib`` modules are not on the list: ``import numpy`` itself imports them.)
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
    # rnnfast's own loaders and models: imported when a name that needs them is first used
    "rnnfast.io",
    "rnnfast.model",
    "rnnfast.model_keras",
    "rnnfast.model_torch",
    "rnnfast.model_onnx",
    "rnnfast.layers",
    "rnnfast.cells",
    "rnnfast.stream",
    "rnnfast.graph",
    "rnnfast.ops",
    "rnnfast.precision",
    "rnnfast.reference",
    "rnnfast.demo",
    "rnnfast._bench",
    "rnnfast.cli",
    "zipfile",  # (the loaders' stdlib: numpy does not import it)
]

# the names of the minimal contract (../shared/API.md) and of docs/API.md, as users import them
PUBLIC = (
    "load from_keras from_torch from_onnx read_tensors example examples KerasModel TorchRNN TorchCell OnnxModel "
    "Sequential precision_error PRECISIONS layers cells set_num_threads get_num_threads FormatError "
    "UnsupportedLayerError RnnfastError dask ray __version__"
).split()


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


def test_every_public_name_resolves_to_the_object_its_module_defines():
    # in a fresh interpreter each: `from rnnfast import X` for every public name, the same
    # object as the module that defines it has, and `dir(rnnfast)` / `__all__` list them
    out = fresh(
        "import json, rnnfast, importlib\n"
        "public = %r\n"
        "where = {'load': 'io', 'from_keras': 'io.keras_file', 'from_torch': 'io.torch_export',\n"
        "         'from_onnx': 'io.onnx', 'read_tensors': 'io.torch_file', 'example': 'demo',\n"
        "         'examples': 'demo', 'KerasModel': 'model_keras', 'TorchRNN': 'model_torch',\n"
        "         'TorchCell': 'model_torch', 'OnnxModel': 'model_onnx', 'Sequential': 'model',\n"
        "         'precision_error': 'precision', 'PRECISIONS': '_quant', 'FormatError': 'errors',\n"
        "         'set_num_threads': '_threads', 'get_num_threads': '_threads'}\n"
        "listed = dir(rnnfast)\n"
        "same = {}\n"
        "for name in public:\n"
        "    ns = {}\n"
        "    exec('from rnnfast import %%s as value' %% name, ns)\n"
        "    mod = where.get(name)\n"
        "    same[name] = mod is None or ns['value'] is getattr(importlib.import_module('rnnfast.' + mod), name)\n"
        "star = {}\n"
        "exec('from rnnfast import *', star)\n"
        "missing = [[n for n in public if n not in listed and n not in ('dask', 'ray')],\n"
        "           [n for n in rnnfast.__all__ if n not in star]]\n"
        "modules = [rnnfast.layers.__name__, rnnfast.dask.__name__, rnnfast.io.keras_file.__name__]\n"
        "print(json.dumps([same, *missing, *modules, 'dask' in dir(rnnfast)]))\n" % (PUBLIC,)
    )
    same, not_listed, not_starred, *modules, dask_listed = json.loads(out)
    assert [name for name, ok in same.items() if not ok] == []
    assert not_listed == [] and not_starred == []
    assert modules == ["rnnfast.layers", "rnnfast.dask", "rnnfast.io.keras_file"]
    assert dask_listed  # once used


def test_help_lists_the_public_names_without_dask_or_ray_installed():
    # help(rnnfast) reads every name dir() lists: the cluster adapters, whose import fails
    # without their engine, are listed once used only
    out = fresh(
        "import sys, pydoc\n"
        "sys.modules['dask'] = sys.modules['ray'] = None  # neither installed\n"
        "import rnnfast\n"
        "text = pydoc.render_doc(rnnfast)\n"
        "print(all(n in text for n in ('KerasModel', 'from_onnx', 'read_tensors', 'set_num_threads', 'layers')))\n"
        "print('dask' in dir(rnnfast), 'rnnfast.dask' in sys.modules)\n"
    )
    assert out.splitlines() == ["True", "False False"]


def test_an_unknown_name_is_an_attribute_error_and_a_failing_import_says_why():
    out = fresh(
        "import sys, rnnfast, rnnfast.io\n"
        "print(hasattr(rnnfast, 'no_such_name'), hasattr(rnnfast.io, 'no_such_name'),\n"
        "      hasattr(rnnfast, '__no_dunder__'))\n"
        "try:\n"
        "    rnnfast.no_such_name\n"
        "except AttributeError as e:\n"
        "    print(e)\n"
        "sys.modules['dask'] = None  # Dask not installed: rnnfast.dask says what to install\n"
        "try:\n"
        "    rnnfast.dask\n"
        "except ImportError as e:\n"
        "    print('pip install' in str(e))\n"
        "sys.modules['rnnfast.graph'] = None  # a module the submodule needs is missing: that is the error\n"
        "try:\n"
        "    rnnfast.stream\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e.name)\n"
    )
    assert out.splitlines() == [
        "False False False",
        "module 'rnnfast' has no attribute 'no_such_name'",
        "True",
        "rnnfast.graph",
    ]


def test_help_version_and_threads_work_before_anything_is_loaded():
    # rnnfast.__version__, help(rnnfast.load), and the thread settings honouring
    # OMP_NUM_THREADS: all without any model code imported
    out = fresh(
        "import os, sys, pydoc; os.environ['OMP_NUM_THREADS'] = '3'\n"
        "import rnnfast\n"
        "from rnnfast import _version\n"
        "print(rnnfast.__version__ == _version.__version__, rnnfast.get_num_threads())\n"
        "rnnfast.set_num_threads(2)\n"
        "print(rnnfast.get_num_threads(), 'rnnfast.layers' in sys.modules)\n"
        "rnnfast.set_num_threads(None)\n"
        "print(rnnfast.get_num_threads())\n"
        "print('Load a model file' in pydoc.render_doc(rnnfast.load), 'FormatError' in pydoc.render_doc(rnnfast))\n"
    )
    assert out.splitlines() == ["True 3", "2 False", "3", "True True"]


def test_load_imports_the_loader_of_the_file_s_format_only():
    # a PyTorch state_dict needs neither the Keras loader (nor h5py) nor the ONNX one; a
    # .keras file needs neither the PyTorch nor the ONNX loader; both give the numbers
    # the bundled test split's saved probabilities say
    code = (
        "import sys, json, numpy as np, rnnfast\n"
        "from rnnfast import demo\n"
        "x = np.load(rnnfast.example('digits_test'))\n"
        "{load}\n"
        "print(json.dumps([float(np.abs(p - x[{saved!r}]).max()), sorted(m for m in sys.modules if m.startswith(\n"
        "    ('rnnfast.io.', 'h5py', 'rnnfast.model_')) and m.count('.') < 3)]))\n"
    )
    torch_load = (
        "m = rnnfast.load(rnnfast.example('digits_lstm'), batch_first=True)\n"
        "p = demo.lstm_head_proba(m(x['x'])[1][0], np.load(rnnfast.example('digits_lstm_head')))"
    )
    diff, modules = json.loads(fresh(code.format(load=torch_load, saved="torch_proba")))
    assert diff < 1e-5
    assert "rnnfast.io.torch_file" in modules and "rnnfast.model_torch" in modules
    assert [m for m in modules if m.startswith(("rnnfast.io.keras", "rnnfast.io.onnx", "h5py", "rnnfast.model_"))] == [
        "rnnfast.model_torch"
    ]
    keras_load = "p = rnnfast.load(rnnfast.example('digits_bigru')).predict(x['x'])"
    diff, modules = json.loads(fresh(code.format(load=keras_load, saved="keras_proba")))
    assert diff < 1e-5
    assert "rnnfast.io.keras_file" in modules and "h5py" in modules
    assert [m for m in modules if m.startswith(("rnnfast.io.torch_file", "rnnfast.io.onnx", "rnnfast.model_o"))] == []


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
