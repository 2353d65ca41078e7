# The streams' bookkeeping (rnnfast/stream.py) in compiled code: where a stream's state
# lives (a row of a state block), the claim that keeps a stream to one call at a time,
# and a batched step's per-stream work -- checking and claiming the streams, stacking
# their chunks, gathering their states' rows and scattering them back -- as loops over
# the streams in C instead of NumPy calls and Python loops.
#
# The build needs no NumPy headers: a chunk's array is read through the fields NumPy's
# own macros read (its ABI since NumPy 1.0; c/ndarray.h), and only for arrays whose
# type is exactly numpy.ndarray. Anything else (another type, dtype or layout) makes
# stack() answer None: stream.py then takes its general path.
cimport cython
from cpython.object cimport PyObject
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

import numpy as np

from rnnfast._ndarray cimport RNNFAST_C_CONTIGUOUS, rnnfast_ndarray

cdef extern from *:
    """
    /* A stream's flag: 0 free, 1 used by a call. Taken by compare-and-swap, so that two
       threads never both take it, with or without a GIL. */
    #if defined(__GNUC__) || defined(__clang__)
    static int rnnfast_take(unsigned char *f) {
        unsigned char free_ = 0;
        return __atomic_compare_exchange_n(f, &free_, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
    }
    static void rnnfast_give(unsigned char *f) { __atomic_store_n(f, 0, __ATOMIC_RELEASE); }
    #elif defined(_MSC_VER)
    #include <intrin.h>
    static int rnnfast_take(unsigned char *f) { return _InterlockedCompareExchange8((char *) f, 1, 0) == 0; }
    static void rnnfast_give(unsigned char *f) { _InterlockedExchange8((char *) f, 0); }
    #else /* under the GIL, which these calls hold */
    static int rnnfast_take(unsigned char *f) { if (*f) return 0; *f = 1; return 1; }
    static void rnnfast_give(unsigned char *f) { *f = 0; }
    #endif
    """
    bint rnnfast_take(unsigned char *f) nogil
    void rnnfast_give(unsigned char *f) nogil

#: Rows per state block.
ROWS = 256
cdef Py_ssize_t _ROWS = 256

TWICE = "a stream appears twice in one step: a stream is one sequence"
UNMADE = "a stream is made by model.stream()"
BUSY = "this stream is being stepped by another thread: a stream is one sequence; step it from one thread at a time"

cdef type _ndarray = np.ndarray


cdef inline rnnfast_ndarray *_arr(object a):
    return <rnnfast_ndarray *> <PyObject *> a


cdef class Block:
    """The states of up to :data:`ROWS` streams of one program, a row each: one array
    per state slot, (ROWS, width), never reallocated (a stream keeps views of its row),
    the rows' ``seen`` flags (recurrent ops, ROWS) and the rows' claim flags ``taken``
    (1 while a call uses the row). Rows are handed out by the program (``free``) and
    come back when their stream is gone."""

    cdef readonly object program
    cdef readonly tuple slots
    cdef readonly object seen
    cdef readonly object taken
    cdef readonly list free
    cdef readonly list dtypes
    cdef readonly list widths
    cdef unsigned char *flags
    cdef Py_ssize_t nslots, nrec
    cdef char **ptr          # each slot's data
    cdef Py_ssize_t *rowbytes  # each slot's row, in bytes

    def __cinit__(self, program, widths, dtypes, Py_ssize_t nrec):
        cdef Py_ssize_t k
        self.program = program
        self.widths = [int(w) for w in widths]
        self.dtypes = [np.dtype(d) for d in dtypes]
        self.slots = tuple([np.zeros((_ROWS, w), dt) for w, dt in zip(self.widths, self.dtypes)])
        self.nslots = len(self.slots)
        self.nrec = nrec
        self.seen = np.zeros((nrec, _ROWS), np.bool_)
        self.taken = np.zeros(_ROWS, np.uint8)
        self.flags = <unsigned char *> _arr(self.taken).data
        self.free = list(range(_ROWS - 1, -1, -1))
        self.ptr = <char **> malloc(max(1, self.nslots) * sizeof(char *))
        self.rowbytes = <Py_ssize_t *> malloc(max(1, self.nslots) * sizeof(Py_ssize_t))
        if self.ptr == NULL or self.rowbytes == NULL:
            raise MemoryError()
        for k in range(self.nslots):
            self.ptr[k] = _arr(self.slots[k]).data
            self.rowbytes[k] = self.slots[k].strides[0]

    def __dealloc__(self):
        free(self.ptr)
        free(self.rowbytes)

    def clear(self, Py_ssize_t row):
        """Zero a row's states and its ``seen`` flags (a new stream's row)."""
        cdef Py_ssize_t k
        for k in range(self.nslots):
            self.slots[k][row] = 0
        self.seen[:, row] = False


@cython.no_gc_clear  # __dealloc__ gives the row back: the block must still be there
cdef class StreamBase:
    """Where a stream's state lives (its block and row) and its claim: the compiled part
    of rnnfast.stream.Stream. The row goes back to its block when the stream is gone."""

    cdef readonly object _program
    cdef readonly Block _block
    cdef readonly Py_ssize_t _row

    def __init__(self, program):
        if self._block is not None:
            raise RuntimeError("a stream is made once")
        block, row = program.take_row()
        if not isinstance(block, Block) or not 0 <= row < _ROWS:
            raise TypeError("take_row gave %r" % ((block, row),))
        self._program = program
        self._block = block
        self._row = row

    def __dealloc__(self):
        if self._block is not None:
            self._block.free.append(self._row)

    def _claim(self):
        """Mark the stream used by a call, or refuse (RuntimeError) when a call uses it."""
        if self._block is None:
            raise RuntimeError(UNMADE)
        if not rnnfast_take(&self._block.flags[self._row]):
            raise RuntimeError(BUSY)

    def _release(self):
        if self._block is not None:
            rnnfast_give(&self._block.flags[self._row])

    def _in_use(self):
        """Whether a call is stepping (or reading) this stream now."""
        return self._block is not None and self._block.flags[self._row] != 0

    def __reduce__(self):
        raise TypeError(
            "a stream is not pickled or copied (it is a row of its model's state blocks): "
            "take stream.state, a dict of arrays, and assign it to a new model.stream()"
        )


cdef class Batch:
    """The streams of one batched step, checked and claimed by :func:`take`: gathers
    their states' rows, scatters them back and releases the claims. ``rows``: their
    rows are one block's consecutive rows in order (then :meth:`gather` gives views of
    the block and :meth:`scatter` has nothing to do)."""

    cdef tuple streams
    cdef Py_ssize_t n
    cdef bint held
    cdef readonly bint rows
    cdef Block block  # the first stream's

    def gather(self, bint views=False):
        """The streams' states: per slot an array (1, n, width), the stream i's in row
        i. ``views``: the block's own rows where :attr:`rows` (the caller then writes
        the streams' states in place, also should it fail midway)."""
        cdef Block b = self.block
        cdef StreamBase s
        cdef Py_ssize_t k, i, rb
        cdef char *dst
        cdef Py_ssize_t n = self.n
        cdef list out = []
        if views and self.rows:
            i = (<StreamBase> self.streams[0])._row
            for k in range(b.nslots):
                out.append(b.slots[k][None, i : i + n])
            return out
        for k in range(b.nslots):
            a = np.empty((1, n, b.widths[k]), b.dtypes[k])
            dst = _arr(a).data
            rb = b.rowbytes[k]
            for i in range(n):
                s = <StreamBase> self.streams[i]
                memcpy(dst + i * rb, s._block.ptr[k] + s._row * rb, rb)
            out.append(a)
        return out

    def scatter(self, list states):
        """Write ``states`` (as :meth:`gather` gave them) back into the streams' rows."""
        cdef Block b = self.block
        cdef StreamBase s
        cdef Py_ssize_t k, i, rb
        cdef char *src
        cdef Py_ssize_t n = self.n
        if len(states) != b.nslots:
            raise ValueError("scatter: %d states for %d slots" % (len(states), b.nslots))
        for k in range(b.nslots):
            a = states[k]
            rb = b.rowbytes[k]
            if (type(a) is not _ndarray or not (_arr(a).flags & RNNFAST_C_CONTIGUOUS)
                    or a.nbytes != n * rb or a.dtype != b.dtypes[k]):
                raise ValueError("scatter: state %d is not what gather gave" % k)
            src = _arr(a).data
            s = <StreamBase> self.streams[0]
            if src == s._block.ptr[k] + s._row * rb:
                continue  # the block's own rows (gather's views)
            for i in range(n):
                s = <StreamBase> self.streams[i]
                memcpy(s._block.ptr[k] + s._row * rb, src + i * rb, rb)

    def gather_seen(self):
        """The streams' ``seen`` flags: (recurrent ops, n) bool."""
        cdef Py_ssize_t r, i, n = self.n, nrec = self.block.nrec
        cdef StreamBase s
        cdef char *src
        out = np.empty((nrec, n), np.bool_)
        cdef char *dst = _arr(out).data
        for i in range(n):
            s = <StreamBase> self.streams[i]
            src = _arr(s._block.seen).data
            for r in range(nrec):
                dst[r * n + i] = src[r * _ROWS + s._row]
        return out

    def scatter_seen(self, seen):
        """Write ``seen`` (as :meth:`gather_seen` gave it) back."""
        cdef Py_ssize_t r, i, n = self.n, nrec = self.block.nrec
        cdef StreamBase s
        cdef char *src
        cdef char *dst
        if (type(seen) is not _ndarray or not (_arr(seen).flags & RNNFAST_C_CONTIGUOUS)
                or seen.dtype != np.bool_ or seen.shape != (nrec, n)):
            raise ValueError("scatter_seen: not what gather_seen gave")
        src = _arr(seen).data
        for i in range(n):
            s = <StreamBase> self.streams[i]
            dst = _arr(s._block.seen).data
            for r in range(nrec):
                dst[r * _ROWS + s._row] = src[r * n + i]

    def release(self):
        """Give the streams back (once; later calls do nothing)."""
        cdef Py_ssize_t i
        cdef StreamBase s
        if not self.held:
            return
        self.held = False
        for i in range(self.n):
            s = <StreamBase> self.streams[i]
            rnnfast_give(&s._block.flags[s._row])


def take(streams, program):
    """Check and claim the streams of a batched step (a non-empty list or tuple):
    TypeError for an item that is not a stream, ValueError for a stream of another
    program or one that appears twice, RuntimeError for a stream that another call uses
    (nothing stays claimed then). Returns their :class:`Batch`."""
    cdef tuple t = tuple(streams)
    cdef Py_ssize_t n = len(t), i, j
    cdef StreamBase s, first
    cdef bint rows = True
    cdef Batch batch
    if n == 0:
        raise ValueError("take: no streams")
    for i in range(n):
        o = t[i]
        if not isinstance(o, StreamBase):
            raise TypeError("step takes a list of Streams, got a %s in it" % type(o).__name__)
        s = <StreamBase> o
        if s._block is None:
            raise RuntimeError(UNMADE)
        if s._program is not program:
            raise ValueError("a stream in the list was opened by another model (%s)" % s._program.what)
    first = <StreamBase> t[0]
    for i in range(n):
        s = <StreamBase> t[i]
        if not rnnfast_take(&s._block.flags[s._row]):
            for j in range(i):
                rnnfast_give(&(<StreamBase> t[j])._block.flags[(<StreamBase> t[j])._row])
            for j in range(i):
                if t[j] is s:
                    raise ValueError(TWICE)
            raise RuntimeError(BUSY)
        if rows and (s._block is not first._block or s._row != first._row + i):
            rows = False
    batch = Batch.__new__(Batch)
    batch.streams = t
    batch.n = n
    batch.held = True
    batch.rows = rows
    batch.block = first._block
    return batch


def stack(list chunks, Py_ssize_t F, dtype):
    """The chunks (each a C-contiguous numpy.ndarray (T, F) of ``dtype``, all of one
    length T > 0) stacked time-major: (T, len(chunks), F); None when any chunk is not
    of that form (the caller's general path checks and converts them)."""
    cdef Py_ssize_t n = len(chunks), i, t, T = -1, rb
    cdef rnnfast_ndarray *a
    cdef PyObject *want = <PyObject *> dtype
    cdef char *dst
    if n == 0:
        return None
    for i in range(n):
        c = chunks[i]
        if type(c) is not _ndarray:
            return None
        a = _arr(c)
        if (a.descr != want or a.nd != 2 or a.dimensions[1] != F or not (a.flags & RNNFAST_C_CONTIGUOUS)
                or a.dimensions[0] < 1 or (T >= 0 and a.dimensions[0] != T)):
            return None
        T = a.dimensions[0]
    out = np.empty((T, n, F), dtype)
    dst = _arr(out).data
    rb = F * (<object> dtype).itemsize
    for i in range(n):
        a = _arr(chunks[i])
        if T == 1:
            memcpy(dst + i * rb, a.data, rb)
        else:
            for t in range(T):
                memcpy(dst + (t * n + i) * rb, a.data + t * rb, rb)
    return out
