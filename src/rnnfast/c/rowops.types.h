/* rowops.types.h -- rowops.template.h for float and double on the ISA_SUFFIX (and
 * RNN_ROWS_FMA) the includer defines (no include guard: rowops.h includes it once per
 * instruction set). */
#define TYPE float
#include "rowops.template.h"
#undef TYPE
#define TYPE double
#include "rowops.template.h"
#undef TYPE
