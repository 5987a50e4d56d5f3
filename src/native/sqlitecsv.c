/* exportd.fastpaths._sqlitecsv: SQLite rows -> CSV bytes, in C, without the GIL.
 *
 * Reader(path, sql, params, kinds, delimiter, quote, null, line_ending, spreadsheet_safe)
 * opens the SQLite file read-only, prepares `sql` and binds `params` (int, float, str,
 * bytes or None). Each read(chunk_bytes, max_seconds) steps rows with the GIL released
 * and returns the CSV text of whole rows (at least chunk_bytes, or what max_seconds
 * allowed, or the rest): b"" once every row was returned.
 *
 * Each cell is rendered as exportd's generic CSV writer renders it (formats/text.py,
 * formats/cells.py): integers as decimal digits, reals as `float_text` (shortest
 * round-trip digits, PostgreSQL's notation), text neutralised (a leading ' before
 * = + - @ TAB CR when spreadsheet_safe) and quoted when it holds the delimiter, the
 * quote, CR or LF, equals the null text, or is `\.` alone on a line; NULL as the null
 * text. `kinds` has one letter per column: 'i' (INTEGER), 'r' (REAL), 't' (TEXT). A cell
 * whose storage class is not its column's (or NULL), or a text that is not valid UTF-8,
 * raises Unrenderable: the caller renders the partition another way from its start.
 * SQLite's own errors raise Error.
 *
 * Reals: see cells.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static PyObject *Unrenderable;
static PyObject *SqliteError;

#include "cells.h"

/* ---- the reader ----------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    sqlite3 *db;
    sqlite3_stmt *st;
    int ncols;
    char *kinds;
    char *delim, *quote, *null, *eol;
    size_t dlen, qlen, nlen, elen;
    int safe, single, plain_numbers, done, busy;
    unsigned char special[256]; /* first bytes of the delimiter, the quote, CR, LF */
    long long rows;
    Buf out, scratch;
    PyThreadState *ts; /* while the GIL is released */
    int err;           /* 0, 1: Unrenderable, 2: SQLite error, 3: no memory */
    char why[256];
} Reader;

static void reader_close(Reader *r) {
    if (r->st) {
        sqlite3_finalize(r->st);
        r->st = NULL;
    }
    if (r->db) {
        sqlite3_close_v2(r->db);
        r->db = NULL;
    }
}

static void reader_dealloc(Reader *r) {
    reader_close(r);
    PyMem_Free(r->kinds);
    PyMem_Free(r->delim);
    PyMem_Free(r->quote);
    PyMem_Free(r->null);
    PyMem_Free(r->eol);
    free(r->out.data);
    free(r->scratch.data);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static char *dup_utf8(PyObject *s, size_t *len) {
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(s, &n);
    if (!p) return NULL;
    char *copy = PyMem_Malloc((size_t)n + 1);
    if (!copy) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(copy, p, (size_t)n + 1);
    *len = (size_t)n;
    return copy;
}

static int fail_sqlite(Reader *r, const char *what) {
    PyErr_Format(SqliteError, "%s: %s", what, r->db ? sqlite3_errmsg(r->db) : "out of memory");
    return -1;
}

static int bind_params(Reader *r, PyObject *params) {
    Py_ssize_t n = PyTuple_GET_SIZE(params);
    if (n != sqlite3_bind_parameter_count(r->st)) {
        PyErr_SetString(PyExc_ValueError, "one value per parameter of the query");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyTuple_GET_ITEM(params, i);
        int rc, at = (int)i + 1;
        if (v == Py_None) {
            rc = sqlite3_bind_null(r->st, at);
        } else if (PyBool_Check(v)) {
            rc = sqlite3_bind_int64(r->st, at, v == Py_True);
        } else if (PyLong_Check(v)) {
            long long x = PyLong_AsLongLong(v);
            if (x == -1 && PyErr_Occurred()) return -1;
            rc = sqlite3_bind_int64(r->st, at, x);
        } else if (PyFloat_Check(v)) {
            rc = sqlite3_bind_double(r->st, at, PyFloat_AS_DOUBLE(v));
        } else if (PyUnicode_Check(v)) {
            Py_ssize_t len;
            const char *s = PyUnicode_AsUTF8AndSize(v, &len);
            if (!s) return -1;
            rc = sqlite3_bind_text64(r->st, at, s, (sqlite3_uint64)len, SQLITE_TRANSIENT,
                                     SQLITE_UTF8);
        } else if (PyBytes_Check(v)) {
            rc = sqlite3_bind_blob64(r->st, at, PyBytes_AS_STRING(v),
                                     (sqlite3_uint64)PyBytes_GET_SIZE(v), SQLITE_TRANSIENT);
        } else {
            PyErr_Format(PyExc_TypeError, "cannot bind a %.60s", Py_TYPE(v)->tp_name);
            return -1;
        }
        if (rc != SQLITE_OK) return fail_sqlite(r, "bind");
    }
    return 0;
}

static const char PLAIN_CHARS[] = "0123456789+-.eEaNIifnty";

static int reader_init(Reader *r, PyObject *args, PyObject *kw) {
    static char *names[] = {"path",  "sql",         "params",           "kinds", "delimiter",
                            "quote", "null",        "line_ending",      "spreadsheet_safe",
                            NULL};
    PyObject *path, *sql, *params, *kinds, *delim, *quote, *null, *eol;
    int safe;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "UUO!UUUUUp", names, &path, &sql, &PyTuple_Type,
                                     &params, &kinds, &delim, &quote, &null, &eol, &safe))
        return -1;
    if (r->db || r->kinds) {
        PyErr_SetString(PyExc_RuntimeError, "Reader already initialised");
        return -1;
    }
    size_t klen;
    if (!(r->kinds = dup_utf8(kinds, &klen)) || !(r->delim = dup_utf8(delim, &r->dlen)) ||
        !(r->quote = dup_utf8(quote, &r->qlen)) || !(r->null = dup_utf8(null, &r->nlen)) ||
        !(r->eol = dup_utf8(eol, &r->elen)))
        return -1;
    if (r->dlen == 0 || r->qlen == 0 || r->elen == 0) {
        PyErr_SetString(PyExc_ValueError, "empty delimiter, quote or line ending");
        return -1;
    }
    for (size_t i = 0; i < klen; i++) {
        if (!strchr("irt", r->kinds[i]) || r->kinds[i] == '\0') {
            PyErr_SetString(PyExc_ValueError, "kinds: one of 'i', 'r', 't' per column");
            return -1;
        }
    }
    r->ncols = (int)klen;
    r->safe = safe;
    r->single = klen == 1;
    r->plain_numbers = r->nlen == 0 && !(r->dlen == 1 && strchr(PLAIN_CHARS, r->delim[0])) &&
                       !(r->qlen == 1 && strchr(PLAIN_CHARS, r->quote[0]));
    memset(r->special, 0, sizeof r->special);
    r->special['\r'] = r->special['\n'] = 1;
    r->special[(unsigned char)r->delim[0]] = 1;
    r->special[(unsigned char)r->quote[0]] = 1;

    const char *p = PyUnicode_AsUTF8(path), *q;
    Py_ssize_t qn;
    if (!p || !(q = PyUnicode_AsUTF8AndSize(sql, &qn))) return -1;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sqlite3_open_v2(p, &r->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(r->db, 60000);
        rc = sqlite3_prepare_v3(r->db, q, (int)qn, 0, &r->st, NULL);
    }
    Py_END_ALLOW_THREADS
    if (rc != SQLITE_OK) {
        fail_sqlite(r, "open");
        reader_close(r);
        return -1;
    }
    if (!r->st) {
        PyErr_SetString(PyExc_ValueError, "no statement in the query");
        reader_close(r);
        return -1;
    }
    if (sqlite3_column_count(r->st) != r->ncols) {
        PyErr_SetString(PyExc_ValueError, "one kind per column of the query");
        reader_close(r);
        return -1;
    }
    if (bind_params(r, params)) {
        reader_close(r);
        return -1;
    }
    return 0;
}

/* ---- cells ---------------------------------------------------------------------- */


/* Whether a rendered cell must be quoted (CsvEncoder.cell). */
static int needs_quotes(const Reader *r, const char *s, size_t n) {
    if (n == r->nlen && memcmp(s, r->null, n) == 0) return 1;
    if (r->single && n == 2 && s[0] == '\\' && s[1] == '.') return 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!r->special[c]) continue;
        if (c == '\r' || c == '\n') return 1;
        if (n - i >= r->dlen && memcmp(s + i, r->delim, r->dlen) == 0) return 1;
        if (n - i >= r->qlen && memcmp(s + i, r->quote, r->qlen) == 0) return 1;
    }
    return 0;
}

/* A rendered cell, quoted (and its quotes doubled) when it must be. */
static int put_cell(Reader *r, const char *s, size_t n) {
    if (!needs_quotes(r, s, n)) return buf_put(&r->out, s, n);
    if (buf_put(&r->out, r->quote, r->qlen)) return -1;
    size_t from = 0;
    for (size_t i = 0; i + r->qlen <= n;) {
        if (memcmp(s + i, r->quote, r->qlen) == 0) {
            if (buf_put(&r->out, s + from, i + r->qlen - from)) return -1;
            if (buf_put(&r->out, r->quote, r->qlen)) return -1;
            i += r->qlen;
            from = i;
        } else {
            i++;
        }
    }
    if (buf_put(&r->out, s + from, n - from)) return -1;
    return buf_put(&r->out, r->quote, r->qlen);
}

static const unsigned char TRIGGER[256] = {['='] = 1, ['+'] = 1, ['-'] = 1,
                                            ['@'] = 1, ['\t'] = 1, ['\r'] = 1};

static int unrenderable(Reader *r, int col, const char *what) {
    snprintf(r->why, sizeof r->why, "column %d holds %s", col, what);
    r->err = 1;
    return -1;
}

static const char *storage_name(int t) {
    switch (t) {
    case SQLITE_INTEGER: return "an integer";
    case SQLITE_FLOAT: return "a real";
    case SQLITE_TEXT: return "a text";
    case SQLITE_BLOB: return "a blob";
    default: return "a NULL";
    }
}

/* One row into r->out; -1 with r->err set on failure. */
static int render_row(Reader *r) {
    char tmp[48];
    size_t n;
    for (int i = 0; i < r->ncols; i++) {
        if (i && buf_put(&r->out, r->delim, r->dlen)) goto nomem;
        int t = sqlite3_column_type(r->st, i);
        if (t == SQLITE_NULL) {
            if (buf_put(&r->out, r->null, r->nlen)) goto nomem;
            continue;
        }
        switch (r->kinds[i]) {
        case 'i':
            if (t != SQLITE_INTEGER) return unrenderable(r, i, storage_name(t));
            if (r->plain_numbers) { /* straight into the output */
                if (buf_reserve(&r->out, 24)) goto nomem;
                r->out.len += int_text(sqlite3_column_int64(r->st, i), r->out.data + r->out.len);
                continue;
            }
            n = int_text(sqlite3_column_int64(r->st, i), tmp);
            break;
        case 'r':
            if (t != SQLITE_FLOAT) return unrenderable(r, i, storage_name(t));
            if (float_text(sqlite3_column_double(r->st, i), tmp, &n, &r->ts)) goto nomem;
            break;
        default: {
            if (t != SQLITE_TEXT) return unrenderable(r, i, storage_name(t));
            const char *s = (const char *)sqlite3_column_text(r->st, i);
            size_t len = (size_t)sqlite3_column_bytes(r->st, i);
            if (!s) {
                if (sqlite3_errcode(r->db) == SQLITE_NOMEM) goto nomem;
                s = "";
                len = 0;
            }
            if (!valid_utf8((const unsigned char *)s, len))
                return unrenderable(r, i, "a text that is not UTF-8");
            if (r->safe && len && TRIGGER[(unsigned char)s[0]]) {
                r->scratch.len = 0;
                if (buf_put(&r->scratch, "'", 1) || buf_put(&r->scratch, s, len)) goto nomem;
                if (put_cell(r, r->scratch.data, r->scratch.len)) goto nomem;
            } else if (put_cell(r, s, len)) {
                goto nomem;
            }
            continue;
        }
        }
        if (r->plain_numbers ? buf_put(&r->out, tmp, n) : put_cell(r, tmp, n)) goto nomem;
    }
    if (buf_put(&r->out, r->eol, r->elen)) goto nomem;
    return 0;
nomem:
    r->err = 3;
    return -1;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static PyObject *reader_read(Reader *r, PyObject *args) {
    Py_ssize_t chunk;
    double max_seconds;
    if (!PyArg_ParseTuple(args, "nd", &chunk, &max_seconds)) return NULL;
    if (!r->st && !r->done) {
        PyErr_SetString(PyExc_ValueError, "the reader is closed");
        return NULL;
    }
    if (r->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the reader is in use by another thread");
        return NULL;
    }
    if (r->done) return PyBytes_FromStringAndSize(NULL, 0);
    r->busy = 1;
    r->out.len = 0;
    r->err = 0;
    size_t want = chunk > 0 ? (size_t)chunk : 1;
    int rc = SQLITE_ROW;
    r->ts = PyEval_SaveThread();
    double until = now() + max_seconds;
    long long n = 0;
    while (r->out.len < want) {
        rc = sqlite3_step(r->st);
        if (rc != SQLITE_ROW) break;
        size_t mark = r->out.len;
        if (render_row(r)) {
            r->out.len = mark;
            break;
        }
        n++;
        if ((n & 255) == 0 && now() > until) break;
    }
    PyEval_RestoreThread(r->ts);
    r->ts = NULL;
    r->busy = 0;
    if (r->err || (rc != SQLITE_ROW && rc != SQLITE_DONE)) { /* the reader ends here */
        if (r->err == 1)
            PyErr_SetString(Unrenderable, r->why);
        else if (r->err == 3)
            PyErr_NoMemory();
        else
            PyErr_Format(SqliteError, "step: %s", sqlite3_errmsg(r->db));
        reader_close(r);
        r->done = 1;
        return NULL;
    }
    if (rc == SQLITE_DONE) {
        r->done = 1;
        reader_close(r);
    }
    r->rows += n;
    return PyBytes_FromStringAndSize(r->out.data ? r->out.data : "", (Py_ssize_t)r->out.len);
}

static PyObject *reader_close_py(Reader *r, PyObject *Py_UNUSED(ignored)) {
    if (r->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the reader is in use by another thread");
        return NULL;
    }
    reader_close(r);
    r->done = 1;
    Py_RETURN_NONE;
}

static PyObject *reader_rows(Reader *r, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(r->rows);
}

static PyMethodDef reader_methods[] = {
    {"read", (PyCFunction)reader_read, METH_VARARGS,
     "read(chunk_bytes, max_seconds) -> the CSV bytes of the next rows (b'' at the end)"},
    {"close", (PyCFunction)reader_close_py, METH_NOARGS, "close the statement and database"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef reader_getset[] = {
    {"rows", (getter)reader_rows, NULL, "rows returned so far", NULL}, {NULL}};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "exportd.fastpaths._sqlitecsv.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SQLite rows of one query as CSV bytes",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
    .tp_getset = reader_getset,
};

static PyObject *py_float_text(PyObject *Py_UNUSED(m), PyObject *arg) {
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred()) return NULL;
    char out[48];
    size_t n;
    PyThreadState *ts = NULL;
    if (float_text(x, out, &n, &ts)) return PyErr_NoMemory();
    return PyUnicode_FromStringAndSize(out, (Py_ssize_t)n);
}

static PyMethodDef module_methods[] = {
    {"float_text", py_float_text, METH_O, "float_text(x) as the reader renders a real"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_sqlitecsv",
                                 "SQLite rows -> CSV bytes (fastpaths/sqlite_csv.py)", -1,
                                 module_methods};

PyMODINIT_FUNC PyInit__sqlitecsv(void) {
    if (PyType_Ready(&ReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&mod);
    if (!m) return NULL;
    Unrenderable = PyErr_NewException("exportd.fastpaths._sqlitecsv.Unrenderable", NULL, NULL);
    SqliteError = PyErr_NewException("exportd.fastpaths._sqlitecsv.Error", NULL, NULL);
    if (!Unrenderable || !SqliteError || PyModule_AddObjectRef(m, "Unrenderable", Unrenderable) ||
        PyModule_AddObjectRef(m, "Error", SqliteError) ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) ||
        PyModule_AddStringConstant(m, "sqlite_version", sqlite3_libversion())) {
        Py_XDECREF(Unrenderable);
        Py_XDECREF(SqliteError);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
