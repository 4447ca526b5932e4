/* hr_optim.h — fused optimizer kernels: AdamW over every parameter in one pass, global-norm clipping. */
#ifndef HR_OPTIM_H
#define HR_OPTIM_H

#include "hr_core.h"

/* The update rule of an item (the reference's optim/misc.py build_optimizer choices). */
typedef enum {
    HR_ADAM_DECOUPLED = 0, /* AdamW (the reference's optim/adamw.py): decay applied to the parameter */
    HR_ADAM_L2 = 1,        /* torch.optim.Adam: decay added to the gradient, eps added after the bias correction */
    HR_ADAMAX = 2,         /* torch.optim.Adamax: exp_avg_sq holds the decayed maximum of |g| + eps */
} hr_adam_rule;

typedef struct {
    hr_tensor *param;      /* f32 or f64, contiguous */
    hr_tensor *grad;       /* same shape; any float dtype, contiguous */
    hr_tensor *exp_avg;    /* same dtype as param, contiguous */
    hr_tensor *exp_avg_sq;
    hr_adam_rule rule;
    double step_size;      /* AdamW: lr * sqrt(1 - beta2^t) / (1 - beta1^t); Adam, Adamax: lr / (1 - beta1^t) */
    double decay;          /* AdamW: lr * weight_decay; Adam, Adamax: weight_decay (0: no decay) */
    double bias2_sqrt;     /* Adam: sqrt(1 - beta2^t), by which sqrt(exp_avg_sq) is divided; else unused */
    double grad_scale;     /* the gradient is used as g * grad_scale, rounded as an in-place scaling of g would
                              round it (gradient clipping folded into the step); 1: as it is. Needs the
                              gradient in the parameter's dtype. The gradient itself is not changed. */
} hr_adamw_item;

/*
 * One update of every item, in the reference's order of operations (hero-spec §6.1 for AdamW):
 *   AdamW:  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;  p -= step_size * m / (sqrt(v) + eps);  p -= decay * p
 *   Adam:   g += decay*p;  m, v as AdamW;  p -= step_size * m / (sqrt(v) / bias2_sqrt + eps)
 *   Adamax: g += decay*p;  m as AdamW;  v = max(b2*v, |g| + eps) (NaN if either is);  p -= step_size * m / v
 * All items are processed in one parallel pass split by element count.
 */
int hr_adamw_step(hr_adamw_item *items, int n, double beta1, double beta2, double eps);

/* Global L2 norm of all tensors (accumulated in double). */
int hr_global_norm(hr_tensor *const *tensors, int n, double *norm);
/* Multiplies every tensor in place by scale. */
int hr_scale_all_(hr_tensor *const *tensors, int n, double scale);

#endif
