/* Element access (float32 / bfloat16 rows), float vectors, a fast exp and a top-k by quickselect:
 * the primitives of compressed_attend.c (a header of static functions, included once; the dot
 * products are in dots.h). */
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { F32 = 0, BF16 = 1 };

/* ---- element access -------------------------------------------------------------------- */
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float round_to(float f, int dtype) { return dtype == BF16 ? bf16_to_f32(f32_to_bf16(f)) : f; }

static inline void load_row(const void *base, int dtype, int64_t offset, int d, float *dst) {
    if (dtype == BF16) {
        const uint16_t *p = (const uint16_t *)base + offset;
        for (int i = 0; i < d; i++) dst[i] = bf16_to_f32(p[i]);
    } else {
        memcpy(dst, (const float *)base + offset, (size_t)d * sizeof(float));
    }
}

static inline void store_row(void *base, int dtype, int64_t offset, int d, const float *src) {
    if (dtype == BF16) {
        uint16_t *p = (uint16_t *)base + offset;
        for (int i = 0; i < d; i++) p[i] = f32_to_bf16(src[i]);
    } else {
        memcpy((float *)base + offset, src, (size_t)d * sizeof(float));
    }
}

static inline void copy_row(void *dst_base, const void *src_base, int dtype, int64_t dst_off, int64_t src_off, int d) {
    size_t es = dtype == BF16 ? 2 : 4;
    memcpy((char *)dst_base + dst_off * es, (const char *)src_base + src_off * es, (size_t)d * es);
}

/* Vectors of VL floats (GCC vector extensions): 16 on AVX-512, else 8 (one AVX2 register; wider
 * generic vectors make GCC spill every cross-lane shuffle to the stack there). Head dims are
 * multiples of 16 (the caller checks), so every row is a whole number of vectors. */
#ifdef __AVX512F__
#define VL 16
#else
#define VL 8
#endif
typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));
typedef int32_t vfi __attribute__((vector_size(VL * 4)));
#define MAX_NV (256 / VL) /* head_dim <= 256 */

static inline vf ld(const float *p) { return *(const vfu *)p; }
static inline void st(float *p, vf x) { *(vfu *)p = x; }
static inline vf splat(float x) { return (vf){0} + x; }

static inline float hsum(vf x) {
#if VL == 16
    x += __builtin_shuffle(x, (vfi){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    x += __builtin_shuffle(x, (vfi){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
    x += __builtin_shuffle(x, (vfi){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    x += __builtin_shuffle(x, (vfi){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
#else
    x += __builtin_shuffle(x, (vfi){4, 5, 6, 7, 0, 1, 2, 3});
    x += __builtin_shuffle(x, (vfi){2, 3, 0, 1, 6, 7, 4, 5});
    x += __builtin_shuffle(x, (vfi){1, 0, 3, 2, 5, 4, 7, 6});
#endif
    return x[0];
}

/* out[k] = hsum(x[k]) for VL vectors at once: a fold tree of VL - 1 two-vector shuffles (vs VL
 * separate folds). Level l keeps, of each block of 2h lanes (h = VL >> (l + 1)), the first h lanes
 * of both inputs (lo) and the last h (hi); the tree leaves lane j with the sum of input bitrev(j),
 * so inputs are taken in that order. */
static inline void hsum_lanes(const vf *x, float *out) {
#if VL == 16
    enum { LEVELS = 4 };
    static const int bitrev[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
    const vfi lo[4] = {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
                       {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
                       {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
                       {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}};
    const vfi hi[4] = {{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
                       {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
                       {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
                       {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
#else
    enum { LEVELS = 3 };
    static const int bitrev[8] = {0, 4, 2, 6, 1, 5, 3, 7};
    const vfi lo[3] = {{0, 1, 2, 3, 8, 9, 10, 11}, {0, 1, 8, 9, 4, 5, 12, 13}, {0, 8, 2, 10, 4, 12, 6, 14}};
    const vfi hi[3] = {{4, 5, 6, 7, 12, 13, 14, 15}, {2, 3, 10, 11, 6, 7, 14, 15}, {1, 9, 3, 11, 5, 13, 7, 15}};
#endif
    vf v[VL];
    for (int k = 0; k < VL; k++) v[k] = x[bitrev[k]];
    for (int level = 0, n = VL; level < LEVELS; level++, n /= 2)
        for (int k = 0; k < n / 2; k++)
            v[k] = __builtin_shuffle(v[2 * k], v[2 * k + 1], lo[level]) + __builtin_shuffle(v[2 * k], v[2 * k + 1], hi[level]);
    st(out, v[0]);
}

/* VL elements of a row of the store dtype at element offset i of base, as floats (bf16 widened in
 * registers, exactly). dtype is a constant where it is inlined. */
typedef uint16_t vhu __attribute__((vector_size(VL * 2), aligned(2)));
static inline __attribute__((always_inline)) vf ld_as(const void *base, int64_t i, const int dtype) {
    if (dtype == BF16) return (vf)(__builtin_convertvector(*(const vhu *)((const uint16_t *)base + i), vfi) << 16);
    return ld((const float *)base + i);
}

/* Blocks of up to VL consecutive rows [i, i + cnt) of n rows [n][d] of the store dtype, as float32:
 * the rows themselves (float32), or widened into blk (bfloat16; in L1 while every query reads it). */
typedef struct {
    const void *rows;
    int64_t n, i, cnt;
    float blk[VL * 256];
} RowBlocks;

/* The next block of b as float32 rows (b->i, b->cnt say which), or NULL after the last one. */
static inline __attribute__((always_inline)) const float *next_block(RowBlocks *b, int d, const int dtype,
                                                                     const int nv) {
    b->i += b->cnt;
    if (b->i >= b->n) return NULL;
    b->cnt = b->n - b->i < VL ? b->n - b->i : VL;
    if (dtype != BF16) return (const float *)b->rows + b->i * d;
    for (int64_t k = 0; k < b->cnt; k++)
        for (int t = 0; t < nv; t++) st(b->blk + k * d + t * VL, ld_as(b->rows, (b->i + k) * d + t * VL, dtype));
    return b->blk;
}

/* Software prefetch of bytes [p, p + n) into the caches (addresses past an array are harmless). */
static inline void prefetch_bytes(const void *p, size_t n) {
    for (size_t i = 0; i < n; i += 64) __builtin_prefetch((const char *)p + i);
}

/* The same into L2 and beyond (prefetcht1): rows read later in the step, not next. */
static inline void prefetch_bytes_l2(const void *p, size_t n) {
    for (size_t i = 0; i < n; i += 64) __builtin_prefetch((const char *)p + i, 0, 2);
}

static inline float sum(const float *x, int64_t n) {
    vf acc = {0};
    int64_t i = 0;
    for (; i + VL <= n; i += VL) acc += ld(x + i);
    float s = hsum(acc);
    for (; i < n; i++) s += x[i];
    return s;
}

/* max (sign 1) or min (sign -1) of x [n], NaNs skipped; -sign * inf when n is 0. VL lanes at a time. */
static inline __attribute__((always_inline)) float extreme_of(const float *x, int64_t n, const float sign) {
    vf acc = splat(-sign * INFINITY);
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        vf v = ld(x + i);
        vfi better = v * sign > acc * sign;
        acc = (vf)(((vfi)v & better) | ((vfi)acc & ~better));
    }
    float m = -sign * INFINITY;
    for (int k = 0; k < VL; k++) m = acc[k] * sign > m * sign ? acc[k] : m;
    for (; i < n; i++) m = x[i] * sign > m * sign ? x[i] : m;
    return m;
}

static inline float max_of(const float *x, int64_t n) { return extreme_of(x, n, 1.f); }
static inline float min_of(const float *x, int64_t n) { return extreme_of(x, n, -1.f); }

/* dst[i] = max(dst[i], src[i] - shift) for i < n. */
static inline void max_shifted_into(float *dst, const float *src, int64_t n, float shift) {
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        vf v = ld(src + i) - shift, o = ld(dst + i);
        vfi gt = v > o;
        st(dst + i, (vf)(((vfi)v & gt) | ((vfi)o & ~gt)));
    }
    for (; i < n; i++) {
        float v = src[i] - shift;
        if (v > dst[i]) dst[i] = v;
    }
}

/* exp for x <= 0 (softmax after max subtraction): 2^n * p(r), |rel err| < 2e-7; 0 below -87. */
static inline float exp_neg(float x) {
    int under = x < -87.f;
    x = under ? -87.f : x;
    float t = x * 1.44269504089f;
    float n = floorf(t + 0.5f);
    float r = (t - n) * 0.69314718056f;
    float p = 1.f + r * (1.f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.0083333333f + r * 0.0013888889f)))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return under ? 0.f : p * scale;
}

/* exp_neg of VL lanes (n = floor(t + 0.5) by truncating t + 256.5 > 0: it may land one above
 * floor when t + 0.5 rounds up to an integer, which the polynomial absorbs). */
static inline vf exp_neg_v(vf x) {
    vfi keep = x >= -87.f;
    x = (vf)(((vfi)x & keep) | ((vfi)splat(-87.f) & ~keep));
    vf t = x * 1.44269504089f;
    vfi ni = __builtin_convertvector(t + 256.5f, vfi) - 256;
    vf r = (t - __builtin_convertvector(ni, vf)) * 0.69314718056f;
    vf p = 1.f + r * (1.f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.0083333333f + r * 0.0013888889f)))));
    return (vf)((vfi)(p * (vf)((ni + 127) << 23)) & keep);
}

/* dst[i] = exp_neg(src[i] - shift) for i < n (dst may be src). */
static inline void exp_shifted(float *dst, const float *src, int64_t n, float shift) {
    int64_t i = 0;
    for (; i + VL <= n; i += VL) st(dst + i, exp_neg_v(ld(src + i) - shift));
    for (; i < n; i++) dst[i] = exp_neg(src[i] - shift);
}

/* sum(exp_neg(src[i] - shift)) for i < n: sum(exp_shifted(...)) without storing the exps (same order). */
static inline float sum_exp_shifted(const float *src, int64_t n, float shift) {
    vf acc = {0};
    int64_t i = 0;
    for (; i + VL <= n; i += VL) acc += exp_neg_v(ld(src + i) - shift);
    float s = hsum(acc);
    for (; i < n; i++) s += exp_neg(src[i] - shift);
    return s;
}

/* ---- top-k by (score desc, index asc) ----------------------------------------------------- */
typedef struct { float s; int32_t i; } Scored;

static inline int better(Scored a, Scored b) { return a.s > b.s || (a.s == b.s && a.i < b.i); }

static inline int cmp_desc(const void *x, const void *y) {
    Scored a = *(const Scored *)x, b = *(const Scored *)y;
    return better(a, b) ? -1 : (better(b, a) ? 1 : 0);
}

/* Moves the k best of v[0..n) to v[0..k) (unordered; quickselect). */
static inline void quickselect_best(Scored *v, int n, int k) {
    int lo = 0, hi = n - 1;
    if (k <= 0 || k >= n) return;
    while (lo < hi) {
        Scored pivot = v[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (better(v[i], pivot)) i++;
            while (better(pivot, v[j])) j--;
            if (i <= j) { Scored t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

/* select_best's bucket count: scores are spread linearly over this many buckets of [min, max]. */
#define SELECT_BUCKETS 1024

/* Linear buckets of the scores' range [lo, hi] (a higher bucket holds better scores). */
typedef struct { float lo, scale; } Buckets;

/* Whether n scores spanning [lo, hi] are worth bucketing (else quickselect them); sets *bk. */
static inline int make_buckets(float lo, float hi, int64_t n, Buckets *bk) {
    if (n < 4 * SELECT_BUCKETS / 16 || !(hi > lo) || !isfinite(hi) || !isfinite(lo)) return 0;
    bk->lo = lo, bk->scale = (SELECT_BUCKETS - 1) / (hi - lo);
    return 1;
}

static inline int bucket_of(Buckets bk, float s) { return (int)((s - bk.lo) * bk.scale); }

/* The bucket holding the k-th best of the counted scores; *above: how many lie in better buckets. */
static inline int boundary_bucket(const int *count, int k, int *above) {
    int b = SELECT_BUCKETS - 1;
    *above = 0;
    while (*above + count[b] < k) *above += count[b--];
    return b;
}

static inline void select_best(Scored *v, int n, int k) {
    if (k <= 0 || k >= n) return;
    if (n < 4 * SELECT_BUCKETS / 16) { quickselect_best(v, n, k); return; }
    float lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        float s = v[i].s;
        lo = s < lo ? s : lo;
        hi = s > hi ? s : hi;
    }
    Buckets bk;
    if (!make_buckets(lo, hi, n, &bk)) { quickselect_best(v, n, k); return; }
    int count[SELECT_BUCKETS] = {0}, above;
    for (int i = 0; i < n; i++) count[bucket_of(bk, v[i].s)]++;
    int b = boundary_bucket(count, k, &above);
    /* v[0..above) <- buckets above b; the bucket b items after them, selected exactly */
    int top = 0, mid = above;
    Scored *tmp = (Scored *)malloc(sizeof(Scored) * (size_t)count[b]);
    if (!tmp) { quickselect_best(v, n, k); return; }
    int t = 0;
    for (int i = 0; i < n; i++) {
        int bi = bucket_of(bk, v[i].s);
        if (bi > b) v[top++] = v[i];
        else if (bi == b) tmp[t++] = v[i];
    }
    quickselect_best(tmp, t, k - above);
    for (int i = 0; i < k - above; i++) v[mid + i] = tmp[i];
    free(tmp);
}

