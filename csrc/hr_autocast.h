/*
 * hr_autocast.h — the autocast state of the calling thread (hero.amp.autocast).
 *
 * While autocast is on with a half dtype (bf16 or f16), the bindings of the matrix products cast
 * their f32 inputs to that dtype (differentiably: gradients flow back to the f32 tensors in f32),
 * and the numerically sensitive ops (layer_norm, softmax, log_softmax, the losses) cast half
 * inputs up to f32, as the reference's mixed-precision training keeps them. f64 tensors are never
 * touched. The state is per thread, so worker threads (each with its own Lua state) are unaffected.
 */
#ifndef HR_AUTOCAST_H
#define HR_AUTOCAST_H

#include "hr_core.h"

typedef enum {
    HR_AUTOCAST_LOWER,     /* matrix products: f32 -> the autocast dtype */
    HR_AUTOCAST_F32,       /* sensitive ops: bf16/f16 -> f32 */
    HR_AUTOCAST_ATTENTION, /* attention, conv1d: LOWER on CUDA; F32 on the CPU, whose kernels are f32/f64 */
    HR_AUTOCAST_CPU_F32,   /* ops whose CPU kernels are f32/f64 only (gelu, dropout): F32 on the CPU, as is on CUDA */
} hr_autocast_kind;

/* Sets the thread's autocast dtype (HR_BF16 or HR_F16) or turns it off (on = false); returns
 * whether it was on and, through prev, its dtype. */
bool hr_autocast_set(bool on, hr_dtype dt, hr_dtype *prev);
/* Whether autocast is on for this thread, and its dtype. */
bool hr_autocast_get(hr_dtype *dt);
/* The dtype t should have for an op of this kind under the current state (t's own when unchanged). */
hr_dtype hr_autocast_target(const hr_tensor *t, hr_autocast_kind kind);

#endif
