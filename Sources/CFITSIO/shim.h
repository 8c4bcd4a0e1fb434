#ifndef ASTROCNN_CFITSIO_SHIM_H
#define ASTROCNN_CFITSIO_SHIM_H
// cfitsio's long names (fits_open_file, ...) are C macros that Swift cannot import;
// the Swift code calls the short names (ffopen, ...) that these macros expand to.
#include <fitsio.h>
#endif
