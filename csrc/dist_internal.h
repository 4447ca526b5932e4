/*
 * dist_internal.h — what dist.c shares with the other MPI code of hero (dist_reducer.c): the
 * watchdog's busy marks, MPI error messages and the agreement check. Only with HERO_WITH_MPI.
 */
#ifndef HR_DIST_INTERNAL_H
#define HR_DIST_INTERNAL_H

#include "hr_dist.h"

#ifdef HERO_WITH_MPI
/* Marks a collective as waiting for the other ranks (the watchdog's timeout runs meanwhile). */
void hr_dist_busy_begin(const char *op);
void hr_dist_busy_end(void);
/* Records MPI's error rc for op as an hr error; returns -1. */
int hr_dist_mpi_fail(int rc, const char *op);
/* Fails unless hero.dist was initialised and not finalised. */
int hr_dist_check_ready(const char *op);
/* 0 when every rank passed the same vals[0..n) (n <= 8), else an error naming names[i], on every rank. */
int hr_dist_agree(const char *op, const int64_t *vals, const char *const *names, int n);
#endif

#endif
