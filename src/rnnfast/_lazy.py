"""Names a package imports on first use (PEP 562): what keeps ``import rnnfast`` light.

A package lists its lazy names in a dict (name -> the module that defines it, relative to
the package) and defines::

    def __getattr__(name):
        return _lazy.attribute(__name__, _LAZY, name)

    def __dir__():
        return _lazy.names(__name__, _LAZY)

Submodules resolve as attributes too (``rnnfast.layers``, ``rnnfast.io.keras_file``), as
they did when the package imported them all.
"""

import importlib
import sys

__all__ = ["attribute", "names"]


def attribute(package, lazy, name):
    """The value of ``package.name``: the lazy name, imported from its module, or the
    submodule ``name``; kept in the package so that the next use is a plain attribute.

    Raises
    ------
    AttributeError
        Neither a lazy name nor a submodule of the package.
    """
    if name in lazy:
        value = getattr(importlib.import_module(lazy[name], package), name)
    elif name.startswith("__"):  # __path__, __file__...: asked of a module that lacks them
        raise AttributeError("module %r has no attribute %r" % (package, name))
    else:
        try:
            value = importlib.import_module("." + name, package)
        except ModuleNotFoundError as e:
            if e.name != package + "." + name:
                raise  # the submodule exists, and failed to import something it needs
            raise AttributeError("module %r has no attribute %r" % (package, name)) from None
    setattr(sys.modules[package], name, value)
    return value


def names(package, lazy, optional=()):
    """What ``dir(package)`` lists: its attributes so far, its lazy names and its
    submodules, but the ``optional`` ones until they are imported (their import fails
    without their engine installed, and ``help(package)`` imports every name listed)."""
    import pkgutil

    module = sys.modules[package]
    subs = {m.name for m in pkgutil.iter_modules(module.__path__) if not m.name.startswith("__")}
    return sorted(set(vars(module)) | set(lazy) | (subs - set(optional)))
