/* rowops.types.h -- rowops.template.h for float and double on the ISA_SUFFIX (and
 * RNN_ROWS_FMA, RNN_ROWS_SHUFFLE) the includer defines; RNN_ROWS_INDEX: an integer of TYPE's size,
 * the lanes of a shuffle's indices (no include guard: rowops.h includes it once per
 * instruction set). */
#define TYPE float
#define RNN_ROWS_INDEX int
#include "rowops.template.h"
#undef RNN_ROWS_INDEX
#undef TYPE
#define TYPE double
#define RNN_ROWS_INDEX long long
#include "rowops.template.h"
#undef RNN_ROWS_INDEX
#undef TYPE
