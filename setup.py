"""Build rnnfast's compiled core.

OpenMP is probed by compiling a tiny program; when the compiler has none (or
``RNNFAST_NO_OPENMP=1`` is set) the same sources build serial. No
``-march=native`` and no fast-math: the element-wise kernels carry their own
AVX2 / AVX-512 versions chosen at run time (see ``src/rnnfast/c/isa.h``). ``RNNFAST_NATIVE=1``
opts in to ``-march=native`` for a machine-specific build. The binary carries no debug
info or symbols unless ``RNNFAST_DEBUG=1`` (or a ``-g`` in ``CFLAGS``) asks for them.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d", n > 0 && omp_get_max_threads() > 0);
        return 0;
    }
    """
)


def _openmp_flags(compiler):
    """Return (compile_args, link_args) for OpenMP, or None when unavailable."""
    if os.environ.get("RNNFAST_NO_OPENMP", "") not in ("", "0"):
        print("rnnfast: RNNFAST_NO_OPENMP set, building without OpenMP")
        return None
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(PROBE)
        for cflags, lflags in candidates:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                exe = os.path.join(tmp, "probe")
                compiler.link_executable(objs, exe, extra_postargs=lflags)
                out = subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout
                if out.strip() == "1":
                    return cflags, lflags
            except Exception:
                continue
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("rnnfast: WARNING: the compiler has no usable OpenMP; building serial (one thread)")
    return None


def _keep_debug_info():
    """Debug info and symbols stay in the binary only when asked for: RNNFAST_DEBUG=1,
    or a -g flag in CFLAGS (as tests/memcheck/run_asan.sh gives)."""
    if os.environ.get("RNNFAST_DEBUG", "") not in ("", "0"):
        return True
    return any(f.startswith("-g") and f != "-g0" for f in os.environ.get("CFLAGS", "").split())


class BuildExt(build_ext):
    def build_extensions(self):
        omp = _openmp_flags(self.compiler)
        ctype = self.compiler.compiler_type
        strip = not _keep_debug_info()
        for ext in self.extensions:
            if ctype == "msvc":
                ext.extra_compile_args += ["/O2"]
            else:
                if strip:
                    # no debug info (Python's own CFLAGS carry -g; the last -g wins) and,
                    # on Linux, no symbol table: the shipped .so is 0.8 MB, not 3.4 MB
                    ext.extra_compile_args += ["-g0"]
                    if sys.platform.startswith("linux"):
                        ext.extra_link_args += ["-s"]
                # -fno-trapping-math: FP exception flags are not observed, which lets GCC
                # if-convert (and so vectorize) the branch-free exp/tanh; results are
                # unchanged (unlike fast-math: no reassociation, NaN/Inf kept).
                ext.extra_compile_args += ["-O3", "-fno-trapping-math", "-fno-strict-aliasing", "-Wno-unused-function"]
                if os.environ.get("RNNFAST_NATIVE", "") not in ("", "0"):
                    ext.extra_compile_args += ["-march=native"]
            if omp is not None:
                ext.extra_compile_args += omp[0]
                ext.extra_link_args += omp[1]
        build_ext.build_extensions(self)


def extensions():
    from Cython.Build import cythonize

    exts = [
        Extension(
            "rnnfast._kernels",
            ["src/rnnfast/_kernels.pyx"],
            include_dirs=["src/rnnfast"],
            # the C core (c/**: headers and templates) and the module's .pxd: a change
            # to one alone must rebuild it too
            depends=sorted(h for h in glob.glob("src/rnnfast/c/**/*.h", recursive=True) if "rowops" not in h)
            + ["src/rnnfast/_kernels.pxd", "src/rnnfast/_ndarray.pxd"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        ),
        # the streams' bookkeeping (rnnfast/stream.py): claims, state rows, chunk stacking
        Extension(
            "rnnfast._stream",
            ["src/rnnfast/_stream.pyx"],
            depends=["src/rnnfast/c/ndarray.h", "src/rnnfast/c/layout.h", "src/rnnfast/_ndarray.pxd"],
        ),
        # the small ops of ONNX graphs on rows (rnnfast/model_onnx.py): softmax, few-row products
        Extension(
            "rnnfast._rowops",
            ["src/rnnfast/_rowops.pyx"],
            include_dirs=["src/rnnfast"],
            depends=sorted(glob.glob("src/rnnfast/c/rowops*.h"))
            + ["src/rnnfast/c/mathfun.h", "src/rnnfast/c/ndarray.h", "src/rnnfast/_ndarray.pxd"],
        ),
    ]
    return cythonize(
        exts,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
