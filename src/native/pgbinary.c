/* exportd.fastpaths._pgbinary: draining a PostgreSQL `COPY ... TO STDOUT` in C.
 *
 * The connection is psycopg's own: its PGconn pointer (`pgconn.pgconn_ptr`) is driven
 * with the functions of the very libpq psycopg loaded, found with dlopen(RTLD_NOLOAD)
 * of that file and dlsym (`bind`). No other libpq is ever called on it, and nothing
 * here links to libpq: the few prototypes are declared below.
 *
 * - copy_chunk(ptr, want, timeout[, kinds, delim, quote]): CopyData messages (CSV,
 *   text) appended into one bytes object of about `want` bytes, handed over after
 *   `timeout` seconds at most; with `kinds`, the CSV's fields of those columns
 *   rewritten on the way (`append_row`: timestamps, spreadsheet-safe text).
 * - Reader(ptr, kinds).read(max_rows, max_bytes, timeout): a binary COPY parsed into
 *   Arrow buffers (validity bitmap + values, or offsets + data), one batch per call.
 *
 * Both release the GIL while they wait on the socket (poll) and while they parse. When
 * the COPY ends or libpq reports an error they say so and the caller reads the
 * command's result through psycopg (which raises the server's error with its text). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

typedef struct pg_conn PGconn;

static int (*f_getcopydata)(PGconn *, char **, int);
static void (*f_freemem)(void *);
static int (*f_socket)(const PGconn *);
static int (*f_consume)(PGconn *);
static int (*f_libversion)(void);
static void *libpq;

static PyObject *Unrepresentable; /* a value Arrow cannot hold as ADBC would */

/* ---- libpq binding ------------------------------------------------------------- */

static PyObject *bind_libpq(PyObject *self, PyObject *arg) {
    (void)self;
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL)
        return NULL;
    if (libpq != NULL)
        return PyLong_FromLong(f_libversion());
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD); /* only a library already loaded */
    if (h == NULL)
        Py_RETURN_NONE;
    f_getcopydata = (int (*)(PGconn *, char **, int))dlsym(h, "PQgetCopyData");
    f_freemem = (void (*)(void *))dlsym(h, "PQfreemem");
    f_socket = (int (*)(const PGconn *))dlsym(h, "PQsocket");
    f_consume = (int (*)(PGconn *))dlsym(h, "PQconsumeInput");
    f_libversion = (int (*)(void))dlsym(h, "PQlibVersion");
    if (!f_getcopydata || !f_freemem || !f_socket || !f_consume || !f_libversion) {
        dlclose(h);
        Py_RETURN_NONE;
    }
    libpq = h;
    return PyLong_FromLong(f_libversion());
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

enum { MSG = 1, LATER = 0, END = -1, FAILED = -2 };

/* Waiting on the server. A client that parses faster than the server sends drains the
 * socket at every segment (~8 KB: PostgreSQL's send buffer) and sleeps in poll again: a
 * wake-up, two context switches, per 8 KB (16,000 for 110 MB, most of the reader's CPU).
 * While a call drains the COPY, the socket's SO_RCVLOWAT is raised to LOWAT, so poll
 * wakes once per LOWAT bytes instead; the value is put back before the call returns
 * (psycopg waits on the same socket). poll's wait is short then (WAIT_MS, doubled while
 * nothing comes, up to WAIT_MAX_MS): the COPY's last bytes, fewer than LOWAT, are read
 * when it runs out. A socket that does not honour it (a Unix socket's poll) wakes as
 * before. */
#define LOWAT (256 * 1024)
#define WAIT_MS 1
#define WAIT_MAX_MS 64

typedef struct {
    PGconn *c;
    int fd, lowat, saved, wait_ms;
} Drain;

static void drain_begin(Drain *d, PGconn *c) {
    d->c = c;
    d->fd = f_socket(c);
    d->wait_ms = WAIT_MS;
    d->lowat = 0;
    socklen_t n = sizeof d->saved;
    int v = LOWAT;
    if (d->fd >= 0 && getsockopt(d->fd, SOL_SOCKET, SO_RCVLOWAT, &d->saved, &n) == 0 &&
        setsockopt(d->fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof v) == 0)
        d->lowat = 1;
}

static void drain_end(Drain *d) {
    if (d->lowat)
        setsockopt(d->fd, SOL_SOCKET, SO_RCVLOWAT, &d->saved, sizeof d->saved);
}

/* The next CopyData message (MSG; freed with f_freemem), LATER when the deadline passed
 * first, END at the end of the COPY, FAILED when libpq reports an error. What the socket
 * holds already is read before poll waits. No GIL. */
static int next_msg(Drain *d, char **msg, int *len, double deadline) {
    int consumed = 0;
    for (;;) {
        int n = f_getcopydata(d->c, msg, 1);
        if (n > 0) {
            *len = n;
            return MSG;
        }
        if (n == -1)
            return END;
        if (n < -1)
            return FAILED;
        if (!consumed) {
            consumed = 1;
            if (f_consume(d->c) == 0)
                return FAILED;
            continue;
        }
        consumed = 0;
        double left = deadline - now();
        if (left <= 0)
            return LATER;
        if (d->fd < 0)
            return FAILED;
        int ms = (int)(left * 1000) + 1;
        if (d->lowat && ms > d->wait_ms)
            ms = d->wait_ms;
        struct pollfd p = {d->fd, POLLIN, 0};
        int r = poll(&p, 1, ms);
        if (r < 0 && errno != EINTR)
            return FAILED;
        if (d->lowat)
            d->wait_ms = r != 0 ? WAIT_MS : d->wait_ms < WAIT_MAX_MS ? d->wait_ms * 2 : WAIT_MAX_MS;
        if (f_consume(d->c) == 0)
            return FAILED;
        consumed = 1;
    }
}

static PGconn *conn_of(unsigned long long ptr) {
    if (libpq == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_pgbinary: libpq is not bound");
        return NULL;
    }
    if (ptr == 0) {
        PyErr_SetString(PyExc_ValueError, "_pgbinary: no connection");
        return NULL;
    }
    return (PGconn *)(uintptr_t)ptr;
}

/* ---- growable buffers ---------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static int reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    char *q = realloc(b->p, cap);
    if (q == NULL)
        return -1;
    b->p = q;
    b->cap = cap;
    return 0;
}

/* ---- copy_chunk: text/CSV COPY --------------------------------------------------- */

/* A field of PostgreSQL's ISO DateStyle timestamp text, `YYYY-MM-DD HH:MM:SS[.f{1,6}]`,
 * followed by `+00` when `aware` (a timestamptz printed in UTC). */
static int iso_stamp(const char *f, size_t n, int aware) {
    static const char shape[] = "dddd-dd-dd dd:dd:dd";
    if (n < 19)
        return 0;
    for (size_t k = 0; k < 19; k++) {
        if (shape[k] == 'd' ? (f[k] < '0' || f[k] > '9') : f[k] != shape[k])
            return 0;
    }
    size_t k = 19;
    if (k < n && f[k] == '.') {
        size_t s = ++k;
        while (k < n && f[k] >= '0' && f[k] <= '9')
            k++;
        if (k - s < 1 || k - s > 6)
            return 0;
    }
    if (aware)
        return n - k == 3 && f[k] == '+' && f[k + 1] == '0' && f[k + 2] == '0';
    return k == n;
}

/* A text that a spreadsheet would run (cells.py's SPREADSHEET_TRIGGERS). */
static int trigger(char c) {
    return c == '=' || c == '+' || c == '-' || c == '@' || c == '\t' || c == '\r';
}

/* What append_row does to a column's fields (pg_copy_csv.py's STAMP, STAMP_TZ and
 * SAFE_TEXT, chosen by its drain_kinds). */
enum { KEEP = 0, STAMP = 1, STAMP_TZ = 2, SAFE_TEXT = 3 };

/* One row (the backend sends each row as one CopyData message) appended to `b`, with
 * the fields of the columns marked in `kinds` rewritten: STAMP (a timestamp) and
 * STAMP_TZ (a timestamptz in UTC) when unquoted ISO DateStyle timestamps, as ISO 8601
 * (the space a `T`, and `+00` `+00:00`); SAFE_TEXT, a `'` put before a leading trigger,
 * inside the quotes of a quoted field (pg_copy_csv.drain_kinds rules out the dialects
 * where that `'` would change how COPY quotes the field).
 * The row is walked only up to its last marked field (`last`), and copied in at most
 * one piece per rewritten field. */
static int append_row(Buf *b, const char *m, size_t len, const unsigned char *kinds,
                      size_t last, char delim, char quote) {
    if (reserve(b, len + 3 * (last + 1)) < 0)
        return -1;
    size_t i = 0, field = 0, copied = 0;
    while (i < len) {
        size_t start = i;
        int quoted = m[i] == quote;
        if (quoted) {
            for (i++; i < len; i++) {
                if (m[i] == quote) {
                    if (i + 1 < len && m[i + 1] == quote)
                        i++;
                    else {
                        i++;
                        break;
                    }
                }
            }
        }
        while (i < len && m[i] != delim && m[i] != '\n')
            i++;
        size_t first = start + (size_t)quoted;
        int kind = kinds[field];
        if (kind == SAFE_TEXT) {
            if (first < i && trigger(m[first])) {
                memcpy(b->p + b->len, m + copied, first - copied);
                b->len += first - copied;
                b->p[b->len++] = '\'';
                copied = first;
            }
        } else if (kind != KEEP && !quoted &&
                   iso_stamp(m + start, i - start, kind == STAMP_TZ)) {
            char *to = b->p + b->len;
            memcpy(to, m + copied, i - copied);
            to[start - copied + 10] = 'T';
            b->len += i - copied;
            copied = i;
            if (kind == STAMP_TZ) {
                memcpy(b->p + b->len, ":00", 3);
                b->len += 3;
            }
        }
        if (field == last || i >= len || m[i] == '\n')
            break;
        field++;
        i++;
    }
    memcpy(b->p + b->len, m + copied, len - copied);
    b->len += len - copied;
    return 0;
}

/* copy_chunk(ptr, want, timeout[, kinds, delim, quote]) -> (state, bytes): state 0 the
 * COPY goes on, 1 it ended, 2 libpq reported an error (the caller reads the result).
 * With `kinds` (a byte per column, see append_row) the rows of a CSV COPY written with
 * `delim` and `quote` have those columns' fields rewritten. */
static PyObject *copy_chunk(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ptr;
    Py_ssize_t want;
    double timeout;
    const char *kinds = "";
    Py_ssize_t nkinds = 0;
    char delim = ',', quote = '"';
    if (!PyArg_ParseTuple(args, "Knd|y#cc", &ptr, &want, &timeout, &kinds, &nkinds, &delim,
                          &quote))
        return NULL;
    int rewrite = 0;
    size_t last = 0;
    for (Py_ssize_t k = 0; k < nkinds; k++) {
        if (kinds[k] != KEEP) {
            rewrite = 1;
            last = (size_t)k;
        }
    }
    PGconn *c = conn_of(ptr);
    if (c == NULL)
        return NULL;
    Buf b = {NULL, 0, 0};
    int st = LATER, nomem = 0;
    Py_BEGIN_ALLOW_THREADS;
    Drain d;
    drain_begin(&d, c);
    double deadline = now() + timeout;
    while (b.len < (size_t)want) {
        char *msg = NULL;
        int len = 0;
        st = next_msg(&d, &msg, &len, deadline);
        if (st != MSG)
            break;
        if (rewrite) {
            nomem = append_row(&b, msg, (size_t)len, (const unsigned char *)kinds, last,
                               delim, quote) < 0;
        } else if (reserve(&b, (size_t)len) < 0) {
            nomem = 1;
        } else {
            memcpy(b.p + b.len, msg, (size_t)len);
            b.len += (size_t)len;
        }
        f_freemem(msg);
        if (nomem)
            break;
    }
    drain_end(&d);
    Py_END_ALLOW_THREADS;
    if (nomem) {
        free(b.p);
        return PyErr_NoMemory();
    }
    int state = st == END ? 1 : st == FAILED ? 2 : 0;
    PyObject *data = PyBytes_FromStringAndSize(b.p ? b.p : "", (Py_ssize_t)b.len);
    free(b.p);
    if (data == NULL)
        return NULL;
    return Py_BuildValue("(iN)", state, data);
}

/* ---- Memory: a malloc'd buffer handed to Arrow without a copy --------------------- */

typedef struct {
    PyObject_HEAD char *p;
    Py_ssize_t len;
} Memory;

static void memory_dealloc(Memory *m) {
    free(m->p);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static int memory_getbuffer(Memory *m, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)m, m->p ? m->p : (char *)"", m->len, 1, flags);
}

static PyBufferProcs memory_as_buffer = {(getbufferproc)memory_getbuffer, NULL};

static PyTypeObject MemoryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "exportd.fastpaths._pgbinary.Memory",
    .tp_basicsize = sizeof(Memory),
    .tp_dealloc = (destructor)memory_dealloc,
    .tp_as_buffer = &memory_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A buffer owned by the reader's batch (read-only).",
};

/* Takes ownership of p (freed on failure). */
static PyObject *memory_of(char *p, size_t len) {
    Memory *m = PyObject_New(Memory, &MemoryType);
    if (m == NULL) {
        free(p);
        return NULL;
    }
    m->p = p;
    m->len = (Py_ssize_t)len;
    return (PyObject *)m;
}

/* ---- Reader: binary COPY -> Arrow buffers ---------------------------------------- */

/* Column kinds, as pg_binary.py names them (the order of KINDS there). */
enum {
    K_INT2, K_INT4, K_INT8, K_FLOAT4, K_FLOAT8, K_BOOL, K_TEXT, K_BYTES, K_DATE,
    K_TIMESTAMP, K_NUMERIC, K_NKINDS
};
static const int WIDTH[K_NKINDS] = {2, 4, 8, 4, 8, 1, -1, -1, 4, 8, -1};

#define PG_EPOCH_DAYS 10957                   /* 2000-01-01 - 1970-01-01 */
#define PG_EPOCH_US INT64_C(946684800000000) /* the same in microseconds */

typedef struct {
    int kind;
    Buf valid, values, data; /* values: fixed width, bitmap (bool) or int32 offsets */
    int64_t nulls;
} Col;

typedef struct {
    PyObject_HEAD unsigned long long ptr;
    int ncols;
    int *kinds;
    Col *cols;
    int header, trailer, ended;
} Reader;

static void free_cols(Reader *r) {
    for (int i = 0; i < r->ncols; i++) {
        free(r->cols[i].valid.p);
        free(r->cols[i].values.p);
        free(r->cols[i].data.p);
        memset(&r->cols[i].valid, 0, sizeof(Buf));
        memset(&r->cols[i].values, 0, sizeof(Buf));
        memset(&r->cols[i].data, 0, sizeof(Buf));
        r->cols[i].nulls = 0;
    }
}

static void reader_dealloc(Reader *r) {
    if (r->cols != NULL)
        free_cols(r);
    free(r->cols);
    free(r->kinds);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int reader_init(Reader *r, PyObject *args, PyObject *kw) {
    static char *names[] = {"ptr", "kinds", NULL};
    unsigned long long ptr;
    Py_buffer kinds;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Ky*", names, &ptr, &kinds))
        return -1;
    if (r->kinds != NULL) {
        PyBuffer_Release(&kinds);
        PyErr_SetString(PyExc_RuntimeError, "Reader initialised twice");
        return -1;
    }
    r->ptr = ptr;
    r->ncols = (int)kinds.len;
    r->kinds = calloc((size_t)(r->ncols ? r->ncols : 1), sizeof(int));
    r->cols = calloc((size_t)(r->ncols ? r->ncols : 1), sizeof(Col));
    if (r->kinds == NULL || r->cols == NULL) {
        PyBuffer_Release(&kinds);
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < r->ncols; i++) {
        int k = ((const unsigned char *)kinds.buf)[i];
        if (k >= K_NKINDS) {
            PyBuffer_Release(&kinds);
            PyErr_Format(PyExc_ValueError, "unknown column kind %d", k);
            return -1;
        }
        r->kinds[i] = k;
        r->cols[i].kind = k;
    }
    PyBuffer_Release(&kinds);
    return 0;
}

static uint16_t be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static uint64_t be64(const unsigned char *p) {
    return ((uint64_t)be32(p) << 32) | be32(p + 4);
}

/* Buffers for a batch of up to `rows` rows: bitmaps zeroed, offsets starting at 0. */
static int start_batch(Reader *r, size_t rows) {
    for (int i = 0; i < r->ncols; i++) {
        Col *c = &r->cols[i];
        size_t bits = (rows + 7) / 8;
        c->valid.p = calloc(bits ? bits : 1, 1);
        c->valid.cap = bits;
        if (c->valid.p == NULL)
            return -1;
        if (c->kind == K_BOOL) {
            c->values.p = calloc(bits ? bits : 1, 1);
            c->values.cap = bits;
        } else if (WIDTH[c->kind] > 0) {
            c->values.p = malloc(rows * (size_t)WIDTH[c->kind] + 1);
            c->values.cap = rows * (size_t)WIDTH[c->kind];
        } else {
            c->values.p = calloc(rows + 1, 4);
            c->values.cap = (rows + 1) * 4;
        }
        if (c->values.p == NULL)
            return -1;
    }
    return 0;
}

/* A binary numeric as text, as ADBC writes it: nan, inf, -inf, else as PostgreSQL's
 * numeric_out, [-]digits[.dscale digits]. Appends to b; -1 when out of memory,
 * -2 when the value is malformed. */
static int numeric_text(Buf *b, const unsigned char *p, int32_t len) {
    if (len < 8)
        return -2;
    int ndigits = (int16_t)be16(p), weight = (int16_t)be16(p + 2);
    uint16_t sign = be16(p + 4);
    int dscale = (int16_t)be16(p + 6);
    if (ndigits < 0 || dscale < 0 || len != 8 + 2 * ndigits)
        return -2;
    const char *special = sign == 0xC000 ? "nan" : sign == 0xD000 ? "inf"
                          : sign == 0xF000 ? "-inf" : NULL; /* as ADBC writes them */
    if (special != NULL) {
        size_t n = strlen(special);
        if (reserve(b, n) < 0)
            return -1;
        memcpy(b->p + b->len, special, n);
        b->len += n;
        return 0;
    }
    if (sign != 0 && sign != 0x4000)
        return -2;
    /* at most: sign, 4 digits per integer group, point, dscale digits + a group */
    size_t most = 2 + 4 * (size_t)(weight >= 0 ? weight + 1 : 1) + (size_t)dscale + 4;
    if (reserve(b, most) < 0)
        return -1;
    char *out = b->p + b->len, *start = out;
    if (sign == 0x4000)
        *out++ = '-';
    int d;
    if (weight < 0) {
        d = weight + 1;
        *out++ = '0';
    } else {
        for (d = 0; d <= weight; d++) {
            int dig = d < ndigits ? be16(p + 8 + 2 * d) : 0;
            if (dig > 9999)
                return -2;
            if (d == 0) {
                out += sprintf(out, "%d", dig);
            } else {
                out[0] = (char)('0' + dig / 1000);
                out[1] = (char)('0' + dig / 100 % 10);
                out[2] = (char)('0' + dig / 10 % 10);
                out[3] = (char)('0' + dig % 10);
                out += 4;
            }
        }
    }
    if (dscale > 0) {
        *out++ = '.';
        char *end = out + dscale;
        for (int i = 0; i < dscale; d++, i += 4) {
            int dig = (d >= 0 && d < ndigits) ? be16(p + 8 + 2 * d) : 0;
            if (dig > 9999)
                return -2;
            out[0] = (char)('0' + dig / 1000);
            out[1] = (char)('0' + dig / 100 % 10);
            out[2] = (char)('0' + dig / 10 % 10);
            out[3] = (char)('0' + dig % 10);
            out += 4;
        }
        out = end;
    }
    b->len += (size_t)(out - start);
    return 0;
}

enum { P_OK = 0, P_BAD = -1, P_NOMEM = -2, P_UNREPR = -3 };

/* Parse one CopyData message (whole rows; the first one starts with the header) into
 * the batch at row *rows. `why` receives the reason of a P_BAD / P_UNREPR. */
static int parse(Reader *r, const unsigned char *p, size_t len, size_t *rows, size_t max_rows,
                 char *why, size_t whylen) {
    const unsigned char *end = p + len;
    if (!r->header) {
        static const char sig[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', '\377', '\r', '\n', 0};
        if (len < 19 || memcmp(p, sig, 11) != 0) {
            snprintf(why, whylen, "not a binary COPY header");
            return P_BAD;
        }
        uint32_t flags = be32(p + 11), ext = be32(p + 15);
        if (flags & (1u << 16) || (size_t)(end - p - 19) < ext) {
            snprintf(why, whylen, "unsupported binary COPY header");
            return P_BAD;
        }
        p += 19 + ext;
        r->header = 1;
    }
    while (p < end) {
        if (end - p < 2)
            goto truncated;
        int16_t nf = (int16_t)be16(p);
        p += 2;
        if (nf == -1) {
            r->trailer = 1; /* the COPY's end (CopyDone) follows */
            if (p != end) {
                snprintf(why, whylen, "data after the trailer");
                return P_BAD;
            }
            return P_OK;
        }
        if (nf != r->ncols) {
            snprintf(why, whylen, "a row of %d fields, %d expected", nf, r->ncols);
            return P_BAD;
        }
        if (*rows >= max_rows) {
            snprintf(why, whylen, "more rows in one message than the batch holds");
            return P_BAD;
        }
        size_t row = *rows;
        for (int i = 0; i < r->ncols; i++) {
            Col *c = &r->cols[i];
            if (end - p < 4)
                goto truncated;
            int32_t flen = (int32_t)be32(p);
            p += 4;
            int w = WIDTH[c->kind];
            if (flen < 0) {
                c->nulls++;
                if (w > 0 && c->kind != K_BOOL)
                    memset(c->values.p + row * (size_t)w, 0, (size_t)w);
                else if (w < 0) {
                    int32_t *off = (int32_t *)c->values.p;
                    off[row + 1] = off[row];
                }
                continue;
            }
            if ((size_t)(end - p) < (size_t)flen)
                goto truncated;
            c->valid.p[row >> 3] |= (char)(1u << (row & 7));
            if (w > 0 && flen != w) {
                snprintf(why, whylen, "a field of %d bytes, %d expected", flen, w);
                return P_BAD;
            }
            char *v = c->values.p;
            switch (c->kind) {
            case K_INT2: {
                uint16_t x = be16(p);
                memcpy(v + row * 2, &x, 2);
                break;
            }
            case K_INT4:
            case K_FLOAT4: {
                uint32_t x = be32(p);
                memcpy(v + row * 4, &x, 4);
                break;
            }
            case K_INT8:
            case K_FLOAT8: {
                uint64_t x = be64(p);
                memcpy(v + row * 8, &x, 8);
                break;
            }
            case K_BOOL:
                if (*p)
                    v[row >> 3] |= (char)(1u << (row & 7));
                break;
            case K_DATE: {
                int32_t d = (int32_t)be32(p);
                if (d == INT32_MAX || d == INT32_MIN) {
                    snprintf(why, whylen, "the date %sinfinity has no Arrow value",
                             d == INT32_MIN ? "-" : "");
                    return P_UNREPR;
                }
                d += PG_EPOCH_DAYS; /* finite dates end before 5874898 AD: no overflow */
                memcpy(v + row * 4, &d, 4);
                break;
            }
            case K_TIMESTAMP: {
                int64_t t = (int64_t)be64(p), u;
                if (t == INT64_MAX || t == INT64_MIN) {
                    snprintf(why, whylen, "the timestamp %sinfinity has no Arrow value",
                             t == INT64_MIN ? "-" : "");
                    return P_UNREPR;
                }
                if (__builtin_add_overflow(t, PG_EPOCH_US, &u)) {
                    snprintf(why, whylen, "a timestamp past the year 294246 has no Arrow value");
                    return P_UNREPR;
                }
                memcpy(v + row * 8, &u, 8);
                break;
            }
            case K_NUMERIC: {
                int32_t *off = (int32_t *)v;
                int r = numeric_text(&c->data, p, flen);
                if (r == -1)
                    return P_NOMEM;
                if (r < 0 || c->data.len > (size_t)INT32_MAX) {
                    snprintf(why, whylen, r < 0 ? "a malformed numeric" : "more than 2 GB of values in one batch");
                    return r < 0 ? P_BAD : P_UNREPR;
                }
                off[row + 1] = (int32_t)c->data.len;
                break;
            }
            default: { /* K_TEXT, K_BYTES */
                int32_t *off = (int32_t *)v;
                if ((size_t)flen > (size_t)INT32_MAX - c->data.len) {
                    snprintf(why, whylen, "more than 2 GB of values in one batch");
                    return P_UNREPR;
                }
                if (reserve(&c->data, (size_t)flen) < 0)
                    return P_NOMEM;
                memcpy(c->data.p + c->data.len, p, (size_t)flen);
                c->data.len += (size_t)flen;
                off[row + 1] = (int32_t)c->data.len;
            }
            }
            p += flen;
        }
        (*rows)++;
    }
    return P_OK;
truncated:
    snprintf(why, whylen, "a truncated row");
    return P_BAD;
}

/* The batch's buffers as [(nulls, validity, values, data), ...]; the reader's buffers
 * pass to the Memory objects (the next batch allocates new ones). */
static PyObject *take_batch(Reader *r, size_t rows) {
    PyObject *out = PyList_New(r->ncols);
    if (out == NULL)
        return NULL;
    for (int i = 0; i < r->ncols; i++) {
        Col *c = &r->cols[i];
        int w = WIDTH[c->kind];
        size_t bits = (rows + 7) / 8;
        size_t vlen = c->kind == K_BOOL ? bits : w > 0 ? rows * (size_t)w : (rows + 1) * 4;
        PyObject *valid, *values, *data;
        if (c->nulls) {
            valid = memory_of(c->valid.p, bits);
        } else {
            free(c->valid.p);
            valid = Py_NewRef(Py_None);
        }
        c->valid.p = NULL;
        values = memory_of(c->values.p, vlen);
        c->values.p = NULL;
        if (w < 0) {
            data = memory_of(c->data.p, c->data.len);
            c->data.p = NULL;
        } else
            data = Py_NewRef(Py_None);
        PyObject *item = NULL;
        if (valid && values && data)
            item = Py_BuildValue("(LOOO)", (long long)c->nulls, valid, values, data);
        Py_XDECREF(valid);
        Py_XDECREF(values);
        Py_XDECREF(data);
        if (item == NULL) {
            Py_DECREF(out);
            free_cols(r);
            return NULL;
        }
        PyList_SET_ITEM(out, i, item);
    }
    free_cols(r);
    return out;
}

/* read(max_rows, max_bytes, timeout) -> (state, rows, columns): up to max_rows rows (fewer
 * when max_bytes of values or the timeout come first); state 0 more may come, 1 the COPY
 * ended, 2 libpq reported an error (no rows then: the caller reads the result). */
static PyObject *reader_read(Reader *r, PyObject *args) {
    Py_ssize_t max_rows, max_bytes;
    double timeout;
    if (!PyArg_ParseTuple(args, "nnd", &max_rows, &max_bytes, &timeout))
        return NULL;
    if (max_rows < 1 || max_bytes < 1) {
        PyErr_SetString(PyExc_ValueError, "max_rows and max_bytes must be positive");
        return NULL;
    }
    PGconn *c = conn_of(r->ptr);
    if (c == NULL)
        return NULL;
    if (r->ended)
        return Py_BuildValue("(inO)", 1, (Py_ssize_t)0, Py_None);
    int st = LATER, res = P_OK;
    size_t rows = 0;
    char why[160] = "";
    free_cols(r);
    if (start_batch(r, (size_t)max_rows) < 0) {
        free_cols(r);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS;
    Drain d;
    drain_begin(&d, c);
    double deadline = now() + timeout;
    while (rows < (size_t)max_rows) {
        size_t bytes = 0;
        for (int i = 0; i < r->ncols; i++)
            bytes += r->cols[i].data.len;
        if (bytes >= (size_t)max_bytes)
            break;
        char *msg = NULL;
        int len = 0;
        st = next_msg(&d, &msg, &len, deadline);
        if (st != MSG)
            break;
        res = parse(r, (const unsigned char *)msg, (size_t)len, &rows, (size_t)max_rows, why,
                    sizeof why);
        f_freemem(msg);
        if (res != P_OK)
            break;
    }
    drain_end(&d);
    Py_END_ALLOW_THREADS;
    if (res < 0) {
        free_cols(r);
        if (res == P_NOMEM)
            return PyErr_NoMemory();
        PyErr_SetString(res == P_UNREPR ? Unrepresentable : PyExc_ValueError, why);
        return NULL;
    }
    if (st == END)
        r->ended = 1;
    if (st == FAILED) {
        free_cols(r);
        return Py_BuildValue("(inO)", 2, (Py_ssize_t)0, Py_None);
    }
    PyObject *cols = take_batch(r, rows);
    if (cols == NULL)
        return NULL;
    return Py_BuildValue("(inN)", r->ended ? 1 : 0, (Py_ssize_t)rows, cols);
}

static PyMethodDef reader_methods[] = {
    {"read", (PyCFunction)reader_read, METH_VARARGS,
     "read(max_rows, max_bytes, timeout) -> (state, rows, [(nulls, validity, values, data)])"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "exportd.fastpaths._pgbinary.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(ptr, kinds): a binary COPY TO STDOUT in progress on a PGconn, as Arrow "
              "buffers.",
    .tp_methods = reader_methods,
    .tp_init = (initproc)reader_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef methods[] = {
    {"bind", bind_libpq, METH_O,
     "bind(path) -> PQlibVersion() of the libpq already loaded from path, or None"},
    {"copy_chunk", copy_chunk, METH_VARARGS,
     "copy_chunk(ptr, want, timeout[, kinds, delim, quote]) -> (state, bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mod = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_pgbinary",
    .m_doc = "PostgreSQL COPY TO STDOUT drained in C (see pgbinary.c)",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__pgbinary(void) {
    if (PyType_Ready(&MemoryType) < 0 || PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&mod);
    if (m == NULL)
        return NULL;
    Unrepresentable = PyErr_NewException("exportd.fastpaths._pgbinary.Unrepresentable",
                                         PyExc_ValueError, NULL);
    if (Unrepresentable == NULL || PyModule_AddObjectRef(m, "Unrepresentable", Unrepresentable) < 0 ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
