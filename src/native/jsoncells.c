/* exportd.fastpaths._jsoncells: a chunk of JSON Lines documents -> its flattened paths
 * and the CSV cells of every path, in C, without the GIL (the header pass of a documents
 * export, fastpaths/jsonl_csv.py). yyjson (src/native/yyjson, MIT) parses each line.
 *
 * cells(chunk, delimiter, quote, null, spreadsheet_safe, render) returns
 * (paths, documents, columns) or None. The paths are the chunk's flattened paths in order
 * of first appearance (as `Flattener.flatten` gives them, row after row); columns, with
 * `render`, one (offsets, data) pair per path: an Arrow utf8 array's int32 offsets
 * (documents + 1 of them) and its characters, every cell finished as the generic CSV
 * writer renders the Python path's value (`CsvEncoder`, docs/formats.md):
 *
 * - absent or JSON null: the null text; text: neutralised (`'` before = + - @ TAB CR
 *   where spreadsheet_safe) then quoted when it holds the delimiter, the quote, CR or LF
 *   or equals the null text (its quotes doubled); `true` / `false`, `{}` for an empty
 *   object and arrays (compact JSON text as orjson writes it) likewise, never
 *   neutralised by their first character;
 * - integers as digits, floats as `float_text` (cells.h), both quoted by the same rule.
 *
 * None means "not exactly as the Python path": the caller then reads the chunk its other
 * ways, which also give any error the Python path gives. That is a line yyjson refuses
 * (not one JSON value, not UTF-8, a lone surrogate, NaN), a byte order mark, a key given
 * twice in one object, an integer beyond 64 bits or a real beyond a double (orjson makes
 * a float of the one and refuses the other), a float or an object with more than 64 keys
 * inside an array (orjson's own float text), nesting deeper than MAX_DEPTH, more than
 * max_paths paths, or more cells (documents x paths) than MAX_CELLS or than int32
 * offsets hold.
 */
#include "cells.h"
#include "yyjson/yyjson.h"

#define MAX_DEPTH 128
#define MAX_CELLS ((size_t)1 << 23)
#define MAX_ARRAY_KEYS 64

enum { OK = 0, NOT_EXACT = 1, NO_MEMORY = -1 };

typedef struct {
    Buf data;
    int32_t *offs;
    size_t noffs, capoffs;
    Py_ssize_t last; /* the last document that set it, -1 */
    size_t path_at, path_len; /* its path in State.names */
    uint64_t hash;
} Col;

typedef struct {
    char delim, quote;
    const char *null;
    size_t nnull;
    int safe, render;
    Py_ssize_t max_paths;
    Col *cols;
    size_t ncols, capcols;
    Buf names;           /* the paths' bytes, one after another */
    uint32_t *slots;     /* open addressing: column index + 1, 0 empty */
    size_t nslots;
    Buf path;            /* the path being walked */
    Buf json;            /* an array's JSON text */
    Py_ssize_t doc;      /* the document being flattened */
    PyThreadState *ts;
} State;

static uint64_t hash_of(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

static int grow_slots(State *s) {
    size_t n = s->nslots ? s->nslots * 2 : 256;
    uint32_t *slots = calloc(n, sizeof *slots);
    if (!slots) return NO_MEMORY;
    for (size_t c = 0; c < s->ncols; c++) {
        size_t i = (size_t)s->cols[c].hash & (n - 1);
        while (slots[i]) i = (i + 1) & (n - 1);
        slots[i] = (uint32_t)(c + 1);
    }
    free(s->slots);
    s->slots = slots;
    s->nslots = n;
    return OK;
}

static int push_offset(Col *c) {
    if (c->data.len > INT32_MAX) return NOT_EXACT;
    if (c->noffs == c->capoffs) {
        size_t cap = c->capoffs ? c->capoffs * 2 : 1024;
        int32_t *p = realloc(c->offs, cap * sizeof *p);
        if (!p) return NO_MEMORY;
        c->offs = p;
        c->capoffs = cap;
    }
    c->offs[c->noffs++] = (int32_t)c->data.len;
    return OK;
}

/* The column of the current path (made at its first appearance), filled with null cells
 * up to the current document; NULL with *rc set when it cannot be. */
static Col *column(State *s, int *rc) {
    const char *p = s->path.data ? s->path.data : "";
    size_t n = s->path.len;
    uint64_t h = hash_of(p, n);
    if (s->nslots == 0 || 2 * (s->ncols + 1) > s->nslots) {
        if ((*rc = grow_slots(s))) return NULL;
    }
    size_t i = (size_t)h & (s->nslots - 1);
    Col *c = NULL;
    while (s->slots[i]) {
        Col *k = &s->cols[s->slots[i] - 1];
        if (k->hash == h && k->path_len == n && !memcmp(s->names.data + k->path_at, p, n)) {
            c = k;
            break;
        }
        i = (i + 1) & (s->nslots - 1);
    }
    if (!c) {
        if ((Py_ssize_t)s->ncols >= s->max_paths) {
            *rc = NOT_EXACT;
            return NULL;
        }
        if (s->ncols == s->capcols) {
            size_t cap = s->capcols ? s->capcols * 2 : 64;
            Col *cols = realloc(s->cols, cap * sizeof *cols);
            if (!cols) {
                *rc = NO_MEMORY;
                return NULL;
            }
            s->cols = cols;
            s->capcols = cap;
        }
        c = &s->cols[s->ncols];
        memset(c, 0, sizeof *c);
        c->last = -1;
        c->hash = h;
        c->path_at = s->names.len;
        c->path_len = n;
        if (buf_put(&s->names, p, n)) {
            *rc = NO_MEMORY;
            return NULL;
        }
        s->slots[i] = (uint32_t)(++s->ncols);
        if (s->render) { /* a small buffer: a wide chunk has many sparse columns */
            if (!(c->data.data = malloc(c->data.cap = 256))) {
                *rc = NO_MEMORY;
                return NULL;
            }
            if ((*rc = push_offset(c))) return NULL;
        }
    }
    if (c->last == s->doc) { /* a key given twice: orjson keeps one of them */
        *rc = NOT_EXACT;
        return NULL;
    }
    c->last = s->doc;
    if (s->render) {
        while ((Py_ssize_t)c->noffs <= s->doc) { /* null cells for the documents without it */
            if (buf_put(&c->data, s->null, s->nnull) || (*rc = push_offset(c))) {
                if (!*rc) *rc = NO_MEMORY;
                return NULL;
            }
        }
    }
    return c;
}

/* A finished cell: `'` first for a text starting with a spreadsheet trigger, quoted
 * when it must be. */
static int put_cell(State *s, Col *c, const char *t, size_t n, int text) {
    int lead = text && s->safe && n && strchr("=+-@\t\r", t[0]) && t[0];
    int quote = lead ? n + 1 == s->nnull && s->null[0] == '\'' && !memcmp(t, s->null + 1, n)
                     : n == s->nnull && !memcmp(t, s->null, n);
    for (size_t i = 0; i < n && !quote; i++) {
        char ch = t[i];
        quote = ch == s->delim || ch == s->quote || ch == '\r' || ch == '\n';
    }
    Buf *b = &c->data;
    if (!quote) {
        if (buf_reserve(b, n + 1)) return NO_MEMORY;
        if (lead) b->data[b->len++] = '\'';
        memcpy(b->data + b->len, t, n);
        b->len += n;
    } else {
        if (buf_reserve(b, 2 * n + 3)) return NO_MEMORY;
        char *p = b->data + b->len;
        *p++ = s->quote;
        if (lead) *p++ = '\'';
        for (size_t i = 0; i < n; i++) {
            if (t[i] == s->quote) *p++ = s->quote;
            *p++ = t[i];
        }
        *p++ = s->quote;
        b->len = (size_t)(p - b->data);
    }
    return push_offset(c);
}

static size_t uint_text(uint64_t u, char *out) {
    if (u <= (uint64_t)INT64_MAX) return int_text((long long)u, out);
    char tmp[24];
    char *end = tmp + sizeof tmp, *p = end;
    while (u) {
        *--p = (char)('0' + u % 10);
        u /= 10;
    }
    memcpy(out, p, (size_t)(end - p));
    return (size_t)(end - p);
}

static int json_string(Buf *b, const char *t, size_t n) {
    static const char hex[] = "0123456789abcdef";
    if (buf_reserve(b, 6 * n + 2)) return NO_MEMORY;
    char *p = b->data + b->len;
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)t[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\') {
            *p++ = (char)ch;
            continue;
        }
        *p++ = '\\';
        switch (ch) {
        case '"': *p++ = '"'; break;
        case '\\': *p++ = '\\'; break;
        case '\b': *p++ = 'b'; break;
        case '\t': *p++ = 't'; break;
        case '\n': *p++ = 'n'; break;
        case '\f': *p++ = 'f'; break;
        case '\r': *p++ = 'r'; break;
        default:
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hex[ch >> 4];
            *p++ = hex[ch & 15];
        }
    }
    *p++ = '"';
    b->len = (size_t)(p - b->data);
    return OK;
}

static int utf8_ok(yyjson_val *v) {
    return valid_utf8((const unsigned char *)unsafe_yyjson_get_str(v), unsafe_yyjson_get_len(v));
}

/* A value inside an array as orjson.dumps writes it (compact). */
static int json_text(State *s, yyjson_val *v, int depth) {
    Buf *b = &s->json;
    char tmp[24];
    if (depth > MAX_DEPTH) return NOT_EXACT;
    switch (unsafe_yyjson_get_type(v)) {
    case YYJSON_TYPE_NULL: return buf_put(b, "null", 4) ? NO_MEMORY : OK;
    case YYJSON_TYPE_BOOL:
        return (unsafe_yyjson_get_bool(v) ? buf_put(b, "true", 4) : buf_put(b, "false", 5))
                   ? NO_MEMORY : OK;
    case YYJSON_TYPE_NUM:
        switch (unsafe_yyjson_get_subtype(v)) {
        case YYJSON_SUBTYPE_UINT:
            return buf_put(b, tmp, uint_text(unsafe_yyjson_get_uint(v), tmp)) ? NO_MEMORY : OK;
        case YYJSON_SUBTYPE_SINT:
            return buf_put(b, tmp, int_text(unsafe_yyjson_get_sint(v), tmp)) ? NO_MEMORY : OK;
        default: return NOT_EXACT; /* orjson's float text is its own */
        }
    case YYJSON_TYPE_STR:
        if (!utf8_ok(v)) return NOT_EXACT;
        return json_string(b, unsafe_yyjson_get_str(v), unsafe_yyjson_get_len(v));
    case YYJSON_TYPE_ARR: {
        size_t idx, max;
        yyjson_val *item;
        if (buf_put(b, "[", 1)) return NO_MEMORY;
        yyjson_arr_foreach(v, idx, max, item) {
            if (idx && buf_put(b, ",", 1)) return NO_MEMORY;
            int rc = json_text(s, item, depth + 1);
            if (rc) return rc;
        }
        return buf_put(b, "]", 1) ? NO_MEMORY : OK;
    }
    case YYJSON_TYPE_OBJ: {
        size_t idx, max;
        yyjson_val *key, *val;
        if (unsafe_yyjson_get_len(v) > MAX_ARRAY_KEYS) return NOT_EXACT;
        if (buf_put(b, "{", 1)) return NO_MEMORY;
        yyjson_obj_foreach(v, idx, max, key, val) {
            for (yyjson_val *k = unsafe_yyjson_get_first(v); k != key;
                 k = unsafe_yyjson_get_next(k + 1)) { /* a key given twice */
                if (unsafe_yyjson_get_len(k) == unsafe_yyjson_get_len(key) &&
                    !memcmp(unsafe_yyjson_get_str(k), unsafe_yyjson_get_str(key),
                            unsafe_yyjson_get_len(key)))
                    return NOT_EXACT;
            }
            if (!utf8_ok(key)) return NOT_EXACT;
            if (idx && buf_put(b, ",", 1)) return NO_MEMORY;
            int rc = json_string(b, unsafe_yyjson_get_str(key), unsafe_yyjson_get_len(key));
            if (rc || buf_put(b, ":", 1)) return rc ? rc : NO_MEMORY;
            if ((rc = json_text(s, val, depth + 1))) return rc;
        }
        return buf_put(b, "}", 1) ? NO_MEMORY : OK;
    }
    default: return NOT_EXACT; /* a number beyond 64 bits or a double (raw) */
    }
}

static int object(State *s, yyjson_val *obj, int depth);

/* The value at the current path: a cell, or the paths under it. */
static int value(State *s, yyjson_val *v, int depth) {
    int rc = OK;
    char tmp[48];
    size_t n;
    yyjson_type type = unsafe_yyjson_get_type(v);
    if (type == YYJSON_TYPE_OBJ && unsafe_yyjson_get_len(v)) return object(s, v, depth + 1);
    if (type == YYJSON_TYPE_RAW) return NOT_EXACT;
    if (type == YYJSON_TYPE_NUM && unsafe_yyjson_get_subtype(v) == YYJSON_SUBTYPE_REAL &&
        !isfinite(unsafe_yyjson_get_real(v)))
        return NOT_EXACT;
    if (type == YYJSON_TYPE_STR && !utf8_ok(v)) return NOT_EXACT;
    if (type == YYJSON_TYPE_ARR) { /* its JSON text: checked before a column is made */
        s->json.len = 0;
        if ((rc = json_text(s, v, depth + 1))) return rc;
    }
    Col *c = column(s, &rc);
    if (!c) return rc;
    if (!s->render) return OK;
    switch (type) {
    case YYJSON_TYPE_NULL:
        if (buf_put(&c->data, s->null, s->nnull)) return NO_MEMORY;
        return push_offset(c);
    case YYJSON_TYPE_BOOL:
        return unsafe_yyjson_get_bool(v) ? put_cell(s, c, "true", 4, 0)
                                         : put_cell(s, c, "false", 5, 0);
    case YYJSON_TYPE_OBJ: return put_cell(s, c, "{}", 2, 0);
    case YYJSON_TYPE_ARR: return put_cell(s, c, s->json.data, s->json.len, 0);
    case YYJSON_TYPE_STR:
        return put_cell(s, c, unsafe_yyjson_get_str(v), unsafe_yyjson_get_len(v), 1);
    default:
        switch (unsafe_yyjson_get_subtype(v)) {
        case YYJSON_SUBTYPE_UINT: n = uint_text(unsafe_yyjson_get_uint(v), tmp); break;
        case YYJSON_SUBTYPE_SINT: n = int_text(unsafe_yyjson_get_sint(v), tmp); break;
        default:
            if (float_text(unsafe_yyjson_get_real(v), tmp, &n, &s->ts)) return NO_MEMORY;
        }
        return put_cell(s, c, tmp, n, 0);
    }
}

/* escape_key: `\` and `.` inside a key get a `\` before them. */
static int put_key(Buf *b, const char *k, size_t n) {
    if (buf_reserve(b, 2 * n + 1)) return NO_MEMORY;
    char *p = b->data + b->len;
    for (size_t i = 0; i < n; i++) {
        if (k[i] == '.' || k[i] == '\\') *p++ = '\\';
        *p++ = k[i];
    }
    b->len = (size_t)(p - b->data);
    return OK;
}

/* Whether another key of obj is spelt as key. */
static int twice(yyjson_val *obj, yyjson_val *key) {
    size_t idx, max, n = unsafe_yyjson_get_len(key);
    yyjson_val *k, *v;
    yyjson_obj_foreach(obj, idx, max, k, v) {
        if (k != key && unsafe_yyjson_get_len(k) == n &&
            !memcmp(unsafe_yyjson_get_str(k), unsafe_yyjson_get_str(key), n))
            return 1;
    }
    return 0;
}

static int object(State *s, yyjson_val *obj, int depth) {
    size_t idx, max;
    yyjson_val *key, *val;
    if (depth > MAX_DEPTH) return NOT_EXACT;
    size_t at = s->path.len;
    yyjson_obj_foreach(obj, idx, max, key, val) {
        if (!utf8_ok(key)) return NOT_EXACT;
        /* a key given twice where one holds an object: orjson keeps the last value
         * (twice with two cells is found as a path set twice, in column()) */
        if (unsafe_yyjson_get_type(val) == YYJSON_TYPE_OBJ && unsafe_yyjson_get_len(val) &&
            twice(obj, key))
            return NOT_EXACT;
        /* `prefix.key`, or the key alone where the prefix is empty (as Python's `if
         * prefix`: the keys under a top-level "" are top-level paths) */
        if (at && buf_put(&s->path, ".", 1)) return NO_MEMORY;
        int rc = put_key(&s->path, unsafe_yyjson_get_str(key), unsafe_yyjson_get_len(key));
        if (rc || (rc = value(s, val, depth))) return rc;
        s->path.len = at;
    }
    return OK;
}

static int blank(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r\x0b\x0c", p[i]) || !p[i]) return 0;
    return 1;
}

static int run(State *s, const char *chunk, size_t len) {
    const yyjson_read_flag flags = YYJSON_READ_BIGNUM_AS_RAW;
    void *pool = NULL;
    size_t pool_size = 0;
    int rc = OK;
    const char *p = chunk, *end = chunk + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        size_t n = (size_t)(stop - p);
        if (!blank(p, n)) {
            if (n >= 3 && !memcmp(p, "\xef\xbb\xbf", 3)) {
                rc = NOT_EXACT;
                break;
            }
            size_t need = yyjson_read_max_memory_usage(n, flags);
            if (need > pool_size) {
                free(pool);
                pool_size = need > 1 << 16 ? need : 1 << 16;
                if (!(pool = malloc(pool_size))) {
                    rc = NO_MEMORY;
                    break;
                }
            }
            yyjson_alc alc;
            yyjson_alc_pool_init(&alc, pool, pool_size);
            yyjson_doc *doc = yyjson_read_opts((char *)p, n, flags, &alc, NULL);
            if (!doc) {
                rc = NOT_EXACT;
                break;
            }
            yyjson_val *root = yyjson_doc_get_root(doc);
            s->path.len = 0;
            yyjson_type type = unsafe_yyjson_get_type(root);
            if (type == YYJSON_TYPE_OBJ) {
                rc = object(s, root, 0);
            } else if (type != YYJSON_TYPE_NULL) {
                rc = buf_put(&s->path, "$", 1) ? NO_MEMORY : value(s, root, 0);
            }
            if (rc) break;
            s->doc++;
            if (s->render && (size_t)s->doc * s->ncols > MAX_CELLS) {
                rc = NOT_EXACT; /* cells beyond MAX_CELLS: the ways that bound them */
                break;
            }
        }
        p = stop + 1;
    }
    free(pool);
    if (rc) return rc;
    if (s->render) {
        for (size_t c = 0; c < s->ncols; c++) { /* null cells to the end */
            Col *col = &s->cols[c];
            while ((Py_ssize_t)col->noffs <= s->doc) {
                if (buf_put(&col->data, s->null, s->nnull)) return NO_MEMORY;
                if ((rc = push_offset(col))) return rc;
            }
        }
    }
    return OK;
}

static void release(State *s) {
    for (size_t c = 0; c < s->ncols; c++) {
        free(s->cols[c].data.data);
        free(s->cols[c].offs);
    }
    free(s->cols);
    free(s->names.data);
    free(s->slots);
    free(s->path.data);
    free(s->json.data);
}

static int one_byte(PyObject *o, const char *what, char *out) {
    if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) != 1) {
        PyErr_Format(PyExc_ValueError, "%s must be one byte", what);
        return -1;
    }
    *out = PyBytes_AS_STRING(o)[0];
    return 0;
}

static PyObject *result(State *s) {
    PyObject *paths = PyList_New((Py_ssize_t)s->ncols);
    PyObject *cols = PyList_New(s->render ? (Py_ssize_t)s->ncols : 0);
    PyObject *out = NULL;
    if (!paths || !cols) goto done;
    for (size_t c = 0; c < s->ncols; c++) {
        Col *col = &s->cols[c];
        PyObject *name = PyUnicode_DecodeUTF8(s->names.data + col->path_at,
                                              (Py_ssize_t)col->path_len, "strict");
        if (!name) goto done;
        PyList_SET_ITEM(paths, (Py_ssize_t)c, name);
        if (!s->render) continue;
        PyObject *pair = Py_BuildValue(
            "(y#y#)", (const char *)col->offs, (Py_ssize_t)(col->noffs * sizeof(int32_t)),
            col->data.data ? col->data.data : "", (Py_ssize_t)col->data.len);
        if (!pair) goto done;
        PyList_SET_ITEM(cols, (Py_ssize_t)c, pair);
    }
    out = Py_BuildValue("(OnO)", paths, s->doc, cols);
done:
    Py_XDECREF(paths);
    Py_XDECREF(cols);
    return out;
}

static PyObject *cells(PyObject *self, PyObject *args) {
    Py_buffer chunk;
    PyObject *delim, *quote;
    const char *null;
    Py_ssize_t nnull, max_paths;
    int safe, render;
    if (!PyArg_ParseTuple(args, "y*OOy#ppn", &chunk, &delim, &quote, &null, &nnull, &safe,
                          &render, &max_paths))
        return NULL;
    State s;
    memset(&s, 0, sizeof s);
    s.null = null;
    s.nnull = (size_t)nnull;
    s.safe = safe;
    s.render = render;
    s.max_paths = max_paths;
    PyObject *out = NULL;
    if (one_byte(delim, "delimiter", &s.delim) || one_byte(quote, "quote", &s.quote)) goto done;
    s.ts = PyEval_SaveThread();
    int rc = run(&s, (const char *)chunk.buf, (size_t)chunk.len);
    PyEval_RestoreThread(s.ts);
    if (rc == NO_MEMORY) {
        PyErr_NoMemory();
    } else if (rc == NOT_EXACT) {
        out = Py_NewRef(Py_None);
    } else {
        out = result(&s);
    }
done:
    release(&s);
    PyBuffer_Release(&chunk);
    return out;
}

static PyMethodDef methods[] = {
    {"cells", cells, METH_VARARGS,
     "cells(chunk, delimiter, quote, null, spreadsheet_safe, render, max_paths) -> "
     "(paths, documents, [(offsets, data)]) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jsoncells",
                                    "JSON Lines documents -> flattened paths and CSV cells",
                                    -1, methods};

PyMODINIT_FUNC PyInit__jsoncells(void) { return PyModule_Create(&module); }
