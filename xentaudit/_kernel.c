/* The exact cross-entropy kernel behind xentaudit.reference's "float64" method.

   Per row of logits x (float32 or float64) and labels (integer classes, or dense float64
   weights y >= 0), with a the first argmax, m = x_a and d_j + e_j = x_j - m exactly (TwoSum):

       q_j  = exp(d_j) (1 + e_j)                  (j != a; q_a = 1)
       t    = sum_{j != a} q_j                     (compensated: 8 TwoSum lanes)
       L    = sum_j y_j (m - x_j) + sum(y) log1p(t)
       g_j  = q_j sum(y) / (1 + t) - y_j,   g_a = (sum_{j != a} y_j - y_a t) / (1 + t)

   the formula of reference/softmax.py, in three passes over each row while it stays in cache:
   the extremes and argmax; the exponentials, each block of them summed while it is in the
   first-level cache; the gradient and its largest magnitude. Dense labels add a pass for their
   sums and one for that magnitude. On float32 rows whose differences x_j - m are provably exact,
   e_j = 0 and TwoSum is skipped.

   exp is computed here rather than by libm so that the loop vectorises: Cody-Waite reduction
   d = k ln2 + r + r_lo, |r| <= ln2/2, exp(r + r_lo) = (1 + r) + r^2 P(r) + r_lo exp(r), with P the
   degree-9 minimax polynomial of EXP_POLY (exp(r) within 3.72e-18 exp(r) for |r| <= 0.3466, below
   the 5.7e-18 of the degree-13 Taylor polynomial it replaces), evaluated with fused
   multiply-adds, 1 + r split exactly, and scaled by 2^k exactly. For a normal result y 2^k:

       |y 2^k - e^d| <= ulp/2 + 2^k (r^2 |dL| + L |d(r^2)| + |dt| + |r_lo| |e^r - 1 - r|
                                     + 3.72e-18 e^r)

   where dL, d(r^2) and dt are the rounding errors of P's low part L, of r^2 and of the sum t of
   the small terms: at most 0.145 ulp all together (where they are largest, y in [0.7, 1): r < 0,
   L < 1/2, r^2 < 1/8, t < 1/16, so 2^-55 + |r| 2^-56, 2^-57 and 2^-58), so 0.645 ulp. In rows with
   terms below exp(-708), whose results may be subnormal, y + y_lo (y_lo: y's rounding error) is
   rounded once to the subnormal grid, where the errors above are at most half as many of its
   ulps: 0.573 ulp. Measured against mpmath over [-746, 0] (130 million points, dense and at the
   reduction's edges): 0.623 ulp for normal results, 0.554 for subnormal ones (the degree-13
   polynomial: 0.66, and 0.77 where it rounded subnormal results twice); tests/test_kernel.py pins
   both figures.

   The row loops are compiled once per x86-64 instruction-set level (x86-64-v4: AVX-512,
   x86-64-v3: AVX2 and FMA, x86-64: SSE2 with libm's fma), and the best level this CPU supports
   is chosen when the module loads, unless XENTAUDIT_KERNEL_ISA names another (isa() says which
   runs). They are written with vectors of the level's width (GCC's vector extensions), and every
   operation is an IEEE operation or an explicit fma, compiled with -ffp-contract=off; the sums
   add element j in lane j % LANES whatever the width, and combine the lanes in one order, so
   every level gives the same bits. In the AVX2 clone the exponentials of rows without subnormal
   terms are taken two vectors at a time (PAIRS), each step of exp for both before the next
   (STEP), so that two independent dependency chains sit side by side in the instruction window:
   1.10x to 1.12x on a 2-core AMD EPYC (Zen 1, whose 256-bit operations issue as two halves),
   where one vector's chain left its floating-point pipes idle; 3 and 4 vectors were no faster
   than 2. The SSE2 clone, whose fma is libm's, took 1.25x longer so and keeps one vector; the
   AVX-512 clone keeps one too, as no CPU here can measure it. The GIL is released while a block
   of rows is computed, so Python threads can share the rows of a batch. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* GCC 12+ on x86-64 compiles the row loops once per instruction-set level (KERNELS_DEF below);
   other compilers and machines get the one baseline clone. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && __GNUC__ >= 12
#define ISA_CLONES 1
#include <immintrin.h>
#endif
/* Helpers are inlined into each clone, so that they too use its instruction set. */
#define INLINE inline __attribute__((always_inline))
/* Loops over the vectors of a block of lanes are unrolled, so that their vectors stay in
   registers. */
#define UNROLL _Pragma("GCC unroll 16")

/* LANES: the lanes of the compensated sums, the same in every clone (a multiple of every vector
   width); BLOCK: the exponentials summed while they are in the first-level cache (8 KiB). */
enum { LANES = 8, BLOCK = 1024 };

static const double INV_LN2 = 1.4426950408889634;
static const double LN2_HI = 6.93147180369123816490e-01; /* 0x3fe62e42fee00000: k*LN2_HI exact */
static const double LN2_LO = 1.90821492927058770002e-10;
static const double SHIFTER = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to integer */
static const int64_t SHIFTER_BITS = 0x4338000000000000; /* its bit pattern */
static const double NORMAL_MIN = -708.0;          /* exp(d) is normal above this */
static const double UNDERFLOW = -746.0; /* exp(d) < 2^-1075 rounds to 0 below this */
/* exp(r) = 1 + r + r^2 (c_0 + c_1 r + ... + c_9 r^9) within 3.72e-18 exp(r) (2^-57.9) for
   |r| <= 0.3466 (> ln2/2 + 1e-13): the minimax polynomial of the relative error (Remez), c_0 and
   c_1 rounded to double before the others were fitted, then those rounded (checked in mpmath). */
static const double EXP_POLY[] = {
    0x1.000000000000ap-1,  0x1.5555555555503p-3,  0x1.5555555550607p-5,  0x1.1111111124d39p-7,
    0x1.6c16c184b4be3p-10, 0x1.a01a013d4d53fp-13, 0x1.a019989049d8bp-16, 0x1.71def43156c96p-19,
    0x1.28aed59cbd4fap-22, 0x1.add7751cea3d8p-26,
};

/* s + c += w, error-free (Knuth's TwoSum): for doubles, and lane by lane for vectors. */
#define ADD2(s, c, w)                                                          \
    do {                                                                       \
        __typeof__(s) t_ = (s) + (w), bp_ = t_ - (s);                          \
        (c) += ((s) - (t_ - bp_)) + ((w) - bp_);                               \
        (s) = t_;                                                              \
    } while (0)

/* (mask & a) | (~mask & b), mask lanes all ones or all zeros, for vectors of any element type */
#define SELECT(mask, a, b)                                                     \
    ((__typeof__(a))(((__typeof__(mask))(a) & (mask)) | ((__typeof__(mask))(b) & ~(mask))))

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

/* Whether every x_j - m is exact in float64 for a float32 row of maximum mt, minimum mn and
   smallest nonzero magnitude tiny, so that TwoSum can be skipped. Two float32 numbers whose
   magnitudes are within a factor 2^27 of each other are integer multiples of 2^-24 times the
   smaller one, and their difference is below 2^28 times it: 52 bits, exact in float64. Zeros
   are exact too. */
static int exact_f32(float mt, float mn, float tiny) {
    double m = fabs((double)mt), hi = fabs((double)mn) > m ? fabs((double)mn) : m;
    if (m == 0.0) return 1;
    if (!(hi <= 0x1p27 * m)) return 0; /* -inf, or a logit far larger than the maximum */
    return (double)tiny >= 0x1p-27 * m;
}

static int exact_f64(double mt, double mn, double tiny) {
    (void)mt, (void)mn, (void)tiny;
    return 0; /* float64 logits always take TwoSum */
}

/* The vector types of a clone whose vectors are BYTES wide. */
#define TYPES_DEF(SUFFIX, BYTES)                                                \
    typedef double vd_##SUFFIX __attribute__((vector_size(BYTES)));            \
    typedef int64_t vi_##SUFFIX __attribute__((vector_size(BYTES)));           \
    typedef uint64_t vu_##SUFFIX __attribute__((vector_size(BYTES)));

/* a * b + c lane by lane, each rounded once: one instruction per vector where the instruction
   set has fma. A function, not a macro: nested calls name no temporary twice. */
#define VFMA_DEF(SUFFIX, TARGET)                                                \
    TARGET static INLINE vd_##SUFFIX vfma_##SUFFIX(vd_##SUFFIX a, vd_##SUFFIX b, \
                                                   vd_##SUFFIX c) {             \
        for (int l = 0; l < (int)(sizeof a / sizeof a[0]); l++) a[l] = fma(a[l], b[l], c[l]); \
        return a;                                                               \
    }

/* Each step of exp for P vectors, all P before the next step, so that their independent chains
   interleave in the instruction window (P is a constant once inlined). */
#define STEP(...) UNROLL for (int p = 0; p < P; p++) { __VA_ARGS__; }

/* exp(d) lane by lane, for d <= 0: d >= NORMAL_MIN unless FULL, which takes any d (-inf
   included) and rounds subnormal results once; normal results get the same bits either way.
   exp_parts gives, for P <= 4 vectors d[p], kbits (k = round(d / ln2) in the bits of SHIFTER + k)
   and s + t = exp(r + r_lo) (y = s + t rounds it, in [0.7, 1.42]); scaled y 2^k while normal;
   exps_normal the results of P vectors with d >= NORMAL_MIN. */
#define EXP_DEF(SUFFIX, TARGET)                                                 \
    TARGET static INLINE void exp_parts_##SUFFIX(const vd_##SUFFIX *d, vi_##SUFFIX *kbits,   \
                                                 vd_##SUFFIX *s, vd_##SUFFIX *t, int P) {   \
        typedef vd_##SUFFIX VD;                                                 \
        typedef vi_##SUFFIX VI;                                                 \
        VD kd[4], rh[4], r[4], r_lo[4], r2[4], r4[4], L[4], Q[4], s_lo[4];      \
        STEP(kd[p] = vfma_##SUFFIX(d[p], (VD){0} + INV_LN2, (VD){0} + SHIFTER)) \
        /* k = round(d / ln2), in [-1077, 0], is kd's bits minus SHIFTER's */   \
        STEP(kbits[p] = (VI)kd[p]; kd[p] -= SHIFTER)                            \
        STEP(rh[p] = vfma_##SUFFIX(-kd[p], (VD){0} + LN2_HI, d[p]))             \
        STEP(r[p] = vfma_##SUFFIX(-kd[p], (VD){0} + LN2_LO, rh[p]))             \
        /* r + r_lo = d - k ln2 to ~2^-100 */                                   \
        STEP(r_lo[p] = vfma_##SUFFIX(-kd[p], (VD){0} + LN2_LO, rh[p] - r[p]))   \
        /* r^2 (c_0 + ... + c_9 r^9) = L r^2 + Q r^6: L = c_0 + c_1 r + c_2 r^2 + c_3 r^3 by     \
           Horner (the terms that matter, rounded as in Horner's scheme) and Q by Estrin's, in   \
           parallel: a short dependency chain. */                               \
        const double *c = EXP_POLY;                                             \
        STEP(r2[p] = r[p] * r[p]; r4[p] = r2[p] * r2[p])                        \
        STEP(L[p] = vfma_##SUFFIX(vfma_##SUFFIX(vfma_##SUFFIX(r[p], (VD){0} + c[3], (VD){0} + c[2]), \
                                                r[p], (VD){0} + c[1]),      \
                                  r[p], (VD){0} + c[0]))                        \
        STEP(Q[p] = vfma_##SUFFIX(                                              \
                 vfma_##SUFFIX(r[p], (VD){0} + c[9], (VD){0} + c[8]), r4[p],    \
                 vfma_##SUFFIX(vfma_##SUFFIX(r[p], (VD){0} + c[7], (VD){0} + c[6]), r2[p], \
                               vfma_##SUFFIX(r[p], (VD){0} + c[5], (VD){0} + c[4])))) \
        /* exp(r + r_lo) = (1 + r) + r^2 p + r_lo exp(r): 1 + r split exactly (Fast2Sum, \
           |r| < 1) so that the only rounding of size 1/2 ulp is the last addition. */       \
        STEP(s[p] = 1.0 + r[p]; s_lo[p] = r[p] - (s[p] - 1.0))                  \
        STEP(t[p] = vfma_##SUFFIX(L[p], r2[p], vfma_##SUFFIX(Q[p], r4[p] * r2[p],           \
                                  vfma_##SUFFIX(r_lo[p], s[p], s_lo[p]))))      \
    }                                                                           \
    /* y 2^k, exact while normal: SHIFTER's lowest 52 bits are 0, so k << 52 is kbits << 52 (bits \
       shifted and added unsigned: no signed overflow) */                       \
    TARGET static INLINE vd_##SUFFIX scaled_##SUFFIX(vd_##SUFFIX y, vi_##SUFFIX kbits) { \
        return (vd_##SUFFIX)((vu_##SUFFIX)y + ((vu_##SUFFIX)kbits << 52));      \
    }                                                                           \
    TARGET static INLINE void exps_normal_##SUFFIX(const vd_##SUFFIX *d, vd_##SUFFIX *out, \
                                                   int P) {                     \
        vi_##SUFFIX kbits[4];                                                   \
        vd_##SUFFIX s[4], t[4];                                                 \
        exp_parts_##SUFFIX(d, kbits, s, t, P);                                  \
        STEP(out[p] = scaled_##SUFFIX(s[p] + t[p], kbits[p]))                   \
    }                                                                           \
    TARGET static INLINE vd_##SUFFIX exp_##SUFFIX(vd_##SUFFIX d, int full) {   \
        typedef vd_##SUFFIX VD;                                                 \
        typedef vi_##SUFFIX VI;                                                 \
        typedef vu_##SUFFIX VU;                                                 \
        VI kbits;                                                               \
        VD s, t;                                                                \
        exp_parts_##SUFFIX(&d, &kbits, &s, &t, 1);                              \
        VD y = s + t, normal = scaled_##SUFFIX(y, kbits);                       \
        VI low = (VI)(d < NORMAL_MIN);                                          \
        int any = 0;                                                            \
        for (int l = 0; l < (int)(sizeof low / sizeof low[0]); l++) any |= low[l] != 0; \
        if (!full || !any) return normal;                                       \
        /* k1 = floor(k / 2): an arithmetic shift, as GCC and Clang shift negative integers */ \
        VI k = (VI)((VU)kbits - (uint64_t)SHIFTER_BITS), k1 = k >> 1;               \
        /* y 2^k1 exact, then one rounding */                                   \
        VD v = (VD)((VU)y + ((VU)k1 << 52)) * (VD)(((VU)k - (VU)k1 + 1023) << 52); \
        /* A subnormal v has rounded y a second time. Instead y + y_lo, y_lo the error of y's \
           rounding (Fast2Sum, |s| >= |t|), is rounded once to the subnormal grid: scaled by   \
           2^(k + 64) (exact), where the grid is G = 2^-1010, by adding 2^52 G (above every    \
           scaled value, so the sum's ulp is G), the rounding's error e taken exactly and      \
           y_lo's part added by moving to the neighbour beyond a midpoint. */   \
        VD y_lo = t - (y - s), scale = (VD)(((VU)k + 64 + 1023) << 52);         \
        VD z = y * scale, z_lo = y_lo * scale, S = z + 0x1p-958, e = z - (S - 0x1p-958); \
        S += SELECT((VI)((e - 0x1p-1011) + z_lo > 0.0), (VD){0} + 0x1p-1010, (VD){0}); \
        S -= SELECT((VI)((e + 0x1p-1011) + z_lo < 0.0), (VD){0} + 0x1p-1010, (VD){0}); \
        v = SELECT((VI)(v <= 0x1p-1022), (S - 0x1p-958) * 0x1p-64, v);         \
        return SELECT((VI)(d >= UNDERFLOW), v, (VD){0}); /* 0 below, -inf too */ \
    }                                                                           \
    /* q (1 + e), e the rounding error of d = x - m (d + e == x - m exactly, Knuth's TwoSum) */ \
    TARGET static INLINE vd_##SUFFIX with_error_##SUFFIX(vd_##SUFFIX q, vd_##SUFFIX x,     \
                                                         vd_##SUFFIX d, double m) { \
        vd_##SUFFIX bb = d - x;                                                 \
        return vfma_##SUFFIX(q, (x - (d - bb)) + (-m - bb), q);                 \
    }

/* The W = BYTES / 8 logits at x as doubles: float32 through LOAD_F32 (GCC 12's
   __builtin_convertvector widens in halves through memory, where cvtps2pd is one instruction). */
#define LOAD_DEF(SUFFIX, TARGET, LOAD_F32)                                      \
    TARGET static INLINE vd_##SUFFIX load_f32_##SUFFIX(const float *x) {        \
        return (vd_##SUFFIX)LOAD_F32(x);                                        \
    }                                                                           \
    TARGET static INLINE vd_##SUFFIX load_f64_##SUFFIX(const double *x) {       \
        vd_##SUFFIX v;                                                          \
        memcpy(&v, x, sizeof v);                                                \
        return v;                                                               \
    }

/* Largest, smallest and (float32) smallest nonzero magnitude of x[0..n) (no NaN), and the first
   index of the largest (numpy's argmax): U vectors of W lanes at a time, with the index of each
   lane's maximum alongside (in integers IT of T's size). Every width gives the same results. */
#define EXTREMES_DEF(SUFFIX, TNAME, T, IT, UT, TARGET, BYTES)                   \
    TARGET static INLINE Py_ssize_t extremes_##TNAME##_##SUFFIX(                \
        const T *x, Py_ssize_t n, T *top, T *low, T *tiny) {                    \
        typedef T VT __attribute__((vector_size(BYTES)));                       \
        typedef IT VI __attribute__((vector_size(BYTES)));                      \
        typedef UT VU __attribute__((vector_size(BYTES)));                      \
        enum { W = BYTES / sizeof(T), U = 4 };                                  \
        const UT magnitude = (UT)-1 >> 1;                                       \
        VT hi[U], lo[U];                                                        \
        VI at[U], lane;                                                         \
        VU small[U]; /* |x_j| bits minus one: zero wraps to the largest */      \
        for (int l = 0; l < W; l++) lane[l] = l;                                \
        for (int u = 0; u < U; u++)                                             \
            hi[u] = lo[u] = (VT){0} + x[0], at[u] = (VI){0}, small[u] = (VU){0} - 1; \
        Py_ssize_t j = 0;                                                       \
        for (; j + U * W <= n && j + U * W < (Py_ssize_t)1 << 31; j += U * W)   \
            UNROLL for (int u = 0; u < U; u++) {                                \
                VT v;                                                           \
                memcpy(&v, x + j + u * W, sizeof v);                            \
                VI up = v > hi[u], down = v < lo[u];                            \
                hi[u] = SELECT(up, v, hi[u]);                                   \
                lo[u] = SELECT(down, v, lo[u]);                                 \
                at[u] = SELECT(up, lane + (IT)(j + u * W), at[u]);              \
                if (sizeof(T) == 4) {                                           \
                    VU b = ((VU)v & magnitude) - 1;                             \
                    small[u] = SELECT((VI)(b < small[u]), b, small[u]);         \
                }                                                               \
            }                                                                   \
        T mt = hi[0][0], mn = lo[0][0];                                         \
        Py_ssize_t a = at[0][0];                                                \
        UT least = (UT)-1;                                                      \
        for (int u = 0; u < U; u++)                                             \
            for (int l = 0; l < W; l++) {                                       \
                if (hi[u][l] > mt || (hi[u][l] == mt && at[u][l] < a))          \
                    mt = hi[u][l], a = at[u][l];                                \
                mn = lo[u][l] < mn ? lo[u][l] : mn;                             \
                least = small[u][l] < least ? small[u][l] : least;              \
            }                                                                   \
        for (; j < n; j++) {                                                    \
            if (x[j] > mt) mt = x[j], a = j;                                    \
            mn = x[j] < mn ? x[j] : mn;                                         \
            UT b;                                                               \
            memcpy(&b, x + j, sizeof b);                                        \
            b = (b & magnitude) - 1;                                            \
            least = b < least ? b : least;                                      \
        }                                                                       \
        least += 1;                                                             \
        memcpy(tiny, &least, sizeof least);                                     \
        *top = mt;                                                              \
        *low = mn;                                                              \
        return a;                                                               \
    }

/* q = exp(x - m)(1 + e) for the W logits at x, where e is the rounding error of d = x - m
   (d + e == x - m exactly, Knuth's TwoSum) when TWOSUM, else 0; FULL as for exp. */
#define EXPS_DEF(SUFFIX, TNAME, T, TARGET)                                      \
    TARGET static INLINE vd_##SUFFIX exps_##TNAME##_##SUFFIX(const T *x, double m, int twosum, \
                                                             int full) {        \
        typedef vd_##SUFFIX VD;                                                 \
        VD xv = load_##TNAME##_##SUFFIX(x), d = xv - m;                         \
        VD q = exp_##SUFFIX(d, full);                                           \
        if (!twosum) return q;                                                  \
        VD qe = with_error_##SUFFIX(q, xv, d, m);                               \
        return full ? SELECT((vi_##SUFFIX)(q != 0.0), qe, q) : qe; /* exp(-inf): e is NaN */ \
    }                                                                           \
    /* The same for the P W logits at x, each x - m >= NORMAL_MIN, into q[0..P). */ \
    TARGET static INLINE void exps_normal_##TNAME##_##SUFFIX(const T *x, double m, int twosum, \
                                                             vd_##SUFFIX *q, int P) { \
        typedef vd_##SUFFIX VD;                                                 \
        enum { W = sizeof(VD) / sizeof(double) };                               \
        VD xv[4], d[4];                                                         \
        STEP(xv[p] = load_##TNAME##_##SUFFIX(x + p * W); d[p] = xv[p] - m)      \
        exps_normal_##SUFFIX(d, q, P);                                          \
        if (twosum) STEP(q[p] = with_error_##SUFFIX(q[p], xv[p], d[p], m))     \
    }

/* Whether lanes_add may take Fast2Sum: always, but while a test compares it with TwoSum (set
   between calls, never while one runs). */
static int fast2sum = 1;

/* s + c += v[0..n) lane by lane, error-free, v[j] in [0, 1] into lane j % LANES: TwoSum, or
   Fast2Sum (the same results) once every s >= 1. The lanes' sums s[] and their errors c[] are in
   memory between calls, so that this loop has all registers. */
#define LANES_ADD_DEF(SUFFIX, TARGET)                                           \
    TARGET __attribute__((noinline)) static void lanes_add_##SUFFIX(            \
        const double *v, Py_ssize_t n, double *s, double *c) {                  \
        typedef vd_##SUFFIX VD;                                                 \
        enum { W = sizeof(VD) / sizeof(double), U = LANES / W };                \
        VD vs[U], vc[U], q;                                                     \
        double rest[LANES] = {0}; /* the last terms, padded with zeros */       \
        memcpy(rest, v + n / LANES * LANES, n % LANES * sizeof(double));        \
        UNROLL for (int u = 0; u < U; u++) {                                    \
            memcpy(&vs[u], s + u * W, sizeof q);                                \
            memcpy(&vc[u], c + u * W, sizeof q);                                \
        }                                                                       \
        int big = fast2sum;                                                     \
        for (int l = 0; l < LANES; l++) big &= s[l] >= 1.0;                     \
        if (big) /* v_j <= 1 <= s: Fast2Sum is exact, with 4 additions, not 6 */ \
            for (Py_ssize_t j = 0; j < n; j += LANES) {                         \
                const double *w = j + LANES <= n ? v + j : rest;                \
                UNROLL for (int u = 0; u < U; u++) {                            \
                    memcpy(&q, w + u * W, sizeof q);                            \
                    VD t = vs[u] + q;                                           \
                    vc[u] += q - (t - vs[u]);                                   \
                    vs[u] = t;                                                  \
                }                                                               \
            }                                                                   \
        else                                                                    \
            for (Py_ssize_t j = 0; j < n; j += LANES) {                         \
                const double *w = j + LANES <= n ? v + j : rest;                \
                UNROLL for (int u = 0; u < U; u++) {                            \
                    memcpy(&q, w + u * W, sizeof q);                            \
                    ADD2(vs[u], vc[u], q);                                      \
                }                                                               \
            }                                                                   \
        UNROLL for (int u = 0; u < U; u++) {                                    \
            memcpy(s + u * W, &vs[u], sizeof q);                                \
            memcpy(c + u * W, &vc[u], sizeof q);                                \
        }                                                                       \
    }

/* The lanes' sum, compensated: lane by lane, in one order. */
static double lanes_total(const double *s, const double *c) {
    double hi = 0.0, lo = 0.0;
    for (int l = 0; l < LANES; l++) {
        ADD2(hi, lo, s[l]);
        lo += c[l];
    }
    return hi + lo;
}

/* For the n logits of x, q_j into g (q_a = 0) and t = sum_j q_j, compensated in LANES lanes;
   TWOSUM and FULL as for exps. Blocks of BLOCK terms: their exponentials, then their sum while
   they are in the first-level cache, PAIRS vectors' exponentials interleaved where no term is
   subnormal (see the header). The loops are specialised for each TWOSUM and FULL by inlining. */
#define QPASS_DEF(SUFFIX, TNAME, T, TARGET, PAIRS)                              \
    TARGET static INLINE double qpass_##TNAME##_##SUFFIX(const T *x, Py_ssize_t n, double m, \
                                                         Py_ssize_t a, int twosum, int full, \
                                                         double *g) {           \
        typedef vd_##SUFFIX VD;                                                 \
        enum { W = sizeof(VD) / sizeof(double) };                               \
        double s[LANES] = {0}, c[LANES] = {0};                                  \
        for (Py_ssize_t start = 0; start < n; start += BLOCK) {                 \
            Py_ssize_t end = n - start < BLOCK ? n : start + BLOCK, j = start;  \
            for (; PAIRS > 1 && !full && j + PAIRS * W <= end; j += PAIRS * W) { \
                VD q[PAIRS];                                                    \
                exps_normal_##TNAME##_##SUFFIX(x + j, m, twosum, q, PAIRS);     \
                /* vector by vector: GCC copied the array whole through the stack, in */ \
                /* 128-bit halves (1.06x float32 rows, 1.12x float64 on Zen 1) */      \
                UNROLL for (int p = 0; p < PAIRS; p++) memcpy(g + j + p * W, &q[p], sizeof q[p]); \
            }                                                                   \
            for (; j + W <= end; j += W) {                                      \
                VD q = exps_##TNAME##_##SUFFIX(x + j, m, twosum, full);         \
                memcpy(g + j, &q, sizeof q);                                    \
            }                                                                   \
            if (j < end) { /* the row's last terms, padded with its maximum */  \
                T pad[W];                                                       \
                for (int l = 0; l < W; l++) pad[l] = x[j + l < end ? j + l : a]; \
                VD q = exps_##TNAME##_##SUFFIX(pad, m, twosum, full);           \
                memcpy(g + j, &q, (end - j) * sizeof(double));                  \
            }                                                                   \
            if (start <= a && a < end) g[a] = 0.0;                              \
            lanes_add_##SUFFIX(g + start, end - start, s, c);                   \
        }                                                                       \
        return lanes_total(s, c);                                               \
    }

/* g_j *= scale for the n >= 0 values g_j >= 0, and their largest (after scaling). */
#define SCALE_DEF(SUFFIX, TARGET)                                               \
    TARGET static INLINE double scale_##SUFFIX(double *g, Py_ssize_t n, double scale) { \
        typedef vd_##SUFFIX VD;                                                 \
        enum { W = sizeof(VD) / sizeof(double), U = 2 * LANES / W };            \
        VD top[U];                                                              \
        for (int u = 0; u < U; u++) top[u] = (VD){0};                           \
        Py_ssize_t j = 0;                                                       \
        for (; j + U * W <= n; j += U * W)                                      \
            UNROLL for (int u = 0; u < U; u++) {                                \
                VD v;                                                           \
                memcpy(&v, g + j + u * W, sizeof v);                            \
                v *= scale;                                                     \
                memcpy(g + j + u * W, &v, sizeof v);                            \
                top[u] = SELECT((vi_##SUFFIX)(v > top[u]), v, top[u]);          \
            }                                                                   \
        double big = 0.0;                                                       \
        for (int u = 0; u < U; u++)                                             \
            for (int l = 0; l < W; l++) big = top[u][l] > big ? top[u][l] : big; \
        for (; j < n; j++) {                                                    \
            g[j] *= scale;                                                      \
            big = g[j] > big ? g[j] : big;                                      \
        }                                                                       \
        return big;                                                             \
    }

/* Dense labels y: others = sum_{j != a} y_j and total = others + y_a, compensated, and the
   compensated gaps = sum_{y_j > 0} y_j (m - x_j) (0 * -inf contributes 0, mass on it +inf; y_a
   contributes y_a (m - x_a) = 0 to it, so it is left out of both sums). */
#define LABEL_SUMS_DEF(SUFFIX, TNAME, T, TARGET)                                \
    TARGET static INLINE void label_sums_##TNAME##_##SUFFIX(                    \
        const T *x, const double *y, Py_ssize_t n, double m, Py_ssize_t a, double *total, \
        double *others, double *gaps) {                                         \
        typedef vd_##SUFFIX VD;                                                 \
        typedef vi_##SUFFIX VI;                                                 \
        enum { W = sizeof(VD) / sizeof(double), U = LANES / W };                \
        VD os[U], oc[U], gs[U], gc[U];                                          \
        for (int u = 0; u < U; u++) os[u] = oc[u] = gs[u] = gc[u] = (VD){0};    \
        for (Py_ssize_t j = 0; j < n; j += LANES) {                             \
            const T *xl = x + j;                                                \
            const double *yl = y + j;                                           \
            T xs[LANES];                                                        \
            double ys[LANES];                                                   \
            if (j + LANES > n || (size_t)(a - j) < LANES) { /* the end (no mass), or y_a */ \
                for (int l = 0; l < LANES; l++) {                               \
                    xs[l] = j + l < n ? x[j + l] : x[a];                        \
                    ys[l] = j + l < n && j + l != a ? y[j + l] : 0.0;           \
                }                                                               \
                xl = xs, yl = ys;                                               \
            }                                                                   \
            UNROLL for (int u = 0; u < U; u++) {                                \
                VD yv;                                                          \
                memcpy(&yv, yl + u * W, sizeof yv);                             \
                VD term = yv * (m - load_##TNAME##_##SUFFIX(xl + u * W));       \
                ADD2(gs[u], gc[u], SELECT((VI)(yv > 0.0), term, (VD){0}));      \
                ADD2(os[u], oc[u], yv);                                         \
            }                                                                   \
        }                                                                       \
        double ohi = 0.0, olo = 0.0, ghi = 0.0, glo = 0.0;                      \
        for (int u = 0; u < U; u++)                                             \
            for (int l = 0; l < W; l++) {                                       \
                ADD2(ohi, olo, os[u][l]);                                       \
                olo += oc[u][l];                                                \
                ADD2(ghi, glo, gs[u][l]);                                       \
                glo += gc[u][l];                                                \
            }                                                                   \
        *others = ohi + olo;                                                    \
        ADD2(ohi, olo, y[a]);                                                   \
        *total = ohi + olo;                                                     \
        *gaps = isinf(ghi) ? ghi : ghi + glo; /* mass on a -inf logit: glo is NaN */ \
    }

/* max_j |G_j - g_j| and max_j |G_j| (NaN if any G_j is NaN), G of type T. */
#define GRAD_ERROR_DEF(SUFFIX, TNAME, T, TARGET)                                \
    TARGET static void grad_error_##TNAME##_##SUFFIX(const T *G, const double *g, Py_ssize_t n, \
                                                     double *err, double *size) { \
        int64_t e = 0, s = 0;                                                   \
        for (Py_ssize_t j = 0; j < n; j++) {                                    \
            int64_t d = abs_bits((double)G[j] - g[j]), a = abs_bits((double)G[j]); \
            e = d > e ? d : e;                                                  \
            s = a > s ? a : s;                                                  \
        }                                                                       \
        *err = from_bits(e);                                                    \
        *size = from_bits(s);                                                   \
    }

/* One row: the extremes, then q_j into g with their sum (qpass), the loss and the gradient. */
#define ROW_DEF(SUFFIX, TNAME, T, TARGET)                                       \
    TARGET static void row_##TNAME##_##SUFFIX(const T *x, Py_ssize_t n, const double *y,   \
                                              int64_t k, double *loss, double *g, double *size) { \
        T mt, mn, tiny;                                                         \
        Py_ssize_t a = extremes_##TNAME##_##SUFFIX(x, n, &mt, &mn, &tiny);      \
        double m = (double)mt, t;                                               \
        int twosum = !exact_##TNAME(mt, mn, tiny), full = (double)mn - m < NORMAL_MIN; \
        if (twosum && full)                                                     \
            t = qpass_##TNAME##_##SUFFIX(x, n, m, a, 1, 1, g);                  \
        else if (twosum)                                                        \
            t = qpass_##TNAME##_##SUFFIX(x, n, m, a, 1, 0, g);                  \
        else if (full)                                                          \
            t = qpass_##TNAME##_##SUFFIX(x, n, m, a, 0, 1, g);                  \
        else                                                                    \
            t = qpass_##TNAME##_##SUFFIX(x, n, m, a, 0, 0, g);                  \
        double denom = 1.0 + t;                                                 \
        if (y == NULL) {                                                        \
            double y_a = k == a ? 1.0 : 0.0, scale = 1.0 / denom, q_k = g[k];   \
            *loss = (m - (double)x[k]) + log1p(t);                              \
            g[k] = 0.0; /* g_a = 0 too: the largest of the others below */      \
            int64_t big = abs_bits(scale_##SUFFIX(g, n, scale));                \
            g[k] = fma(q_k, scale, -1.0);                                       \
            g[a] = fma(-y_a, t, 1.0 - y_a) / denom;                             \
            big = abs_bits(g[k]) > big ? abs_bits(g[k]) : big;                  \
            big = abs_bits(g[a]) > big ? abs_bits(g[a]) : big;                  \
            *size = from_bits(big);                                             \
        } else {                                                                \
            double total, others, gaps;                                         \
            label_sums_##TNAME##_##SUFFIX(x, y, n, m, a, &total, &others, &gaps); \
            *loss = gaps + total * log1p(t);                                    \
            double scale = total / denom;                                       \
            for (Py_ssize_t j = 0; j < n; j++) g[j] = fma(g[j], scale, -y[j]);  \
            g[a] = fma(-y[a], t, others) / denom;                               \
            int64_t big = 0; /* max_j |g_j|, as bits */                         \
            for (Py_ssize_t j = 0; j < n; j++) big = abs_bits(g[j]) > big ? abs_bits(g[j]) : big; \
            *size = from_bits(big);                                             \
        }                                                                       \
    }

/* exp of n values d <= 0, as a row computes them: the FULL exp where d < NORMAL_MIN (a row with
   such terms takes it for all of them, which gives normal results the same bits), for the tests. */
#define EXP_ARRAY_DEF(SUFFIX, TARGET)                                           \
    TARGET static void exp_array_##SUFFIX(const double *d, double *out, Py_ssize_t n) { \
        typedef vd_##SUFFIX VD;                                                 \
        enum { W = sizeof(VD) / sizeof(double) };                               \
        for (Py_ssize_t j = 0; j < n; j += W) {                                 \
            int used = n - j < W ? (int)(n - j) : W;                            \
            VD v = {0};                                                         \
            memcpy(&v, d + j, used * sizeof(double));                           \
            VD e = SELECT((vi_##SUFFIX)(v < NORMAL_MIN), exp_##SUFFIX(v, 1), exp_##SUFFIX(v, 0)); \
            memcpy(out + j, &e, used * sizeof(double));                         \
        }                                                                       \
    }

/* Every entry point compiled for one instruction set, named with SUFFIX, BYTES its vector width. */
#define KERNELS_DEF(SUFFIX, TARGET, BYTES, LOAD_F32, PAIRS)                             \
    TYPES_DEF(SUFFIX, BYTES)                                                    \
    VFMA_DEF(SUFFIX, TARGET)                                                    \
    EXP_DEF(SUFFIX, TARGET)                                                     \
    LOAD_DEF(SUFFIX, TARGET, LOAD_F32)                                          \
    EXTREMES_DEF(SUFFIX, f32, float, int32_t, uint32_t, TARGET, BYTES)          \
    EXTREMES_DEF(SUFFIX, f64, double, int64_t, uint64_t, TARGET, BYTES)         \
    EXPS_DEF(SUFFIX, f32, float, TARGET)                                        \
    EXPS_DEF(SUFFIX, f64, double, TARGET)                                       \
    LANES_ADD_DEF(SUFFIX, TARGET)                                               \
    QPASS_DEF(SUFFIX, f32, float, TARGET, PAIRS)                                \
    QPASS_DEF(SUFFIX, f64, double, TARGET, PAIRS)                               \
    SCALE_DEF(SUFFIX, TARGET)                                                   \
    LABEL_SUMS_DEF(SUFFIX, f32, float, TARGET)                                  \
    LABEL_SUMS_DEF(SUFFIX, f64, double, TARGET)                                 \
    GRAD_ERROR_DEF(SUFFIX, f32, float, TARGET)                                  \
    GRAD_ERROR_DEF(SUFFIX, f64, double, TARGET)                                 \
    ROW_DEF(SUFFIX, f32, float, TARGET)                                         \
    ROW_DEF(SUFFIX, f64, double, TARGET)                                        \
    EXP_ARRAY_DEF(SUFFIX, TARGET)


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

/* float32 to float64: two lanes in SSE2, one cvtps2pd per vector in the clones */
#define LOAD_F32_BASE(x)                                                       \
    ({                                                                         \
        float v_[2];                                                           \
        memcpy(v_, x, sizeof v_);                                              \
        (vd_base){v_[0], v_[1]};                                               \
    })
KERNELS_DEF(base, , 16, LOAD_F32_BASE, 1)
#ifdef ISA_CLONES
#define LOAD_F32_V4(x) _mm512_cvtps_pd(_mm256_loadu_ps(x))
#define LOAD_F32_V3(x) _mm256_cvtps_pd(_mm_loadu_ps(x))
KERNELS_DEF(v4, __attribute__((target("arch=x86-64-v4"))), 64, LOAD_F32_V4, 1)
KERNELS_DEF(v3, __attribute__((target("arch=x86-64-v3"))), 32, LOAD_F32_V3, 2)
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

/* grad_error over k <= MAX_GRADS gradients of one exact gradient, row by row: each row of
   `exact` is read from memory once for all k (it stays in L2 while the k rows are compared). */
#define MAX_GRADS 8
static PyObject *grad_error(PyObject *self, PyObject *args) {
    PyObject *gs, *eo, *es, *ss;
    Py_ssize_t n, c;
    if (!PyArg_ParseTuple(args, "nnO!OO!O!", &n, &c, &PyTuple_Type, &gs, &eo, &PyTuple_Type, &es,
                          &PyTuple_Type, &ss))
        return NULL;
    if (c < 1 || n < 0) return PyErr_Format(PyExc_ValueError, "_kernel: bad shape");
    Py_ssize_t k = PyTuple_GET_SIZE(gs);
    if (k < 1 || k > MAX_GRADS || PyTuple_GET_SIZE(es) != k || PyTuple_GET_SIZE(ss) != k)
        return PyErr_Format(PyExc_ValueError,
                            "_kernel: as many err and size as grads (1 to %d of them)", MAX_GRADS);
    int count = (int)(3 * k + 1), f32[MAX_GRADS];
    Want want[3 * MAX_GRADS + 1] = {{eo, 0, "d", n * c, "exact"}};
    for (Py_ssize_t m = 0; m < k; m++) {
        PyObject *go = PyTuple_GET_ITEM(gs, m);
        f32[m] = is_format(go, 'f');
        want[1 + 3 * m] = (Want){go, 0, f32[m] ? "f" : "d", n * c, "grad"};
        want[2 + 3 * m] = (Want){PyTuple_GET_ITEM(es, m), 1, "d", n, "err"};
        want[3 + 3 * m] = (Want){PyTuple_GET_ITEM(ss, m), 1, "d", n, "size"};
    }
    Py_buffer b[3 * MAX_GRADS + 1];
    if (!get_all(want, b, count)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *exact = (const double *)b[0].buf + i * c;
        for (Py_ssize_t m = 0; m < k; m++) {
            const void *grad = (const char *)b[1 + 3 * m].buf + i * c * b[1 + 3 * m].itemsize;
            double *err = (double *)b[2 + 3 * m].buf + i, *size = (double *)b[3 + 3 * m].buf + i;
            if (f32[m])
                active->grad_error_f32(grad, exact, c, err, size);
            else
                active->grad_error_f64(grad, exact, c, err, size);
        }
    }
    Py_END_ALLOW_THREADS
    release_all(b, count);
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

static PyObject *set_fast2sum(PyObject *self, PyObject *on) {
    int truth = PyObject_IsTrue(on);
    if (truth < 0) return NULL;
    fast2sum = truth;
    Py_RETURN_NONE;
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
     "grad_error(n, c, grads, exact, errs, sizes): for each grad of the tuple grads, per row\n"
     "max |grad - exact| and max |grad| (NaN where grad has a NaN) into the same item of the\n"
     "tuples errs and sizes; each grad float32 or float64, exact float64, read once a row"},
    {"exp_array", exp_array, METH_VARARGS,
     "exp_array(n, d, out): the kernel's exp of n float64 d <= 0, to test it against mpmath"},
    {"isa", isa, METH_NOARGS,
     "isa(): the instruction-set clone in use, e.g. 'x86-64-v3' (see XENTAUDIT_KERNEL_ISA)"},
    {"_set_fast2sum", set_fast2sum, METH_O,
     "_set_fast2sum(on): let the running sums take Fast2Sum once they reach 1 (the default), or\n"
     "keep TwoSum throughout, which gives the same bits (for the tests)"},
    {"supported_isas", supported_isas, METH_NOARGS,
     "supported_isas(): the clones this CPU can run, best first (the first is the default)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) {
    active = choose_isa();
    return active == NULL ? NULL : PyModule_Create(&module);
}
