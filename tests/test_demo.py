"""`rnnfast demo` (what `make demo` runs), end to end in a subprocess: the bundled
pretrained digits models, and the seed's models with --seed-models."""

import re
import subprocess
import sys

import numpy as np
import pytest

from rnnfast import demo


def run(*args):
    r = subprocess.run([sys.executable, "-m", "rnnfast", *args], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.mark.slow
def test_demo_classifies_digits_like_the_frameworks():
    r = run("demo", "--repeats", "2", "--batch", "64")
    assert r.returncode == 0, r.stderr
    rows = {
        m.group(1): m
        for m in re.finditer(r"^(Keras|PyTorch) .*? (\d+\.\d)% +(\d+\.\d)% +(\S+) +(\d+)/(\d+)$", r.stdout, re.M)
    }
    assert set(rows) == {"Keras", "PyTorch"}, r.stdout
    with np.load(demo.data_path("digits_test.npz")) as f:
        y = f["y"]
        saved = {"Keras": f["keras_proba"], "PyTorch": f["torch_proba"]}
    for name, m in rows.items():
        framework_acc = 100 * float((saved[name].argmax(1) == y).mean())
        assert float(m.group(3)) == round(framework_acc, 1), m.group(0)  # from the saved predictions
        assert m.group(2) == m.group(3), m.group(0)  # rnnfast's accuracy
        assert float(m.group(4)) < 1e-5, m.group(0)  # max|diff| within contract
        assert m.group(5) == m.group(6) == str(len(y)), m.group(0)
    speed = [ln for ln in r.stdout.splitlines() if re.match(r"^(Keras|PyTorch) .* ms .*x$", ln)]
    assert len(speed) == 2, r.stdout
    assert "batch 64" in r.stdout


def test_seed_models_demo_agrees_with_reference():
    r = run("demo", "--seed-models", "--batch", "16", "--repeats", "2")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith(("GRU(", "BiGRU("))]
    assert len(rows) == 2, r.stdout
    for line in rows:
        diff = float(line.split()[1])
        assert diff < 1e-5, line  # float32 vs float64 reference
        assert re.search(r"\d+\.\dx$", line), line  # a speed-up column


def test_cli_without_command_prints_help():
    r = run()
    assert r.returncode == 2
    assert "demo" in r.stdout
