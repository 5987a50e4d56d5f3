/* exportd.fastpaths._arrowcsv: Arrow columns -> the CSV text PostgreSQL's COPY reads, in C,
 * without the GIL (the staged rows of an import, execution/imports/columnar.py).
 *
 * encode(columns, rows) takes one tuple per column, (kind, offset, validity, data,
 * offsets): the Arrow array's buffers as `Array.buffers()` gives them (validity None when
 * the array has no nulls; offsets None but for text) and its slice offset. Kinds: 'l' int64,
 * 'i' int32, 's' int16, 'b' int8, 'd' float64, 'f' float32, 't' utf8, 'T' large_utf8,
 * '?' bool, 'D' date32. It returns the rows as CSV (',' between fields, '\n' after each
 * row): NULL an empty unquoted field; integers as digits; reals as `float_text` (cells.h);
 * booleans `true`/`false`; dates YYYY-MM-DD; text as it is, quoted (its quotes doubled)
 * when it is empty or holds a comma, a quote, CR, LF or a backslash (so that neither
 * NULL nor `\.`, COPY's end of data, can be read into it). None: a date outside years
 * 1-9999, which the caller writes another way. Buffers too short for `rows` (and the
 * offset) raise ValueError: nothing is ever read outside them.
 */
#include "cells.h"

typedef struct {
    char kind;
    Py_ssize_t offset;
    Py_buffer validity, data, offsets;
    int has_validity, has_offsets;
} Column;

static void release(Column *cols, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (cols[i].has_validity) PyBuffer_Release(&cols[i].validity);
        if (cols[i].data.obj) PyBuffer_Release(&cols[i].data);
        if (cols[i].has_offsets) PyBuffer_Release(&cols[i].offsets);
    }
}

static Py_ssize_t width_of(char kind) {
    switch (kind) {
    case 'l': return 8;
    case 'i': return 4;
    case 's': return 2;
    case 'b': return 1;
    case 'd': return 8;
    case 'f': return 4;
    case 'D': return 4;
    default: return 0; /* text (by its offsets) and bool (bits) */
    }
}

/* The column's buffers checked against `rows` rows from its offset. */
static int check(Column *c, Py_ssize_t rows) {
    Py_ssize_t end = c->offset + rows;
    if (c->has_validity && c->validity.len * 8 < end) goto short_;
    if (c->kind == '?') {
        if (c->data.len * 8 < end) goto short_;
    } else if (c->kind == 't' || c->kind == 'T') {
        Py_ssize_t w = c->kind == 't' ? 4 : 8;
        if (!c->has_offsets || c->offsets.len < (end + 1) * w) goto short_;
        for (Py_ssize_t i = c->offset; i <= end; i++) { /* every offset within the data */
            long long at = w == 4 ? ((const int32_t *)c->offsets.buf)[i]
                                  : ((const int64_t *)c->offsets.buf)[i];
            if (at < 0 || at > c->data.len) goto short_;
            if (i > c->offset) {
                long long before = w == 4 ? ((const int32_t *)c->offsets.buf)[i - 1]
                                          : ((const int64_t *)c->offsets.buf)[i - 1];
                if (before > at) goto short_;
            }
        }
    } else if (c->data.len < end * width_of(c->kind)) {
        goto short_;
    }
    return 0;
short_:
    PyErr_Format(PyExc_ValueError, "a column of kind %c has buffers too short or offsets "
                 "out of order for %zd rows", c->kind, rows);
    return -1;
}

static inline int bit(const Py_buffer *b, Py_ssize_t i) {
    return (((const uint8_t *)b->buf)[i >> 3] >> (i & 7)) & 1;
}

/* Days since 1970-01-01 as YYYY-MM-DD (Hinnant's civil_from_days); 0 outside 1-9999. */
static size_t date_text(int32_t days, char *out) {
    long long z = (long long)days + 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long y = yoe + era * 400, doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153, d = doy - (153 * mp + 2) / 5 + 1;
    long long m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    if (y < 1 || y > 9999) return 0;
    out[0] = (char)('0' + y / 1000);
    out[1] = (char)('0' + y / 100 % 10);
    out[2] = (char)('0' + y / 10 % 10);
    out[3] = (char)('0' + y % 10);
    out[4] = '-';
    out[5] = (char)('0' + m / 10);
    out[6] = (char)('0' + m % 10);
    out[7] = '-';
    out[8] = (char)('0' + d / 10);
    out[9] = (char)('0' + d % 10);
    return 10;
}

/* 0, -1 without memory, 1 for a date outside years 1-9999. */
static int render(Column *cols, Py_ssize_t ncols, Py_ssize_t rows, Buf *out, PyThreadState **ts) {
    char tmp[48];
    size_t n;
    for (Py_ssize_t r = 0; r < rows; r++) {
        for (Py_ssize_t c = 0; c < ncols; c++) {
            Column *col = &cols[c];
            Py_ssize_t i = col->offset + r;
            if (c && buf_put(out, ",", 1)) return -1;
            if (col->has_validity && !bit(&col->validity, i)) continue;
            const void *d = col->data.buf;
            switch (col->kind) {
            case 'l':
            case 'i':
            case 's':
            case 'b': {
                long long v = col->kind == 'l'   ? ((const int64_t *)d)[i]
                              : col->kind == 'i' ? ((const int32_t *)d)[i]
                              : col->kind == 's' ? ((const int16_t *)d)[i]
                                                 : ((const int8_t *)d)[i];
                if (buf_reserve(out, 24)) return -1;
                out->len += int_text(v, out->data + out->len);
                continue;
            }
            case 'd':
            case 'f': {
                double v = col->kind == 'd' ? ((const double *)d)[i] : ((const float *)d)[i];
                if (float_text(v, tmp, &n, ts)) return -1;
                break;
            }
            case '?':
                n = bit(&col->data, i) ? 4 : 5;
                memcpy(tmp, n == 4 ? "true" : "false", n);
                break;
            case 'D':
                if (!(n = date_text(((const int32_t *)d)[i], tmp))) return 1;
                break;
            default: { /* text */
                const char *base = (const char *)d;
                long long a, b;
                if (col->kind == 't') {
                    a = ((const int32_t *)col->offsets.buf)[i];
                    b = ((const int32_t *)col->offsets.buf)[i + 1];
                } else {
                    a = ((const int64_t *)col->offsets.buf)[i];
                    b = ((const int64_t *)col->offsets.buf)[i + 1];
                }
                if (put_text(out, base + a, (size_t)(b - a))) return -1;
                continue;
            }
            }
            if (buf_put(out, tmp, n)) return -1;
        }
        if (buf_put(out, "\n", 1)) return -1;
    }
    return 0;
}

static int get(PyObject *o, Py_buffer *view, int *flag) {
    if (o == Py_None) return 0;
    if (PyObject_GetBuffer(o, view, PyBUF_SIMPLE)) return -1;
    if (flag) *flag = 1;
    return 0;
}

static PyObject *encode(PyObject *self, PyObject *args) {
    PyObject *spec;
    Py_ssize_t rows;
    if (!PyArg_ParseTuple(args, "O!n", &PyList_Type, &spec, &rows)) return NULL;
    if (rows < 0) {
        PyErr_SetString(PyExc_ValueError, "rows must not be negative");
        return NULL;
    }
    Py_ssize_t ncols = PyList_GET_SIZE(spec);
    Column *cols = PyMem_Calloc((size_t)(ncols ? ncols : 1), sizeof(Column));
    if (!cols) return PyErr_NoMemory();
    Py_ssize_t held = 0;
    PyObject *result = NULL;
    for (; held < ncols; held++) {
        PyObject *t = PyList_GET_ITEM(spec, held);
        PyObject *validity, *data, *offsets;
        int kind;
        Column *c = &cols[held];
        if (!PyArg_ParseTuple(t, "CnOOO", &kind, &c->offset, &validity, &data, &offsets))
            goto done;
        if (!strchr("lisbdftT?D", kind) || kind == 0 || c->offset < 0) {
            PyErr_Format(PyExc_ValueError, "unknown column kind %c or a negative offset", kind);
            goto done;
        }
        c->kind = (char)kind;
        if (data == Py_None) {
            PyErr_SetString(PyExc_ValueError, "a column without its data buffer");
            goto done;
        }
        if (get(validity, &c->validity, &c->has_validity) || get(data, &c->data, NULL) ||
            get(offsets, &c->offsets, &c->has_offsets)) {
            held++;
            goto done;
        }
        if (check(c, rows)) {
            held++;
            goto done;
        }
    }
    Buf out = {NULL, 0, 0};
    int rc;
    PyThreadState *ts = PyEval_SaveThread();
    rc = render(cols, ncols, rows, &out, &ts);
    PyEval_RestoreThread(ts);
    if (rc < 0) {
        PyErr_NoMemory();
    } else if (rc > 0) {
        result = Py_NewRef(Py_None);
    } else {
        result = PyBytes_FromStringAndSize(out.data ? out.data : "", (Py_ssize_t)out.len);
    }
    free(out.data);
done:
    release(cols, held);
    PyMem_Free(cols);
    return result;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS,
     "encode(columns, rows) -> the rows as PostgreSQL's CSV COPY reads them, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_arrowcsv",
                                    "Arrow columns -> PostgreSQL CSV COPY text", -1, methods};

PyMODINIT_FUNC PyInit__arrowcsv(void) { return PyModule_Create(&module); }
