/*
 * ndarray.h -- NumPy's array object as NumPy's own macros (PyArray_DATA, PyArray_DIMS,
 * PyArray_STRIDES, ...) read it: numpy/ndarraytypes.h, PyArrayObject_fields, its ABI
 * since NumPy 1.0. The compiled modules read the arrays of their hottest calls through
 * it, with no NumPy headers in the build: the streams' bookkeeping (../_stream.pyx) and
 * the few-row calls of a small model's step (../_rowops.pyx: attend, packed_rows;
 * ../_kernels.pyx: packed_rows), where a typed memoryview per argument cost more than
 * the work (attend on a (1, 1, 16) problem: 1.75 us with five of them, Zen 4). Only for
 * an object whose type is exactly numpy.ndarray; anything else takes the caller's
 * general path.
 */
#ifndef RNNFAST_NDARRAY_H
#define RNNFAST_NDARRAY_H

#include <Python.h>

typedef struct {
    PyObject_HEAD
    char *data;
    int nd;
    Py_ssize_t *dimensions;
    Py_ssize_t *strides;
    PyObject *base;
    PyObject *descr;
    int flags;
} rnnfast_ndarray;

#define RNNFAST_C_CONTIGUOUS 0x0001 /* NPY_ARRAY_C_CONTIGUOUS */
#define RNNFAST_ALIGNED 0x0100      /* NPY_ARRAY_ALIGNED: data and strides multiples of the item's alignment */
#define RNNFAST_WRITEABLE 0x0400    /* NPY_ARRAY_WRITEABLE */

/* `a`'s fields where `a` is exactly a `ndarray` (numpy.ndarray's type) whose dtype is
 * `descr` itself (NumPy's float32 / float64 descriptor: arrays of those share it), of
 * `nd` dimensions, aligned (so every stride is a whole number of items) and with every
 * flag of `flags` (RNNFAST_C_CONTIGUOUS, RNNFAST_WRITEABLE); else NULL. */
static inline const rnnfast_ndarray *rnnfast_array(PyObject *a, PyTypeObject *ndarray, PyObject *descr, int nd,
                                                   int flags)
{
    const rnnfast_ndarray *p = (const rnnfast_ndarray *) a;
    flags |= RNNFAST_ALIGNED;
    if (Py_TYPE(a) != ndarray || p->descr != descr || p->nd != nd || (p->flags & flags) != flags)
        return NULL;
    return p;
}

#endif /* RNNFAST_NDARRAY_H */
