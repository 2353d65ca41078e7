"""The README's examples run as they are written.

Every ```python block of README.md runs verbatim, in order, in one fresh interpreter
started in an empty folder (so only installed files can be found: the bundled models
come from ``rnnfast.example``); the ``rnnfast`` command lines of its ```sh blocks run
too, and the `rnnfast info` output it shows is what the command prints.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def blocks(lang):
    text = readme()
    return re.findall(r"^```%s\n(.*?)^```" % re.escape(lang), text, flags=re.M | re.S)


def run(args, cwd, **kw):
    # warnings are errors, but Keras' own on numpy 2 (raised inside keras, as tests/test_cli.py has it)
    env = dict(
        os.environ,
        KERAS_BACKEND="torch",
        PYTHONWARNINGS="error,ignore:__array__ implementation doesn't accept a copy keyword",
    )
    if env.get("PYTHONPATH"):  # PYTHONPATH=src (a checkout's): still that one from the empty folder
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env, **kw)


def test_readme_has_quick_starts():
    code = blocks("python")
    assert any('rnnfast.load(rnnfast.example("digits_bigru"))' in b for b in code)
    assert any('rnnfast.load(rnnfast.example("digits_lstm")' in b for b in code)
    text = readme()
    # pip users first; the contributors' two commands stay first in their section
    assert (
        text.index("## Install")
        < text.index("## Quick start")
        < text.index("## The `rnnfast` command")
        < text.index("## For contributors")
    )
    contrib = text[text.index("## For contributors") :]
    first = blocks("sh")
    assert re.search(r"```sh\nmake demo .*\nmake test ", contrib), contrib[:400]
    assert first


def test_readme_python_blocks_run_verbatim(tmp_path):
    code = "\n\n".join(blocks("python"))
    script = tmp_path / "readme_blocks.py"
    script.write_text(code, encoding="utf-8")
    r = run([sys.executable, str(script)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "16266 (None, 10)" in r.stdout, r.stdout[-2000:]


def _command_lines():
    for b in blocks("sh"):
        for ln in b.splitlines():
            ln = ln.split("  #")[0].strip()
            if ln.startswith("rnnfast "):
                yield ln


@pytest.mark.parametrize("line", list(_command_lines()))
def test_readme_command_lines_run(line, tmp_path):
    # "$(rnnfast example NAME)" as a shell would expand it, without a shell
    exe = os.path.join(os.path.dirname(sys.executable), "rnnfast")
    cmd = line.replace('"$(rnnfast example ', '"$(%s example ' % exe)
    args = ["bash", "-c", "set -e; " + exe + " " + cmd[len("rnnfast ") :]]
    if "bench" in line:  # quick: the peers' modes are tested in test_bench_cli.py
        args[-1] += " --repeats 2 --vs torch"
    r = run(args, cwd=tmp_path)
    assert r.returncode == 0, (line, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr


def test_readme_info_output_is_what_the_command_prints(tmp_path):
    text = readme()
    shown = re.search(r"```text\n\$ (rnnfast info [^\n]*)\n(.*?)```", text, re.S)
    assert shown, "the README shows `rnnfast info` output"
    exe = os.path.join(os.path.dirname(sys.executable), "rnnfast")
    r = run([exe] + shlex.split(shown.group(1))[1:], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # the version and the install path vary; the layer table must be the same
    want = [ln for ln in shown.group(2).splitlines() if not ln.startswith(("KerasModel", "source:"))]
    got = [ln for ln in r.stdout.splitlines() if not ln.startswith(("KerasModel", "source:"))]
    assert got == want, r.stdout
