/* hr_backward_profile.c — optional per-node timing of the backward engine: op name → calls and
 * seconds, summed over every backward walk of this thread between start and stop. Off, it costs
 * the engine one test per node. */
#include <string.h>
#include <time.h>

#include "hr_autograd.h"
#include "hr_cuda.h"

enum { MAX_OPS = 256 };

typedef struct {
    bool on, sync;
    int n;
    hr_backward_stat stats[MAX_OPS];
} profile_state;

static _Thread_local profile_state profile;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Device work queued before a node would otherwise be charged to it. */
static void wait_for_device(void)
{
    if (profile.sync && hr_cuda_compiled()) (void)hr_cuda_synchronize(-1);
}

void hr_backward_profile_start(bool sync)
{
    memset(&profile, 0, sizeof profile);
    profile.on = true;
    profile.sync = sync;
}

int hr_backward_profile_stop(const hr_backward_stat **stats)
{
    profile.on = false;
    *stats = profile.stats;
    int n = profile.n;
    profile.n = 0; /* handed out once: a second stop returns nothing */
    return n;
}

double hr_backward_profile_clock(void)
{
    if (!profile.on) return 0;
    wait_for_device();
    return now_seconds();
}

void hr_backward_profile_add(const char *op, double start)
{
    if (!profile.on || start == 0) return;
    wait_for_device();
    double dt = now_seconds() - start;
    int i = 0;
    while (i < profile.n && strcmp(profile.stats[i].op, op) != 0) i++;
    if (i == profile.n) {
        if (profile.n == MAX_OPS) i = MAX_OPS - 1; /* the last slot collects the rest */
        else profile.stats[profile.n++] = (hr_backward_stat){op, 0, 0};
        if (i == MAX_OPS - 1) profile.stats[i].op = "(other ops)";
    }
    profile.stats[i].calls++;
    profile.stats[i].seconds += dt;
}
