/* hr_blas_guard.h — keeps OpenBLAS from hanging the process when address space runs out. */
#ifndef HR_BLAS_GUARD_H
#define HR_BLAS_GUARD_H

#include <stdbool.h>

/* True when allocations can fail (an address-space limit or strict overcommit): BLAS regions then
 * run one at a time, each from a single calling thread (see hr_blas_guard.c). */
bool hr_blas_limited(void);
/* Call before a region of BLAS calls; 0, or -1 with an HR_ENOMEM error naming op when OpenBLAS's
 * work space cannot be had. After 0, call hr_blas_end() once the region is done. */
int hr_blas_begin(const char *op);
void hr_blas_end(void);

#endif
