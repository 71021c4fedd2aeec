/*
 * _bpe_encode.c -- applying BPE merges to one pre-token, in C.
 *
 * The same algorithm as Tokenizer._bpe_python in tokenizer.py (GPT-2's encoder.py): start from
 * the pre-token's byte ids, then repeatedly find the adjacent pair with the lowest merge rank
 * and replace all its occurrences, left to right, by the merged id, until no adjacent pair has
 * a rank. The tokenizer caches the result per distinct pre-token, so this runs once per new
 * word; in Python it costs ~17 us per word, which dominated encoding on a cold cache.
 *
 *   m = Merger(pairs, merged, byte_ids)   # pairs[r] = (a << 32) | b of merge rank r,
 *                                          # merged[r] = its id, byte_ids[v] = id of byte v
 *   m.encode(b"hello") -> (id, id, ...)
 *
 * Ranks live in an open-addressing hash table keyed by the packed pair (empty = UINT64_MAX,
 * which no pair of non-negative int32 ids can produce). A pair that appears at several ranks
 * keeps its first (lowest) rank, like the Python dict built with setdefault.
 *
 * The module also holds a hand-written GPT-2 pre-tokenizer (see "Pre-tokenization" below):
 *
 *   pretokenize(text, classes) -> list[str]          # == regex.findall(GPT2_PATTERN, text)
 *   encode_pretokens(text, classes, cache, out)      # out += cache[p] for every pre-token p
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EMPTY UINT64_MAX

typedef struct {
    PyObject_HEAD
    uint64_t *keys;   /* packed pair, or EMPTY */
    int32_t *rank;    /* merge rank of the pair */
    int32_t *merged;  /* id the pair merges into */
    uint64_t mask;    /* capacity - 1 (capacity a power of two) */
    int32_t byte_ids[256];
} Merger;

static inline uint64_t slot_of(uint64_t key, uint64_t mask)
{
    return (key * 0x9E3779B97F4A7C15ULL >> 17) & mask;
}

/* Index of `key` in the table, or -1. */
static inline int64_t lookup(const Merger *m, uint64_t key)
{
    uint64_t s = slot_of(key, m->mask);
    while (m->keys[s] != EMPTY) {
        if (m->keys[s] == key)
            return (int64_t)s;
        s = (s + 1) & m->mask;
    }
    return -1;
}

static void Merger_dealloc(Merger *self)
{
    free(self->keys);
    free(self->rank);
    free(self->merged);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Merger_init(Merger *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"pairs", "merged", "byte_ids", NULL};
    Py_buffer pairs, merged, byte_ids;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*y*", kwlist, &pairs, &merged, &byte_ids))
        return -1;
    int rc = -1;
    Py_ssize_t n = pairs.len / 8;
    if (pairs.len % 8 || merged.len != pairs.len || byte_ids.len != 256 * 8) {
        PyErr_SetString(PyExc_ValueError,
                        "pairs and merged must be int64 buffers of equal length, byte_ids 256 int64");
        goto out;
    }
    const int64_t *pp = (const int64_t *)pairs.buf, *mp = (const int64_t *)merged.buf;
    const int64_t *bp = (const int64_t *)byte_ids.buf;
    for (int v = 0; v < 256; v++) {
        if (bp[v] < 0 || bp[v] > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "byte ids must be int32");
            goto out;
        }
        self->byte_ids[v] = (int32_t)bp[v];
    }
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)n + 16)
        cap <<= 1;
    free(self->keys);
    free(self->rank);
    free(self->merged);
    self->keys = malloc(cap * sizeof(uint64_t));
    self->rank = malloc(cap * sizeof(int32_t));
    self->merged = malloc(cap * sizeof(int32_t));
    if (!self->keys || !self->rank || !self->merged) {
        PyErr_NoMemory();
        goto out;
    }
    memset(self->keys, 0xFF, cap * sizeof(uint64_t));
    self->mask = cap - 1;
    for (Py_ssize_t r = 0; r < n; r++) {
        uint64_t key = (uint64_t)pp[r];
        if (pp[r] < 0 || mp[r] < 0 || mp[r] > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "pairs must be packed non-negative int32 ids");
            goto out;
        }
        uint64_t s = slot_of(key, self->mask);
        while (self->keys[s] != EMPTY && self->keys[s] != key)
            s = (s + 1) & self->mask;
        if (self->keys[s] == key)
            continue; /* a later duplicate: the lowest rank wins */
        self->keys[s] = key;
        self->rank[s] = (int32_t)r;
        self->merged[s] = (int32_t)mp[r];
    }
    rc = 0;
out:
    PyBuffer_Release(&pairs);
    PyBuffer_Release(&merged);
    PyBuffer_Release(&byte_ids);
    return rc;
}

static PyObject *Merger_encode(Merger *self, PyObject *arg)
{
    if (self->keys == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Merger not initialised");
        return NULL;
    }
    char *data;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(arg, &data, &n) < 0)
        return NULL;
    int32_t stack[256];
    int32_t *ids = n <= 256 ? stack : malloc((size_t)n * sizeof(int32_t));
    if (ids == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++)
        ids[i] = self->byte_ids[(unsigned char)data[i]];

    while (n > 1) {
        /* The adjacent pair of lowest rank. */
        int32_t best_rank = INT32_MAX, best_id = -1;
        uint64_t best_key = 0;
        for (Py_ssize_t i = 0; i + 1 < n; i++) {
            uint64_t key = ((uint64_t)(uint32_t)ids[i] << 32) | (uint32_t)ids[i + 1];
            int64_t s = lookup(self, key);
            if (s >= 0 && self->rank[s] < best_rank) {
                best_rank = self->rank[s];
                best_id = self->merged[s];
                best_key = key;
            }
        }
        if (best_id < 0)
            break;
        /* Replace its non-overlapping occurrences, left to right, in place. */
        int32_t a = (int32_t)(best_key >> 32), b = (int32_t)(best_key & 0xFFFFFFFFu);
        Py_ssize_t out = 0;
        for (Py_ssize_t i = 0; i < n;) {
            if (i + 1 < n && ids[i] == a && ids[i + 1] == b) {
                ids[out++] = best_id;
                i += 2;
            } else {
                ids[out++] = ids[i++];
            }
        }
        n = out;
    }

    PyObject *result = PyTuple_New(n);
    if (result != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *v = PyLong_FromLong(ids[i]);
            if (v == NULL) {
                Py_CLEAR(result);
                break;
            }
            PyTuple_SET_ITEM(result, i, v);
        }
    }
    if (ids != stack)
        free(ids);
    return result;
}

static PyMethodDef Merger_methods[] = {
    {"encode", (PyCFunction)Merger_encode, METH_O,
     "encode(piece: bytes) -> tuple[int, ...]: apply the merges to one pre-token's bytes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MergerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "scratchlm.tokenizer._bpe_encode.Merger",
    .tp_doc = "Merger(pairs, merged, byte_ids): BPE merge ranks for encoding (see module doc).",
    .tp_basicsize = sizeof(Merger),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Merger_init,
    .tp_dealloc = (destructor)Merger_dealloc,
    .tp_methods = Merger_methods,
};

/* ------------------------------------------------------------------------------------------------
 * Pre-tokenization: GPT-2's split pattern
 *
 *     '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *
 * scanned by hand. `regex.findall` spent ~75% of encoding time on it; a scan that knows the
 * pattern is a handful of table lookups per character. At each position the first alternative
 * that matches wins, and each is greedy:
 *   - `'` + s/d/m/t or ll/ve/re (lowercase only) is a contraction; any other `'` is an ordinary
 *     "other" character (neither \s, \p{L} nor \p{N}) and starts or continues a run of them;
 *   - a run of letters, of numbers or of others, with one leading U+0020 if the space is
 *     directly followed by a character of that kind (otherwise the space is whitespace);
 *   - a whitespace run of length r: the whole run when it reaches the end of the text;
 *     otherwise `\s+(?!\S)` backtracks to r-1 characters (so the last space can prefix the next
 *     word) when r >= 2, and for r == 1 the fallback `\s+` takes the single character.
 * Character classes are not hard-coded: `classes` is a 0x110000-byte table (bit CLS_L = \p{L},
 * CLS_N = \p{N}, CLS_S = \s) that pretokenize.unicode_classes() builds with the `regex` module
 * itself, so both agree on every code point, lone surrogates included.
 */

#define CLS_L 1
#define CLS_N 2
#define CLS_S 4
#define N_CODEPOINTS 0x110000

/* The alternative a character starts, in the pattern's order: a character with several bits
 * (none in current Unicode) goes to the first alternative that accepts it. */
enum { CAT_OTHER, CAT_L, CAT_N, CAT_S };
static const uint8_t category_of[8] = {CAT_OTHER, CAT_L, CAT_N, CAT_L, CAT_S, CAT_L, CAT_N, CAT_L};

/* token_end_ucsK(s, i, n, cls): end of the pre-token that starts at i < n, for each string kind
 * (specialised so the inner loops read the characters directly). */
#define DEFINE_TOKEN_END(NAME, CHAR)                                                           \
    static inline Py_ssize_t NAME(const CHAR *s, Py_ssize_t i, Py_ssize_t n, const uint8_t *cls) \
    {                                                                                          \
        Py_UCS4 c = s[i];                                                                      \
        if (c == '\'' && i + 1 < n) {                                                          \
            Py_UCS4 d = s[i + 1];                                                              \
            if (d == 's' || d == 'd' || d == 'm' || d == 't')                                  \
                return i + 2;                                                                  \
            if (i + 2 < n) {                                                                   \
                Py_UCS4 e = s[i + 2];                                                          \
                if ((d == 'l' && e == 'l') || (d == 'v' && e == 'e') || (d == 'r' && e == 'e')) \
                    return i + 3;                                                              \
            }                                                                                  \
        }                                                                                      \
        Py_ssize_t j = i + 1;                                                                  \
        int cat = category_of[cls[c] & 7];                                                     \
        if (c == ' ' && j < n) { /* ` ?X+`: the space joins a following run of X */           \
            int next = category_of[cls[s[j]] & 7];                                             \
            if (next != CAT_S) {                                                               \
                cat = next;                                                                    \
                j++;                                                                           \
            }                                                                                  \
        }                                                                                      \
        switch (cat) {                                                                         \
        case CAT_L:                                                                            \
            while (j < n && (cls[s[j]] & CLS_L))                                               \
                j++;                                                                           \
            return j;                                                                          \
        case CAT_N:                                                                            \
            while (j < n && (cls[s[j]] & CLS_N))                                               \
                j++;                                                                           \
            return j;                                                                          \
        case CAT_OTHER:                                                                        \
            while (j < n && !(cls[s[j]] & (CLS_L | CLS_N | CLS_S)))                            \
                j++;                                                                           \
            return j;                                                                          \
        default: /* whitespace */                                                              \
            while (j < n && (cls[s[j]] & CLS_S))                                               \
                j++;                                                                           \
            /* at the end of the text, or a single character (`\s+`): the whole run; else    \
             * `\s+(?!\S)` leaves the last whitespace character for the next token */          \
            return (j == n || j - i == 1) ? j : j - 1;                                         \
        }                                                                                      \
    }

DEFINE_TOKEN_END(token_end_ucs1, Py_UCS1)
DEFINE_TOKEN_END(token_end_ucs2, Py_UCS2)
DEFINE_TOKEN_END(token_end_ucs4, Py_UCS4)

/* Scan state over one str. Pre-token ends are produced in batches so that the per-kind scanning
 * loop stays tight and separate from the (Python-object) work done per pre-token. */
#define BATCH 1024

typedef struct {
    PyObject *text;
    int kind;
    const void *data;
    Py_ssize_t pos, len;
    const uint8_t *cls;
} Scanner;

/* Fills ends[0..k) with the ends of the next k <= BATCH pre-tokens; returns k (0 at the end). */
static Py_ssize_t scan_batch(Scanner *sc, Py_ssize_t *ends)
{
    Py_ssize_t k = 0, i = sc->pos, n = sc->len;
    switch (sc->kind) {
    case PyUnicode_1BYTE_KIND:
        while (i < n && k < BATCH)
            ends[k++] = i = token_end_ucs1((const Py_UCS1 *)sc->data, i, n, sc->cls);
        break;
    case PyUnicode_2BYTE_KIND:
        while (i < n && k < BATCH)
            ends[k++] = i = token_end_ucs2((const Py_UCS2 *)sc->data, i, n, sc->cls);
        break;
    default:
        while (i < n && k < BATCH)
            ends[k++] = i = token_end_ucs4((const Py_UCS4 *)sc->data, i, n, sc->cls);
        break;
    }
    sc->pos = i;
    return k;
}

/* Checks (text: str, classes: bytes) and sets up the scanner; -1 with an exception on error. */
static int scanner_init(Scanner *sc, PyObject *text, PyObject *classes)
{
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "text must be str, not %.100s", Py_TYPE(text)->tp_name);
        return -1;
    }
    if (!PyBytes_Check(classes) || PyBytes_GET_SIZE(classes) != N_CODEPOINTS) {
        PyErr_SetString(PyExc_TypeError, "classes must be bytes of length 0x110000 (pretokenize.unicode_classes())");
        return -1;
    }
    const uint8_t *cls = (const uint8_t *)PyBytes_AS_STRING(classes);
    if ((cls[' '] & (CLS_L | CLS_N | CLS_S)) != CLS_S) { /* token_end relies on it for ` ?X+` */
        PyErr_SetString(PyExc_ValueError, "classes must mark U+0020 as whitespace only");
        return -1;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0)
        return -1;
#endif
    sc->text = text;
    sc->kind = PyUnicode_KIND(text);
    sc->data = PyUnicode_DATA(text);
    sc->pos = 0;
    sc->len = PyUnicode_GET_LENGTH(text);
    sc->cls = cls;
    return 0;
}

static PyObject *pretokenize(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pretokenize(text, classes) takes 2 arguments");
        return NULL;
    }
    Scanner sc;
    if (scanner_init(&sc, args[0], args[1]) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t ends[BATCH], k, start = 0;
    while ((k = scan_batch(&sc, ends)) > 0) {
        for (Py_ssize_t t = 0; t < k; t++) {
            PyObject *piece = PyUnicode_Substring(sc.text, start, ends[t]);
            if (piece == NULL || PyList_Append(out, piece) < 0) {
                Py_XDECREF(piece);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(piece);
            start = ends[t];
        }
    }
    return out;
}

/* out += ids (a tuple, or any sequence if a cache subclass returns something else). */
static int extend_ids(PyObject *out, PyObject *ids)
{
    if (PyTuple_CheckExact(ids)) {
        for (Py_ssize_t i = 0, n = PyTuple_GET_SIZE(ids); i < n; i++)
            if (PyList_Append(out, PyTuple_GET_ITEM(ids, i)) < 0)
                return -1;
        return 0;
    }
    PyObject *seq = PySequence_Fast(ids, "cache values must be sequences of token ids");
    if (seq == NULL)
        return -1;
    int rc = 0;
    for (Py_ssize_t i = 0, n = PySequence_Fast_GET_SIZE(seq); i < n && rc == 0; i++)
        rc = PyList_Append(out, PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    return rc;
}

static PyObject *encode_pretokens(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "encode_pretokens(text, classes, cache, out) takes 4 arguments");
        return NULL;
    }
    PyObject *cache = args[2], *out = args[3];
    if (!PyDict_Check(cache) || !PyList_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "encode_pretokens: cache must be a dict and out a list");
        return NULL;
    }
    Scanner sc;
    if (scanner_init(&sc, args[0], args[1]) < 0)
        return NULL;
    Py_ssize_t ends[BATCH], k, start = 0;
    while ((k = scan_batch(&sc, ends)) > 0) {
        for (Py_ssize_t t = 0; t < k; t++) {
            PyObject *piece = PyUnicode_Substring(sc.text, start, ends[t]);
            if (piece == NULL)
                return NULL;
            start = ends[t];
            /* Hit: a plain dict lookup. Miss: cache[piece], i.e. the subclass's __missing__,
             * which computes and stores the ids (and may raise). Both give a new reference, so
             * the ids stay alive whatever Python code the miss runs. */
            PyObject *ids = PyDict_GetItemWithError(cache, piece);
            if (ids != NULL)
                Py_INCREF(ids);
            else if (!PyErr_Occurred())
                ids = PyObject_GetItem(cache, piece);
            Py_DECREF(piece);
            if (ids == NULL)
                return NULL;
            int rc = extend_ids(out, ids);
            Py_DECREF(ids);
            if (rc < 0)
                return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"pretokenize", (PyCFunction)(void (*)(void))pretokenize, METH_FASTCALL,
     "pretokenize(text: str, classes: bytes) -> list[str]: regex.findall(GPT2_PATTERN, text), in C.\n\n"
     "classes: pretokenize.unicode_classes()."},
    {"encode_pretokens", (PyCFunction)(void (*)(void))encode_pretokens, METH_FASTCALL,
     "encode_pretokens(text: str, classes: bytes, cache: dict, out: list) -> None\n\n"
     "Appends the ids cache[p] of every GPT-2 pre-token p of text to out (a miss calls the\n"
     "dict subclass's __missing__ through cache[p])."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef bpe_encode_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_bpe_encode",
    .m_doc = "Applying BPE merges to one pre-token, and GPT-2 pre-tokenization, in C (see tokenizer.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__bpe_encode(void)
{
    if (PyType_Ready(&MergerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&bpe_encode_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&MergerType);
    if (PyModule_AddObject(m, "Merger", (PyObject *)&MergerType) < 0) {
        Py_DECREF(&MergerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
