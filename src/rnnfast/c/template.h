/*
 * template.h -- naming for the .template.h files (the PyWavelets idiom).
 *
 * A template body is plain C, written once, and instantiated by defining its
 * parameters and including it:
 *
 *     #define TYPE float
 *     #define ISA_SUFFIX avx2
 *     #include "cellmath.template.h"      (defines rnn_gru_ra_f_avx2, ...)
 *     #undef TYPE
 *     #undef ISA_SUFFIX
 *
 * so that compilers, debuggers, sanitizers and profilers see the template's own line
 * numbers. Inside, functions are named with the macros below:
 *
 *     RNN_TNAME(name)   rnn_<name>_<f|d>            (TYPE float | double)
 *     RNN_INAME(name)   rnn_<name>_<f|d>_<ISA_SUFFIX>
 */
#ifndef RNNFAST_TEMPLATE_H
#define RNNFAST_TEMPLATE_H

#define RNN_CAT_(a, b) a##b
#define RNN_CAT(a, b) RNN_CAT_(a, b)

/* The suffix of a type: f for float, d for double. */
#define RNN_SUFFIX_float f
#define RNN_SUFFIX_double d
#define RNN_TSUFFIX RNN_CAT(RNN_SUFFIX_, TYPE)

#define RNN_TNAME(name) RNN_CAT(RNN_CAT(rnn_, name), RNN_CAT(_, RNN_TSUFFIX))
#define RNN_INAME(name) RNN_CAT(RNN_TNAME(name), RNN_CAT(_, ISA_SUFFIX))

/* Helpers are forced inline so that each ISA's instantiation compiles them for its
 * own target (`#pragma GCC target`). */
#if defined(__GNUC__)
#define RNN_INLINE static inline __attribute__((always_inline))
#else
#define RNN_INLINE static inline
#endif

#endif /* RNNFAST_TEMPLATE_H */
