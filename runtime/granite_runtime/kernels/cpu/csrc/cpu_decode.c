/* CPU decode kernels for granite_runtime (fp32), loaded with ctypes by cpu_kernels.py.
 *
 * Why C and not PyTorch ops: a batch-1 decode step on a CPU is ~140 matrix-vector
 * products that must stream every weight from memory, plus ~6,000 tiny elementwise ops
 * whose dispatch costs more than their arithmetic (bench/NOTES.md). These kernels stream
 * a weight matrix once at the read bandwidth and do the Mamba step, the norms and the
 * residual adds in one pass each.
 *
 * Threads: OpenMP. Built with -fopenmp and loaded after torch, the library binds to the
 * libgomp torch already loaded (same soname), so it shares torch's thread pool and
 * torch.set_num_threads() applies here too.
 *
 * Plain C with no torch headers: compiles in well under a second, where a torch C++
 * extension takes ~50 s.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

/* dot product of n floats; w streams from memory, x is hot in L1. */
static inline float dot(const float *restrict w, const float *restrict x, int64_t n) {
    int64_t i = 0;
    float acc = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; i + 32 <= n; i += 32) { /* four accumulators hide the FMA latency */
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    acc = _mm_cvtss_f32(h);
#endif
    for (; i < n; i++) acc += w[i] * x[i];
    return acc;
}

/* y[m, o] = sum_k x[m, k] w[o, k] (+ bias[o]) for a few rows m: each weight row is read
 * from memory once and reused for every m while it sits in L1. Rows are split into one
 * contiguous block per thread, so each thread streams one region of the matrix. */
void gk_linear(const float *x, const float *w, const float *bias, float *y, int64_t m_rows,
               int64_t out_features, int64_t in_features) {
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < out_features; o++) {
        const float *row = w + o * in_features;
        for (int64_t m = 0; m < m_rows; m++) {
            float v = dot(row, x + m * in_features, in_features);
            y[m * out_features + o] = bias ? v + bias[o] : v;
        }
    }
}

static inline float silu(float v) { return v / (1.0f + expf(-v)); }

/* h = weight * rms_norm(x) over `dim`; with `delta`, x += alpha * delta first (in place),
 * the residual add that precedes every norm in a Granite layer. */
void gk_add_rms_norm(float *x, const float *delta, float alpha, const float *weight, float eps,
                     float *h, int64_t rows, int64_t dim) {
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * dim;
        float ss = 0.0f;
        for (int64_t i = 0; i < dim; i++) {
            if (delta) xr[i] += alpha * delta[r * dim + i];
            ss += xr[i] * xr[i];
        }
        float scale = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++) h[r * dim + i] = weight[i] * (xr[i] * scale);
    }
}

/* One Mamba-2 decode step for `batch` rows, one token each, states updated in their pool
 * slots. proj: in_proj output (batch, inner + conv_dim + heads) = [z | xBC | dt].
 * conv: the layer's pool (slots, conv_dim, K-1); ssm: (slots, heads, P, N).
 * xbc: scratch (batch, conv_dim). y: out (batch, inner), the gated-normed output that
 * feeds out_proj. Same arithmetic as ssd.step and Mamba2 in layers.py, in fp32. */
typedef struct {
    int64_t batch, inner, conv_dim, K, heads, P, groups, N;
    float dt_min, dt_max, eps;
} gk_mamba_shape;

static void conv_update(const gk_mamba_shape *s, const float *proj, float *conv,
                        const int64_t *slots, const float *cw, const float *cb, float *xbc) {
    const int64_t row = s->inner + s->conv_dim + s->heads, km1 = s->K - 1;
#pragma omp for schedule(static) collapse(2)
    for (int64_t b = 0; b < s->batch; b++)
        for (int64_t c = 0; c < s->conv_dim; c++) {
            float *win = conv + (slots[b] * s->conv_dim + c) * km1;
            const float *wc = cw + c * s->K;
            float fresh = proj[b * row + s->inner + c];
            float acc = cb ? cb[c] : 0.0f;
            for (int64_t k = 0; k < km1; k++) acc += win[k] * wc[k];
            acc += fresh * wc[km1];
            for (int64_t k = 0; k + 1 < km1; k++) win[k] = win[k + 1];
            if (km1 > 0) win[km1 - 1] = fresh;
            xbc[b * s->conv_dim + c] = silu(acc);
        }
}

static void state_update(const gk_mamba_shape *s, const float *proj, float *ssm,
                         const int64_t *slots, const float *A, const float *D,
                         const float *dt_bias, const float *xbc, float *y) {
    const int64_t row = s->inner + s->conv_dim + s->heads, N = s->N, P = s->P;
    const int64_t per_group = s->heads / s->groups;
#pragma omp for schedule(static) collapse(2)
    for (int64_t b = 0; b < s->batch; b++)
        for (int64_t h = 0; h < s->heads; h++) {
            float dt = proj[b * row + s->inner + s->conv_dim + h] + dt_bias[h];
            dt = dt > 20.0f ? dt : log1pf(expf(dt)); /* softplus, torch's threshold */
            dt = fminf(fmaxf(dt, s->dt_min), s->dt_max);
            const float decay = expf(dt * A[h]);
            const float *xb = xbc + b * s->conv_dim;
            const float *Bv = xb + s->inner + (h / per_group) * N;
            const float *Cv = xb + s->inner + s->groups * N + (h / per_group) * N;
            float *st = ssm + ((slots[b] * s->heads + h) * P) * N;
            for (int64_t p = 0; p < P; p++) {
                const float xv = xb[h * P + p], dx = dt * xv;
                float *sp = st + p * N, acc = 0.0f;
                for (int64_t n = 0; n < N; n++) {
                    sp[n] = sp[n] * decay + dx * Bv[n];
                    acc += sp[n] * Cv[n];
                }
                y[b * s->inner + h * P + p] = acc + D[h] * xv;
            }
        }
}

static void gated_norm(const gk_mamba_shape *s, const float *proj, const float *weight,
                       float *y) {
    const int64_t row = s->inner + s->conv_dim + s->heads, width = s->inner / s->groups;
#pragma omp for schedule(static) collapse(2)
    for (int64_t b = 0; b < s->batch; b++)
        for (int64_t g = 0; g < s->groups; g++) {
            float *yg = y + b * s->inner + g * width;
            const float *z = proj + b * row + g * width;
            float ss = 0.0f;
            for (int64_t i = 0; i < width; i++) {
                yg[i] *= silu(z[i]);
                ss += yg[i] * yg[i];
            }
            const float scale = 1.0f / sqrtf(ss / (float)width + s->eps);
            for (int64_t i = 0; i < width; i++) yg[i] = weight[g * width + i] * (yg[i] * scale);
        }
}

void gk_mamba_step(const gk_mamba_shape *s, const float *proj, float *conv, float *ssm,
                   const int64_t *slots, const float *conv_w, const float *conv_b,
                   const float *A, const float *D, const float *dt_bias,
                   const float *norm_w, float *xbc, float *y) {
#pragma omp parallel
    {
        conv_update(s, proj, conv, slots, conv_w, conv_b, xbc);
        state_update(s, proj, ssm, slots, A, D, dt_bias, xbc, y);
        gated_norm(s, proj, norm_w, y);
    }
}
