# NumPy's array object as its own macros read it (c/ndarray.h): the compiled calls whose
# arrays of the common form (exact float32 / float64 ndarrays) are read through their
# fields, not typed memoryviews (_stream.pyx; packed_rows and attend of _kernels.pyx and
# _rowops.pyx). One declaration for all three modules.
from cpython.object cimport PyObject, PyTypeObject

cdef extern from "c/ndarray.h":
    ctypedef struct rnnfast_ndarray:
        char *data
        int nd
        Py_ssize_t *dimensions
        Py_ssize_t *strides
        PyObject *descr
        int flags
    int RNNFAST_C_CONTIGUOUS, RNNFAST_WRITEABLE
    const rnnfast_ndarray *rnnfast_array(PyObject *a, PyTypeObject *ndarray, PyObject *descr, int nd, int flags)
    ctypedef struct rnnfast_rows_operands:
        long M, N, K
        const char *A
        const char *Bp
        const char *bias
        char *C
    int rnnfast_rows_operands_of(PyObject *A, PyObject *Bp, PyObject *bias, PyObject *C, PyTypeObject *ndarray,
                                 PyObject *descr, rnnfast_rows_operands *o)
