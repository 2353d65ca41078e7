"""Every instruction-set path of the element-wise kernels gives the reference's numbers.

The build carries AVX-512, AVX2 and baseline versions and picks the best at import;
RNNFAST_ISA forces a lower one. The numerical engine tests are rerun under each
lower path in a subprocess.
"""
import os
import subprocess
import sys

import pytest

from rnnfast import _kernels

HERE = os.path.dirname(os.path.abspath(__file__))
SUBSET = ("packed or activation or long_sequence or masks or without_bias or initial_states or blocked "
          "or (64-7-bidirectional-2)")


def test_imports_with_the_best_isa_by_default():
    want = os.environ.get("RNNFAST_EXPECT_ISA", _kernels.best_isa())
    assert _kernels.isa() == want


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_engine_under_lower_isa(isa):
    if _kernels.ISA_LEVELS.index(isa) >= _kernels.ISA_LEVELS.index(_kernels.best_isa()):
        pytest.skip("this machine's best instruction set is %s: it runs in the main suite"
                    % _kernels.best_isa())
    env = dict(os.environ, RNNFAST_ISA=isa, RNNFAST_EXPECT_ISA=isa)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        os.path.join(HERE, "test_engine.py"), os.path.join(HERE, "test_isa.py"),
                        "-k", SUBSET + " or best_isa"],
                       env=env, cwd=os.path.dirname(HERE), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout


def test_unknown_isa_is_refused():
    env = dict(os.environ, RNNFAST_ISA="avx9000")
    r = subprocess.run([sys.executable, "-c", "import rnnfast"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "RNNFAST_ISA" in r.stderr
