/* hr_layernorm.h — the CPU layer norm's passes, shared by layer_norm and the fused
 * dropout_add_layer_norm node (cpu/add_layernorm.c), so that the two give the same numbers. */
#ifndef HR_LAYERNORM_H
#define HR_LAYERNORM_H

#include "hr_core.h"

/* The normalised rows of xc (contiguous f32/f64, last dimension normalised) times wc plus bc
 * (contiguous or NULL); *mean and *rstd receive the rows' statistics (f64 [rows]). NULL when out of
 * memory (nothing returned then). */
hr_tensor *hr_ln_cpu_forward(const hr_tensor *xc, const hr_tensor *wc, const hr_tensor *bc, double eps,
                             hr_tensor **mean, hr_tensor **rstd);

/* The gradients of the layer norm of x (contiguous, the forward's input) for the output gradient
 * grad: out[0] x's (when need_x), out[1] the weight's, out[2] the bias's (in x's dtype). w: the
 * forward's contiguous weight or NULL. Returns 0, or -1 when out of memory. */
int hr_ln_cpu_backward(const hr_tensor *x, const hr_tensor *mean, const hr_tensor *rstd, const hr_tensor *w,
                       const hr_tensor *grad, bool need_x, bool need_w, bool need_b, hr_tensor *out[3]);

/* Checks weight and bias: each NULL or a live 1-D tensor of x's row length in dtype pdt; errors
 * name op. */
int hr_ln_check_params(const hr_tensor *x, hr_tensor *weight, hr_tensor *bias, hr_dtype pdt, const char *op);

#endif
