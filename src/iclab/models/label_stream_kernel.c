/* The label stream of kernel attention and its mean squared error, with the gradient, in one
 * compiled pass over the prompts: the recursion and the backward of
 * iclab/models/kernel_label_stream.py, written per prompt.
 *
 * Prompts are taken a block at a time, one prompt per lane of a 64-byte vector (16 floats or
 * 8 doubles, GCC/Clang vector extensions: one AVX-512 register, two AVX2 or four NEON ones).
 * Every per-prompt quantity is an array of such vectors, so every operation below acts on a
 * whole block, and a block's state (covariates, label slots, the scores of every layer and
 * head) stays in the core's cache.
 *
 * Per prompt (X the (n+1) x d covariates, query last; heads h of layer l with M = M[l,h]):
 *   u_lh = A_lh r_l,  r_{l+1} = r_l + sum_h c_lh u_lh[:n],  q_{l+1} = q_l + sum_h c_lh u_lh[n]
 * with A_lh = act(X M X_ctx^T) (exp, relu; row softmax over the context; a linear head
 * computes u = X M (X_ctx^T r) instead). The loss is (sign q_L - target)^2.
 *
 * The file is compiled twice, for float and for double: it includes itself with REAL set.
 */
#ifndef REAL

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { ACT_LINEAR = 0, ACT_RELU = 1, ACT_EXP = 2, ACT_SOFTMAX = 3 };

#define VECTOR_BYTES 64

#define REAL float
#define NAME(base) base##_float
#define EXP_LO -110.0f
#define EXP_HI 89.0f
#define MANTISSA 23
#define BIAS 127
#define HUGE_REAL 3.4028234663852886e38f
#include "label_stream_kernel.c"
#undef REAL
#undef NAME
#undef EXP_LO
#undef EXP_HI
#undef MANTISSA
#undef BIAS
#undef HUGE_REAL

#define REAL double
#define NAME(base) base##_double
#define EXP_LO -750.0
#define EXP_HI 710.0
#define MANTISSA 52
#define BIAS 1023
#define HUGE_REAL 1.7976931348623157e308
#include "label_stream_kernel.c"

#else /* the body, once per REAL */

typedef REAL NAME(vec) __attribute__((vector_size(VECTOR_BYTES)));
/* the integer vector a comparison of two vecs gives (its element type differs by compiler:
 * long for GCC, long long for Clang, at 64 bits) */
typedef __typeof__((NAME(vec)){0} < (NAME(vec)){0}) NAME(ivec);
#define V NAME(vec)
#define VI NAME(ivec)
#define LANES ((int)(VECTOR_BYTES / sizeof(REAL)))
/* lane-wise mask ? a : b, with mask a comparison result (all bits set where true) */
#define SELECT(mask, a, b) ((V)(((mask) & (VI)(a)) | (~(mask) & (VI)(b))))

/* e^x = 2^k e^t with k = round(x / ln 2), |t| <= ln(2) / 2: e^t by its Taylor polynomial
 * (degree 7 for float, 13 for double: truncation below the type's rounding error), 2^k built
 * from exponent bits in two halves so that every k of the clamped range gives normal
 * numbers; results beyond the type's range overflow to inf and underflow to 0 by themselves,
 * and a NaN stays NaN (its comparisons are false, so it is not clamped). */
static inline V NAME(vexp)(V x) {
    const V zero = {0};
    x = SELECT(x < EXP_LO, zero + EXP_LO, x);
    x = SELECT(x > EXP_HI, zero + EXP_HI, x);
    V k, t, p;
    if (sizeof(REAL) == 4) {
        k = (x * (REAL)1.44269504088896341 + (REAL)12582912.0) - (REAL)12582912.0;
        t = (x - k * (REAL)0.693145751953125) - k * (REAL)1.42860676533018704e-06;
        p = zero + (REAL)(1.0 / 5040.0);
    } else {
        k = (x * (REAL)1.4426950408889634074 + (REAL)6755399441055744.0) -
            (REAL)6755399441055744.0;
        t = (x - k * (REAL)6.93147180369123816490e-01) - k * (REAL)1.90821492927058770002e-10;
        p = zero + (REAL)(1.0 / 6227020800.0);
        p = p * t + (REAL)(1.0 / 479001600.0);
        p = p * t + (REAL)(1.0 / 39916800.0);
        p = p * t + (REAL)(1.0 / 3628800.0);
        p = p * t + (REAL)(1.0 / 362880.0);
        p = p * t + (REAL)(1.0 / 40320.0);
        p = p * t + (REAL)(1.0 / 5040.0);
    }
    p = p * t + (REAL)(1.0 / 720.0);
    p = p * t + (REAL)(1.0 / 120.0);
    p = p * t + (REAL)(1.0 / 24.0);
    p = p * t + (REAL)(1.0 / 6.0);
    p = p * t + (REAL)0.5;
    p = p * t + (REAL)1.0;
    p = p * t + (REAL)1.0;
    k = SELECT(k == k, k, zero); /* a NaN lane: k = 0 (converting NaN is undefined) */
    VI ki = __builtin_convertvector(k, VI);
    VI k1 = ki >> 1;
    VI k2 = ki - k1;
    return p * (V)((k1 + BIAS) << MANTISSA) * (V)((k2 + BIAS) << MANTISSA);
}

/* Prompts [b0, b1) of every member. x (E, B, N, d), r (E, B, n), q and target (E, B) are read
 * through their element strides; M (E, L, H, d, d) and c (E, L, H) are contiguous; heads (H)
 * holds ACT_* codes. Writes (not adds) this slice's sum of squared errors per member into
 * loss (E) and, when grad, the gradients of grad_scale * sum_prompts (sign q_L - target)^2
 * into grad_M (E, L, H, d, d) and grad_c (E, L, H). Returns 1 when an exp head's output was
 * not finite, 0 otherwise, -1 when out of memory. */
int NAME(label_stream_mse)(
    const REAL *x, int64_t sx_e, int64_t sx_b, int64_t sx_m, int64_t sx_a,
    const REAL *r, int64_t sr_e, int64_t sr_b, int64_t sr_j,
    const REAL *q, int64_t sq_e, int64_t sq_b,
    const REAL *target, int64_t st_e, int64_t st_b,
    const REAL *M, const REAL *c, const int32_t *heads,
    int64_t E, int64_t b0, int64_t b1, int64_t N, int64_t d, int64_t L, int64_t H,
    REAL sign, REAL grad_scale, int grad,
    double *loss, double *grad_M, double *grad_c) {
    const int64_t n = N - 1;
    const int64_t dd = d * d;
    const int64_t sizes[] = {
        N * d,         /* X[m * d + a] */
        (L + 1) * n,   /* R[l * n + j]: r_0 ... r_L */
        L * H * N,     /* U[(l * H + h) * N + m] */
        L * H * N * n, /* A[((l * H + h) * N + m) * n + j]: activated scores */
        L * H * d,     /* W[(l * H + h) * d + a]: X_ctx^T r_l of a linear head */
        d * n,         /* Y[a * n + j] = (M X_ctx^T)[a][j]; Z in the backward */
        d,             /* z; X^T gamma in the backward */
        d,             /* t */
        N,             /* g = [dL/dr_{l+1}; dL/dq_L] */
        N,             /* gamma = c g */
        n,             /* Gn: dL/dr_{l+1} */
        n,             /* acc: dL/dr_l */
        L * H * dd,    /* gM: dL/dM, per lane */
        L * H,         /* gc: dL/dc, per lane */
    };
    const int count = (int)(sizeof sizes / sizeof sizes[0]);
    int64_t total = 0;
    for (int i = 0; i < count; ++i)
        total += sizes[i];
    V *work = (V *)aligned_alloc(VECTOR_BYTES, (size_t)total * sizeof(V));
    if (!work)
        return -1;
    V *ptr[sizeof sizes / sizeof sizes[0]];
    {
        V *w = work;
        for (int i = 0; i < count; ++i) {
            ptr[i] = w;
            w += sizes[i];
        }
    }
    V *X = ptr[0], *R = ptr[1], *U = ptr[2], *A = ptr[3], *W = ptr[4], *Y = ptr[5];
    V *z = ptr[6], *t = ptr[7], *g = ptr[8], *gamma = ptr[9], *Gn = ptr[10], *acc = ptr[11];
    V *gM = ptr[12], *gc = ptr[13];
    const V zero = {0};
    VI bad = zero != zero; /* all lanes false */

    for (int64_t e = 0; e < E; ++e) {
        const REAL *Me = M + e * L * H * dd, *ce = c + e * L * H;
        V sq = zero;
        if (grad) {
            for (int64_t i = 0; i < L * H * dd; ++i)
                gM[i] = zero;
            for (int64_t i = 0; i < L * H; ++i)
                gc[i] = zero;
        }
        for (int64_t bb = b0; bb < b1; bb += LANES) {
            const int live = (int)(b1 - bb < LANES ? b1 - bb : LANES);
            /* load the block; absent lanes hold zeros and get a zero residual */
            V q0 = zero, tg = zero, qacc = zero, mask = zero;
            for (int64_t m = 0; m < N; ++m)
                for (int64_t a = 0; a < d; ++a)
                    X[m * d + a] = zero;
            for (int64_t j = 0; j < n; ++j)
                R[j] = zero;
            for (int p = 0; p < live; ++p) {
                const int64_t b = bb + p;
                for (int64_t m = 0; m < N; ++m)
                    for (int64_t a = 0; a < d; ++a)
                        X[m * d + a][p] = x[e * sx_e + b * sx_b + m * sx_m + a * sx_a];
                for (int64_t j = 0; j < n; ++j)
                    R[j][p] = r[e * sr_e + b * sr_b + j * sr_j];
                q0[p] = q[e * sq_e + b * sq_b];
                tg[p] = target[e * st_e + b * st_b];
                mask[p] = 1;
            }

            /* forward */
            for (int64_t l = 0; l < L; ++l) {
                const V *Rl = R + l * n;
                V *Rn = R + (l + 1) * n;
                for (int64_t j = 0; j < n; ++j)
                    Rn[j] = Rl[j];
                for (int64_t h = 0; h < H; ++h) {
                    const REAL *Mh = Me + (l * H + h) * dd;
                    V *u = U + (l * H + h) * N;
                    if (heads[h] == ACT_LINEAR) { /* u = X M (X_ctx^T r) */
                        V *w = W + (l * H + h) * d;
                        for (int64_t a = 0; a < d; ++a) {
                            V s = zero;
                            for (int64_t j = 0; j < n; ++j)
                                s += X[j * d + a] * Rl[j];
                            w[a] = s;
                        }
                        for (int64_t a = 0; a < d; ++a) {
                            V s = zero;
                            for (int64_t b = 0; b < d; ++b)
                                s += Mh[a * d + b] * w[b];
                            z[a] = s;
                        }
                        for (int64_t m = 0; m < N; ++m) {
                            V s = zero;
                            for (int64_t a = 0; a < d; ++a)
                                s += X[m * d + a] * z[a];
                            u[m] = s;
                        }
                        continue;
                    }
                    for (int64_t a = 0; a < d; ++a) /* Y[a][j] = sum_b M[a][b] x_j[b] */
                        for (int64_t j = 0; j < n; ++j) {
                            V s = zero;
                            for (int64_t b = 0; b < d; ++b)
                                s += Mh[a * d + b] * X[j * d + b];
                            Y[a * n + j] = s;
                        }
                    V *Al = A + (l * H + h) * N * n;
                    for (int64_t m = 0; m < N; ++m) {
                        V *row = Al + m * n;
                        for (int64_t j = 0; j < n; ++j) {
                            V s = zero;
                            for (int64_t a = 0; a < d; ++a)
                                s += X[m * d + a] * Y[a * n + j];
                            row[j] = s;
                        }
                        if (heads[h] == ACT_EXP) {
                            for (int64_t j = 0; j < n; ++j)
                                row[j] = NAME(vexp)(row[j]);
                        } else if (heads[h] == ACT_RELU) {
                            for (int64_t j = 0; j < n; ++j)
                                row[j] = SELECT(row[j] < 0, zero, row[j]);
                        } else { /* softmax over the context */
                            V mx = row[0], sum = zero;
                            for (int64_t j = 1; j < n; ++j)
                                mx = SELECT(row[j] > mx, row[j], mx);
                            for (int64_t j = 0; j < n; ++j) {
                                row[j] = NAME(vexp)(row[j] - mx);
                                sum += row[j];
                            }
                            const V inv = (REAL)1 / sum;
                            for (int64_t j = 0; j < n; ++j)
                                row[j] *= inv;
                        }
                        V s = zero;
                        for (int64_t j = 0; j < n; ++j)
                            s += row[j] * Rl[j];
                        u[m] = s;
                    }
                    if (heads[h] == ACT_EXP) /* an overflow leaves some u non-finite */
                        for (int64_t m = 0; m < N; ++m)
                            bad |= ~((u[m] <= HUGE_REAL) & (u[m] >= -HUGE_REAL));
                }
                for (int64_t h = 0; h < H; ++h) {
                    const REAL ch = ce[l * H + h];
                    const V *u = U + (l * H + h) * N;
                    for (int64_t j = 0; j < n; ++j)
                        Rn[j] += ch * u[j];
                    qacc += ch * u[n];
                }
            }

            /* loss and dL/dq_L */
            const V res = (sign * (q0 + qacc) - tg) * mask;
            sq += res * res;
            if (!grad)
                continue;
            const V gq = (2 * sign * grad_scale) * res;

            /* backward: Gn = dL/dr_{l+1} (0 at l = L - 1) */
            for (int64_t j = 0; j < n; ++j)
                Gn[j] = zero;
            for (int64_t l = L - 1; l >= 0; --l) {
                const V *Rl = R + l * n;
                for (int64_t m = 0; m < n; ++m)
                    g[m] = Gn[m];
                g[n] = gq;
                for (int64_t j = 0; j < n; ++j)
                    acc[j] = Gn[j];
                for (int64_t h = 0; h < H; ++h) {
                    const REAL ch = ce[l * H + h];
                    const REAL *Mh = Me + (l * H + h) * dd;
                    const V *u = U + (l * H + h) * N;
                    V *gMl = gM + (l * H + h) * dd;
                    V gcs = zero;
                    for (int64_t m = 0; m < N; ++m) {
                        gamma[m] = ch * g[m];
                        gcs += g[m] * u[m];
                    }
                    gc[l * H + h] += gcs;
                    if (heads[h] == ACT_LINEAR) {
                        /* dL/dM = (X^T gamma) w^T, dL/dr_j += x_j^T M^T (X^T gamma) */
                        const V *w = W + (l * H + h) * d;
                        V *Xg = z;
                        for (int64_t a = 0; a < d; ++a) {
                            V s = zero;
                            for (int64_t m = 0; m < N; ++m)
                                s += X[m * d + a] * gamma[m];
                            Xg[a] = s;
                        }
                        for (int64_t a = 0; a < d; ++a)
                            for (int64_t b = 0; b < d; ++b)
                                gMl[a * d + b] += Xg[a] * w[b];
                        if (l > 0) {
                            for (int64_t b = 0; b < d; ++b) {
                                V s = zero;
                                for (int64_t a = 0; a < d; ++a)
                                    s += Mh[a * d + b] * Xg[a];
                                t[b] = s;
                            }
                            for (int64_t j = 0; j < n; ++j) {
                                V s = acc[j];
                                for (int64_t b = 0; b < d; ++b)
                                    s += X[j * d + b] * t[b];
                                acc[j] = s;
                            }
                        }
                        continue;
                    }
                    /* Z[a][j] = sum_m x_m[a] gamma_m D_mj with D = dA/dS times the label
                     * slots: exp A_mj r_j, relu 1[S_mj > 0] r_j, softmax A_mj (r_j - u_m);
                     * dL/dr_j += (A^T gamma)_j */
                    const V *Al = A + (l * H + h) * N * n;
                    const int act = heads[h];
                    V *Z = Y;
                    for (int64_t i = 0; i < d * n; ++i)
                        Z[i] = zero;
                    for (int64_t m = 0; m < N; ++m) {
                        const V *row = Al + m * n;
                        const V gm = gamma[m], um = u[m];
                        for (int64_t j = 0; j < n; ++j) {
                            V dg;
                            if (act == ACT_EXP)
                                dg = gm * row[j] * Rl[j];
                            else if (act == ACT_RELU)
                                dg = SELECT(row[j] > 0, gm * Rl[j], zero);
                            else
                                dg = gm * row[j] * (Rl[j] - um);
                            acc[j] += gm * row[j];
                            for (int64_t a = 0; a < d; ++a)
                                Z[a * n + j] += X[m * d + a] * dg;
                        }
                    }
                    for (int64_t a = 0; a < d; ++a) /* dL/dM[a][b] += sum_j Z[a][j] x_j[b] */
                        for (int64_t b = 0; b < d; ++b) {
                            V s = gMl[a * d + b];
                            for (int64_t j = 0; j < n; ++j)
                                s += Z[a * n + j] * X[j * d + b];
                            gMl[a * d + b] = s;
                        }
                }
                for (int64_t j = 0; j < n; ++j)
                    Gn[j] = acc[j];
            }
        }
        double total_sq = 0;
        for (int p = 0; p < LANES; ++p)
            total_sq += sq[p];
        loss[e] = total_sq;
        if (grad) {
            for (int64_t i = 0; i < L * H * dd; ++i) {
                double s = 0;
                for (int p = 0; p < LANES; ++p)
                    s += gM[i][p];
                grad_M[e * L * H * dd + i] = s;
            }
            for (int64_t i = 0; i < L * H; ++i) {
                double s = 0;
                for (int p = 0; p < LANES; ++p)
                    s += gc[i][p];
                grad_c[e * L * H + i] = s;
            }
        }
    }
    free(work);
    int overflow = 0;
    for (int p = 0; p < LANES; ++p)
        overflow |= bad[p] != 0;
    return overflow;
}

#undef V
#undef VI
#undef LANES
#undef SELECT
#endif
