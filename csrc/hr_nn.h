/* hr_nn.h — fused neural-network nodes (forward + hand-written backward, recorded on the tape). */
#ifndef HR_NN_H
#define HR_NN_H

#include "hr_core.h"

/* y = (x - mean) / sqrt(var_biased + eps) * weight + bias over the last dimension.
 * weight/bias: 1-D of the last dim's size, or NULL. */
hr_tensor *hr_layer_norm(hr_tensor *x, hr_tensor *weight, hr_tensor *bias, double eps);
/* layer_norm(x:to("f32"), weight, bias) of a bf16/f16 GPU tensor x in one pass (autocast's layer
 * norm of a half tensor): the same f32 values, and x's gradient rounded into x's dtype as the
 * cast's backward rounds it, without the f32 copy of x. weight and bias are f32. */
hr_tensor *hr_layer_norm_of_half(hr_tensor *x, hr_tensor *weight, hr_tensor *bias, double eps);

/* rows of weight [V, H] picked by 0-based indices (any shape, i64/i32) -> [..., H]. The gradient of
 * a leaf weight is accumulated in place into the used rows only. padding_idx < 0: none. */
hr_tensor *hr_embedding(hr_tensor *weight, hr_tensor *indices, int64_t padding_idx);

/* Cross entropy of logits [N, W] against 0-based targets [N] (i64/i32) with ignore_index and label
 * smoothing (PyTorch semantics); reduction: 0 none ([N]), 1 mean over non-ignored, 2 sum. The
 * classes are the first `classes` columns (<= 0: all W): the others take no part in the loss and
 * get a zero gradient, so that a vocabulary padded to a multiple of 8 for the products needs no
 * narrowed copy of the logits or of their gradient. */
typedef enum { HR_REDUCE_NONE = 0, HR_REDUCE_MEAN = 1, HR_REDUCE_SUM = 2 } hr_reduction;
hr_tensor *hr_cross_entropy(hr_tensor *logits, hr_tensor *target, int64_t classes, int64_t ignore_index,
                            double label_smoothing, hr_reduction reduction);
/* cross_entropy(logits:to("f32"), ...) of bf16/f16 GPU logits in one pass (autocast's f32 loss of
 * half logits): the same f32 loss, and the logits' gradient rounded into their dtype as the cast's
 * backward rounds it, without the f32 copy of the logits (rows may be strided). */
hr_tensor *hr_cross_entropy_of_half(hr_tensor *logits, hr_tensor *target, int64_t classes, int64_t ignore_index,
                                    double label_smoothing, hr_reduction reduction);

/* Erf GELU: 0.5 * x * (1 + erf(x / sqrt(2))). */
hr_tensor *hr_gelu(hr_tensor *x);

/* erf(x) elementwise for f32 (vectorised, max absolute error < 2e-7) and f64 (libm), differentiable. */
hr_tensor *hr_erf(hr_tensor *x);

/* Inverted dropout with probability p drawn from generator g (identity when !training or p == 0). */
struct hr_generator;
hr_tensor *hr_dropout(struct hr_generator *g, hr_tensor *x, double p, bool training);

/* layer_norm(dropout(x, p, training) + residual, weight, bias, eps) as one node (the end of BERT's
 * attention and feed-forward blocks): the numbers, the draws and the generator's advance of the three
 * ops one after another, without the dropout's output, and with the sum's gradient handed to the
 * residual as it is. It takes x f32 (bf16/f16 too on a GPU: a half projection under autocast, read in
 * place) and residual f32 of x's shape, weight and bias f32 or NULL, p < 1 when training;
 * hr_dropout_add_layer_norm_fuses says whether the inputs qualify (others take the three ops). */
bool hr_dropout_add_layer_norm_fuses(const hr_tensor *x, const hr_tensor *residual, const hr_tensor *weight,
                                     const hr_tensor *bias, double p, bool training);
hr_tensor *hr_dropout_add_layer_norm(struct hr_generator *g, hr_tensor *x, hr_tensor *residual, hr_tensor *weight,
                                     hr_tensor *bias, double eps, double p, bool training);

/* 1-D convolution, stride 1: x [N, C_in, L], w [C_out, C_in, K], bias [C_out] or NULL, zero padding. */
hr_tensor *hr_conv1d(hr_tensor *x, hr_tensor *w, hr_tensor *bias, int64_t padding);

/* Multi-head scaled dot-product attention, fused (cpu/attention.c): q [B, Lq, H], k/v [B, Lk, H]
 * with `heads` heads side by side in H; mask NULL or additive [B, Lk] / [B, Lq, Lk]; dropout on the
 * probabilities from generator gen when training. Returns the context [B, Lq, H]. */
hr_tensor *hr_attention(hr_tensor *q, hr_tensor *k, hr_tensor *v, hr_tensor *mask, int64_t heads, double dropout_p,
                        bool training, struct hr_generator *gen);
/* The same attention of a sequence over itself with q, k and v side by side in one tensor qkv
 * [B, L, 3H] (columns 0..H-1, H..2H-1, 2H..3H-1: one product of the three projections' weights):
 * the heads are read in place and the node's gradient is one [B, L, 3H] tensor, so neither the
 * three projections nor their gradients are split apart and summed again. Same numbers as
 * hr_attention on the three column blocks. */
hr_tensor *hr_attention_packed(hr_tensor *qkv, hr_tensor *mask, int64_t heads, double dropout_p, bool training,
                               struct hr_generator *gen);

/* Where the queries of the asked-for flat positions rows (1-D i64 CPU, each in [0, B * L)) of a
 * [B, L] batch sit when each entry's are laid out in order and padded to the entry with most, lq
 * (cpu/query_layout.c): gather [B * lq] lists the position of every slot (padding repeats the
 * entry's first, or the first row of all), keep [n] the slot of every row. Returns 1 with the two
 * new CPU tensors and lq, 0 when lq >= L or there are no rows (nothing to gain), -1 on a bad row. */
int hr_query_layout(const hr_tensor *rows, int64_t B, int64_t L, hr_tensor **gather, hr_tensor **keep, int64_t *lq);

/* Binary cross entropy with logits (weight NULL or x's shape) and mean squared error (cpu/losses.c). */
hr_tensor *hr_bce_with_logits(hr_tensor *x, hr_tensor *y, hr_tensor *weight, hr_reduction reduction);
hr_tensor *hr_mse_loss(hr_tensor *x, hr_tensor *y, hr_reduction reduction);

#endif
