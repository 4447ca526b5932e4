/* ag_pointwise.c — differentiable wrappers of the elementwise ops (hr_pointwise.h).
 * Backward formulas are written with the forward kernels themselves (nothing is recorded while a
 * backward runs, since it calls the plain hr_* ops). */
#include <math.h>
#include <string.h>

#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "hr_nn.h"
#include "hr_pointwise.h"

/* ------------------------------------------------------------------ small algebra on tensors */

static hr_operand T(const hr_tensor *t) { return hr_operand_tensor(t); }
static hr_operand F(double v) { return hr_operand_float(v); }

/* Each helper returns a new tensor or NULL; NULL inputs propagate (an error is already set). */
static hr_tensor *bin(hr_binary_op op, const hr_tensor *a, const hr_tensor *b)
{
    return (a && b) ? hr_binary(op, T(a), T(b), NULL) : NULL;
}
static hr_tensor *bin_s(hr_binary_op op, const hr_tensor *a, double s)
{
    return a ? hr_binary(op, T(a), F(s), NULL) : NULL;
}
static hr_tensor *s_bin(hr_binary_op op, double s, const hr_tensor *a)
{
    return a ? hr_binary(op, F(s), T(a), NULL) : NULL;
}
static hr_tensor *un(hr_unary_op op, const hr_tensor *a) { return a ? hr_unary(op, a) : NULL; }
/* releases x and returns r (for chaining without leaks) */
static hr_tensor *drop(hr_tensor *x, hr_tensor *r)
{
    hr_tensor_release(x);
    return r;
}
static hr_tensor *drop2(hr_tensor *x, hr_tensor *y, hr_tensor *r)
{
    hr_tensor_release(x);
    hr_tensor_release(y);
    return r;
}

/* Reduces a gradient of the broadcast shape to an input's shape and dtype. Consumes g (which the
 * caller owns: already of that shape and dtype, it is returned as it is). */
static hr_tensor *fit(hr_tensor *g, int ndim, const int64_t *size, hr_dtype dt)
{
    if (!g) return NULL;
    if (g->ndim == ndim && memcmp(g->size, size, sizeof(int64_t) * (size_t)ndim) == 0 && g->dtype == dt) return g;
    hr_tensor *s = hr_sum_to_size(g, ndim, size);
    hr_tensor_release(g);
    if (!s || s->dtype == dt) return s;
    return drop(s, hr_cast(s, dt));
}

/* ------------------------------------------------------------------ binary */

typedef struct {
    hr_binary_op op;
    double alpha;
    int ndim[2];
    int64_t size[2][HR_MAX_DIMS];
    hr_dtype dtype[2];
    int slot_a, slot_b, slot_out; /* saved tensor slots, -1 if not saved */
    bool b_is_number;
    double b_number;
    bool a_is_number;
    double a_number;
} bin_ctx;

/* A zero gradient shaped as g (not g * 0, which an infinite g would turn into NaN). */
static hr_tensor *zeros_like(const hr_tensor *g)
{
    return g ? hr_tensor_zeros(g->ndim, g->size, g->dtype, hr_tensor_device(g)) : NULL;
}

/* r with zeros where cond holds; takes both (NULL in, NULL out) */
static hr_tensor *masked_zero(hr_tensor *cond, hr_tensor *r)
{
    hr_tensor *out = cond && r ? hr_where(cond, hr_operand_float(0.0), hr_operand_tensor(r)) : NULL;
    hr_tensor_release(cond);
    hr_tensor_release(r);
    return out;
}

/* trunc(a / b), torch's division with rounding_mode "trunc" for floats: floor above zero, ceil
 * below (NaN stays NaN) */
static hr_tensor *trunc_div(hr_operand a, const hr_tensor *b)
{
    hr_tensor *q = b ? hr_binary(HR_DIV, a, T(b), NULL) : NULL;
    hr_tensor *up = bin_s(HR_GE, q, 0.0);
    hr_tensor *fl = un(HR_FLOOR, q), *ce = un(HR_CEIL, q);
    hr_tensor *r = up && fl && ce ? hr_where(up, T(fl), T(ce)) : NULL;
    hr_tensor_release(q);
    hr_tensor_release(up);
    return drop2(fl, ce, r);
}

static hr_tensor *saved_or_null(hr_node *node, int slot) { return slot >= 0 ? hr_node_saved(node, slot) : NULL; }

static int binary_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const bin_ctx *c = node->ctx;
    hr_tensor *a = saved_or_null(node, c->slot_a), *b = saved_or_null(node, c->slot_b);
    hr_tensor *out = saved_or_null(node, c->slot_out);
    bool need[2] = {hr_node_input_needs_grad(node, 0), hr_node_input_needs_grad(node, 1)};
    hr_tensor *ga = NULL, *gb = NULL;
    switch (c->op) {
    case HR_ADD:
    case HR_SUB:
        if (need[0]) ga = hr_grad_pass_on(g);
        if (need[1]) {
            double f = c->op == HR_ADD ? c->alpha : -c->alpha;
            /* b's own tensor when a takes g too (each consumer may add into its gradient) */
            gb = f != 1 ? bin_s(HR_MUL, g, f) : need[0] ? hr_cast(g, g->dtype) : hr_grad_pass_on(g);
        }
        break;
    case HR_MUL:
        if (need[0]) ga = c->b_is_number ? bin_s(HR_MUL, g, c->b_number) : bin(HR_MUL, g, b);
        if (need[1]) gb = c->a_is_number ? bin_s(HR_MUL, g, c->a_number) : bin(HR_MUL, g, a);
        break;
    case HR_DIV:
        /* a / b: da = g / b, db = -g * out / b */
        if (need[0]) ga = c->b_is_number ? bin_s(HR_DIV, g, c->b_number) : bin(HR_DIV, g, b);
        if (need[1]) {
            hr_tensor *q = bin(HR_MUL, g, out);
            hr_tensor *r = bin(HR_DIV, q, b);
            gb = drop2(q, r, un(HR_NEG, r));
        }
        break;
    case HR_POW:
        /* a ^ b: da = g * b * a^(b-1), zero where b == 0; db = g * out * log(a), zero where
         * a == 0 and b >= 0 (PyTorch's pow_backward_self / pow_backward_exponent: no NaN or inf
         * from 0 * log(0) or 0 * 0^-1) */
        if (need[0]) {
            if (c->b_is_number && c->b_number == 0) {
                ga = zeros_like(g);
            } else if (c->b_is_number) {
                hr_tensor *p = bin_s(HR_POW, a, c->b_number - 1);
                hr_tensor *m = bin_s(HR_MUL, p, c->b_number);
                ga = drop2(p, m, bin(HR_MUL, g, m));
            } else {
                hr_tensor *bm1 = bin_s(HR_SUB, b, 1.0);
                hr_tensor *p = bin(HR_POW, a, bm1);
                hr_tensor *m = bin(HR_MUL, p, b);
                ga = masked_zero(bin_s(HR_EQ, b, 0.0), drop2(bm1, p, drop(m, bin(HR_MUL, g, m))));
            }
        }
        if (need[1]) {
            hr_tensor *la = c->a_is_number ? NULL : un(HR_LOG, a);
            hr_tensor *go = bin(HR_MUL, g, out);
            if (c->a_is_number) {
                /* log(0) = -inf as for a tensor base: where b < 0, out * log(0) = inf * -inf
                 * gives torch's -inf; b >= 0 is masked to zero below */
                gb = drop(go, bin_s(HR_MUL, go, log(c->a_number)));
                if (c->a_number == 0) gb = masked_zero(bin_s(HR_GE, b, 0.0), gb);
            } else {
                hr_tensor *a0 = bin_s(HR_EQ, a, 0.0), *bge = bin_s(HR_GE, b, 0.0);
                hr_tensor *cond = a0 && bge ? hr_binary(HR_LOGICAL_AND, hr_operand_tensor(a0), hr_operand_tensor(bge),
                                                        NULL)
                                            : NULL;
                hr_tensor_release(a0);
                hr_tensor_release(bge);
                gb = masked_zero(cond, drop2(la, go, bin(HR_MUL, go, la)));
            }
        }
        break;
    case HR_MAXIMUM:
    case HR_MINIMUM: {
        /* the winner takes the gradient, ties share it equally, and where a NaN makes the
         * comparison fail both sides get it whole (PyTorch): a's share is 1 - (a loses) - tie/2 */
        hr_tensor *bt = c->b_is_number ? NULL : b;
        hr_binary_op beats = c->op == HR_MAXIMUM ? HR_GT : HR_LT, loses = c->op == HR_MAXIMUM ? HR_LT : HR_GT;
        hr_tensor *win_a = bt ? bin(beats, a, bt) : bin_s(beats, a, c->b_number);
        hr_tensor *lose_a = bt ? bin(loses, a, bt) : bin_s(loses, a, c->b_number);
        hr_tensor *tie = bt ? bin(HR_EQ, a, bt) : bin_s(HR_EQ, a, c->b_number);
        hr_tensor *wt = tie ? hr_cast(tie, g->dtype) : NULL;
        hr_tensor *half = bin_s(HR_MUL, wt, 0.5);
        for (int k = 0; k < 2; k++) {
            if (!need[k]) continue;
            hr_tensor *beaten = k == 0 ? lose_a : win_a;
            hr_tensor *bf = beaten ? hr_cast(beaten, g->dtype) : NULL;
            hr_tensor *off = bin(HR_ADD, bf, half);
            hr_tensor *share = s_bin(HR_SUB, 1.0, off);
            hr_tensor *r = drop2(bf, off, drop(share, bin(HR_MUL, g, share)));
            if (k == 0) ga = r;
            else gb = r;
        }
        hr_tensor_release(win_a);
        hr_tensor_release(lose_a);
        hr_tensor_release(tie);
        hr_tensor_release(wt);
        hr_tensor_release(half);
        break;
    }
    case HR_REMAINDER:
    case HR_FMOD: {
        /* a - q b with q = floor(a / b) (remainder) or trunc(a / b) (fmod), q held constant as torch
         * does: da = g, db = -g q, q computed by torch's own rounding division */
        if (need[0]) ga = hr_grad_pass_on(g);
        if (need[1]) {
            hr_operand av = c->a_is_number ? F(c->a_number) : T(a);
            hr_tensor *q = c->op == HR_REMAINDER ? hr_binary(HR_FLOOR_DIVIDE, av, T(b), NULL) : trunc_div(av, b);
            hr_tensor *gq = bin(HR_MUL, g, q);
            gb = drop2(q, gq, un(HR_NEG, gq));
        }
        break;
    }
    case HR_ATAN2: {
        /* atan2(a, b): da = g b / (a^2 + b^2), db = -g a / (a^2 + b^2) (torch's atan2_backward: NaN
         * at the origin) */
        hr_operand av = c->a_is_number ? F(c->a_number) : T(a), bv = c->b_is_number ? F(c->b_number) : T(b);
        /* one side may be a number (not both: then nothing needs a gradient) */
        hr_tensor *aa = c->a_is_number ? NULL : bin(HR_MUL, a, a), *bb = c->b_is_number ? NULL : bin(HR_MUL, b, b);
        hr_tensor *sq = c->a_is_number ? bin_s(HR_ADD, bb, c->a_number * c->a_number)
                        : c->b_is_number ? bin_s(HR_ADD, aa, c->b_number * c->b_number)
                                         : bin(HR_ADD, aa, bb);
        hr_tensor *recip = un(HR_RECIPROCAL, sq);
        hr_tensor_release(aa);
        hr_tensor_release(bb);
        hr_tensor_release(sq);
        if (need[0]) {
            hr_tensor *gbv = recip ? hr_binary(HR_MUL, T(g), bv, NULL) : NULL;
            ga = drop(gbv, bin(HR_MUL, gbv, recip));
        }
        if (need[1]) {
            hr_tensor *gav = recip ? hr_binary(HR_MUL, T(g), av, NULL) : NULL;
            hr_tensor *m = bin(HR_MUL, gav, recip);
            gb = drop2(gav, m, un(HR_NEG, m));
        }
        hr_tensor_release(recip);
        break;
    }
    case HR_HYPOT:
        /* hypot(a, b): da = g a / out, db = g b / out (NaN at the origin, as torch) */
        for (int k = 0; k < 2; k++) {
            if (!need[k]) continue;
            bool number = k == 0 ? c->a_is_number : c->b_is_number;
            hr_operand v = number ? F(k == 0 ? c->a_number : c->b_number) : T(k == 0 ? a : b);
            hr_tensor *gv = hr_binary(HR_MUL, T(g), v, NULL);
            hr_tensor *r = drop(gv, bin(HR_DIV, gv, out));
            if (k == 0) ga = r;
            else gb = r;
        }
        break;
    default:
        return hr_fail(HR_EINVAL, "%s is not differentiable", hr_binary_op_name(c->op));
    }
    if (need[0]) {
        if (!ga) goto fail;
        if (!(gi[0] = fit(ga, c->ndim[0], c->size[0], c->dtype[0]))) goto fail_b;
    }
    if (need[1]) {
        if (!gb) goto fail;
        if (!(gi[1] = fit(gb, c->ndim[1], c->size[1], c->dtype[1]))) return -1;
    }
    return 0;
fail_b:
    hr_tensor_release(gb);
    return -1;
fail:
    hr_tensor_release(ga);
    hr_tensor_release(gb);
    return -1;
}

static bool differentiable_binary(hr_binary_op op)
{
    return op == HR_ADD || op == HR_SUB || op == HR_MUL || op == HR_DIV || op == HR_POW || op == HR_MAXIMUM ||
           op == HR_MINIMUM || op == HR_REMAINDER || op == HR_FMOD || op == HR_ATAN2 || op == HR_HYPOT;
}

hr_tensor *hr_ag_binary(hr_binary_op op, hr_operand a, hr_operand b, const hr_operand *alpha)
{
    hr_tensor *inputs[2] = {(hr_tensor *)a.t, (hr_tensor *)b.t};
    /* floor_divide has no derivative (torch says so at backward time); refused before it runs, as
     * hero's other ops without a backward, rather than cutting the graph silently */
    if (op == HR_FLOOR_DIVIDE && hr_should_record(2, inputs))
        return hr_fail_null(HR_EINVAL, "floor_divide: not differentiable; detach() the inputs or run it inside "
                                       "hero.no_grad");
    hr_tensor *out = hr_binary(op, a, b, alpha);
    if (!out || !hr_should_record(2, inputs) || !differentiable_binary(op)) return out;
    if (!hr_dtype_is_float(out->dtype)) return out;
    hr_node *node = hr_node_new(hr_binary_op_name(op), binary_backward, 2, inputs, sizeof(bin_ctx));
    if (!node) return drop(out, NULL);
    bin_ctx *c = node->ctx;
    c->op = op;
    c->alpha = alpha ? alpha->f : 1.0;
    c->slot_a = c->slot_b = c->slot_out = -1;
    c->a_is_number = a.t == NULL;
    c->a_number = a.f;
    c->b_is_number = b.t == NULL;
    c->b_number = b.f;
    for (int k = 0; k < 2; k++) {
        const hr_tensor *t = inputs[k];
        c->ndim[k] = t ? t->ndim : 0;
        if (t) memcpy(c->size[k], t->size, sizeof c->size[k]);
        c->dtype[k] = t ? t->dtype : out->dtype;
    }
    bool ok = true;
    bool uses_both = op == HR_REMAINDER || op == HR_FMOD || op == HR_ATAN2 || op == HR_HYPOT;
    bool save_a = op == HR_MUL || op == HR_POW || op == HR_MAXIMUM || op == HR_MINIMUM || op == HR_DIV || uses_both;
    bool save_b = op == HR_MUL || op == HR_DIV || op == HR_POW || op == HR_MAXIMUM || op == HR_MINIMUM || uses_both;
    if (save_a && a.t && (c->slot_a = hr_node_save(node, (hr_tensor *)a.t)) < 0) ok = false;
    if (save_b && b.t && (c->slot_b = hr_node_save(node, (hr_tensor *)b.t)) < 0) ok = false;
    if ((op == HR_DIV || op == HR_POW || op == HR_HYPOT) && (c->slot_out = hr_node_save(node, out)) < 0) ok = false;
    if (!ok) {
        hr_node_release(node);
        return drop(out, NULL);
    }
    hr_node_attach(node, out);
    return out;
}

/* ------------------------------------------------------------------ unary */

typedef struct {
    hr_unary_op op;
    hr_dtype dtype;
    bool crossed_bounds; /* clamp with min > max: every value is max, no gradient passes */
} un_ctx;


static int unary_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const un_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, 0), *y = hr_node_saved(node, 1);
    if (!x || !y) return -1;
    hr_tensor *r = NULL;
    switch (c->op) {
    case HR_NEG: r = un(HR_NEG, g); break;
    case HR_ABS: {
        hr_tensor *s = un(HR_SIGN, x);
        r = drop(s, bin(HR_MUL, g, s));
        break;
    }
    case HR_SIGN:
    case HR_FLOOR:
    case HR_CEIL:
    case HR_ROUND: r = zeros_like(g); break;
    case HR_SQUARE: {
        hr_tensor *t = bin_s(HR_MUL, x, 2.0);
        r = drop(t, bin(HR_MUL, g, t));
        break;
    }
    case HR_RELU: {
        /* PyTorch's threshold_backward: blocked where x <= 0 only, so NaN lets the gradient pass */
        hr_tensor *m = bin_s(HR_LE, x, 0.0);
        r = m ? drop(m, hr_where(m, hr_operand_float(0.0), hr_operand_tensor(g))) : NULL;
        break;
    }
    case HR_EXP: r = bin(HR_MUL, g, y); break;
    case HR_LOG: r = bin(HR_DIV, g, x); break;
    case HR_SQRT: {
        hr_tensor *t = bin_s(HR_MUL, y, 2.0);
        r = drop(t, bin(HR_DIV, g, t));
        break;
    }
    case HR_RSQRT: { /* d x^-1/2 = -1/2 x^-3/2 = -0.5 y^3 */
        hr_tensor *y3 = bin_s(HR_POW, y, 3.0);
        hr_tensor *t = bin_s(HR_MUL, y3, -0.5);
        r = drop2(y3, t, bin(HR_MUL, g, t));
        break;
    }
    case HR_TANH: {
        hr_tensor *y2 = bin(HR_MUL, y, y);
        hr_tensor *t = s_bin(HR_SUB, 1.0, y2);
        r = drop2(y2, t, bin(HR_MUL, g, t));
        break;
    }
    case HR_SIGMOID: {
        hr_tensor *t = s_bin(HR_SUB, 1.0, y);
        hr_tensor *u = bin(HR_MUL, y, t);
        r = drop2(t, u, bin(HR_MUL, g, u));
        break;
    }
    case HR_RECIPROCAL: {
        hr_tensor *y2 = bin(HR_MUL, y, y);
        hr_tensor *t = bin(HR_MUL, g, y2);
        r = drop2(y2, t, un(HR_NEG, t));
        break;
    }
    case HR_LOG1P: {
        hr_tensor *t = bin_s(HR_ADD, x, 1.0);
        r = drop(t, bin(HR_DIV, g, t));
        break;
    }
    case HR_EXPM1: {
        hr_tensor *t = bin_s(HR_ADD, y, 1.0);
        r = drop(t, bin(HR_MUL, g, t));
        break;
    }
    case HR_SIN: {
        hr_tensor *t = un(HR_COS, x);
        r = drop(t, bin(HR_MUL, g, t));
        break;
    }
    case HR_COS: {
        hr_tensor *t = un(HR_SIN, x);
        hr_tensor *u = bin(HR_MUL, g, t);
        r = drop2(t, u, un(HR_NEG, u));
        break;
    }
    /* torch 1.13's formulas (derivatives.yaml), in its order of operations */
    case HR_TAN: { /* g (1 + y^2) */
        hr_tensor *y2 = bin(HR_MUL, y, y);
        hr_tensor *t = bin_s(HR_ADD, y2, 1.0);
        r = drop2(y2, t, bin(HR_MUL, g, t));
        break;
    }
    case HR_ASIN:
    case HR_ACOS: { /* ±g / sqrt(1 - x^2) */
        hr_tensor *x2 = bin(HR_MUL, x, x);
        hr_tensor *t = s_bin(HR_SUB, 1.0, x2);
        hr_tensor *u = drop2(x2, t, un(HR_RSQRT, t));
        if (c->op == HR_ACOS) u = drop(u, un(HR_NEG, u));
        r = drop(u, bin(HR_MUL, g, u));
        break;
    }
    case HR_ATAN: { /* g / (x^2 + 1) */
        hr_tensor *x2 = bin(HR_MUL, x, x);
        hr_tensor *t = bin_s(HR_ADD, x2, 1.0);
        r = drop2(x2, t, bin(HR_DIV, g, t));
        break;
    }
    case HR_SINH:
    case HR_COSH: { /* g cosh(x), g sinh(x) */
        hr_tensor *t = un(c->op == HR_SINH ? HR_COSH : HR_SINH, x);
        r = drop(t, bin(HR_MUL, g, t));
        break;
    }
    case HR_ASINH:
    case HR_ACOSH: { /* g / sqrt(x^2 ± 1) */
        hr_tensor *x2 = bin(HR_MUL, x, x);
        hr_tensor *t = bin_s(HR_ADD, x2, c->op == HR_ASINH ? 1.0 : -1.0);
        hr_tensor *u = drop2(x2, t, un(HR_RSQRT, t));
        r = drop(u, bin(HR_MUL, g, u));
        break;
    }
    case HR_ATANH: { /* g / (1 - x^2) */
        hr_tensor *x2 = bin(HR_MUL, x, x);
        hr_tensor *t = s_bin(HR_SUB, 1.0, x2);
        r = drop2(x2, t, bin(HR_DIV, g, t));
        break;
    }
    case HR_EXP2: { /* g y ln 2 */
        hr_tensor *t = bin(HR_MUL, g, y);
        r = drop(t, bin_s(HR_MUL, t, M_LN2));
        break;
    }
    case HR_FRAC: r = hr_grad_pass_on(g); break;
    default: return hr_fail(HR_EINVAL, "%s has no backward here", hr_unary_op_name(c->op));
    }
    if (!r) return -1;
    gi[0] = r->dtype == c->dtype ? r : drop(r, hr_cast(r, c->dtype));
    return gi[0] ? 0 : -1;
}

hr_tensor *hr_ag_unary(hr_unary_op op, hr_tensor *t)
{
    if (op == HR_GELU) return hr_gelu(t); /* the fused node */
    hr_tensor *out = hr_unary(op, t);
    if (!out || !hr_should_record(1, &t) || !hr_dtype_is_float(out->dtype)) return out;
    hr_node *node = hr_node_new(hr_unary_op_name(op), unary_backward, 1, &t, sizeof(un_ctx));
    if (!node || hr_node_save(node, t) < 0 || hr_node_save(node, out) < 0) {
        hr_node_release(node);
        return drop(out, NULL);
    }
    un_ctx *c = node->ctx;
    c->op = op;
    c->dtype = t->dtype;
    hr_node_attach(node, out);
    return out;
}

/* ------------------------------------------------------------------ clamp / where */

static int clamp_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const un_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, 0), *y = hr_node_saved(node, 1);
    if (!x || !y) return -1;
    /* the gradient passes where min <= x <= max (PyTorch): where clamping left the value
     * unchanged, unless the bounds cross (then every value is max and none passes) */
    hr_tensor *r;
    if (c->crossed_bounds) {
        r = zeros_like(g);
    } else {
        hr_tensor *m = bin(HR_EQ, x, y);
        r = m ? drop(m, hr_where(m, hr_operand_tensor(g), hr_operand_float(0.0))) : NULL;
    }
    if (!r) return -1;
    gi[0] = r->dtype == c->dtype ? r : drop(r, hr_cast(r, c->dtype));
    return gi[0] ? 0 : -1;
}

hr_tensor *hr_ag_clamp(hr_tensor *t, const hr_operand *lo, const hr_operand *hi)
{
    hr_tensor *out = hr_clamp(t, lo, hi);
    if (!out || !hr_should_record(1, &t) || !hr_dtype_is_float(out->dtype)) return out;
    hr_node *node = hr_node_new("clamp", clamp_backward, 1, &t, sizeof(un_ctx));
    if (!node || hr_node_save(node, t) < 0 || hr_node_save(node, out) < 0) {
        hr_node_release(node);
        return drop(out, NULL);
    }
    ((un_ctx *)node->ctx)->dtype = t->dtype;
    ((un_ctx *)node->ctx)->crossed_bounds = lo && hi && lo->f > hi->f;
    hr_node_attach(node, out);
    return out;
}

typedef struct {
    int ndim[2];
    int64_t size[2][HR_MAX_DIMS];
    hr_dtype dtype[2];
} where_ctx;

static int where_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const where_ctx *c = node->ctx;
    hr_tensor *cond = hr_node_saved(node, 0);
    if (!cond) return -1;
    for (int k = 0; k < 2; k++) {
        if (!hr_node_input_needs_grad(node, k)) continue;
        hr_tensor *r = k == 0 ? hr_where(cond, T(g), F(0.0)) : hr_where(cond, F(0.0), T(g));
        if (!(gi[k] = fit(r, c->ndim[k], c->size[k], c->dtype[k]))) return -1;
    }
    return 0;
}

hr_tensor *hr_ag_where(hr_tensor *cond, hr_operand a, hr_operand b)
{
    hr_tensor *out = hr_where(cond, a, b);
    hr_tensor *inputs[2] = {(hr_tensor *)a.t, (hr_tensor *)b.t};
    if (!out || !hr_should_record(2, inputs) || !hr_dtype_is_float(out->dtype)) return out;
    hr_node *node = hr_node_new("where", where_backward, 2, inputs, sizeof(where_ctx));
    if (!node || hr_node_save(node, cond) < 0) {
        hr_node_release(node);
        return drop(out, NULL);
    }
    where_ctx *c = node->ctx;
    for (int k = 0; k < 2; k++) {
        c->ndim[k] = inputs[k] ? inputs[k]->ndim : 0;
        if (inputs[k]) memcpy(c->size[k], inputs[k]->size, sizeof c->size[k]);
        c->dtype[k] = inputs[k] ? inputs[k]->dtype : out->dtype;
    }
    hr_node_attach(node, out);
    return out;
}
