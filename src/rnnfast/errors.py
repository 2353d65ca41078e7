"""rnnfast's exception types (see docs/API.md, "Errors")."""

__all__ = ["RnnfastError", "FormatError", "UnsupportedLayerError"]


class RnnfastError(Exception):
    """Base class of rnnfast's own errors."""


class FormatError(RnnfastError, ValueError):
    """The file (or object) is not a model rnnfast can read: wrong format, corrupt,
    inconsistent, hostile, or holding something other than a supported model."""


class UnsupportedLayerError(RnnfastError):
    """The model uses a layer, or a layer option, that rnnfast cannot run.

    The message names the layer class and the option. Raised at load time.
    """

    def __init__(self, layer_class, option=None, detail=None):
        self.layer_class = layer_class
        self.option = option
        msg = "unsupported layer %s" % layer_class
        if option is not None:
            msg += ": option %s" % option
        if detail:
            msg += " (%s)" % detail
        super().__init__(msg)
