/* Cells as exportd writes them in C (shared by the native modules): a growable byte
 * buffer, integers as decimal digits, and reals as `float_text` (formats/cells.py):
 * shortest round-trip digits in PostgreSQL's notation (NaN, Infinity, no `.0`, 1e+15).
 *
 * Reals: a double that is an integer below 2^53, or a decimal of at most 15 significant
 * digits with at most 9 decimals (checked exactly: the decimal divided by its power of
 * ten gives the double back), is printed from its digits; any other double from
 * snprintf's correctly rounded 15, 16 or 17 digits, the first that strtod reads back
 * (unique at 15 digits; the nearest at 16 and 17, which is the shortest repr's choice
 * where the rounding interval is symmetric). Subnormals and powers of two that need more
 * than 15 digits take the GIL for CPython's own repr (PyOS_double_to_string): *ts holds
 * the caller's saved thread state while it runs without the GIL (NULL: it holds it). */
#ifndef EXPORTD_CELLS_H
#define EXPORTD_CELLS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- growable buffer ------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

static int buf_grow(Buf *b, size_t more) {
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + more) {
        if (cap > ((size_t)1 << 40)) return -1;
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

static inline int buf_reserve(Buf *b, size_t more) {
    return b->len + more <= b->cap ? 0 : buf_grow(b, more);
}

static inline int buf_put(Buf *b, const char *s, size_t n) {
    if (buf_reserve(b, n)) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}


/* Python's strict UTF-8: no overlong forms, surrogates or code points above U+10FFFF. */
static inline int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (i + 2 >= n) return 0;
            unsigned char c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && c1 < 0xA0) return 0;
            if (c == 0xED && c1 > 0x9F) return 0;
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (i + 3 >= n) return 0;
            unsigned char c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 || (s[i + 3] & 0xC0) != 0x80)
                return 0;
            if (c == 0xF0 && c1 < 0x90) return 0;
            if (c == 0xF4 && c1 > 0x8F) return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Text as a field of PostgreSQL's CSV COPY: as it is, quoted (its quotes doubled) when
 * it is empty or holds a comma, a quote, CR, LF or a backslash (so that neither NULL nor
 * `\.`, COPY's end of data, can be read into it). */
static inline int put_text(Buf *out, const char *s, size_t n) {
    int quote = n == 0;
    for (size_t i = 0; i < n && !quote; i++) {
        char ch = s[i];
        quote = ch == ',' || ch == '"' || ch == '\n' || ch == '\r' || ch == '\\';
    }
    if (!quote) return buf_put(out, s, n);
    if (buf_reserve(out, 2 * n + 2)) return -1;
    char *p = out->data + out->len;
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') *p++ = '"';
        *p++ = s[i];
    }
    *p++ = '"';
    out->len = (size_t)(p - out->data);
    return 0;
}

static const char DIGIT_PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* v's decimal digits into out (at least 21 bytes); their length. */
static size_t int_text(long long v, char *out) {
    char tmp[24];
    char *end = tmp + sizeof tmp, *p = end;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    while (u >= 100) {
        unsigned k = (unsigned)(u % 100) * 2;
        u /= 100;
        *--p = DIGIT_PAIRS[k + 1];
        *--p = DIGIT_PAIRS[k];
    }
    if (u >= 10) {
        *--p = DIGIT_PAIRS[u * 2 + 1];
        *--p = DIGIT_PAIRS[u * 2];
    } else {
        *--p = (char)('0' + u);
    }
    if (v < 0) *--p = '-';
    size_t n = (size_t)(end - p);
    memcpy(out, p, n);
    return n;
}

/* float_text from a digit string d (no leading or trailing zeros, nd digits) whose value
 * is 0.d x 10^decpt: repr's notation, then float_text's changes (no `.0`, 1e+15). */
static size_t digits_text(int neg, const char *d, int nd, int decpt, char *out) {
    size_t k = 0;
    if (neg) out[k++] = '-';
    int e = decpt - 1;
    if (e < -4 || e >= 16) {
        out[k++] = d[0];
        if (nd > 1) {
            out[k++] = '.';
            memcpy(out + k, d + 1, (size_t)nd - 1);
            k += (size_t)nd - 1;
        }
        k += (size_t)sprintf(out + k, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
        return k;
    }
    if (decpt >= nd && decpt == 16) { /* an integer of 16 digits: 1e+15 .. 9.99e+15 */
        out[k++] = d[0];
        if (nd > 1) {
            out[k++] = '.';
            memcpy(out + k, d + 1, (size_t)nd - 1);
            k += (size_t)nd - 1;
        }
        memcpy(out + k, "e+15", 4);
        return k + 4;
    }
    if (decpt <= 0) {
        out[k++] = '0';
        out[k++] = '.';
        for (int i = 0; i < -decpt; i++) out[k++] = '0';
        memcpy(out + k, d, (size_t)nd);
        return k + (size_t)nd;
    }
    if (decpt >= nd) {
        memcpy(out + k, d, (size_t)nd);
        k += (size_t)nd;
        for (int i = nd; i < decpt; i++) out[k++] = '0';
        return k;
    }
    memcpy(out + k, d, (size_t)decpt);
    k += (size_t)decpt;
    out[k++] = '.';
    memcpy(out + k, d + decpt, (size_t)(nd - decpt));
    return k + (size_t)(nd - decpt);
}

static const double POW10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};

/* The double's text through CPython (needs the GIL: the caller holds it or has saved
 * its thread state in *ts). Returns 0 and fills out, or -1 without memory. */
static int python_float_text(double x, char *out, size_t *n, PyThreadState **ts) {
    if (*ts) PyEval_RestoreThread(*ts);
    char *s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    int ok = 0;
    if (s) {
        size_t len = strlen(s);
        const char *d = s;
        int neg = 0;
        if (*d == '-') {
            neg = 1;
            d++;
        }
        /* parse repr's digits back into (digits, decpt) and apply float_text */
        char digits[40];
        int nd = 0, decpt = 0, seen_dot = 0, exp = 0;
        const char *p = d;
        for (; *p && *p != 'e'; p++) {
            if (*p == '.') {
                seen_dot = 1;
                continue;
            }
            if (nd < 39) digits[nd++] = *p;
            if (!seen_dot) decpt++;
        }
        if (*p == 'e') exp = atoi(p + 1);
        decpt += exp;
        int lead = 0;
        while (lead < nd - 1 && digits[lead] == '0') {
            lead++;
            decpt--;
        }
        while (nd > lead + 1 && digits[nd - 1] == '0') nd--;
        (void)len;
        *n = digits_text(neg, digits + lead, nd - lead, decpt, out);
        PyMem_Free(s);
    } else {
        PyErr_Clear();
        ok = -1;
    }
    if (*ts) *ts = PyEval_SaveThread();
    return ok;
}

/* float_text(x) into out (at least 40 bytes). */
static int float_text(double x, char *out, size_t *n, PyThreadState **ts) {
    if (isnan(x)) {
        memcpy(out, "NaN", 3);
        *n = 3;
        return 0;
    }
    if (isinf(x)) {
        *n = x > 0 ? 8 : 9;
        memcpy(out, x > 0 ? "Infinity" : "-Infinity", *n);
        return 0;
    }
    if (x == 0) {
        *n = signbit(x) ? 2 : 1;
        memcpy(out, "-0", *n);
        if (!signbit(x)) out[0] = '0';
        return 0;
    }
    double a = fabs(x);
    /* an integer or a short decimal, from its digits */
    if (a >= 1e-4 && a < 1e15) {
        for (int k = 0; k <= 9; k++) {
            double scaled = a * POW10[k];
            if (scaled >= 9007199254740992.0) break;
            double m = nearbyint(scaled);
            if (m / POW10[k] != a) continue;
            long long im = (long long)m;
            char digits[24];
            int nd = (int)int_text(im, digits);
            if (nd > 15) break;
            int decpt = nd - k;
            while (nd > 1 && digits[nd - 1] == '0') nd--;
            *n = digits_text(x < 0, digits, nd, decpt, out);
            return 0;
        }
    }
    if (a < 2.2250738585072014e-308) return python_float_text(x, out, n, ts);
    char tmp[40];
    for (int prec = 14; prec <= 16; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec, a);
        if (strtod(tmp, NULL) != a) {
            if (prec == 14) {
                int e2;
                if (frexp(a, &e2) == 0.5) return python_float_text(x, out, n, ts);
            }
            continue;
        }
        /* tmp: d.ddddde[+-]XX */
        char digits[24];
        int nd = 0;
        const char *p = tmp;
        for (; *p && *p != 'e'; p++)
            if (*p != '.') digits[nd++] = *p;
        int e = atoi(p + 1);
        while (nd > 1 && digits[nd - 1] == '0') nd--;
        *n = digits_text(x < 0, digits, nd, e + 1, out);
        return 0;
    }
    return python_float_text(x, out, n, ts);
}


#endif
