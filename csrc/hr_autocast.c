/* hr_autocast.c — per-thread autocast state and its casting rules (hr_autocast.h). */
#include "hr_autocast.h"

static _Thread_local bool autocast_on;
static _Thread_local hr_dtype autocast_dtype = HR_BF16;

bool hr_autocast_set(bool on, hr_dtype dt, hr_dtype *prev)
{
    bool was = autocast_on;
    if (prev) *prev = autocast_dtype;
    autocast_on = on;
    if (on) autocast_dtype = dt;
    return was;
}

bool hr_autocast_get(hr_dtype *dt)
{
    if (dt) *dt = autocast_dtype;
    return autocast_on;
}

static bool is_half(hr_dtype dt) { return dt == HR_BF16 || dt == HR_F16; }

hr_dtype hr_autocast_target(const hr_tensor *t, hr_autocast_kind kind)
{
    hr_dtype dt = t->dtype;
    if (!autocast_on) return dt;
    bool cpu = hr_tensor_device(t).type == HR_CPU;
    if (kind == HR_AUTOCAST_ATTENTION) kind = cpu ? HR_AUTOCAST_F32 : HR_AUTOCAST_LOWER;
    if (kind == HR_AUTOCAST_CPU_F32) {
        if (!cpu) return dt;
        kind = HR_AUTOCAST_F32;
    }
    if (kind == HR_AUTOCAST_LOWER) return (dt == HR_F32 || is_half(dt)) ? autocast_dtype : dt;
    return is_half(dt) ? HR_F32 : dt;
}
