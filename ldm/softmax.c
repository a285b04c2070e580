/* Softmax over the rows of a bfloat16 matrix, for the CPU attention's score blocks (ldm/native_softmax.py
 * builds this file with the machine's C compiler and loads it).
 *
 * PyTorch's softmax spends about 2.5 cycles per element on this, mostly in its exponential, which is accurate
 * to float32. The result here is rounded to bfloat16 (relative spacing 2^-8), so 2^y from a degree-4
 * polynomial (relative error 2.7e-6) is exact enough, and the loops below are written so that the compiler
 * turns each into SIMD code: about 2x faster on an AVX-512 CPU. The output equals PyTorch's bfloat16 softmax
 * on all but a few elements in 10^4, which differ by one bfloat16 step.
 *
 * Built with -ffast-math at the compile step only (it lets the max and sum loops vectorise); the link step
 * is plain, so the library does not switch the process to flush-to-zero arithmetic. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) {  /* round to nearest even; the values here are finite */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/* 2^y for y <= 0: y = n + f with n = floor(y) and f in [0, 1); 2^f by a polynomial fitted for relative
 * error on [0, 1), 2^n by writing n into the exponent bits. Below 2^-126, where float32 turns subnormal, 0. */
static inline float exp2_nonpositive(float y) {
    const int underflow = y < -126.0f;
    y = underflow ? -126.0f : y;
    float n = floorf(y), f = y - n;
    float p = 1.3520617e-2f;
    p = p * f + 5.2037518e-2f;
    p = p * f + 2.4142735e-1f;
    p = p * f + 6.9300669e-1f;
    p = p * f + 1.0000025f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return underflow ? 0.0f : p * scale;
}

/* One row: its max m, then e_j = exp(x_j - m) = 2^((x_j - m) log2 e) kept in float32 with their sum, then
 * e_j / sum rounded to bfloat16. */
static void softmax_row(const uint16_t *x, uint16_t *out, int64_t cols, float *e) {
    float m = -FLT_MAX;
    for (int64_t j = 0; j < cols; j++) {
        float v = bf16_to_float(x[j]);
        m = v > m ? v : m;
    }
    const float log2e = 1.44269504f, shift = m * log2e;
    float sum = 0.0f;
    for (int64_t j = 0; j < cols; j++) {
        e[j] = exp2_nonpositive(bf16_to_float(x[j]) * log2e - shift);
        sum += e[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < cols; j++)
        out[j] = float_to_bf16(e[j] * inv);
}

/* softmax over the last dimension of a contiguous rows x cols bfloat16 matrix, on `threads` threads of the
 * OpenMP runtime PyTorch uses (linked to it, so no second pool of threads competes for the cores). `out` may
 * be `x`. Returns 0, or 1 when a thread's float32 row could not be allocated (then `out` is not written). */
int softmax_rows_bf16(const uint16_t *x, uint16_t *out, int64_t rows, int64_t cols, int threads) {
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        float *e = malloc(sizeof(float) * (size_t)cols);
        if (!e) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp barrier
        int any_failed;
        #pragma omp atomic read
        any_failed = failed;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            if (!any_failed)
                softmax_row(x + r * cols, out + r * cols, cols, e);
        free(e);
    }
    return failed;
}
