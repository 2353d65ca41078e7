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

#include "layout.h"

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

/* The operands of a few-row product C (M x N) = bias + A (M x K) @ B (packed, layout.h),
 * as _kernels.packed_rows and _rowops.packed_rows take them. */
typedef struct {
    long M, N, K;
    const char *A, *Bp, *bias;  /* bias NULL: none */
    char *C;
} rnnfast_rows_operands;

/* *o = the operands when A, Bp, bias and C are exact ndarrays of `descr` (rnnfast_array),
 * C-contiguous, C writeable, A (M, K) and C (M, N) with M, N, K > 0, Bp of
 * rnn_packed_size(K, N) values and bias of N or 0: returns 1; else 0 (the caller takes
 * its general path, which raises its errors). */
static inline int rnnfast_rows_operands_of(PyObject *A, PyObject *Bp, PyObject *bias, PyObject *C,
                                           PyTypeObject *ndarray, PyObject *descr,
                                           rnnfast_rows_operands *o)
{
    const rnnfast_ndarray *a = rnnfast_array(A, ndarray, descr, 2, RNNFAST_C_CONTIGUOUS);
    const rnnfast_ndarray *b = rnnfast_array(Bp, ndarray, descr, 1, RNNFAST_C_CONTIGUOUS);
    const rnnfast_ndarray *bi = rnnfast_array(bias, ndarray, descr, 1, RNNFAST_C_CONTIGUOUS);
    const rnnfast_ndarray *c = rnnfast_array(C, ndarray, descr, 2, RNNFAST_C_CONTIGUOUS | RNNFAST_WRITEABLE);
    long M, K, N;
    if (a == NULL || b == NULL || bi == NULL || c == NULL)
        return 0;
    M = (long)a->dimensions[0], K = (long)a->dimensions[1], N = (long)c->dimensions[1];
    if ((long)c->dimensions[0] != M || (long)b->dimensions[0] != rnn_packed_size(K, N)
        || (bi->dimensions[0] != 0 && (long)bi->dimensions[0] != N) || K <= 0 || M <= 0 || N <= 0)
        return 0;
    o->M = M, o->N = N, o->K = K;
    o->A = a->data, o->Bp = b->data, o->bias = bi->dimensions[0] > 0 ? bi->data : NULL;
    o->C = c->data;
    return 1;
}

#endif /* RNNFAST_NDARRAY_H */
