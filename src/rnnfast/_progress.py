"""Batched prediction and its Keras-like progress bar: the one copy used by
:meth:`KerasModel.predict`, :meth:`TorchRNN.predict` and ``rnnfast predict``."""

import math
import operator
import sys
import time

import numpy as np

__all__ = ["ProgressBar", "run_batched", "check_verbose", "concatenate_outputs"]


def check_verbose(verbose):
    """Normalise Keras' ``verbose`` argument: ``"auto"`` / None / 0 -> 0 (silent: unlike
    Keras, rnnfast prints nothing unless asked), 1 -> a progress bar, 2 -> one line
    when done."""
    if verbose is None or verbose == "auto":
        return 0
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError("verbose must be 0, 1, 2 or 'auto', got %r" % (verbose,))
    return int(verbose)


def _fmt_time(seconds):
    if seconds >= 3600:
        return "%d:%02d:%02d" % (seconds // 3600, (seconds % 3600) // 60, seconds % 60)
    if seconds >= 60:
        return "%d:%02d" % (seconds // 60, seconds % 60)
    return "%ds" % seconds


def _per_step(seconds):
    if seconds >= 1:
        return "%.0fs/step" % seconds
    if seconds >= 1e-3:
        return "%.0fms/step" % (seconds * 1e3)
    return "%.0fus/step" % (seconds * 1e6)


class ProgressBar:
    """A progress bar drawn the way Keras 3 draws ``predict``'s::

        12/40 ━━━━━━━━━━━━━━━━━━━━ 3s 95ms/step

    Parameters
    ----------
    total : int
        Steps (batches) in all.
    verbose : {1, 2}
        1: redraw the bar in place after every step (when ``file`` is a terminal; else
        only the final line); 2: one line when done.
    file : file-like, optional
        Where to draw (default ``sys.stderr``, so that results on stdout stay clean).
    width : int
        Characters of the bar.
    """

    def __init__(self, total, verbose=1, file=None, width=20):
        self.total = max(0, int(total))
        self.verbose = verbose
        self.file = sys.stderr if file is None else file
        self.width = width
        self.start = time.perf_counter()
        self.done = 0
        self._last_draw = 0.0
        self._tty = bool(getattr(self.file, "isatty", lambda: False)())
        enc = getattr(self.file, "encoding", None) or "ascii"
        try:
            "━".encode(enc)
            self._chars = ("━", "━")
            self._dim = ("\x1b[2m", "\x1b[0m") if self._tty else ("", "")  # the rest: dimmed
        except (UnicodeEncodeError, LookupError):
            self._chars = ("=", ".")
            self._dim = ("", "")

    def _line(self):
        n, total = self.done, self.total
        digits = len(str(total))
        filled = self.width if not total else int(self.width * n / total)
        rest = self.width - filled
        bar = self._chars[0] * filled + (self._dim[0] + self._chars[1] * rest + self._dim[1] if rest else "")
        elapsed = time.perf_counter() - self.start
        per = elapsed / n if n else 0.0
        shown = elapsed if n >= total else per * (total - n)  # eta while running
        return "%*d/%d %s %s %s" % (digits, n, total, bar, _fmt_time(shown), _per_step(per))

    def update(self, done):
        """Record that ``done`` steps (in all) are finished, and redraw if due."""
        self.done = done
        if self.verbose != 1 or not self._tty or done >= self.total:  # the last line: close()
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self.file.write("\r" + self._line())
        self.file.flush()

    def close(self):
        """Draw the final line and end it."""
        if self.verbose == 1 and self._tty:
            self.file.write("\r" + self._line() + "\n")
        elif self.verbose in (1, 2):
            self.file.write(self._line() + "\n")
        self.file.flush()


def concatenate_outputs(parts, axis=0):
    """Join the outputs of several batches: arrays, or lists / tuples / dicts of them
    (nested as the model returns them), concatenated along ``axis``."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: concatenate_outputs([p[k] for p in parts], axis) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(concatenate_outputs(list(items), axis) for items in zip(*parts))
    return np.concatenate(parts, axis=axis)


def run_batched(fn, x, batch_size=None, *, axis=0, aligned=(), verbose=0, file=None):
    """Run ``fn`` on ``x`` in batches along ``axis`` and join the results.

    Parameters
    ----------
    fn : callable
        ``fn(part, *aligned_parts)`` takes a slice of ``x`` (a view) and the same rows of
        each ``aligned`` array; returns an array or a (nested) list / tuple / dict of
        arrays, each with the batch along ``axis``.
    x : ndarray
        Already validated and converted.
    aligned : sequence of ndarray or None
        Per-row arrays (batch on their axis 0, e.g. ``lengths``) sliced with ``x``;
        None entries are passed as None.
    batch_size : int, optional
        Rows per call (default: all at once). Bounds memory; results are the same.
    axis : int
        The batch axis of ``x`` and of the results (1 for time-major data).
    verbose : {0, 1, 2, "auto", None}
        See :func:`check_verbose`; the bar counts batches.
    file : file-like, optional
        Where the progress bar goes (default ``sys.stderr``).

    Returns
    -------
    what ``fn`` returns, for the whole of ``x``
    """
    verbose = check_verbose(verbose)
    n = x.shape[axis]
    if batch_size is None:
        batch_size = max(n, 1)
    else:
        if isinstance(batch_size, bool):
            raise TypeError("batch_size must be a positive int, got %r" % (batch_size,))
        try:
            batch_size = operator.index(batch_size)
        except TypeError:
            raise TypeError("batch_size must be a positive int, got %r" % (batch_size,)) from None
        if batch_size < 1:
            raise ValueError("batch_size must be a positive int, got %d" % batch_size)
    steps = max(1, math.ceil(n / batch_size))
    bar = ProgressBar(steps, verbose, file) if verbose else None
    if steps == 1:
        out = fn(x, *aligned)
    else:
        parts = []
        index = [slice(None)] * x.ndim
        for k, i in enumerate(range(0, n, batch_size)):
            rows = slice(i, i + batch_size)
            index[axis] = rows
            parts.append(fn(x[tuple(index)], *(None if a is None else a[rows] for a in aligned)))
            if bar:
                bar.update(k + 1)
        out = concatenate_outputs(parts, axis)
    if bar:
        bar.done = steps
        bar.close()
    return out
