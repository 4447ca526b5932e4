/*
 * hr_dist.h — data-parallel communication between processes (MPI), Lua-free.
 *
 * Built with MPI when csrc/Makefile finds mpi.h (HERO_WITH_MPI); otherwise every function fails
 * with a message saying how to get it. Ranks are 0-based, as in MPI. Only CPU tensors are
 * exchanged: CUDA tensors would need NCCL, which hero does not support yet.
 *
 * Every collective first checks, with one tiny extra collective, that all ranks passed compatible
 * tensors (same dtype, same element count / rank count), so a mismatch is an error on every rank
 * instead of memory corruption or a hang.
 *
 * A watchdog (opt-in, hr_dist_init's timeout_s > 0) ends the whole job when one collective has
 * waited longer than the timeout for the other ranks: a rank that died or hangs then brings the
 * job down with a message instead of leaving the others blocked forever.
 */
#ifndef HR_DIST_H
#define HR_DIST_H

#include "hr_core.h"

typedef enum { HR_DIST_SUM = 0, HR_DIST_MEAN, HR_DIST_MAX, HR_DIST_MIN } hr_dist_op;

/* True when hero was compiled against MPI. */
bool hr_dist_available(void);
/* Initialises MPI once (later calls only update the timeout). timeout_s <= 0: no watchdog. */
int hr_dist_init(double timeout_s);
bool hr_dist_is_initialized(void);
int hr_dist_rank(void);       /* 0 before init */
int hr_dist_world_size(void); /* 1 before init */
/* In place on a CPU tensor (f32, f64, i64, i32); MEAN only for floating tensors. */
int hr_dist_all_reduce_(hr_tensor *t, hr_dist_op op);
/* Concatenates every rank's tensor along dim 0. The ranks' tensors must have the same dtype and
 * number of dimensions; sizes may differ in every dim: dims after the first are zero-padded to the
 * largest size over the ranks. counts (world_size entries, may be NULL) receives each rank's size
 * along dim 0 and maxsize (ndim entries, may be NULL) the padded sizes. */
hr_tensor *hr_dist_all_gather(hr_tensor *t, int64_t *counts, int64_t *maxsize);
/* In place: every rank's t gets root's values (same shape and dtype on every rank). */
int hr_dist_broadcast_(hr_tensor *t, int root);
int hr_dist_barrier(void);

/* Gradient averaging overlapped with the backward pass (dist_reducer.c). new: the parameters (CPU
 * f32/f64 tensors, the same list on every rank) cut into buckets of about bucket_bytes. begin: the
 * next backward passes of this thread report each parameter whose gradient is complete, and a
 * bucket whose parameters are all complete starts its sum over the ranks at once (buckets start in
 * the same order on every rank). finish: starts the rest, waits, and leaves in every parameter's
 * .grad the mean over the ranks (a missing gradient counts as zeros; a parameter gets a gradient
 * when any rank had one), and the means of extra[0..n_extra) in place: the numbers of one flat
 * all-reduce of everything. Call begin before the last backward of an update, finish after it. */
typedef struct hr_grad_reducer hr_grad_reducer;
hr_grad_reducer *hr_grad_reducer_new(hr_tensor *const *params, int n, int64_t bucket_bytes);
void hr_grad_reducer_free(hr_grad_reducer *r);
int hr_grad_reducer_begin(hr_grad_reducer *r);
int hr_grad_reducer_finish(hr_grad_reducer *r, double *extra, int n_extra);
/* The number of buckets, and how many of them started during the last pass (before finish). */
void hr_grad_reducer_counts(const hr_grad_reducer *r, int *buckets, int *early);
int hr_dist_finalize(void);
/* Prints "hero.dist: rank R: msg" to stderr and ends every process of the job with code. */
int hr_dist_abort(const char *msg, int code);

#endif
