/* api_table.c — what cuda_backend.so exports: one table of its entry points (csrc/hr_cuda_api.h),
 * which the core module looks up when it loads the backend (csrc/hr_cuda_dispatch.c). */
#include "hr_cuda.h"
#include "hr_cuda_api.h"

const hr_cuda_api *hr_cuda_backend_api(void);

#define TABLE_ENTRY(kind, ret, name, params, args) .name = hr_cuda_##name,
static const hr_cuda_api backend_table = {.version = HR_CUDA_API_VERSION, .signature = HR_CUDA_API_SIGNATURE,
                                           HR_CUDA_API_LIST(TABLE_ENTRY)};

const hr_cuda_api *hr_cuda_backend_api(void) { return &backend_table; }
