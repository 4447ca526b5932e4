/* hr_optim.h — fused optimizer kernels: AdamW over every parameter in one pass, global-norm clipping. */
#ifndef HR_OPTIM_H
#define HR_OPTIM_H

#include "hr_core.h"

typedef struct {
    hr_tensor *param;      /* f32 or f64, contiguous */
    hr_tensor *grad;       /* same shape; any float dtype, contiguous */
    hr_tensor *exp_avg;    /* same dtype as param, contiguous */
    hr_tensor *exp_avg_sq;
    double step_size;      /* lr * sqrt(1 - beta2^t) / (1 - beta1^t) */
    double decay;          /* lr * weight_decay (0: no decay) */
    double grad_scale;     /* the gradient is used as g * grad_scale, rounded as an in-place scaling of g would
                              round it (gradient clipping folded into the step); 1: as it is. Needs the
                              gradient in the parameter's dtype. The gradient itself is not changed. */
} hr_adamw_item;

/*
 * One AdamW update of every item, exactly in the reference's order of operations (hero-spec §6.1):
 *   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;  p -= step_size * m / (sqrt(v) + eps);  p -= decay * p
 * All items are processed in one parallel pass split by element count.
 */
int hr_adamw_step(hr_adamw_item *items, int n, double beta1, double beta2, double eps);

/* Global L2 norm of all tensors (accumulated in double). */
int hr_global_norm(hr_tensor *const *tensors, int n, double *norm);
/* Multiplies every tensor in place by scale. */
int hr_scale_all_(hr_tensor *const *tensors, int n, double scale);

#endif
