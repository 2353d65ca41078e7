"""examples/streaming_server.py runs (its --quick mode): every engine installed serves
the simulated streams and the table is printed."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_streaming_server_quick(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=os.path.join(ROOT, "src"))
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "streaming_server.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [l.split() for l in r.stdout.splitlines() if l.startswith("rnnfast ")]
    assert [int(l[1]) for l in lines] == [2, 8], r.stdout
    assert all(float(l[-1]) > 0 for l in lines)
    assert ("wrote" in r.stdout) or ("no plot" in r.stdout)
