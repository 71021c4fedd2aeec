/* Paged decode attention on CPU (fp32): each cached key and value read once, straight from its block.
 *
 * The CPU twin of the Triton decode kernel in paged_attention.py, for the inference engine's decode steps.
 * One work item per sequence b: its H query heads walk the sequence's blocks in order, one block
 * (block_size tokens, all K kv heads: contiguous memory) at a time, with an online softmax per head
 * (running max m, sum l, accumulator acc); query head h reads kv head h / G:
 *
 *     s[t, g] = scale * q[g] . k[t]                    for the block's visible tokens t
 *     m' = max(m, max_t s);  acc = acc e^(m - m') + sum_t e^(s - m') v[t];  l = l e^(m - m') + sum_t e^(s - m')
 *
 * and finally out = acc / l. Work items are shared by `nthreads` POSIX threads (interleaved), with the GIL
 * released: decode attention is bound by reading the cache, and one core does not saturate memory.
 *
 * Layout (as paged_attention.py): q, out (B, H, Dh); k_cache, v_cache (num_blocks, block_size, K, Dh);
 * block_tables (B, M) int64, -1 = no block; context_lens (B,) int64; H = K * G, query head h reads kv head
 * h / G. Visible positions of row b: max(0, len - window) .. len - 1 (window 0: all). A row of length 0
 * gives zeros. Arguments are raw addresses (tensor.data_ptr()); the Python wrapper checks dtypes, shapes,
 * contiguity and table bounds before calling.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_H 128
#define MAX_DH 256
#define MAX_BS 256
#define MAX_THREADS 256

typedef struct {
    const float *q, *kc, *vc;
    const int64_t *tables, *lens;
    float *out;
    int64_t B, H, K, Dh, bs, M, window;
    float scale;
    int nthreads, tid;
} Args;

static inline float dot(const float *a, const float *b, int64_t n) {
    /* 8 partial sums: lets the compiler use vector registers (the file is built with -fassociative-math) */
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t d = 0;
    for (; d + 8 <= n; d += 8)
        for (int j = 0; j < 8; j++) s[j] += a[d + j] * b[d + j];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; d < n; d++) r += a[d] * b[d];
    return r;
}

/* e^x for x <= 0 (scores minus their running max), as a loop the compiler vectorises: libm's expf is a
 * call per element. x = n ln2 + r, |r| <= ln2 / 2, e^r by its degree-6 Taylor polynomial (relative error
 * < 2e-7, about one float ulp), times 2^n built in the exponent bits. Below -87 (e^x < 1.2e-38) gives 0. */
static inline void exp_nonpositive(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] < -87.0f ? -87.0f : x[i];
        float k = v * 1.44269504f; /* x / ln 2, rounded to the nearest integer below */
        int32_t e = (int32_t)(k - 0.5f);
        float r = v - (float)e * 0.693359375f + (float)e * 2.12194440e-4f; /* ln 2 in two parts */
        float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667e-1f + r * (4.1666667e-2f + r * (8.3333333e-3f +
                                                                                                r * 1.3888889e-3f)))));
        union { int32_t i; float f; } two_e = {.i = (e + 127) << 23};
        y[i] = x[i] < -87.0f ? 0.0f : p * two_e.f;
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* one build for every x86-64 CPU: the loader picks the AVX2 / AVX-512 clone where the CPU has it */
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void item(const Args *a, int64_t b) {
    const int64_t H = a->H, K = a->K, G = a->H / a->K, Dh = a->Dh, bs = a->bs;
    const int64_t len = a->lens[b];
    const int64_t first = a->window > 0 && len > a->window ? len - a->window : 0;
    const float *q = a->q + b * H * Dh; /* (H, Dh) */
    float *out = a->out + b * H * Dh;
    float m[MAX_H], l[MAX_H], acc[MAX_H * MAX_DH], s[MAX_H * MAX_BS], p[MAX_H * MAX_BS];
    for (int64_t h = 0; h < H; h++) m[h] = -INFINITY, l[h] = 0.0f;
    memset(acc, 0, sizeof(float) * H * Dh);
    for (int64_t blk = first / bs; blk * bs < len; blk++) {
        const int64_t phys = a->tables[b * a->M + blk];
        if (phys < 0) continue; /* released (wholly before the window): no visible token in it */
        const int64_t t0 = blk * bs > first ? blk * bs : first, t1 = (blk + 1) * bs < len ? (blk + 1) * bs : len;
        const int64_t n = t1 - t0;
        const float *kb = a->kc + (phys * bs + (t0 - blk * bs)) * K * Dh; /* (n, K, Dh), contiguous */
        const float *vb = a->vc + (phys * bs + (t0 - blk * bs)) * K * Dh;
        for (int64_t t = 0; t < n; t++) /* each key read once, in order, for the G query heads of its kv head */
            for (int64_t h = 0; h < H; h++) s[h * bs + t] = a->scale * dot(q + h * Dh, kb + (t * K + h / G) * Dh, Dh);
        for (int64_t h = 0; h < H; h++) {
            float *sh = s + h * bs, mx = m[h], sum = 0.0f;
            for (int64_t t = 0; t < n; t++) mx = sh[t] > mx ? sh[t] : mx;
            for (int64_t t = 0; t < n; t++) sh[t] -= mx;
            exp_nonpositive(p + h * bs, sh, n);
            for (int64_t t = 0; t < n; t++) sum += p[h * bs + t];
            const float corr = m[h] == -INFINITY ? 0.0f : expf(m[h] - mx); /* 0 on the first block */
            l[h] = l[h] * corr + sum;
            m[h] = mx;
            for (int64_t d = 0; d < Dh; d++) acc[h * Dh + d] *= corr;
        }
        for (int64_t t = 0; t < n; t++) /* each value read once, in order */
            for (int64_t h = 0; h < H; h++) {
                const float pt = p[h * bs + t], *vt = vb + (t * K + h / G) * Dh;
                float *ah = acc + h * Dh;
                for (int64_t d = 0; d < Dh; d++) ah[d] += pt * vt[d];
            }
    }
    for (int64_t h = 0; h < H; h++)
        for (int64_t d = 0; d < Dh; d++) out[h * Dh + d] = l[h] > 0 ? acc[h * Dh + d] / l[h] : 0.0f;
}

static void *worker(void *p) {
    const Args *a = (const Args *)p;
    for (int64_t b = a->tid; b < a->B; b += a->nthreads) item(a, b);
    return NULL;
}

static PyObject *decode(PyObject *self, PyObject *args) {
    unsigned long long q, kc, vc, tables, lens, out;
    long long B, H, K, Dh, bs, M, window;
    float scale;
    int nthreads;
    if (!PyArg_ParseTuple(args, "KKKKKKLLLLLLLfi", &q, &kc, &vc, &tables, &lens, &out, &B, &H, &K, &Dh, &bs, &M,
                          &window, &scale, &nthreads))
        return NULL;
    if (K <= 0 || H % K || H > MAX_H || Dh > MAX_DH || bs > MAX_BS) {
        PyErr_Format(PyExc_ValueError, "paged decode: unsupported shape (H=%lld K=%lld Dh=%lld block=%lld)", H, K,
                     Dh, bs);
        return NULL;
    }
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads > B) nthreads = (int)(B > 0 ? B : 1);
    Args base = {(const float *)q, (const float *)kc, (const float *)vc, (const int64_t *)tables,
                 (const int64_t *)lens, (float *)out, B, H, K, Dh, bs, M, window, scale, nthreads, 0};
    Args *per = malloc(sizeof(Args) * nthreads);
    pthread_t *th = malloc(sizeof(pthread_t) * nthreads);
    if (!per || !th) {
        free(per), free(th);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    int started = 1;
    for (int i = 0; i < nthreads; i++) per[i] = base, per[i].tid = i;
    for (int i = 1; i < nthreads; i++, started++)
        if (pthread_create(&th[i], NULL, worker, &per[i]) != 0) break;
    worker(&per[0]);
    /* a thread that could not start: its items run here */
    for (int i = started; i < nthreads; i++) worker(&per[i]);
    for (int i = 1; i < started; i++) pthread_join(th[i], NULL);
    Py_END_ALLOW_THREADS
    free(per), free(th);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(q, k_cache, v_cache, block_tables, context_lens, out, B, H, K, Dh, block_size, M, window, scale, "
     "nthreads): paged decode attention, fp32, addresses of contiguous buffers"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_paged_decode", NULL, -1, methods};

PyMODINIT_FUNC PyInit__paged_decode(void) { return PyModule_Create(&module); }
