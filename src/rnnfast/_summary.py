"""The layer table of ``model.summary()`` and ``rnnfast info``: one copy for every model
class and the command line.

Columns: layer name, type, units, options, parameters (counted as the source framework
counts them: Keras' ``count_params()``, the sum of a PyTorch module's ``numel()``),
dtype, and the precision of each layer's products where some layer's is not float32
(``model.with_precision``); for a model that is a graph rather than a chain (``model.is_chain`` false) also
each layer's output shape and the tensors it is connected to, as Keras' functional
summary shows them. The title line names the model and where it came from. The models describe
themselves (``summary_title()``, ``summary_rows()``); this module only lays the table out.
"""

__all__ = ["summary_text", "Summarized"]

_COLUMNS = ("name", "type", "units", "options", "parameters", "dtype")
_HEAD = dict(
    name="layer",
    type="type",
    units="units",
    options="options",
    parameters="parameters",
    dtype="dtype",
    precision="precision",
    output_shape="output shape",
    connected_to="connected to",
)
_RIGHT = {"units", "parameters"}


def _cell(column, value):
    if column == "parameters":
        return f"{value:,}"
    if column == "connected_to":
        return ", ".join(value or [])
    return str(value if value is not None else "")


def _source_line(model, source):
    """'<format> <path>' for a file the model was loaded from, or the source as it is."""
    src = source if source is not None else getattr(model, "source", None)
    if src is None:
        return None
    src = str(src)
    fmt = getattr(model, "source_format", None)
    if fmt and src == str(getattr(model, "source", None)):
        return "%s %s" % (fmt, src)
    return src


def summary_text(model, source=None):
    """The layer table as text (what ``model.summary()`` prints and ``rnnfast info`` shows).

    Parameters
    ----------
    model : KerasModel, TorchRNN or Sequential
        Anything with ``summary_title()`` and ``summary_rows()``.
    source : str, optional
        Where the model came from (default the model's ``source`` attribute; a file it
        was loaded from is named with its format).

    Returns
    -------
    str
        Lines without a final newline.
    """
    rows = model.summary_rows()
    columns: tuple[str, ...] = _COLUMNS
    if rows and not getattr(model, "is_chain", True):
        # a graph (several inputs, branches, merges): Keras' functional summary columns too
        columns = _COLUMNS[:2] + ("output_shape",) + _COLUMNS[2:] + ("connected_to",)
    if any(r.get("precision", "float32") != "float32" for r in rows):
        columns = columns + ("precision",)
    cells = [[_cell(c, r.get(c)) for c in columns] for r in rows]
    widths = [max([len(_HEAD[c])] + [len(cell[i]) for cell in cells]) for i, c in enumerate(columns)]

    def line(values):
        return "  ".join(v.rjust(w) if c in _RIGHT else v.ljust(w) for c, v, w in zip(columns, values, widths)).rstrip()

    sep = "-" * (sum(widths) + 2 * (len(columns) - 1))
    out = [model.summary_title()]
    src = _source_line(model, source)
    if src:
        out.append("source: " + src)
    out += [sep, line([_HEAD[c] for c in columns]), sep]
    out += [line(cell) for cell in cells]
    out.append(sep)
    out.append("total parameters: {:,}".format(sum(r["parameters"] for r in rows)))
    notes = getattr(model, "summary_notes", None)  # e.g. what a load left out of the file
    if notes is not None:
        out += notes()
    return "\n".join(out)


class Summarized:
    """Gives a model class ``summary()`` from its ``summary_title()`` and ``summary_rows()``."""

    def summary(self, print_fn=None):
        """Print the layer table (what ``rnnfast info`` shows): per layer its name,
        type, units, options, parameters (counted as the source framework counts
        them) and dtype.

        Parameters
        ----------
        print_fn : callable, optional
            Called with the table's text (default ``print``), as in Keras.

        Returns
        -------
        None
        """
        (print if print_fn is None else print_fn)(summary_text(self))
