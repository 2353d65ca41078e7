# The one OpenMP shim (see _openmp.h): usable whether or not the build has OpenMP,
# with the spin-then-sleep step barrier of the blocked path.
cdef extern from "_openmp.h" nogil:
    int RNN_OPENMP_ENABLED
    int omp_get_max_threads()
    int omp_get_thread_num()
    int omp_get_num_threads()
    void rnn_omp_barrier()
    ctypedef struct rnn_barrier:
        int n
    int rnn_barrier_spins
    void rnn_barrier_init(rnn_barrier *b, int n)
    void rnn_barrier_wait(rnn_barrier *b)
