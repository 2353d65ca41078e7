"""`rnnfast demo` (what `make demo` runs), end to end in a subprocess."""
import re
import subprocess
import sys


def test_demo_runs_and_agrees_with_reference():
    r = subprocess.run([sys.executable, "-m", "rnnfast", "demo", "--batch", "16", "--repeats", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith(("GRU(", "BiGRU("))]
    assert len(rows) == 2, r.stdout
    for line in rows:
        diff = float(line.split()[1])
        assert diff < 1e-5, line                      # float32 vs float64 reference
        assert re.search(r"\d+\.\dx$", line), line     # a speed-up column


def test_cli_without_command_prints_help():
    r = subprocess.run([sys.executable, "-m", "rnnfast"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "demo" in r.stdout
