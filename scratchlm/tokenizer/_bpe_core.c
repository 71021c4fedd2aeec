/*
 * _bpe_core.c -- the BPE merge loop of scratchlm.tokenizer, in C.
 *
 * One function, train_merges(), an exact port of merge_loop_python() in merge_loop.py: it must
 * return the same list of merges for the same input (the tests compare both).
 *
 * Data structures
 * ---------------
 *  words   Every distinct pre-token is an int32 array of token ids, stored back to back in `sym`
 *          at the offsets the caller gave; words[i] holds word i's start, length and frequency
 *          together (one cache line to fetch when a merge visits the word). A merge rewrites a
 *          word in place and shrinks its length; the slack is never reused.
 *  tokens  The bytes of every token id (the caller's initial vocabulary, then one entry per
 *          merge) live in one byte arena, addressed by tok_off/tok_len. They are only read to
 *          break ties between pairs of equal count.
 *  pairs   Each adjacent pair (a, b) ever seen has a Pair record: its count (sum of the
 *          frequencies of its occurrences) and the indices of the words that may contain it
 *          (a growable int32 vector; entries go stale when a word loses the pair and are
 *          skipped lazily when the pair is merged). An open-addressing hash table maps the pair
 *          packed into a uint64 to its record. Records are never removed: a pair the reference
 *          deletes from its dict simply has count 0 here (dict.get(pair, 0) reads the same),
 *          and its word list is freed once it can no longer be merged.
 *  heap    A binary max-heap of (count, pair record) entries with lazy invalidation: whenever
 *          a merge changes a pair's count and the count stays positive, a fresh entry is
 *          pushed; a popped entry whose count no longer equals its pair's count is stale and
 *          skipped; stale entries are swept out when the heap has doubled.
 *          Order: count, then the bytes of a, then the bytes of b (Python bytes ordering,
 *          greatest first), then the ids a and b (greatest first) -- the reference's order.
 *
 * Count updates
 * -------------
 * The reference decrements every adjacent pair of a word that contains the merged pair and then
 * increments every pair of the merged word. Pairs far from a merge site get -f then +f, so the
 * same counts come out of touching only (1) the old pairs that have a merged position on either
 * side (decremented once each) and (2) the new pairs that have the new token on either side
 * (incremented once each, and the word recorded for them). The reference pushes a heap entry
 * for every pair it touched; pushing only for pairs whose count really changed leaves the same
 * set of valid heap entries, hence the same merges. This relies on frequencies being
 * non-negative, which is checked.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Types                                                                                       */
/* ------------------------------------------------------------------------------------------ */

/* A growable vector of word indices. */
typedef struct {
    int32_t *data;
    int32_t len, cap;
} IVec;

/* One adjacent pair (a, b). */
typedef struct {
    int64_t count;  /* sum of word frequencies over the pair's occurrences */
    int32_t a, b;
    int32_t stamp;  /* the last merge step that put this pair on the changed list */
    IVec words;     /* words that may contain the pair (may hold stale entries) */
} Pair;

/* A hash table slot: key is (a << 32 | b); pair is the record index, -1 when empty. */
typedef struct {
    uint64_t key;
    int32_t pair;
} Slot;

/* One distinct pre-token: its ids are sym[start .. start + len). */
typedef struct {
    int64_t start;
    int64_t freq;
    int32_t len;
} Word;

/* A heap entry: a pair record and the pair's count when the entry was pushed. */
typedef struct {
    int64_t count;
    int32_t pair;
} HeapEnt;

typedef struct {
    /* token bytes by id */
    uint8_t *arena;
    size_t arena_len, arena_cap;
    size_t *tok_off, *tok_len;
    size_t ntok, tok_cap;

    /* the words */
    int32_t *sym;
    Word *words;
    int32_t nwords;

    /* pair records and the hash table over them */
    Pair *pairs;
    int32_t npairs;
    size_t pairs_cap;
    Slot *slots;
    size_t tcap, tused; /* tcap is a power of two */

    /* max-heap of candidate merges */
    HeapEnt *heap;
    size_t hlen, hcap;

    /* pairs whose count changed during the current merge step */
    int32_t *changed;
    size_t nchanged, changed_cap;

    /* the merges done so far, as (a, b) id pairs */
    int32_t *merges;
    size_t nmerges, merges_cap;
} Ctx;

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)0)
#endif

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                               */
/* ------------------------------------------------------------------------------------------ */

/* Make room for `need` elements of `size` bytes in *buf (capacity *cap, doubling). -1 on OOM. */
static int grow(void **buf, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 16;
    while (ncap < need)
        ncap *= 2;
    if (ncap > SIZE_MAX / size)
        return -1;
    void *p = realloc(*buf, ncap * size);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = ncap;
    return 0;
}

static int ivec_push(IVec *v, int32_t x)
{
    if (v->len == v->cap) {
        int32_t ncap;
        if (v->cap == INT32_MAX)
            return -1;
        ncap = v->cap ? (v->cap > INT32_MAX / 2 ? INT32_MAX : v->cap * 2) : 4;
        int32_t *p = realloc(v->data, (size_t)ncap * sizeof(int32_t));
        if (p == NULL)
            return -1;
        v->data = p;
        v->cap = ncap;
    }
    v->data[v->len++] = x;
    return 0;
}

static void ivec_free(IVec *v)
{
    free(v->data);
    v->data = NULL;
    v->len = v->cap = 0;
}

static inline uint64_t pack(int32_t a, int32_t b)
{
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

/* The 64-bit finalizer of MurmurHash3: spreads both halves of the key over all bits. */
static inline size_t hash64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return (size_t)x;
}

/* ------------------------------------------------------------------------------------------ */
/* Token bytes                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Room for one more token id. -1 on OOM. */
static int tok_reserve(Ctx *c)
{
    if (c->ntok < c->tok_cap)
        return 0;
    size_t ncap = c->tok_cap ? 2 * c->tok_cap : 1024;
    size_t *off = realloc(c->tok_off, ncap * sizeof(size_t));
    if (off == NULL)
        return -1;
    c->tok_off = off;
    size_t *len = realloc(c->tok_len, ncap * sizeof(size_t));
    if (len == NULL)
        return -1;
    c->tok_len = len;
    c->tok_cap = ncap;
    return 0;
}

/* Append a token with the given bytes (not pointing into the arena). -1 on OOM. */
static int tok_append(Ctx *c, const uint8_t *data, size_t len)
{
    if (tok_reserve(c) < 0 || grow((void **)&c->arena, &c->arena_cap, c->arena_len + len, 1) < 0)
        return -1;
    if (len)
        memcpy(c->arena + c->arena_len, data, len);
    c->tok_off[c->ntok] = c->arena_len;
    c->tok_len[c->ntok] = len;
    c->arena_len += len;
    c->ntok++;
    return 0;
}

/* Append the token whose bytes are those of x followed by those of y. -1 on OOM. */
static int tok_append_concat(Ctx *c, int32_t x, int32_t y)
{
    size_t lx = c->tok_len[x], ly = c->tok_len[y];
    if (tok_reserve(c) < 0)
        return -1;
    if (grow((void **)&c->arena, &c->arena_cap, c->arena_len + lx + ly, 1) < 0)
        return -1;
    /* copy by offset, after growing: the arena may have moved */
    size_t off = c->arena_len;
    memcpy(c->arena + off, c->arena + c->tok_off[x], lx);
    memcpy(c->arena + off + lx, c->arena + c->tok_off[y], ly);
    c->tok_off[c->ntok] = off;
    c->tok_len[c->ntok] = lx + ly;
    c->arena_len = off + lx + ly;
    c->ntok++;
    return 0;
}

/* Python bytes ordering of the bytes of tokens x and y: <0, 0 or >0. */
static inline int tok_cmp(const Ctx *c, int32_t x, int32_t y)
{
    if (x == y)
        return 0;
    size_t lx = c->tok_len[x], ly = c->tok_len[y];
    int r = memcmp(c->arena + c->tok_off[x], c->arena + c->tok_off[y], lx < ly ? lx : ly);
    if (r)
        return r;
    return (lx > ly) - (lx < ly);
}

/* ------------------------------------------------------------------------------------------ */
/* Pair records and the hash table                                                             */
/* ------------------------------------------------------------------------------------------ */

/* Allocate an empty table of `cap` (a power of two) slots. -1 on OOM. */
static int table_init(Ctx *c, size_t cap)
{
    c->slots = malloc(cap * sizeof(Slot));
    if (c->slots == NULL)
        return -1;
    for (size_t i = 0; i < cap; i++)
        c->slots[i].pair = -1;
    c->tcap = cap;
    c->tused = 0;
    return 0;
}

/* Double the table and reinsert every record. -1 on OOM. */
static int table_grow(Ctx *c)
{
    Slot *old = c->slots;
    size_t oldcap = c->tcap;
    if (table_init(c, oldcap * 2) < 0) {
        c->slots = old;
        c->tcap = oldcap;
        return -1;
    }
    size_t mask = c->tcap - 1;
    for (size_t j = 0; j < oldcap; j++) {
        if (old[j].pair < 0)
            continue;
        size_t i = hash64(old[j].key) & mask;
        while (c->slots[i].pair >= 0)
            i = (i + 1) & mask;
        c->slots[i] = old[j];
        c->tused++;
    }
    free(old);
    return 0;
}

/* The record index of pair (a, b), creating a zero-count record if needed. -1 on OOM. */
static int32_t pair_get(Ctx *c, int32_t a, int32_t b)
{
    uint64_t key = pack(a, b);
    size_t mask = c->tcap - 1, i = hash64(key) & mask;
    for (;;) {
        const Slot *s = &c->slots[i];
        if (s->pair < 0)
            break;
        if (s->key == key)
            return s->pair;
        i = (i + 1) & mask;
    }
    /* not found: insert, keeping the load factor at most 1/2 */
    if ((c->tused + 1) * 2 > c->tcap) {
        if (table_grow(c) < 0)
            return -1;
        mask = c->tcap - 1;
        i = hash64(key) & mask;
        while (c->slots[i].pair >= 0)
            i = (i + 1) & mask;
    }
    if (c->npairs == INT32_MAX)
        return -1;
    if (grow((void **)&c->pairs, &c->pairs_cap, (size_t)c->npairs + 1, sizeof(Pair)) < 0)
        return -1;
    int32_t idx = c->npairs++;
    Pair *p = &c->pairs[idx];
    p->count = 0;
    p->a = a;
    p->b = b;
    p->stamp = 0;
    p->words.data = NULL;
    p->words.len = p->words.cap = 0;
    c->slots[i].key = key;
    c->slots[i].pair = idx;
    c->tused++;
    return idx;
}

/*
 * Add `delta` to the count of pair (x, y) (creating it if needed); if the count changed, put
 * the pair on this step's changed list (once). If wi >= 0, record that word wi contains the
 * pair (words are handled one at a time, so checking the last entry avoids duplicates).
 * -1 on OOM.
 */
static int pair_add(Ctx *c, int32_t x, int32_t y, int64_t delta, int32_t wi, int32_t stamp)
{
    int32_t r = pair_get(c, x, y);
    if (r < 0)
        return -1;
    Pair *p = &c->pairs[r];
    if (delta) {
        p->count += delta;
        if (p->stamp != stamp) {
            p->stamp = stamp;
            if (grow((void **)&c->changed, &c->changed_cap, c->nchanged + 1, sizeof(int32_t)) < 0)
                return -1;
            c->changed[c->nchanged++] = r;
        }
    }
    if (wi >= 0 && (p->words.len == 0 || p->words.data[p->words.len - 1] != wi))
        return ivec_push(&p->words, wi);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The heap                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* Whether entry x pops before entry y: greater count, then greater bytes, then greater ids. */
static inline int ent_before(const Ctx *c, const HeapEnt *x, const HeapEnt *y)
{
    if (x->count != y->count)
        return x->count > y->count;
    const Pair *px = &c->pairs[x->pair], *py = &c->pairs[y->pair];
    int r = tok_cmp(c, px->a, py->a);
    if (r)
        return r > 0;
    r = tok_cmp(c, px->b, py->b);
    if (r)
        return r > 0;
    if (px->a != py->a)
        return px->a > py->a;
    return px->b > py->b;
}

static void sift_down(Ctx *c, size_t i)
{
    HeapEnt *h = c->heap;
    HeapEnt e = h[i];
    size_t n = c->hlen;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n)
            break;
        size_t best = l;
        if (l + 1 < n && ent_before(c, &h[l + 1], &h[l]))
            best = l + 1;
        if (!ent_before(c, &h[best], &e))
            break;
        h[i] = h[best];
        i = best;
    }
    h[i] = e;
}

static void heapify(Ctx *c)
{
    for (size_t i = c->hlen / 2; i-- > 0;)
        sift_down(c, i);
}

static int heap_push(Ctx *c, int64_t count, int32_t pair)
{
    if (grow((void **)&c->heap, &c->hcap, c->hlen + 1, sizeof(HeapEnt)) < 0)
        return -1;
    HeapEnt e = {count, pair};
    size_t i = c->hlen++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!ent_before(c, &e, &c->heap[parent]))
            break;
        c->heap[i] = c->heap[parent];
        i = parent;
    }
    c->heap[i] = e;
    return 0;
}

static HeapEnt heap_pop(Ctx *c)
{
    HeapEnt top = c->heap[0];
    if (--c->hlen) {
        c->heap[0] = c->heap[c->hlen];
        sift_down(c, 0);
    }
    return top;
}

/*
 * Drop stale entries. A pair's count never returns to a value it has left (after the merge
 * that creates a pair, its count only decreases), so a stale entry can never become valid.
 */
static void heap_compact(Ctx *c)
{
    size_t keep = 0;
    for (size_t i = 0; i < c->hlen; i++) {
        HeapEnt e = c->heap[i];
        if (c->pairs[e.pair].count == e.count)
            c->heap[keep++] = e;
    }
    c->hlen = keep;
    heapify(c);
}

/* ------------------------------------------------------------------------------------------ */
/* The merge loop                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* Count every adjacent pair of every word and build the initial heap. -1 on OOM. */
static int count_pairs(Ctx *c)
{
    for (int32_t wi = 0; wi < c->nwords; wi++) {
        const int32_t *w = c->sym + c->words[wi].start;
        int32_t n = c->words[wi].len;
        int64_t f = c->words[wi].freq;
        for (int32_t i = 0; i + 1 < n; i++) {
            int32_t r = pair_get(c, w[i], w[i + 1]);
            if (r < 0)
                return -1;
            Pair *p = &c->pairs[r];
            p->count += f;
            IVec *v = &p->words;
            if ((v->len == 0 || v->data[v->len - 1] != wi) && ivec_push(v, wi) < 0)
                return -1;
        }
    }
    /* every pair seen, whatever its count, like the reference's initial heap */
    if (grow((void **)&c->heap, &c->hcap, (size_t)c->npairs, sizeof(HeapEnt)) < 0)
        return -1;
    for (int32_t r = 0; r < c->npairs; r++) {
        HeapEnt e = {c->pairs[r].count, r};
        c->heap[r] = e;
    }
    c->hlen = (size_t)c->npairs;
    heapify(c);
    return 0;
}

/*
 * Replace every non-overlapping (a, b), left to right, by `nid` in the words listed for pair
 * record `pr`, updating the pair counts and pushing heap entries for the changed pairs.
 * `stamp` identifies this step (> 0). -1 on OOM.
 */
static int apply_merge(Ctx *c, int32_t pr, int32_t a, int32_t b, int32_t nid, int32_t stamp)
{
    IVec list = c->pairs[pr].words; /* take the list: the pair is gone after this step */
    c->pairs[pr].words.data = NULL;
    c->pairs[pr].words.len = c->pairs[pr].words.cap = 0;
    c->nchanged = 0;
    int rc = -1;

    for (int32_t k = 0; k < list.len; k++) {
        /* The words of a list are scattered in memory: fetch ahead (the record, then the ids). */
        if (k + 16 < list.len)
            PREFETCH(&c->words[list.data[k + 16]]);
        if (k + 8 < list.len)
            PREFETCH(c->sym + c->words[list.data[k + 8]].start);
        int32_t wi = list.data[k];
        int32_t *w = c->sym + c->words[wi].start;
        int32_t n = c->words[wi].len;
        int32_t i = 0;
        while (i + 1 < n && !(w[i] == a && w[i + 1] == b))
            i++;
        if (i + 1 >= n)
            continue; /* stale entry: the word no longer contains the pair */
        int64_t f = c->words[wi].freq;

        /*
         * Rewrite in place (o <= i always). Old pair j sits between positions j and j + 1; a
         * match at i touches old pairs i - 1, i (the merged pair itself, dropped wholesale
         * below) and i + 1. last_dec is the last old pair decremented, so a pair between two
         * adjacent matches (b, a) is decremented once. w[i - 1] is still the old id when read:
         * either nothing before i was rewritten, or o < i.
         */
        int32_t o = i, first = i, last_dec = -1;
        while (i < n) {
            if (i + 1 < n && w[i] == a && w[i + 1] == b) {
                if (f) {
                    if (i > 0 && i - 1 > last_dec && pair_add(c, w[i - 1], a, -f, -1, stamp) < 0)
                        goto done;
                    if (i + 2 < n) {
                        if (pair_add(c, b, w[i + 2], -f, -1, stamp) < 0)
                            goto done;
                        last_dec = i + 1;
                    }
                }
                w[o++] = nid;
                i += 2;
            } else {
                w[o++] = w[i++];
            }
        }
        c->words[wi].len = o;

        /* New pairs: those with the new token on either side, each counted once. */
        for (int32_t j = first; j < o; j++) {
            if (w[j] != nid)
                continue;
            if (j > 0 && w[j - 1] != nid && pair_add(c, w[j - 1], nid, f, wi, stamp) < 0)
                goto done;
            if (j + 1 < o && pair_add(c, nid, w[j + 1], f, wi, stamp) < 0)
                goto done;
        }
    }

    /* Push the changed pairs that are still present; a pair at 0 has no occurrence in a word
     * of positive frequency and will never be merged again, so its word list can go. */
    for (size_t k = 0; k < c->nchanged; k++) {
        int32_t r = c->changed[k];
        if (r == pr)
            continue;
        Pair *p = &c->pairs[r];
        if (p->count > 0) {
            if (heap_push(c, p->count, r) < 0)
                goto done;
        } else {
            p->count = 0;
            ivec_free(&p->words);
        }
    }
    c->pairs[pr].count = 0;
    rc = 0;
done:
    free(list.data);
    return rc;
}

static void ctx_free(Ctx *c)
{
    free(c->arena);
    free(c->tok_off);
    free(c->tok_len);
    free(c->sym);
    free(c->words);
    if (c->pairs) {
        for (int32_t r = 0; r < c->npairs; r++)
            free(c->pairs[r].words.data);
    }
    free(c->pairs);
    free(c->slots);
    free(c->heap);
    free(c->changed);
    free(c->merges);
}

/* Call progress(n); -1 with the exception set if it raised. */
static int report(PyObject *progress, size_t n)
{
    PyObject *res = PyObject_CallFunction(progress, "n", (Py_ssize_t)n);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* Whether a buffer holds native signed 64-bit integers. */
static int is_int64_buffer(const Py_buffer *v)
{
    if (v->itemsize != 8 || v->format == NULL)
        return 0;
    const char *f = v->format;
    if (*f == '@' || *f == '=')
        f++;
#if PY_LITTLE_ENDIAN
    else if (*f == '<')
        f++;
#else
    else if (*f == '>' || *f == '!')
        f++;
#endif
    return (f[0] == 'q' || f[0] == 'l') && f[1] == '\0';
}

/* ------------------------------------------------------------------------------------------ */
/* The Python entry point                                                                      */
/* ------------------------------------------------------------------------------------------ */

PyDoc_STRVAR(train_merges_doc,
"train_merges(ids, offsets, freqs, token_bytes, num_merges, progress=None)\n"
"    -> list[tuple[int, int]]\n"
"\n"
"Run up to num_merges BPE merges; the same result as merge_loop_python.\n"
"\n"
"ids: bytes-like, the concatenated pre-tokens (byte v is token id v); word i is\n"
"ids[offsets[i]:offsets[i + 1]]. offsets, freqs: int64 buffers (array('q')); freqs >= 0.\n"
"token_bytes: the initial vocabulary (at least the 256 single bytes); merged tokens get the\n"
"next ids. progress(n) is called every 64 merges and at the end.");

static PyObject *train_merges(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"ids",        "offsets",  "freqs", "token_bytes",
                             "num_merges", "progress", NULL};
    PyObject *ids_obj, *off_obj, *freq_obj, *tok_obj, *progress = Py_None;
    Py_ssize_t num_merges;
    Py_buffer ids = {0}, offs = {0}, freqs = {0};
    int have_ids = 0, have_offs = 0, have_freqs = 0;
    PyObject *toks = NULL, *result = NULL;
    Ctx ctx;
    Ctx *c = &ctx;
    memset(c, 0, sizeof(ctx));
    (void)self;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOn|O:train_merges", kwlist, &ids_obj,
                                     &off_obj, &freq_obj, &tok_obj, &num_merges, &progress))
        return NULL;
    if (progress != Py_None && !PyCallable_Check(progress)) {
        PyErr_SetString(PyExc_TypeError, "progress must be callable or None");
        return NULL;
    }
    if (PyObject_GetBuffer(ids_obj, &ids, PyBUF_SIMPLE) < 0)
        goto fail;
    have_ids = 1;
    if (PyObject_GetBuffer(off_obj, &offs, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto fail;
    have_offs = 1;
    if (PyObject_GetBuffer(freq_obj, &freqs, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto fail;
    have_freqs = 1;
    if (!is_int64_buffer(&offs) || !is_int64_buffer(&freqs)) {
        PyErr_SetString(PyExc_TypeError, "offsets and freqs must be int64 buffers (array('q'))");
        goto fail;
    }

    /* Validate the words. */
    Py_ssize_t nwords = freqs.len / 8;
    if (offs.len / 8 != nwords + 1) {
        PyErr_SetString(PyExc_ValueError, "offsets must have len(freqs) + 1 entries");
        goto fail;
    }
    if (nwords >= INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many words");
        goto fail;
    }
    const int64_t *off = offs.buf, *freq = freqs.buf;
    if (off[0] < 0 || off[nwords] > (int64_t)ids.len) {
        PyErr_SetString(PyExc_ValueError, "offsets out of range of ids");
        goto fail;
    }
    for (Py_ssize_t i = 0; i < nwords; i++) {
        if (off[i + 1] < off[i] || off[i + 1] - off[i] > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError,
                            "offsets must be non-decreasing (words under 2**31 ids)");
            goto fail;
        }
        if (freq[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "freqs must be non-negative");
            goto fail;
        }
    }

    /* The initial vocabulary. */
    toks = PySequence_Fast(tok_obj, "token_bytes must be a sequence of bytes");
    if (toks == NULL)
        goto fail;
    Py_ssize_t ntok = PySequence_Fast_GET_SIZE(toks);
    if (ntok < 256 || ntok >= INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "token_bytes must start with the 256 single bytes");
        goto fail;
    }
    for (Py_ssize_t t = 0; t < ntok; t++) {
        PyObject *item = PySequence_Fast_GET_ITEM(toks, t);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "token_bytes items must be bytes");
            goto fail;
        }
        const uint8_t *data = (const uint8_t *)PyBytes_AS_STRING(item);
        if (tok_append(c, data, (size_t)PyBytes_GET_SIZE(item)) < 0)
            goto nomem;
    }
    Py_CLEAR(toks);

    /* Copy the words to int32 ids. */
    c->sym = malloc(((size_t)ids.len ? (size_t)ids.len : 1) * sizeof(int32_t));
    c->words = malloc(((size_t)nwords ? (size_t)nwords : 1) * sizeof(Word));
    if (c->sym == NULL || c->words == NULL)
        goto nomem;
    const uint8_t *src = ids.buf;
    for (Py_ssize_t i = 0; i < ids.len; i++)
        c->sym[i] = src[i];
    for (Py_ssize_t i = 0; i < nwords; i++) {
        c->words[i].start = off[i];
        c->words[i].freq = freq[i];
        c->words[i].len = (int32_t)(off[i + 1] - off[i]);
    }
    c->nwords = (int32_t)nwords;

    if (table_init(c, (size_t)1 << 16) < 0 || count_pairs(c) < 0)
        goto nomem;

    /* The merge loop. */
    size_t compact_at = 2 * c->hlen + ((size_t)1 << 16);
    size_t reported = 0;
    while ((Py_ssize_t)c->nmerges < num_merges && c->hlen > 0) {
        if (PyErr_CheckSignals() < 0)
            goto fail;
        HeapEnt top = heap_pop(c);
        int32_t pr = top.pair;
        if (c->pairs[pr].count != top.count)
            continue; /* stale: the count changed after the entry was pushed */
        if (top.count <= 0)
            break; /* max-heap: no pair with a positive count is left (words of frequency 0) */
        int32_t a = c->pairs[pr].a, b = c->pairs[pr].b;
        if (c->ntok >= INT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "vocabulary too large");
            goto fail;
        }
        int32_t nid = (int32_t)c->ntok;
        if (tok_append_concat(c, a, b) < 0)
            goto nomem;
        if (grow((void **)&c->merges, &c->merges_cap, 2 * (c->nmerges + 1), sizeof(int32_t)) < 0)
            goto nomem;
        c->merges[2 * c->nmerges] = a;
        c->merges[2 * c->nmerges + 1] = b;
        c->nmerges++;
        if (apply_merge(c, pr, a, b, nid, (int32_t)c->nmerges) < 0)
            goto nomem;
        if (c->hlen > compact_at) {
            heap_compact(c);
            compact_at = 2 * c->hlen + ((size_t)1 << 16);
        }
        if (progress != Py_None && c->nmerges % 64 == 0) {
            if (report(progress, c->nmerges) < 0)
                goto fail;
            reported = c->nmerges;
        }
    }
    if (progress != Py_None && reported != c->nmerges && report(progress, c->nmerges) < 0)
        goto fail;

    /* Build the result. */
    result = PyList_New((Py_ssize_t)c->nmerges);
    if (result == NULL)
        goto fail;
    for (size_t k = 0; k < c->nmerges; k++) {
        PyObject *t = Py_BuildValue("(ii)", c->merges[2 * k], c->merges[2 * k + 1]);
        if (t == NULL) {
            Py_CLEAR(result);
            goto fail;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)k, t);
    }
    goto out;

nomem:
    PyErr_NoMemory();
fail:
    Py_CLEAR(result);
out:
    Py_XDECREF(toks);
    if (have_ids)
        PyBuffer_Release(&ids);
    if (have_offs)
        PyBuffer_Release(&offs);
    if (have_freqs)
        PyBuffer_Release(&freqs);
    ctx_free(c);
    return result;
}

static PyMethodDef bpe_core_methods[] = {
    {"train_merges", (PyCFunction)(void (*)(void))train_merges, METH_VARARGS | METH_KEYWORDS,
     train_merges_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef bpe_core_module = {
    PyModuleDef_HEAD_INIT,
    "_bpe_core",
    "The BPE merge loop of scratchlm.tokenizer, in C (see merge_loop.py).",
    -1,
    bpe_core_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__bpe_core(void)
{
    return PyModule_Create(&bpe_core_module);
}
