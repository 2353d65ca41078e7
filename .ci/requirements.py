"""Print requirements from pyproject.toml, one a line, for `pip install -r /dev/stdin`.

    python .ci/requirements.py build        # [build-system] requires
    python .ci/requirements.py run          # [project] dependencies
    python .ci/requirements.py test lint    # [project.optional-dependencies] extras

The Makefile installs through it, so that every pin is written once, in pyproject.toml
(``pip install .[test]`` would build the extension again for each extra).
"""

import os
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    extras = meta["project"].get("optional-dependencies", {})
    out = []
    for name in argv or ["run"]:
        if name == "build":
            out += meta["build-system"]["requires"]
        elif name == "run":
            out += meta["project"]["dependencies"]
        elif name in extras:
            out += extras[name]
        else:
            sys.exit("unknown requirement set %r (build, run, %s)" % (name, ", ".join(extras)))
    print("\n".join(dict.fromkeys(out)))


if __name__ == "__main__":
    main(sys.argv[1:])
