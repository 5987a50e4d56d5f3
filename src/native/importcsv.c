/* exportd.fastpaths._importcsv: a chunk of an import's CSV/TSV file checked value by value
 * against the target's columns and its good rows written as the CSV text PostgreSQL's
 * COPY reads, in one pass, in C, without the GIL (execution/imports/native.py says when
 * it is used and what it must agree with).
 *
 * check(chunk, first_line, sep, dec, width, columns, nulls, bools, suffix, keys, with_line)
 *
 * - chunk: bytes of whole lines with one record per line and no quote character (the
 *   caller's test, as for Arrow's quote-less parse): fields split at `sep` (a byte), a
 *   line ends at LF, a CR right before it is not part of the last field.
 * - columns: one tuple (pos, kind, nullable, a, b) per output column, in order: `pos` the
 *   file field (-1: none, always NULL); kinds 'i' integer within [a, b]; 'f' double
 *   precision, 'g' real; 'n' decimal of at most a whole digits (-1: any) and b decimals;
 *   'b' boolean; 's' text of at most a characters (-1: any); 'd' date; 't' timestamp with
 *   time zone, 'T' without (a timestamp without an offset is UTC wall time).
 * - nulls: the null markers (bytes); bools: (true words, false words), lower case.
 * - suffix: bytes written after the columns of every good row (the constants, with their
 *   leading commas); with_line: the row's line number as a last field.
 * - keys: indexes into `columns` (kinds 'i' or 's') whose values are returned per good row.
 *
 * A value is good only in a strict form whose meaning is the same for exportd's Python
 * checker (`TargetColumn.convert`) and for PostgreSQL; a row with any other value is
 * "doubtful" and left to the Python checker, which accepts or rejects it with the exact
 * reasons. Returns None when the chunk is not valid UTF-8 or a line has another number
 * of fields than `width` (the caller reads such a chunk its other way), else a tuple
 * (rows as CSV, good row count, their line numbers as int64 bytes, per key: int64 bytes
 * or (int32 offsets bytes, utf8 data bytes), doubtful rows as [(index, start, end)] with
 * the byte range of the line without its line end).
 *
 * scan(chunk, quote) -> (LF count, plain): plain when the chunk holds no `quote` (bytes;
 * empty: none) and one record per line (no blank line, every CR right before an LF), the
 * readers' test for `check` and for Arrow's quote-less parse (formats/readers.py).
 */
#include "cells.h"

#include <limits.h>

typedef struct {
    Py_ssize_t pos;
    char kind;
    int nullable;
    long long a, b;
} Col;

typedef struct {
    const char *s;
    Py_ssize_t n;
} Bytes;

typedef struct {
    const char *chunk;
    Py_ssize_t len;
    long long first_line;
    char sep, dec;
    Py_ssize_t width;
    Col *cols;
    Py_ssize_t ncols;
    Bytes *nulls;
    Py_ssize_t nnulls;
    Bytes *words[2]; /* true, false */
    Py_ssize_t nwords[2];
    Bytes suffix;
    Py_ssize_t *keys;
    Py_ssize_t nkeys;
    int with_line;
} Spec;

typedef struct {
    Buf out, lines, doubtful;
    Buf *key_data, *key_offsets; /* per key; offsets only for text keys */
    Py_ssize_t good;
} Result;

/* ---- the values: 1 good (written to out), 0 doubtful, -1 no memory ---------------- */

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

static int put_sep_as_dot(Buf *out, const char *s, Py_ssize_t n, char dec) {
    if (dec == '.') return buf_put(out, s, (size_t)n);
    if (buf_reserve(out, (size_t)n)) return -1;
    char *p = out->data + out->len;
    for (Py_ssize_t i = 0; i < n; i++) p[i] = s[i] == dec ? '.' : s[i];
    out->len += (size_t)n;
    return 0;
}

/* [+-]?[0-9]+ within [lo, hi] */
static int int_cell(const char *s, Py_ssize_t n, long long lo, long long hi, long long *value) {
    Py_ssize_t j = 0;
    int neg = 0;
    if (n && (s[0] == '-' || s[0] == '+')) {
        neg = s[0] == '-';
        j = 1;
    }
    if (j == n) return 0;
    unsigned long long v = 0;
    if (n - j <= 18) { /* no overflow is possible */
        for (; j < n; j++) {
            unsigned d = (unsigned)(unsigned char)s[j] - '0';
            if (d > 9) return 0;
            v = v * 10 + d;
        }
    }
    for (; j < n; j++) {
        unsigned d = (unsigned)(unsigned char)s[j] - '0';
        if (d > 9) return 0;
        if (v > (ULLONG_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    long long x;
    if (neg) {
        if (v > (unsigned long long)LLONG_MAX + 1) return 0;
        x = v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)v;
    } else {
        if (v > (unsigned long long)LLONG_MAX) return 0;
        x = (long long)v;
    }
    if (x < lo || x > hi) return 0;
    *value = x;
    return 1;
}

/* [+-]?([0-9]{1,20}(dec[0-9]{0,20})?|dec[0-9]{1,20})([eE][+-]?[0-9]{1,2})? */
static int float_form(const char *s, Py_ssize_t n, char dec) {
    Py_ssize_t j = 0, intd = 0, fracd = 0;
    int dot = 0;
    if (j < n && (s[j] == '+' || s[j] == '-')) j++;
    while (j < n && is_digit(s[j])) j++, intd++;
    if (j < n && s[j] == dec) {
        dot = 1;
        j++;
        while (j < n && is_digit(s[j])) j++, fracd++;
    }
    if (intd > 20 || fracd > 20) return 0;
    if (intd == 0 && (!dot || fracd == 0)) return 0;
    if (j < n && (s[j] == 'e' || s[j] == 'E')) {
        j++;
        if (j < n && (s[j] == '+' || s[j] == '-')) j++;
        Py_ssize_t e = 0;
        while (j < n && is_digit(s[j])) j++, e++;
        if (e < 1 || e > 2) return 0;
    }
    return j == n;
}

static int float_cell(Buf *out, const char *s, Py_ssize_t n, char dec, int single,
                      PyThreadState **ts) {
    if (!float_form(s, n, dec)) return 0;
    if (!single) return put_sep_as_dot(out, s, n, dec) ? -1 : 1;
    /* a REAL: the double Python reads (strtod rounds as float() does), within REAL's
     * range and not so small it would flush, written as the double's shortest text */
    char tmp[64], text[48];
    if (n >= (Py_ssize_t)sizeof tmp) return 0;
    for (Py_ssize_t i = 0; i < n; i++) tmp[i] = s[i] == dec ? '.' : s[i];
    tmp[n] = 0;
    double v = strtod(tmp, NULL), size = fabs(v);
    if (!(size < 3.4e38) || (size != 0 && size < 1.2e-38)) return 0;
    size_t k;
    if (float_text(v, text, &k, ts)) return -1;
    return buf_put(out, text, k) ? -1 : 1;
}

/* [+-]?0*[0-9]{0,whole}(dec[0-9]{0,frac})? with a digit, or any [+-]?digits(dec digits)? */
static int decimal_cell(Buf *out, const char *s, Py_ssize_t n, char dec, long long whole,
                        long long frac) {
    Py_ssize_t j = 0, zeros = 0, intd = 0, fracd = 0;
    int dot = 0;
    if (j < n && (s[j] == '+' || s[j] == '-')) j++;
    if (whole >= 0)
        while (j < n && s[j] == '0') j++, zeros++;
    while (j < n && is_digit(s[j])) j++, intd++;
    if (j < n && s[j] == dec) {
        dot = 1;
        j++;
        while (j < n && is_digit(s[j])) j++, fracd++;
    }
    if (j != n || zeros + intd + fracd == 0) return 0;
    if (whole >= 0 && (intd > whole || fracd > frac)) return 0;
    if (whole < 0 && intd == 0 && (!dot || fracd == 0)) return 0;
    return put_sep_as_dot(out, s, n, dec) ? -1 : 1;
}

static int bool_cell(Buf *out, const Spec *sp, const char *s, Py_ssize_t n) {
    char low[8];
    if (n > (Py_ssize_t)sizeof low) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        low[i] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
    }
    for (int w = 0; w < 2; w++)
        for (Py_ssize_t k = 0; k < sp->nwords[w]; k++)
            if (sp->words[w][k].n == n && !memcmp(sp->words[w][k].s, low, (size_t)n))
                return buf_put(out, w ? "false" : "true", w ? 5 : 4) ? -1 : 1;
    return 0;
}

static int text_cell(Buf *out, const char *s, Py_ssize_t n, long long length) {
    if (length >= 0 && n > length) { /* bytes >= characters: count only when it may matter */
        long long chars = 0;
        for (Py_ssize_t i = 0; i < n; i++) chars += ((unsigned char)s[i] & 0xC0) != 0x80;
        if (chars > length) return 0;
    }
    return put_text(out, s, (size_t)n) ? -1 : 1;
}

static inline int two(const char *s) {
    return is_digit(s[0]) && is_digit(s[1]) ? (s[0] - '0') * 10 + (s[1] - '0') : -1;
}

static int days_in(int y, int m) {
    static const int D[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 ? 28 + leap : D[m - 1];
}

/* YYYY-MM-DD, a real day of years 1000-9999 */
static int day_form(const char *s, int *y, int *m, int *d) {
    int hi = two(s), lo = two(s + 2);
    if (hi < 10 || lo < 0 || s[4] != '-' || s[7] != '-') return 0;
    *y = hi * 100 + lo;
    *m = two(s + 5);
    *d = two(s + 8);
    return *m >= 1 && *m <= 12 && *d >= 1 && *d <= days_in(*y, *m);
}

/* Hinnant's days_from_civil / civil_from_days */
static long long days_from_civil(long long y, long long m, long long d) {
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    long long yoe = y - era * 400;
    long long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(long long z, long long *y, long long *m, long long *d) {
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yoe + era * 400 + (*m <= 2);
}

static int date_cell(Buf *out, const char *s, Py_ssize_t n) {
    int y, m, d;
    if (n != 10 || !day_form(s, &y, &m, &d)) return 0;
    return buf_put(out, s, 10) ? -1 : 1;
}

/* YYYY-MM-DD[T ]HH:MM:SS(.f{1,6})?(Z|[+-]HH:MM)? ; a time without an offset is UTC */
static int timestamp_cell(Buf *out, const char *s, Py_ssize_t n, int aware) {
    int y, mo, d;
    if (n < 19 || !day_form(s, &y, &mo, &d) || (s[10] != 'T' && s[10] != ' ')) return 0;
    int h = two(s + 11), mi = two(s + 14), sec = two(s + 17);
    if (s[13] != ':' || s[16] != ':' || h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 ||
        sec > 59)
        return 0;
    Py_ssize_t j = 19;
    if (j < n && s[j] == '.') {
        Py_ssize_t f = 0;
        j++;
        while (j < n && is_digit(s[j]) && f < 7) j++, f++;
        if (f < 1 || f > 6) return 0;
    }
    Py_ssize_t wall = j; /* the end of the wall time */
    int zoned = 0, offset = 0;
    if (j < n) {
        if (s[j] == 'Z' && j + 1 == n) {
            zoned = 1;
        } else if ((s[j] == '+' || s[j] == '-') && j + 6 == n && s[j + 3] == ':') {
            int oh = two(s + j + 1), om = two(s + j + 4);
            if (oh < 0 || oh > 23 || om < 0 || om > 59) return 0;
            zoned = 1;
            offset = (oh * 60 + om) * (s[j] == '-' ? -1 : 1);
        } else {
            return 0;
        }
    }
    if (aware) {
        if (buf_put(out, s, (size_t)n)) return -1;
        if (!zoned && buf_put(out, "+00:00", 6)) return -1;
        return 1;
    }
    if (!offset) return buf_put(out, s, (size_t)wall) ? -1 : 1;
    /* without a time zone: the UTC wall time of the instant */
    long long mins = days_from_civil(y, mo, d) * 1440 + h * 60 + mi - offset;
    long long days = mins >= 0 ? mins / 1440 : -((-mins + 1439) / 1440);
    mins -= days * 1440;
    long long yy, mm, dd;
    civil_from_days(days, &yy, &mm, &dd);
    if (yy < 1 || yy > 9999) return 0;
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%04d-%02d-%02d %02d:%02d:", (int)yy, (int)mm, (int)dd,
             (int)(mins / 60), (int)(mins % 60));
    if (buf_put(out, tmp, 17)) return -1;
    return buf_put(out, s + 17, (size_t)(wall - 17)) ? -1 : 1;
}

/* ---- the chunk ------------------------------------------------------------------- */

static int is_null(const Spec *sp, const char *s, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < sp->nnulls; k++)
        if (sp->nulls[k].n == n && (!n || (sp->nulls[k].s[0] == s[0] &&
                                           !memcmp(sp->nulls[k].s, s, (size_t)n))))
            return 1;
    return 0;
}

static int put_i64(Buf *b, long long v) { return buf_put(b, (const char *)&v, 8); }

static int put_i32(Buf *b, int32_t v) { return buf_put(b, (const char *)&v, 4); }

/* 0 done, 1 refused (bad UTF-8, a wrong number of fields), -1 no memory */
static int run(const Spec *sp, Result *r, PyThreadState **ts) {
    const char *p = sp->chunk, *end = sp->chunk + sp->len;
    if (!valid_utf8((const unsigned char *)p, (size_t)sp->len)) return 1;
    const char **fs = malloc(sizeof(char *) * (size_t)sp->width);
    Py_ssize_t *fl = malloc(sizeof(Py_ssize_t) * (size_t)sp->width);
    long long *kv = malloc(sizeof(long long) * (size_t)(sp->nkeys ? sp->nkeys : 1));
    int rc = -1;
    if (!fs || !fl || !kv) goto done;
    for (Py_ssize_t k = 0; k < sp->nkeys; k++)
        if (sp->cols[sp->keys[k]].kind == 's' && put_i32(&r->key_offsets[k], 0)) goto done;
    for (long long line = sp->first_line; p < end; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *next = nl ? nl + 1 : end, *ce = nl ? nl : end;
        if (ce > p && ce[-1] == '\r') ce--;
        Py_ssize_t k = 0;
        const char sep = sp->sep;
        for (const char *f = p;;) {
            const char *s = f; /* fields are short: a loop beats memchr's setup */
            while (s < ce && *s != sep) s++;
            if (k >= sp->width) {
                rc = 1;
                goto done;
            }
            fs[k] = f;
            fl[k] = s - f;
            k++;
            if (s == ce) break;
            f = s + 1;
        }
        if (k != sp->width) {
            rc = 1;
            goto done;
        }
        size_t mark = r->out.len;
        int good = 1;
        for (Py_ssize_t c = 0; c < sp->ncols && good; c++) {
            const Col *col = &sp->cols[c];
            if (c && buf_put(&r->out, ",", 1)) goto done;
            if (col->pos < 0) {
                good = col->nullable;
                continue;
            }
            const char *s = fs[col->pos];
            Py_ssize_t n = fl[col->pos];
            if (sp->nnulls && is_null(sp, s, n)) {
                good = col->nullable;
                continue;
            }
            long long v = 0;
            int g;
            switch (col->kind) {
            case 'i':
                g = int_cell(s, n, col->a, col->b, &v);
                if (g > 0 && buf_put(&r->out, s, (size_t)n)) g = -1;
                break;
            case 'f':
            case 'g': g = float_cell(&r->out, s, n, sp->dec, col->kind == 'g', ts); break;
            case 'n': g = decimal_cell(&r->out, s, n, sp->dec, col->a, col->b); break;
            case 'b': g = bool_cell(&r->out, sp, s, n); break;
            case 's': g = text_cell(&r->out, s, n, col->a); break;
            case 'd': g = date_cell(&r->out, s, n); break;
            default: g = timestamp_cell(&r->out, s, n, col->kind == 't'); break;
            }
            if (g < 0) goto done;
            good = g;
            for (Py_ssize_t q = 0; q < sp->nkeys; q++) /* (a text key is read from its field) */
                if (sp->keys[q] == c) kv[q] = v;
        }
        /* a NULL key is left to the Python checker (its key file takes it) */
        for (Py_ssize_t q = 0; q < sp->nkeys && good; q++) {
            const Col *col = &sp->cols[sp->keys[q]];
            if (sp->nnulls && is_null(sp, fs[col->pos], fl[col->pos])) good = 0;
        }
        if (!good) {
            r->out.len = mark;
            long long trip[3] = {line - sp->first_line, p - sp->chunk, ce - sp->chunk};
            if (buf_put(&r->doubtful, (const char *)trip, sizeof trip)) goto done;
            p = next;
            continue;
        }
        if (buf_put(&r->out, sp->suffix.s, (size_t)sp->suffix.n)) goto done;
        if (sp->with_line) {
            if (buf_reserve(&r->out, 24)) goto done;
            r->out.data[r->out.len++] = ',';
            r->out.len += int_text(line, r->out.data + r->out.len);
        }
        if (buf_put(&r->out, "\n", 1) || put_i64(&r->lines, line)) goto done;
        for (Py_ssize_t q = 0; q < sp->nkeys; q++) {
            const Col *col = &sp->cols[sp->keys[q]];
            if (col->kind == 'i') {
                if (put_i64(&r->key_data[q], kv[q])) goto done;
            } else {
                Buf *data = &r->key_data[q];
                if (buf_put(data, fs[col->pos], (size_t)fl[col->pos])) goto done;
                if (data->len > INT32_MAX || put_i32(&r->key_offsets[q], (int32_t)data->len))
                    goto done;
            }
        }
        r->good++;
        p = next;
    }
    rc = 0;
done:
    free(fs);
    free(fl);
    free(kv);
    return rc;
}

/* ---- scan: what the readers test of a chunk before they parse it ------------------ */

/* The LFs of s, and whether s has one record per line (the test `check` and Arrow's
 * quote-less parse need): no blank line (nothing or a lone CR between two line ends, or
 * at the start) and every CR right before an LF. One memchr per line, one for the CRs. */
static size_t lines_of(const unsigned char *s, size_t n, int *one_per_line) {
    const unsigned char *p = s, *end = s + n;
    size_t k = 0;
    int ok = !(n && (s[0] == '\n' || (n >= 2 && s[0] == '\r' && s[1] == '\n')));
    while ((p = memchr(p, '\n', (size_t)(end - p)))) {
        k++;
        p++;
        if (p < end && (*p == '\n' || (*p == '\r' && p + 1 < end && p[1] == '\n'))) ok = 0;
    }
    for (p = s; ok && (p = memchr(p, '\r', (size_t)(end - p))); p += 2)
        if (p + 1 >= end || p[1] != '\n') ok = 0;
    *one_per_line = ok;
    return k;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer chunk, quote;
    if (!PyArg_ParseTuple(args, "y*y*", &chunk, &quote)) return NULL;
    size_t lines;
    int plain;
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *s = chunk.buf;
    size_t n = (size_t)chunk.len;
    const void *q = quote.len == 1 ? memchr(s, *(const char *)quote.buf, n)
                    : quote.len ? memmem(s, n, quote.buf, (size_t)quote.len) : NULL;
    lines = lines_of(s, n, &plain);
    plain = plain && !q;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&chunk);
    PyBuffer_Release(&quote);
    return Py_BuildValue("(nO)", (Py_ssize_t)lines, plain ? Py_True : Py_False);
}

/* ---- arguments ------------------------------------------------------------------- */

static int byte_list(PyObject *list, Bytes **out, Py_ssize_t *n, const char *what) {
    if (!PyList_Check(list) && !PyTuple_Check(list)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of bytes", what);
        return -1;
    }
    PyObject *seq = PySequence_Fast(list, what);
    if (!seq) return -1;
    *n = PySequence_Fast_GET_SIZE(seq);
    *out = PyMem_Calloc((size_t)(*n ? *n : 1), sizeof(Bytes));
    int rc = *out ? 0 : -1;
    for (Py_ssize_t i = 0; i < *n && !rc; i++) {
        PyObject *b = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(b)) {
            PyErr_Format(PyExc_TypeError, "%s must be a list of bytes", what);
            rc = -1;
            break;
        }
        (*out)[i].s = PyBytes_AS_STRING(b);
        (*out)[i].n = PyBytes_GET_SIZE(b);
    }
    Py_DECREF(seq); /* the bytes stay alive: the caller's list holds them */
    if (!*out) PyErr_NoMemory();
    return rc;
}

static PyObject *take(Buf *b) {
    PyObject *o = PyBytes_FromStringAndSize(b->data ? b->data : "", (Py_ssize_t)b->len);
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    return o;
}

static PyObject *check(PyObject *self, PyObject *args) {
    Py_buffer chunk;
    long long first_line;
    int sep, dec, with_line;
    Py_ssize_t width;
    PyObject *columns, *nulls, *bools, *keys;
    Py_buffer suffix;
    if (!PyArg_ParseTuple(args, "y*LCCnO!OOy*O!p", &chunk, &first_line, &sep, &dec, &width,
                          &PyList_Type, &columns, &nulls, &bools, &suffix, &PyList_Type, &keys,
                          &with_line))
        return NULL;
    Spec sp = {0};
    Result r = {0};
    PyObject *result = NULL;
    sp.chunk = chunk.buf;
    sp.len = chunk.len;
    sp.first_line = first_line;
    sp.sep = (char)sep;
    sp.dec = (char)dec;
    sp.width = width;
    sp.suffix.s = suffix.buf;
    sp.suffix.n = suffix.len;
    sp.with_line = with_line;
    if (sep > 127 || dec > 127 || width < 1) {
        PyErr_SetString(PyExc_ValueError, "sep and dec must be ASCII, width at least 1");
        goto done;
    }
    sp.ncols = PyList_GET_SIZE(columns);
    sp.cols = PyMem_Calloc((size_t)(sp.ncols ? sp.ncols : 1), sizeof(Col));
    if (!sp.cols) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t c = 0; c < sp.ncols; c++) {
        Col *col = &sp.cols[c];
        int kind;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(columns, c), "nCpLL", &col->pos, &kind,
                              &col->nullable, &col->a, &col->b))
            goto done;
        if (!strchr("ifgnbsdtT", kind) || !kind || col->pos >= width) {
            PyErr_Format(PyExc_ValueError, "column %zd: unknown kind %c or position %zd", c,
                         kind, col->pos);
            goto done;
        }
        col->kind = (char)kind;
    }
    if (byte_list(nulls, &sp.nulls, &sp.nnulls, "nulls")) goto done;
    if (!PyTuple_Check(bools) || PyTuple_GET_SIZE(bools) != 2) {
        PyErr_SetString(PyExc_TypeError, "bools must be (true words, false words)");
        goto done;
    }
    for (int w = 0; w < 2; w++)
        if (byte_list(PyTuple_GET_ITEM(bools, w), &sp.words[w], &sp.nwords[w], "bools"))
            goto done;
    sp.nkeys = PyList_GET_SIZE(keys);
    sp.keys = PyMem_Calloc((size_t)(sp.nkeys ? sp.nkeys : 1), sizeof(Py_ssize_t));
    r.key_data = PyMem_Calloc((size_t)(sp.nkeys ? sp.nkeys : 1), sizeof(Buf));
    r.key_offsets = PyMem_Calloc((size_t)(sp.nkeys ? sp.nkeys : 1), sizeof(Buf));
    if (!sp.keys || !r.key_data || !r.key_offsets) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < sp.nkeys; k++) {
        Py_ssize_t c = PyLong_AsSsize_t(PyList_GET_ITEM(keys, k));
        if (c == -1 && PyErr_Occurred()) goto done;
        if (c < 0 || c >= sp.ncols || !strchr("is", sp.cols[c].kind) || sp.cols[c].pos < 0) {
            PyErr_Format(PyExc_ValueError, "key %zd is not a read column of kind i or s", c);
            goto done;
        }
        sp.keys[k] = c;
    }
    PyThreadState *ts = PyEval_SaveThread();
    int rc = run(&sp, &r, &ts);
    PyEval_RestoreThread(ts);
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (rc > 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *keyed = PyList_New(sp.nkeys);
    PyObject *doubtful = PyList_New((Py_ssize_t)(r.doubtful.len / (3 * sizeof(long long))));
    if (!keyed || !doubtful) goto fail;
    for (Py_ssize_t k = 0; k < sp.nkeys; k++) {
        PyObject *o = sp.cols[sp.keys[k]].kind == 'i'
                          ? take(&r.key_data[k])
                          : Py_BuildValue("(NN)", take(&r.key_offsets[k]), take(&r.key_data[k]));
        if (!o) goto fail;
        PyList_SET_ITEM(keyed, k, o);
    }
    const long long *t = (const long long *)r.doubtful.data;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(doubtful); i++) {
        PyObject *o = Py_BuildValue("(LLL)", t[3 * i], t[3 * i + 1], t[3 * i + 2]);
        if (!o) goto fail;
        PyList_SET_ITEM(doubtful, i, o);
    }
    result = Py_BuildValue("(NnNNN)", take(&r.out), r.good, take(&r.lines), keyed, doubtful);
    goto done;
fail:
    Py_XDECREF(keyed);
    Py_XDECREF(doubtful);
done:
    free(r.out.data);
    free(r.lines.data);
    free(r.doubtful.data);
    for (Py_ssize_t k = 0; k < sp.nkeys && r.key_data; k++) {
        free(r.key_data[k].data);
        if (r.key_offsets) free(r.key_offsets[k].data);
    }
    PyMem_Free(r.key_data);
    PyMem_Free(r.key_offsets);
    PyMem_Free(sp.keys);
    PyMem_Free(sp.cols);
    PyMem_Free(sp.nulls);
    PyMem_Free(sp.words[0]);
    PyMem_Free(sp.words[1]);
    PyBuffer_Release(&chunk);
    PyBuffer_Release(&suffix);
    return result;
}

static PyMethodDef methods[] = {
    {"check", check, METH_VARARGS,
     "check(chunk, first_line, sep, dec, width, columns, nulls, bools, suffix, keys, "
     "with_line) -> (csv, rows, lines, keys, doubtful) or None"},
    {"scan", scan, METH_VARARGS,
     "scan(chunk, quote) -> (LF count, one record per line and no quote)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_importcsv",
                                    "An import's CSV chunk checked and written as COPY text",
                                    -1, methods};

PyMODINIT_FUNC PyInit__importcsv(void) { return PyModule_Create(&module); }
