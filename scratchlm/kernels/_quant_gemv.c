/* Weight-only quantised linears on CPU for a few rows of activations (decode): y = x W^T (+ b), fp32 in/out.
 *
 * The CPU fast path of compress/quant.py's Int8Linear / Int4Linear. Decoding multiplies a few rows by every
 * weight matrix: the cost is reading the weights, so this reads the quantised bytes themselves (int8: 1 byte
 * a weight, int4: half a byte plus a scale and zero per group; fp32 reads 4) and never builds the float
 * matrix. Formats (as quant.py):
 *
 *   int8: W[n, k] = scale[n] * q[n, k], q int8 (N, K)
 *         y[r, n] = scale[n] * sum_k x[r, k] q[n, k]
 *   int4: W[n, k] = scale[n, g] * (q[n, k] - zero[n, g]) in groups g of G inputs; packed (N, K / 2) uint8
 *         where byte j of a group holds element j (low nibble) and element j + G/2 (high nibble)
 *         y[r, n] = sum_g scale[n, g] * (sum_{k in g} x[r, k] q[n, k]  -  zero[n, g] * xsum[r, g])
 *
 * so the scale and zero of a group are applied once per group: the inner loop only unpacks, converts and
 * multiply-adds (16 lanes of partial sums; the row count is a compile-time constant of each
 * specialisation so the accumulators stay in registers). xsum[r, g] (the sum of the activations of a
 * group) is computed once per call.
 *
 * Loops: AVX-512F, AVX2 + FMA (intrinsics, tiles of several output rows) or portable vector extensions,
 * the best the CPU has, checked at import (`isa()`, `set_isa()`; env SCRATCHLM_QUANT_ISA lowers it).
 *
 * Threads: output rows are split in contiguous ranges over a small pool of persistent POSIX threads (a
 * decode step calls ~200 linears; starting threads per call would cost ~50 us each time). Workers spin
 * for the next call (~ms), then sleep on a condition variable. The pool competes with torch's own OpenMP
 * workers, which spin between ops too: quant_gemv.py uses it only when asked (see its `set_threads`).
 * The GIL is released during the work.
 * Arguments are raw addresses (tensor.data_ptr()); the Python wrapper (quant_gemv.py) checks dtypes,
 * shapes and contiguity before calling.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ROWS 8        /* rows of activations per pass (the specialisations) */
#define MAX_CALL_ROWS 64  /* rows per call: passes of MAX_ROWS over blocks of weights (run_range) */
#define MAX_THREADS 64
#define LANES 16
/* Software prefetch distance, in tiles: each tile's loop also prefetches the tile PFD tiles later at the rate
 * it consumes its own rows. A tile reads NB short rows (K bytes each) at once; the hardware prefetcher does
 * not follow these short interleaved streams, and without this the kernel read ~4.5 GB/s from DRAM on one
 * core (13 GB/s with it; 2 measured best with 2 threads: dev/LOG.md session 9, benchmarks/quant_gemv_rows.py). */
#ifndef PFD
#define PFD 2
#endif

typedef struct {
    int bits; /* 8 or 4 */
    const float *x;          /* (R, K) */
    const void *q;           /* int8 (N, K) | uint8 (N, K/2) */
    const float *scale;      /* (N,) | (N, K/G) */
    const uint8_t *zero;     /* int4: (N, K/G) */
    const float *xsum;       /* int4: (R, K/G) */
    const float *bias;       /* (N,) or NULL */
    float *y;                /* (R, N) */
    int64_t R, N, K, G;
} Job;

/* ------------------------------------------------------------------------------------------ kernels */
/* 16 floats as one value (GCC vector extension): a zmm register with AVX-512, two ymm with AVX2 */
typedef float v16f __attribute__((vector_size(64)));
typedef int8_t v16i8 __attribute__((vector_size(16)));
typedef uint8_t v16u8 __attribute__((vector_size(16)));

static inline v16f load16(const float *p) {
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float hsum16(v16f v) {
    float t = 0.0f;
    for (int l = 0; l < LANES; l++) t += v[l];
    return t;
}

static inline __attribute__((always_inline)) void int8_range(const Job *j, int64_t n0, int64_t n1, const int R) {
    const int64_t K = j->K;
    const int8_t *Q = (const int8_t *)j->q;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *q = Q + n * K;
        v16f acc[MAX_ROWS];
        float tail[MAX_ROWS];
        for (int r = 0; r < R; r++) acc[r] = (v16f){0}, tail[r] = 0.0f;
        int64_t k = 0;
        for (; k + LANES <= K; k += LANES) {
            v16i8 qb;
            memcpy(&qb, q + k, sizeof qb);
            const v16f w = __builtin_convertvector(qb, v16f);
            for (int r = 0; r < R; r++) acc[r] += load16(j->x + r * K + k) * w;
        }
        for (; k < K; k++)
            for (int r = 0; r < R; r++) tail[r] += j->x[r * K + k] * (float)q[k];
        const float s = j->scale[n], b = j->bias ? j->bias[n] : 0.0f;
        for (int r = 0; r < R; r++) j->y[r * j->N + n] = s * (hsum16(acc[r]) + tail[r]) + b;
    }
}

static inline __attribute__((always_inline)) void int4_range(const Job *j, int64_t n0, int64_t n1, const int R) {
    const int64_t K = j->K, G = j->G, H = j->G / 2, ng = j->K / j->G;
    const uint8_t *P = (const uint8_t *)j->q;
    const v16u8 low = {15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15};
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *p = P + n * (K / 2);
        const float *sc = j->scale + n * ng;
        const uint8_t *zp = j->zero + n * ng;
        v16f tot[MAX_ROWS];
        float rest[MAX_ROWS]; /* zero-point terms and the scalar tails */
        for (int r = 0; r < R; r++) tot[r] = (v16f){0}, rest[r] = 0.0f;
        for (int64_t g = 0; g < ng; g++) {
            const uint8_t *pg = p + g * H;
            const int64_t k0 = g * G;
            const float s = sc[g];
            v16f acc[MAX_ROWS];
            float tail[MAX_ROWS];
            for (int r = 0; r < R; r++) acc[r] = (v16f){0}, tail[r] = 0.0f;
            int64_t i = 0;
            for (; i + LANES <= H; i += LANES) {
                v16u8 b;
                memcpy(&b, pg + i, sizeof b);
                const v16f lo = __builtin_convertvector(b & low, v16f), hi = __builtin_convertvector(b >> 4, v16f);
                for (int r = 0; r < R; r++) {
                    const float *xl = j->x + r * K + k0 + i;
                    acc[r] += load16(xl) * lo + load16(xl + H) * hi;
                }
            }
            for (; i < H; i++) /* group halves that are not a multiple of 16 */
                for (int r = 0; r < R; r++) {
                    const float *xl = j->x + r * K + k0 + i;
                    tail[r] += xl[0] * (float)(pg[i] & 15) + xl[H] * (float)(pg[i] >> 4);
                }
            const float zs = s * (float)zp[g];
            for (int r = 0; r < R; r++) {
                tot[r] += s * acc[r];
                rest[r] += s * tail[r] - zs * j->xsum[r * ng + g];
            }
        }
        const float b = j->bias ? j->bias[n] : 0.0f;
        for (int r = 0; r < R; r++) j->y[r * j->N + n] = hsum16(tot[r]) + rest[r] + b;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86_PATHS 1
/* The same loops with AVX-512 / AVX2 intrinsics (GCC lowers the vector-extension conversions above to
 * 4-wide pieces), compiled for those ISAs by target attributes and picked at import by a CPU check, so the
 * build needs no -march flag and the module runs on any x86-64. A tile of NB output rows is computed at
 * once: with one row of activations a single accumulator is a chain of dependent FMAs (latency-bound, ~4x
 * below the FMA throughput); NB x R independent accumulators hide that latency and share each activation
 * load across NB weight rows. NB is a compile-time constant of each (R, NB) specialisation. */
#define NB8(R) ((R) <= 2 ? 4 : (R) <= 4 ? 2 : 1)
#define NB4(R) ((R) == 1 ? 4 : (R) <= 3 ? 2 : 1)

static inline __attribute__((always_inline, target("avx512f"))) void int8_tile_512(const Job *j, int64_t n0,
                                                                                  int64_t n1, const int R,
                                                                                  const int NB) {
    const int64_t K = j->K;
    const int8_t *Q = (const int8_t *)j->q;
    for (int64_t n = n0; n < n1; n += NB) {
        __m512 acc[4][MAX_ROWS];
        float tail[4][MAX_ROWS];
        for (int b = 0; b < NB; b++)
            for (int r = 0; r < R; r++) acc[b][r] = _mm512_setzero_ps(), tail[b][r] = 0.0f;
        int64_t k = 0;
        const int8_t *pf = Q + (n + PFD * NB) * K; /* a later tile, read at the rate this one is consumed */
        for (; k + LANES <= K; k += LANES) {
            _mm_prefetch((const char *)(pf + k * NB), _MM_HINT_T0);
            __m512 w[4];
            for (int b = 0; b < NB; b++)
                w[b] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(Q + (n + b) * K + k))));
            for (int r = 0; r < R; r++) {
                const __m512 xv = _mm512_loadu_ps(j->x + r * K + k);
                for (int b = 0; b < NB; b++) acc[b][r] = _mm512_fmadd_ps(xv, w[b], acc[b][r]);
            }
        }
        for (; k < K; k++)
            for (int b = 0; b < NB; b++)
                for (int r = 0; r < R; r++) tail[b][r] += j->x[r * K + k] * (float)Q[(n + b) * K + k];
        for (int b = 0; b < NB; b++) {
            const float s = j->scale[n + b], bias = j->bias ? j->bias[n + b] : 0.0f;
            for (int r = 0; r < R; r++)
                j->y[r * j->N + n + b] = s * (_mm512_reduce_add_ps(acc[b][r]) + tail[b][r]) + bias;
        }
    }
}

static inline __attribute__((always_inline, target("avx512f"))) void int4_tile_512(const Job *j, int64_t n0,
                                                                                  int64_t n1, const int R,
                                                                                  const int NB) {
    const int64_t K = j->K, G = j->G, H = j->G / 2, ng = j->K / j->G;
    const uint8_t *P = (const uint8_t *)j->q;
    const __m512i low = _mm512_set1_epi32(15);
    for (int64_t n = n0; n < n1; n += NB) {
        __m512 tot[4][MAX_ROWS];
        float rest[4][MAX_ROWS]; /* zero-point terms and the scalar tails */
        for (int b = 0; b < NB; b++)
            for (int r = 0; r < R; r++) tot[b][r] = _mm512_setzero_ps(), rest[b][r] = 0.0f;
        for (int64_t g = 0; g < ng; g++) {
            const int64_t k0 = g * G;
            __m512 acc[4][MAX_ROWS];
            float tail[4][MAX_ROWS];
            for (int b = 0; b < NB; b++)
                for (int r = 0; r < R; r++) acc[b][r] = _mm512_setzero_ps(), tail[b][r] = 0.0f;
            const uint8_t *pf = P + (n + PFD * NB) * (K / 2) + g * H * NB; /* as int8_tile_512 */
            int64_t i = 0;
            for (; i + LANES <= H; i += LANES) {
                _mm_prefetch((const char *)(pf + i * NB), _MM_HINT_T0);
                __m512 lo[4], hi[4];
                for (int b = 0; b < NB; b++) {
                    const uint8_t *pg = P + (n + b) * (K / 2) + g * H;
                    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(pg + i)));
                    lo[b] = _mm512_cvtepi32_ps(_mm512_and_si512(v, low));
                    hi[b] = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
                }
                for (int r = 0; r < R; r++) {
                    const float *xl = j->x + r * K + k0 + i;
                    const __m512 xa = _mm512_loadu_ps(xl), xb = _mm512_loadu_ps(xl + H);
                    for (int b = 0; b < NB; b++) {
                        acc[b][r] = _mm512_fmadd_ps(xa, lo[b], acc[b][r]);
                        acc[b][r] = _mm512_fmadd_ps(xb, hi[b], acc[b][r]);
                    }
                }
            }
            for (; i < H; i++) /* group halves that are not a multiple of 16 */
                for (int b = 0; b < NB; b++) {
                    const uint8_t byte = P[(n + b) * (K / 2) + g * H + i];
                    for (int r = 0; r < R; r++) {
                        const float *xl = j->x + r * K + k0 + i;
                        tail[b][r] += xl[0] * (float)(byte & 15) + xl[H] * (float)(byte >> 4);
                    }
                }
            for (int b = 0; b < NB; b++) {
                const float s = j->scale[(n + b) * ng + g], zs = s * (float)j->zero[(n + b) * ng + g];
                const __m512 sv = _mm512_set1_ps(s);
                for (int r = 0; r < R; r++) {
                    tot[b][r] = _mm512_fmadd_ps(sv, acc[b][r], tot[b][r]);
                    rest[b][r] += s * tail[b][r] - zs * j->xsum[r * ng + g];
                }
            }
        }
        for (int b = 0; b < NB; b++) {
            const float bias = j->bias ? j->bias[n + b] : 0.0f;
            for (int r = 0; r < R; r++) j->y[r * j->N + n + b] = _mm512_reduce_add_ps(tot[b][r]) + rest[b][r] + bias;
        }
    }
}

/* rows n0..n1: whole tiles of NB rows, then single rows */
static inline __attribute__((always_inline, target("avx512f"))) void range_512(const Job *j, int64_t n0, int64_t n1,
                                                                              const int R) {
    const int NB = j->bits == 8 ? NB8(R) : NB4(R);
    const int64_t nt = n0 + (n1 - n0) / NB * NB;
    if (j->bits == 8) {
        int8_tile_512(j, n0, nt, R, NB);
        int8_tile_512(j, nt, n1, R, 1);
    } else {
        int4_tile_512(j, n0, nt, R, NB);
        int4_tile_512(j, nt, n1, R, 1);
    }
}

static __attribute__((target("avx512f"))) void run_range_512(const Job *j, int64_t n0, int64_t n1) {
#define CASE(RR) \
    case RR: range_512(j, n0, n1, RR); break;
    switch (j->R) {
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
    }
#undef CASE
}

/* AVX2 + FMA: 8 lanes; each 16-weight step of the loops above is two 8-lane halves into one accumulator */
static inline __attribute__((always_inline, target("avx2,fma"))) float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __attribute__((always_inline, target("avx2,fma"))) __m256 cvt8_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static inline __attribute__((always_inline, target("avx2,fma"))) void int8_tile_256(const Job *j, int64_t n0,
                                                                                   int64_t n1, const int R,
                                                                                   const int NB) {
    const int64_t K = j->K;
    const int8_t *Q = (const int8_t *)j->q;
    for (int64_t n = n0; n < n1; n += NB) {
        __m256 acc[4][MAX_ROWS];
        float tail[4][MAX_ROWS];
        for (int b = 0; b < NB; b++)
            for (int r = 0; r < R; r++) acc[b][r] = _mm256_setzero_ps(), tail[b][r] = 0.0f;
        int64_t k = 0;
        const int8_t *pf = Q + (n + PFD * NB) * K; /* as int8_tile_512 */
        for (; k + LANES <= K; k += LANES) {
            _mm_prefetch((const char *)(pf + k * NB), _MM_HINT_T0);
            for (int h = 0; h < LANES; h += 8) {
                __m256 w[4];
                for (int b = 0; b < NB; b++) w[b] = cvt8_i8(Q + (n + b) * K + k + h);
                for (int r = 0; r < R; r++) {
                    const __m256 xv = _mm256_loadu_ps(j->x + r * K + k + h);
                    for (int b = 0; b < NB; b++) acc[b][r] = _mm256_fmadd_ps(xv, w[b], acc[b][r]);
                }
            }
        }
        for (; k < K; k++)
            for (int b = 0; b < NB; b++)
                for (int r = 0; r < R; r++) tail[b][r] += j->x[r * K + k] * (float)Q[(n + b) * K + k];
        for (int b = 0; b < NB; b++) {
            const float s = j->scale[n + b], bias = j->bias ? j->bias[n + b] : 0.0f;
            for (int r = 0; r < R; r++) j->y[r * j->N + n + b] = s * (hsum256(acc[b][r]) + tail[b][r]) + bias;
        }
    }
}

static inline __attribute__((always_inline, target("avx2,fma"))) void int4_tile_256(const Job *j, int64_t n0,
                                                                                   int64_t n1, const int R,
                                                                                   const int NB) {
    const int64_t K = j->K, G = j->G, H = j->G / 2, ng = j->K / j->G;
    const uint8_t *P = (const uint8_t *)j->q;
    const __m256i low = _mm256_set1_epi32(15);
    for (int64_t n = n0; n < n1; n += NB) {
        __m256 tot[4][MAX_ROWS];
        float rest[4][MAX_ROWS];
        for (int b = 0; b < NB; b++)
            for (int r = 0; r < R; r++) tot[b][r] = _mm256_setzero_ps(), rest[b][r] = 0.0f;
        for (int64_t g = 0; g < ng; g++) {
            const int64_t k0 = g * G;
            __m256 acc[4][MAX_ROWS];
            float tail[4][MAX_ROWS];
            for (int b = 0; b < NB; b++)
                for (int r = 0; r < R; r++) acc[b][r] = _mm256_setzero_ps(), tail[b][r] = 0.0f;
            const uint8_t *pf = P + (n + PFD * NB) * (K / 2) + g * H * NB;
            int64_t i = 0;
            for (; i + LANES <= H; i += LANES) {
                _mm_prefetch((const char *)(pf + i * NB), _MM_HINT_T0);
                for (int h = 0; h < LANES; h += 8) {
                    __m256 lo[4], hi[4];
                    for (int b = 0; b < NB; b++) {
                        const uint8_t *pg = P + (n + b) * (K / 2) + g * H + i + h;
                        const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)pg));
                        lo[b] = _mm256_cvtepi32_ps(_mm256_and_si256(v, low));
                        hi[b] = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
                    }
                    for (int r = 0; r < R; r++) {
                        const float *xl = j->x + r * K + k0 + i + h;
                        const __m256 xa = _mm256_loadu_ps(xl), xb = _mm256_loadu_ps(xl + H);
                        for (int b = 0; b < NB; b++) {
                            acc[b][r] = _mm256_fmadd_ps(xa, lo[b], acc[b][r]);
                            acc[b][r] = _mm256_fmadd_ps(xb, hi[b], acc[b][r]);
                        }
                    }
                }
            }
            for (; i < H; i++)
                for (int b = 0; b < NB; b++) {
                    const uint8_t byte = P[(n + b) * (K / 2) + g * H + i];
                    for (int r = 0; r < R; r++) {
                        const float *xl = j->x + r * K + k0 + i;
                        tail[b][r] += xl[0] * (float)(byte & 15) + xl[H] * (float)(byte >> 4);
                    }
                }
            for (int b = 0; b < NB; b++) {
                const float s = j->scale[(n + b) * ng + g], zs = s * (float)j->zero[(n + b) * ng + g];
                const __m256 sv = _mm256_set1_ps(s);
                for (int r = 0; r < R; r++) {
                    tot[b][r] = _mm256_fmadd_ps(sv, acc[b][r], tot[b][r]);
                    rest[b][r] += s * tail[b][r] - zs * j->xsum[r * ng + g];
                }
            }
        }
        for (int b = 0; b < NB; b++) {
            const float bias = j->bias ? j->bias[n + b] : 0.0f;
            for (int r = 0; r < R; r++) j->y[r * j->N + n + b] = hsum256(tot[b][r]) + rest[b][r] + bias;
        }
    }
}

static inline __attribute__((always_inline, target("avx2,fma"))) void range_256(const Job *j, int64_t n0, int64_t n1,
                                                                               const int R) {
    const int NB = j->bits == 8 ? NB8(R) : NB4(R);
    const int64_t nt = n0 + (n1 - n0) / NB * NB;
    if (j->bits == 8) {
        int8_tile_256(j, n0, nt, R, NB);
        int8_tile_256(j, nt, n1, R, 1);
    } else {
        int4_tile_256(j, n0, nt, R, NB);
        int4_tile_256(j, nt, n1, R, 1);
    }
}

static __attribute__((target("avx2,fma"))) void run_range_256(const Job *j, int64_t n0, int64_t n1) {
#define CASE(RR) \
    case RR: range_256(j, n0, n1, RR); break;
    switch (j->R) {
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
    }
#undef CASE
}
#endif

/* the portable loops (vector extensions, compiled for the baseline ISA) */
static void run_range_generic(const Job *j, int64_t n0, int64_t n1) {
    /* the row count as a constant in each case: the accumulators of R rows fit in registers */
#define CASE(RR)                                                                                              \
    case RR:                                                                                                  \
        if (j->bits == 8)                                                                                     \
            int8_range(j, n0, n1, RR);                                                                        \
        else                                                                                                  \
            int4_range(j, n0, n1, RR);                                                                        \
        break;
    switch (j->R) {
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
    }
#undef CASE
}

enum { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
static const char *isa_names[] = {"generic", "avx2", "avx512f"};
static int isa_best = ISA_GENERIC; /* the best this CPU (and build) runs, decided at import */
static int isa = ISA_GENERIC;      /* the loops in use: isa_best unless lowered (env, set_isa) */

static void run_range_rows(const Job *j, int64_t n0, int64_t n1) { /* j->R <= MAX_ROWS */
#ifdef HAVE_X86_PATHS
    if (isa == ISA_AVX512) {
        run_range_512(j, n0, n1);
        return;
    }
    if (isa == ISA_AVX2) {
        run_range_256(j, n0, n1);
        return;
    }
#endif
    run_range_generic(j, n0, n1);
}

/* More than MAX_ROWS rows (a short prefill, a batch of decodes): blocks of BLOCK_N output rows, and for each
 * block every chunk of MAX_ROWS activation rows, so a block's weights are read from memory once and from
 * cache for the other chunks (dequantising the whole matrix for a GEMM writes and re-reads 4 bytes a weight). */
#define BLOCK_N 32
static void run_range(const Job *j, int64_t n0, int64_t n1) {
    if (j->R <= MAX_ROWS) {
        run_range_rows(j, n0, n1);
        return;
    }
    const int64_t ng = j->bits == 4 ? j->K / j->G : 0;
    for (int64_t b0 = n0; b0 < n1; b0 += BLOCK_N) {
        const int64_t b1 = b0 + BLOCK_N < n1 ? b0 + BLOCK_N : n1;
        for (int64_t r0 = 0; r0 < j->R; r0 += MAX_ROWS) {
            Job c = *j;
            c.R = j->R - r0 < MAX_ROWS ? j->R - r0 : MAX_ROWS;
            c.x = j->x + r0 * j->K, c.y = j->y + r0 * j->N;
            if (j->xsum) c.xsum = j->xsum + r0 * ng;
            run_range_rows(&c, b0, b1);
        }
    }
}

/* ------------------------------------------------------------------------------------------ thread pool */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;
static int pool_size = 0;          /* workers started (the caller is part 0) */
static int64_t generation = 0;     /* bumped for every job: workers wait for a new value */
static int pending = 0;            /* parts of the current job not finished yet */
static const Job *cur_job = NULL;
static int cur_parts = 0;
static int64_t cur_chunk = 0;
/* polls of `generation` before a worker sleeps (~ms; env SCRATCHLM_QUANT_SPIN). A decode step runs other ops
 * between its linears; a worker that went to sleep takes tens of us to wake on a VM, every call. Measured on
 * 2 cores (SmolLM2 int8, torch at 1 thread, pool of 2): 20k polls 29, 400k 44, 4M 52 tokens/s (dev/LOG.md). */
static int spin_limit = 4000000;

static void run_part(int part) {
    const int64_t n0 = part * cur_chunk, n1 = n0 + cur_chunk < cur_job->N ? n0 + cur_chunk : cur_job->N;
    if (n0 < n1) run_range(cur_job, n0, n1);
}

static void *worker(void *arg) {
    const int id = (int)(intptr_t)arg; /* 1.. */
    int64_t seen = 0;
    for (;;) {
        int64_t g;
        int spins = 0;
        while ((g = __atomic_load_n(&generation, __ATOMIC_ACQUIRE)) == seen && spins < spin_limit) spins++;
        if (g == seen) {
            pthread_mutex_lock(&mu);
            while ((g = __atomic_load_n(&generation, __ATOMIC_ACQUIRE)) == seen) pthread_cond_wait(&cv, &mu);
            pthread_mutex_unlock(&mu);
        }
        seen = g;
        if (id < cur_parts) {
            run_part(id);
            __atomic_sub_fetch(&pending, 1, __ATOMIC_ACQ_REL);
        }
    }
    return NULL;
}

static void grow_pool(int workers) {
    while (pool_size < workers && pool_size < MAX_THREADS - 1) {
        pthread_t th;
        if (pthread_create(&th, NULL, worker, (void *)(intptr_t)(pool_size + 1)) != 0) break;
        pthread_detach(th);
        pool_size++;
    }
}

static void after_fork_child(void) { /* the pool's threads do not exist in a forked child */
    pthread_mutex_init(&mu, NULL);
    pthread_cond_init(&cv, NULL);
    pthread_mutex_init(&call_mu, NULL);
    pool_size = 0;
    pending = 0;
}

static void run_job(const Job *j, int nthreads) {
    if (nthreads > 1) grow_pool(nthreads - 1);
    int parts = nthreads < pool_size + 1 ? nthreads : pool_size + 1;
    if (parts < 1) parts = 1;
    /* contiguous row ranges, a multiple of 8 rows each so no two threads write the same cache line of y */
    int64_t chunk = (j->N + parts - 1) / parts;
    chunk = (chunk + 7) / 8 * 8;
    if (parts == 1) {
        run_range(j, 0, j->N);
        return;
    }
    cur_job = j, cur_parts = parts, cur_chunk = chunk;
    __atomic_store_n(&pending, parts - 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&mu);
    __atomic_add_fetch(&generation, 1, __ATOMIC_ACQ_REL);
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    run_part(0);
    for (int spins = 0; __atomic_load_n(&pending, __ATOMIC_ACQUIRE) > 0; spins++)
        if (spins > 1000) sched_yield(); /* a worker was asleep or descheduled: let it run */
}

/* ------------------------------------------------------------------------------------------ Python */
static PyObject *gemv(PyObject *self, PyObject *args) {
    int bits, nthreads;
    unsigned long long x, q, scale, zero, bias, y;
    long long R, N, K, G;
    if (!PyArg_ParseTuple(args, "iKKKKKKLLLLi", &bits, &x, &q, &scale, &zero, &bias, &y, &R, &N, &K, &G, &nthreads))
        return NULL;
    if ((bits != 8 && bits != 4) || R < 1 || R > MAX_CALL_ROWS || N < 1 || K < 1 ||
        (bits == 4 && (G < 2 || G % 2 || K % G))) {
        PyErr_Format(PyExc_ValueError, "quant gemv: unsupported bits=%d rows=%lld N=%lld K=%lld group=%lld", bits, R,
                     N, K, G);
        return NULL;
    }
    float *xsum = NULL; /* int4: the sum of each group's activations (R, K / G), for the zero-point term */
    if (bits == 4 && !(xsum = malloc(sizeof(float) * R * (K / G)))) return PyErr_NoMemory();
    Job j = {bits, (const float *)x, (const void *)q, (const float *)scale, (const uint8_t *)zero, xsum,
             bias ? (const float *)bias : NULL, (float *)y, R, N, K, G};
    Py_BEGIN_ALLOW_THREADS
    if (xsum)
        for (int64_t i = 0; i < R * (K / G); i++) {
            const float *xg = j.x + i * G; /* group i % (K/G) of row i / (K/G): rows are contiguous */
            float t = 0.0f;
            for (int64_t k = 0; k < G; k++) t += xg[k];
            xsum[i] = t;
        }
    pthread_mutex_lock(&call_mu); /* one job at a time: callers from several Python threads queue here */
    run_job(&j, nthreads < 1 ? 1 : nthreads);
    pthread_mutex_unlock(&call_mu);
    Py_END_ALLOW_THREADS
    free(xsum);
    Py_RETURN_NONE;
}

static PyObject *get_isa(PyObject *self, PyObject *args) { return PyUnicode_FromString(isa_names[isa]); }

static PyObject *isas(PyObject *self, PyObject *args) {
    PyObject *out = PyTuple_New(isa_best + 1);
    for (int i = 0; out && i <= isa_best; i++) PyTuple_SET_ITEM(out, i, PyUnicode_FromString(isa_names[i]));
    return out;
}

static int isa_by_name(const char *name) {
    for (int i = 0; i <= ISA_AVX512; i++)
        if (!strcmp(name, isa_names[i])) return i;
    return -1;
}

static PyObject *set_isa(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    const int want = isa_by_name(name);
    if (want < 0 || want > isa_best) {
        PyErr_Format(PyExc_ValueError, "quant gemv: instruction set %s is not available here (best: %s)", name,
                     isa_names[isa_best]);
        return NULL;
    }
    PyObject *before = PyUnicode_FromString(isa_names[isa]);
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&call_mu); /* not while a job runs */
    isa = want;
    pthread_mutex_unlock(&call_mu);
    Py_END_ALLOW_THREADS
    return before;
}

static PyMethodDef methods[] = {
    {"gemv", gemv, METH_VARARGS,
     "gemv(bits, x, q, scale, zero, bias, y, R, N, K, group, nthreads): y (R, N) = x (R, K) W^T (+ bias) "
     "with W int8 per channel (bits 8) or int4 group-wise (bits 4); fp32, addresses of contiguous buffers"},
    {"isa", get_isa, METH_NOARGS, "isa(): the instruction set of the loops in use ('avx512f', 'avx2' or 'generic')"},
    {"isas", isas, METH_NOARGS, "isas(): the instruction sets this CPU runs, from 'generic' up"},
    {"set_isa", set_isa, METH_VARARGS, "set_isa(name): use the loops for one of isas(); returns the previous name"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_quant_gemv", NULL, -1, methods};

PyMODINIT_FUNC PyInit__quant_gemv(void) {
#ifdef HAVE_X86_PATHS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa_best = ISA_AVX2;
    if (__builtin_cpu_supports("avx512f")) isa_best = ISA_AVX512;
#endif
    isa = isa_best;
    /* SCRATCHLM_QUANT_ISA=generic|avx2|avx512f lowers the choice (tests, comparisons); SCRATCHLM_NO_AVX512=1
     * (older name) means the portable loops */
    const char *env = getenv("SCRATCHLM_QUANT_ISA");
    if (env && isa_by_name(env) >= 0 && isa_by_name(env) < isa) isa = isa_by_name(env);
    if (getenv("SCRATCHLM_NO_AVX512")) isa = ISA_GENERIC;
    pthread_atfork(NULL, NULL, after_fork_child);
    if (getenv("SCRATCHLM_QUANT_SPIN")) spin_limit = atoi(getenv("SCRATCHLM_QUANT_SPIN"));
    return PyModule_Create(&module);
}
