/* The exact cross-entropy kernel behind xentaudit.reference's "float64" method.

   Per row of logits x (float32 or float64) and labels (integer classes, or dense float64
   weights y >= 0), with a the first argmax, m = x_a and d_j + e_j = x_j - m exactly (TwoSum):

       q_j  = exp(d_j) (1 + e_j)                  (j != a; q_a = 1)
       t    = sum_{j != a} q_j                     (compensated: 32 TwoSum lanes)
       L    = sum_j y_j (m - x_j) + sum(y) log1p(t)
       g_j  = q_j sum(y) / (1 + t) - y_j,   g_a = (sum_{j != a} y_j - y_a t) / (1 + t)

   the formula of reference/softmax.py, in a few passes over each row while it stays in cache: the
   extremes and argmax, the exponentials, the sums, the gradient and its largest magnitude.
   On float32 rows whose differences x_j - m are provably exact, e_j = 0 and TwoSum is skipped.
   exp is computed here rather than by libm so that the loop vectorises: Cody-Waite reduction
   d = k ln2 + r, |r| <= ln2/2, and the degree-13 Taylor polynomial of exp(r) (its truncation
   error is below 2^-57), evaluated with fused multiply-adds and scaled by 2^k exactly; the few
   terms below exp(-708), whose results may be subnormal, are redone with 2^k applied in two
   exact halves so that they are rounded once. Measured against mpmath over [-746, 0] (about 10
   million points, dense and at the reduction's edges): within 0.77 ulp, 0.66 where the result
   is normal (tests/test_kernel.py pins the figure).

   The row loops are compiled once per x86-64 instruction-set level (x86-64-v4: AVX-512,
   x86-64-v3: AVX2 and FMA, x86-64: SSE2 with libm's fma), and the best level this CPU supports
   is chosen when the module loads, unless XENTAUDIT_KERNEL_ISA names another (isa() says which
   runs). Every operation is an IEEE operation or an explicit fma, compiled with
   -ffp-contract=off, and the sums keep their order, so every level gives the same bits. The GIL
   is released while a block of rows is computed, so Python threads can share the rows of a
   batch. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* GCC 12+ on x86-64 compiles the row loops once per instruction-set level (KERNELS_DEF below);
   other compilers and machines get the one baseline clone. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && __GNUC__ >= 12
#define ISA_CLONES 1
#endif
/* Helpers are inlined into each clone, so that they too use its instruction set. */
#define INLINE inline __attribute__((always_inline))

static const double INV_LN2 = 1.4426950408889634;
static const double LN2_HI = 6.93147180369123816490e-01; /* 0x3fe62e42fee00000: k*LN2_HI exact */
static const double LN2_LO = 1.90821492927058770002e-10;
static const double SHIFTER = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to integer */
static const double UNDERFLOW = -746.0; /* exp(d) < 2^-1075 rounds to 0 below this */

/* exp(dc) = y 2^k with y in [0.7, 1.42], for -746 <= dc <= 0. */
static INLINE double exp_core(double dc, int64_t *k) {
    double kd = fma(dc, INV_LN2, SHIFTER);
    int64_t ki;
    memcpy(&ki, &kd, sizeof ki);
    *k = ki - (int64_t)0x4338000000000000; /* the integer round(dc / ln2), in [-1077, 0] */
    kd -= SHIFTER;
    double rh = fma(-kd, LN2_HI, dc);
    double r = fma(-kd, LN2_LO, rh);
    double r_lo = fma(-kd, LN2_LO, rh - r); /* r + r_lo = dc - k ln2 to ~2^-100 */
    double p = 1.0 / 6227020800.0;           /* 1/13! */
    p = fma(p, r, 1.0 / 479001600.0);
    p = fma(p, r, 1.0 / 39916800.0);
    p = fma(p, r, 1.0 / 3628800.0);
    p = fma(p, r, 1.0 / 362880.0);
    p = fma(p, r, 1.0 / 40320.0);
    p = fma(p, r, 1.0 / 5040.0);
    p = fma(p, r, 1.0 / 720.0);
    p = fma(p, r, 1.0 / 120.0);
    p = fma(p, r, 1.0 / 24.0);
    p = fma(p, r, 1.0 / 6.0);
    p = fma(p, r, 0.5);
    /* exp(r + r_lo) = (1 + r) + r^2 p + r_lo exp(r): 1 + r split exactly (Fast2Sum, |r| < 1)
       so that the only rounding of size 1/2 ulp is the last addition. */
    double s = 1.0 + r;
    double s_lo = r - (s - 1.0);
    return s + fma(r_lo, s, fma(p * r, r, s_lo));
}

static INLINE double pow2(int64_t k) { /* 2^k for -1022 <= k <= 1023 */
    uint64_t bits = (uint64_t)(k + 1023) << 52;
    double v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* exp(d) for NORMAL_MIN <= d <= 0, where the result is normal: one exact scaling. Smaller d
   (the caller redoes those with exp_full) give a finite placeholder. */
static const double NORMAL_MIN = -708.0;
static INLINE double exp_normal(double d) {
    int64_t k;
    double y = exp_core(d < NORMAL_MIN ? NORMAL_MIN : d, &k);
    return y * pow2(k);
}

/* exp(d) for any d <= 0: below NORMAL_MIN the result may be subnormal, so 2^k is applied in two
   halves (y 2^k1 exact, then 2^k2 rounds once); below UNDERFLOW (-inf included) it is 0. */
static INLINE double exp_full(double d) {
    if (!(d >= UNDERFLOW)) return 0.0;
    int64_t k;
    double y = exp_core(d, &k);
    int64_t k1 = k / 2;
    return (y * pow2(k1)) * pow2(k - k1);
}

/* s + c += v, an error-free accumulation (TwoSum) */
static INLINE void add2(double *s, double *c, double v) {
    double t = *s + v;
    double bp = t - *s;
    *c += (*s - (t - bp)) + (v - bp);
    *s = t;
}

typedef double v8d __attribute__((vector_size(64)));

/* v8 accumulation s + c += w, error-free per lane (TwoSum) */
static INLINE void vadd2(v8d *s, v8d *c, v8d w) {
    v8d t = *s + w;
    v8d bp = t - *s;
    *c += (*s - (t - bp)) + (w - bp);
    *s = t;
}

/* Compensated sum of v[0..n): TwoSum in 4 x 8 independent lanes (so that the additions
   pipeline), the lanes then summed the same way. */
static INLINE double csum(const double *v, Py_ssize_t n) {
    v8d s[4] = {{0}}, c[4] = {{0}};
    Py_ssize_t j = 0;
    for (; j + 32 <= n; j += 32)
        for (int u = 0; u < 4; u++) {
            v8d w;
            memcpy(&w, v + j + 8 * u, sizeof w);
            vadd2(&s[u], &c[u], w);
        }
    double hi = 0.0, lo = 0.0;
    for (; j < n; j++) add2(&hi, &lo, v[j]);
    for (int u = 0; u < 4; u++)
        for (int l = 0; l < 8; l++) {
            add2(&hi, &lo, s[u][l]);
            lo += c[u][l];
        }
    return hi + lo;
}

/* |v| as its bit pattern: for non-negative doubles the integer order is the numeric order, and
   NaN patterns lie above +inf, so an integer maximum of these is NaN if any value is NaN (as
   numpy's max) and vectorises without any floating-point reassociation. Signed, because the
   sign bit is clear and AVX2 compares signed 64-bit integers only. */
static INLINE int64_t abs_bits(double v) {
    int64_t b;
    memcpy(&b, &v, sizeof b);
    return b & 0x7fffffffffffffffLL;
}

static INLINE double from_bits(int64_t b) {
    double v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* max_j |G_j - g_j| and max_j |G_j| (NaN if any G_j is NaN), G of type T. */
#define GRAD_ERROR_DEF(NAME, T, TARGET)                                         \
    TARGET static void NAME(const T *G, const double *g, Py_ssize_t n, double *err, \
                            double *size) {                                     \
        int64_t e = 0, s = 0;                                                   \
        for (Py_ssize_t j = 0; j < n; j++) {                                    \
            int64_t d = abs_bits((double)G[j] - g[j]), a = abs_bits((double)G[j]); \
            e = d > e ? d : e;                                                  \
            s = a > s ? a : s;                                                  \
        }                                                                       \
        *err = from_bits(e);                                                    \
        *size = from_bits(s);                                                   \
    }

/* Largest and smallest of x[0..n) (no NaN), and the first index of the largest (numpy's
   argmax), W lanes of BYTES bytes at a time with the index of each lane's maximum alongside (in
   integers IT of T's size). BYTES is the clone's vector width: vectors wider than the
   instruction set's are split into scalar code. Every width gives the same results. */
#define EXTREMES_DEF(NAME, T, IT, BYTES)                                        \
    static INLINE Py_ssize_t NAME(const T *x, Py_ssize_t n, T *top, T *low) {   \
        typedef T VT __attribute__((vector_size(BYTES)));                       \
        typedef IT VI __attribute__((vector_size(BYTES)));                      \
        enum { W = BYTES / sizeof(T) };                                         \
        VT hi, lo;                                                              \
        VI at = {0}, lane;                                                      \
        for (int l = 0; l < W; l++) hi[l] = lo[l] = x[0], lane[l] = l;          \
        Py_ssize_t j = 0;                                                       \
        for (; j + W <= n && j + W < (Py_ssize_t)1 << 31; j += W) {             \
            VT v;                                                               \
            memcpy(&v, x + j, sizeof v);                                        \
            VI up = v > hi, down = v < lo;                                      \
            hi = (VT)(((VI)v & up) | ((VI)hi & ~up));                           \
            lo = (VT)(((VI)v & down) | ((VI)lo & ~down));                       \
            at = ((lane + (VI){0} + (int)j) & up) | (at & ~up);                  \
        }                                                                       \
        T mt = hi[0], mn = lo[0];                                               \
        Py_ssize_t a = at[0];                                                   \
        for (int l = 1; l < W; l++) {                                           \
            if (hi[l] > mt || (hi[l] == mt && at[l] < a)) mt = hi[l], a = at[l]; \
            mn = lo[l] < mn ? lo[l] : mn;                                       \
        }                                                                       \
        for (; j < n; j++) {                                                    \
            if (x[j] > mt) mt = x[j], a = j;                                    \
            mn = x[j] < mn ? x[j] : mn;                                         \
        }                                                                       \
        *top = mt;                                                              \
        *low = mn;                                                              \
        return a;                                                               \
    }

/* Whether every x_j - m is exact in float64 for this float32 row (mt its maximum, mn its
   minimum), so that TwoSum can be skipped. Two float32 numbers whose magnitudes are within a
   factor 2^27 of each other are integer multiples of 2^-24 times the smaller one, and their
   difference is below 2^28 times it: 52 bits, exact in float64. Zeros are exact too. */
static INLINE int float32_differences_exact(const float *x, Py_ssize_t n, float mt, float mn) {
    double m = fabs((double)mt), hi = fabs((double)mn) > m ? fabs((double)mn) : m;
    if (m == 0.0) return 1;
    if (!(hi <= 0x1p27 * m)) return 0; /* -inf, or a logit far larger than the maximum */
    uint32_t low = 0xffffffffu;        /* smallest nonzero |x_j|, as bits, minus one */
    for (Py_ssize_t j = 0; j < n; j++) {
        uint32_t b;
        memcpy(&b, x + j, sizeof b);
        b = (b & 0x7fffffffu) - 1u; /* zero wraps to the largest value */
        low = b < low ? b : low;
    }
    uint32_t bits = low + 1u;
    float smallest;
    memcpy(&smallest, &bits, sizeof smallest);
    return (double)smallest >= 0x1p-27 * m;
}

static INLINE int float64_differences_exact(const double *x, Py_ssize_t n, double mt, double mn) {
    (void)x, (void)n, (void)mt, (void)mn;
    return 0; /* float64 logits always take TwoSum */
}

/* The error e of d = fl(x - m): d + e == x - m exactly (Knuth's TwoSum). */
static INLINE double difference_error(double x, double m, double d) {
    double bb = d - x;
    return (x - (d - bb)) + (-m - bb);
}

/* q_j = exp(x_j - m)(1 + e_j) into g, for the x_j - m >= NORMAL_MIN; TWOSUM 0 when e_j = 0. */
#define EXP_PASS(T, TWOSUM)                                                     \
    for (Py_ssize_t j = 0; j < n; j++) {                                        \
        double xj = (double)x[j];                                               \
        double d = xj - m;                                                      \
        double p = exp_normal(d);                                               \
        if (TWOSUM) p = fma(p, difference_error(xj, m, d), p);                  \
        g[j] = p;                                                               \
    }

/* Compensated sum of y_j * (m - x_j) over the j with y_j > 0 (0 * -inf contributes 0). */
#define GAPS_DEF(NAME, T)                                                       \
    static INLINE double NAME(const T *x, const double *y, Py_ssize_t n, double m) { \
        double hi = 0.0, lo = 0.0;                                              \
        for (Py_ssize_t j = 0; j < n; j++)                                      \
            if (y[j] > 0) add2(&hi, &lo, y[j] * (m - (double)x[j]));            \
        return isinf(hi) ? hi : hi + lo; /* mass on a -inf logit: lo is NaN */  \
    }

GAPS_DEF(gaps_f32, float)
GAPS_DEF(gaps_f64, double)

/* One row: q_j into g (exp pass), then the sums, the loss and the gradient (scale pass). */
#define ROW_DEF(NAME, GAPS, EXTREMES, EXACT, T, TARGET)                         \
    TARGET static void NAME(const T *x, Py_ssize_t n, const double *y, int64_t k, \
                            double *loss, double *g, double *size) {            \
        T mt, mn;                                                               \
        Py_ssize_t a = EXTREMES(x, n, &mt, &mn);                                \
        double m = (double)mt;                                                  \
        if (EXACT(x, n, mt, mn)) {                                              \
            EXP_PASS(T, 0)                                                      \
        } else {                                                                \
            EXP_PASS(T, 1)                                                      \
        }                                                                       \
        if ((double)mn - m < NORMAL_MIN) /* subnormal, zero or -inf terms */    \
            for (Py_ssize_t j = 0; j < n; j++) {                                \
                double xj = (double)x[j];                                       \
                double d = xj - m;                                              \
                if (d < NORMAL_MIN) {                                           \
                    double p = exp_full(d);                                     \
                    g[j] = p == 0.0 ? 0.0 : fma(p, difference_error(xj, m, d), p); \
                }                                                               \
            }                                                                   \
        g[a] = 0.0;                                                             \
        double t = csum(g, n);                                                  \
        double denom = 1.0 + t;                                                 \
        double total, others, y_a, gaps;                                        \
        if (y == NULL) {                                                        \
            total = 1.0;                                                        \
            others = k == a ? 0.0 : 1.0;                                        \
            y_a = k == a ? 1.0 : 0.0;                                           \
            gaps = m - (double)x[k];                                            \
        } else {                                                                \
            total = csum(y, n);                                                 \
            y_a = y[a];                                                         \
            others = csum(y, a) + csum(y + a + 1, n - a - 1);                   \
            gaps = GAPS(x, y, n, m);                                            \
        }                                                                       \
        *loss = gaps + total * log1p(t);                                        \
        double scale = total / denom;                                           \
        int64_t big = 0; /* max_j |g_j|, as bits */                             \
        if (y == NULL) { /* g_a = 0 here; g_k is set after the loop */          \
            double q_k = g[k];                                                  \
            g[k] = 0.0;                                                         \
            for (Py_ssize_t j = 0; j < n; j++) {                                \
                g[j] *= scale;                                                  \
                int64_t b = abs_bits(g[j]);                                     \
                big = b > big ? b : big;                                        \
            }                                                                   \
            g[k] = fma(q_k, scale, -1.0);                                       \
            g[a] = fma(-y_a, t, others) / denom;                                \
            big = abs_bits(g[k]) > big ? abs_bits(g[k]) : big;                  \
            big = abs_bits(g[a]) > big ? abs_bits(g[a]) : big;                  \
        } else {                                                                \
            for (Py_ssize_t j = 0; j < n; j++) g[j] = fma(g[j], scale, -y[j]);  \
            g[a] = fma(-y_a, t, others) / denom;                                \
            for (Py_ssize_t j = 0; j < n; j++) {                                \
                int64_t b = abs_bits(g[j]);                                     \
                big = b > big ? b : big;                                        \
            }                                                                   \
        }                                                                       \
        *size = from_bits(big);                                                 \
    }

/* exp of n values d <= 0, as the row loop chooses between the two (for the tests). */
#define EXP_ARRAY_DEF(NAME, TARGET)                                             \
    TARGET static void NAME(const double *d, double *out, Py_ssize_t n) {       \
        for (Py_ssize_t j = 0; j < n; j++)                                      \
            out[j] = d[j] < NORMAL_MIN ? exp_full(d[j]) : exp_normal(d[j]);     \
    }

/* Every entry point compiled for one instruction set, named with SUFFIX, BYTES its vector width. */
#define KERNELS_DEF(SUFFIX, TARGET, BYTES)                                                 \
    EXTREMES_DEF(extremes_f32_##SUFFIX, float, int32_t, BYTES)                             \
    EXTREMES_DEF(extremes_f64_##SUFFIX, double, int64_t, BYTES)                            \
    ROW_DEF(row_f32_##SUFFIX, gaps_f32, extremes_f32_##SUFFIX, float32_differences_exact,  \
            float, TARGET)                                                                 \
    ROW_DEF(row_f64_##SUFFIX, gaps_f64, extremes_f64_##SUFFIX, float64_differences_exact,  \
            double, TARGET)                                                                \
    GRAD_ERROR_DEF(grad_error_f32_##SUFFIX, float, TARGET)                                 \
    GRAD_ERROR_DEF(grad_error_f64_##SUFFIX, double, TARGET)                                \
    EXP_ARRAY_DEF(exp_array_##SUFFIX, TARGET)

typedef struct {
    const char *name; /* the value of XENTAUDIT_KERNEL_ISA that selects this clone */
    int (*supported)(void);
    void (*row_f32)(const float *, Py_ssize_t, const double *, int64_t, double *, double *,
                    double *);
    void (*row_f64)(const double *, Py_ssize_t, const double *, int64_t, double *, double *,
                    double *);
    void (*grad_error_f32)(const float *, const double *, Py_ssize_t, double *, double *);
    void (*grad_error_f64)(const double *, const double *, Py_ssize_t, double *, double *);
    void (*exp_array)(const double *, double *, Py_ssize_t);
} Isa;

#define ISA_ENTRY(NAME, SUPPORTED, SUFFIX)                                                 \
    {NAME, SUPPORTED, row_f32_##SUFFIX, row_f64_##SUFFIX, grad_error_f32_##SUFFIX,          \
     grad_error_f64_##SUFFIX, exp_array_##SUFFIX}

static int always(void) { return 1; }

KERNELS_DEF(base, , 16)
#ifdef ISA_CLONES
KERNELS_DEF(v4, __attribute__((target("arch=x86-64-v4"))), 64)
KERNELS_DEF(v3, __attribute__((target("arch=x86-64-v3"))), 32)
static int has_v4(void) { return __builtin_cpu_supports("x86-64-v4"); }
static int has_v3(void) { return __builtin_cpu_supports("x86-64-v3"); }
#endif

/* The clones, best first: by default the first one this CPU supports runs. */
static const Isa ISAS[] = {
#ifdef ISA_CLONES
    ISA_ENTRY("x86-64-v4", has_v4, v4),
    ISA_ENTRY("x86-64-v3", has_v3, v3),
#endif
#ifdef __x86_64__
    ISA_ENTRY("x86-64", always, base),
#else
    ISA_ENTRY("generic", always, base),
#endif
};
enum { N_ISAS = sizeof ISAS / sizeof ISAS[0] };
static const Isa *active; /* chosen once, when the module loads */

/* Borrow a C-contiguous buffer of `items` items in struct format `format` ("f", "d" or "q"). */
static int get(PyObject *obj, Py_buffer *b, int writable, const char *format, Py_ssize_t items,
               const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, b, flags) < 0) return 0;
    const char *f = b->format ? b->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    int same = strcmp(f, format) == 0 || (format[0] == 'q' && strcmp(f, "l") == 0);
    if (same && b->len == items * (Py_ssize_t)b->itemsize) return 1;
    PyErr_Format(PyExc_ValueError, "_kernel: %s must hold %zd items of format '%s'", what, items,
                 format);
    PyBuffer_Release(b);
    return 0;
}

/* Whether obj is a buffer of struct format `code`. */
static int is_format(PyObject *obj, char code) {
    Py_buffer b;
    if (PyObject_GetBuffer(obj, &b, PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        return 0;
    }
    int yes = b.format != NULL && strchr(b.format, code) != NULL;
    PyBuffer_Release(&b);
    return yes;
}

/* Borrow `count` buffers as described; on failure release those already borrowed. */
typedef struct {
    PyObject *obj;
    int writable;
    const char *format;
    Py_ssize_t items;
    const char *what;
} Want;

static int get_all(const Want *want, Py_buffer *out, int count) {
    for (int i = 0; i < count; i++)
        if (!get(want[i].obj, &out[i], want[i].writable, want[i].format, want[i].items,
                 want[i].what)) {
            while (i--) PyBuffer_Release(&out[i]);
            return 0;
        }
    return 1;
}

static void release_all(Py_buffer *b, int count) {
    for (int i = 0; i < count; i++) PyBuffer_Release(&b[i]);
}

static PyObject *cross_entropy(PyObject *self, PyObject *args) {
    PyObject *xo, *yo, *lo, *go, *so;
    Py_ssize_t n, c;
    if (!PyArg_ParseTuple(args, "nnOOOOO", &n, &c, &xo, &yo, &lo, &go, &so)) return NULL;
    if (c < 1 || n < 0) return PyErr_Format(PyExc_ValueError, "_kernel: bad shape");
    int f32 = is_format(xo, 'f'), dense = is_format(yo, 'd');
    Want want[] = {
        {xo, 0, f32 ? "f" : "d", n * c, "logits"},
        {yo, 0, dense ? "d" : "q", dense ? n * c : n, "labels"},
        {lo, 1, "d", n, "loss"},
        {go, 1, "d", n * c, "grad"},
        {so, 1, "d", n, "grad_size"},
    };
    Py_buffer b[5];
    if (!get_all(want, b, 5)) return NULL;
    const int64_t *k = b[1].buf;
    for (Py_ssize_t i = 0; !dense && i < n; i++)
        if (k[i] < 0 || k[i] >= c) {
            release_all(b, 5);
            return PyErr_Format(PyExc_ValueError, "_kernel: class out of range");
        }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *y = dense ? (const double *)b[1].buf + i * c : NULL;
        int64_t ki = dense ? 0 : k[i];
        double *l = (double *)b[2].buf + i, *g = (double *)b[3].buf + i * c;
        double *size = (double *)b[4].buf + i;
        if (f32)
            active->row_f32((const float *)b[0].buf + i * c, c, y, ki, l, g, size);
        else
            active->row_f64((const double *)b[0].buf + i * c, c, y, ki, l, g, size);
    }
    Py_END_ALLOW_THREADS
    release_all(b, 5);
    Py_RETURN_NONE;
}

static PyObject *grad_error(PyObject *self, PyObject *args) {
    PyObject *go, *eo, *erro, *so;
    Py_ssize_t n, c;
    if (!PyArg_ParseTuple(args, "nnOOOO", &n, &c, &go, &eo, &erro, &so)) return NULL;
    if (c < 1 || n < 0) return PyErr_Format(PyExc_ValueError, "_kernel: bad shape");
    int f32 = is_format(go, 'f');
    Want want[] = {
        {go, 0, f32 ? "f" : "d", n * c, "grad"},
        {eo, 0, "d", n * c, "exact"},
        {erro, 1, "d", n, "err"},
        {so, 1, "d", n, "size"},
    };
    Py_buffer b[4];
    if (!get_all(want, b, 4)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *exact = (const double *)b[1].buf + i * c;
        double *err = (double *)b[2].buf + i, *size = (double *)b[3].buf + i;
        if (f32)
            active->grad_error_f32((const float *)b[0].buf + i * c, exact, c, err, size);
        else
            active->grad_error_f64((const double *)b[0].buf + i * c, exact, c, err, size);
    }
    Py_END_ALLOW_THREADS
    release_all(b, 4);
    Py_RETURN_NONE;
}

static PyObject *exp_array(PyObject *self, PyObject *args) {
    PyObject *dobj, *oobj;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "nOO", &n, &dobj, &oobj)) return NULL;
    Want want[] = {{dobj, 0, "d", n, "d"}, {oobj, 1, "d", n, "out"}};
    Py_buffer b[2];
    if (!get_all(want, b, 2)) return NULL;
    active->exp_array(b[0].buf, b[1].buf, n);
    release_all(b, 2);
    Py_RETURN_NONE;
}

static PyObject *isa(PyObject *self, PyObject *args) {
    return PyUnicode_FromString(active->name);
}

static PyObject *supported_isas(PyObject *self, PyObject *args) {
    PyObject *names = PyList_New(0);
    for (int i = 0; names != NULL && i < N_ISAS; i++) {
        if (!ISAS[i].supported()) continue;
        PyObject *name = PyUnicode_FromString(ISAS[i].name);
        if (name == NULL || PyList_Append(names, name) < 0) Py_CLEAR(names);
        Py_XDECREF(name);
    }
    return names;
}

/* The clone named by XENTAUDIT_KERNEL_ISA, or the best one this CPU supports if it is unset or
   empty; NULL with ValueError set for a name that is unknown or that this CPU cannot run. */
static const Isa *choose_isa(void) {
#ifdef ISA_CLONES
    __builtin_cpu_init();
#endif
    const char *want = getenv("XENTAUDIT_KERNEL_ISA");
    int any = want == NULL || *want == '\0', known = 0;
    char runnable[128] = "";
    for (int i = 0; i < N_ISAS; i++) {
        int named = !any && strcmp(want, ISAS[i].name) == 0;
        known |= named;
        if (!ISAS[i].supported()) continue;
        if (any || named) return &ISAS[i];
        strncat(runnable, *runnable ? ", " : "", sizeof runnable - strlen(runnable) - 1);
        strncat(runnable, ISAS[i].name, sizeof runnable - strlen(runnable) - 1);
    }
    PyErr_Format(PyExc_ValueError, "XENTAUDIT_KERNEL_ISA=%s: %s; choose one of %s, or unset it",
                 want, known ? "this CPU cannot run that clone" : "no such clone", runnable);
    return NULL;
}

static PyMethodDef methods[] = {
    {"cross_entropy", cross_entropy, METH_VARARGS,
     "cross_entropy(n, c, logits, labels, loss, grad, grad_size): exact loss, gradient and\n"
     "max |gradient| of n rows of c logits (float32/float64) against classes or weights"},
    {"grad_error", grad_error, METH_VARARGS,
     "grad_error(n, c, grad, exact, err, size): per row max |grad - exact| and max |grad|\n"
     "(NaN where grad has a NaN); grad float32 or float64, exact float64"},
    {"exp_array", exp_array, METH_VARARGS,
     "exp_array(n, d, out): the kernel's exp of n float64 d <= 0, to test it against mpmath"},
    {"isa", isa, METH_NOARGS,
     "isa(): the instruction-set clone in use, e.g. 'x86-64-v3' (see XENTAUDIT_KERNEL_ISA)"},
    {"supported_isas", supported_isas, METH_NOARGS,
     "supported_isas(): the clones this CPU can run, best first (the first is the default)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) {
    active = choose_isa();
    return active == NULL ? NULL : PyModule_Create(&module);
}
