/* Dot products of a head's queries with many rows: landmarks in blocks (selection.c) and keys
 * gathered across spans (compressed_attend.c). Both accumulate one row per vector lane and fold
 * VL rows' sums together, so no row pays a horizontal sum of its own; with AVX512-BF16 and
 * bfloat16-exact queries (a bfloat16 store's) a pair of dims is multiplied in one instruction
 * (products exact either way; sums in another order). Static functions, included once. */
#pragma once
#include "vec_math.h"
#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

/* q [n] as bfloat16 pairs qp [n/2] (low half: the even element); 0 when some element is not a
 * bfloat16 value (pair products would then round the query). */
static inline int bf16_pairs(const float *q, int64_t n, uint32_t *qp) {
    for (int64_t i = 0; i < n; i++)
        if (bf16_to_f32(f32_to_bf16(q[i])) != q[i]) return 0;
    for (int64_t i = 0; i < n / 2; i++)
        qp[i] = (uint32_t)f32_to_bf16(q[2 * i]) | (uint32_t)f32_to_bf16(q[2 * i + 1]) << 16;
    return 1;
}

/* ---- landmarks in blocks (kvcache/buffers.py LandmarkBuffer) ------------------------------- */
enum { LM_BLOCK = 16 }; /* landmarks per block */
#define LM_QUERIES 4    /* queries scored together: independent accumulator chains per pair */
typedef uint32_t vpu __attribute__((vector_size(VL * 4), aligned(4)));

/* res[j][l] = q_j . L_l for qn (a constant where inlined) queries q [qn][d] and the 16 landmarks of
 * one block blk [d/2][16] (bfloat16 dim pairs), one per lane. */
static inline __attribute__((always_inline)) void block_dots(const float *q, int qn, const uint32_t *blk, int d,
                                                             float res[LM_QUERIES][LM_BLOCK]) {
    enum { NA = LM_BLOCK / VL };
    vf even[LM_QUERIES][NA], odd[LM_QUERIES][NA]; /* separate chains for the two dims of a pair */
    for (int j = 0; j < LM_QUERIES; j++)
        for (int u = 0; u < NA; u++) even[j][u] = odd[j][u] = (vf){0};
    for (int t = 0; t < d / 2; t++) {
        for (int u = 0; u < NA; u++) {
            vpu x = *(const vpu *)(blk + t * LM_BLOCK + u * VL);
            vf lo = (vf)(x << 16), hi = (vf)(x & 0xffff0000u);
            for (int j = 0; j < qn; j++) {
                even[j][u] += splat(q[j * d + 2 * t]) * lo;
                odd[j][u] += splat(q[j * d + 2 * t + 1]) * hi;
            }
        }
    }
    for (int j = 0; j < qn; j++)
        for (int u = 0; u < NA; u++) st(res[j] + u * VL, even[j][u] + odd[j][u]);
}

#ifdef __AVX512BF16__
/* block_dots for queries given as bfloat16 pairs qp [qn][d/2] (d a multiple of 4). */
static inline __attribute__((always_inline)) void block_dots_bf16(const uint32_t *qp, int qn, const uint32_t *blk, int d,
                                                                  float res[LM_QUERIES][LM_BLOCK]) {
    __m512 acc[LM_QUERIES][2]; /* two chains per query: even and odd pairs */
    for (int j = 0; j < LM_QUERIES; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    for (int t = 0; t < d / 2; t += 2) {
        __m512bh x0 = (__m512bh)_mm512_loadu_si512(blk + t * LM_BLOCK);
        __m512bh x1 = (__m512bh)_mm512_loadu_si512(blk + (t + 1) * LM_BLOCK);
        for (int j = 0; j < qn; j++) {
            acc[j][0] = _mm512_dpbf16_ps(acc[j][0], x0, (__m512bh)_mm512_set1_epi32((int)qp[j * (d / 2) + t]));
            acc[j][1] = _mm512_dpbf16_ps(acc[j][1], x1, (__m512bh)_mm512_set1_epi32((int)qp[j * (d / 2) + t + 1]));
        }
    }
    for (int j = 0; j < qn; j++) _mm512_storeu_ps(res[j], _mm512_add_ps(acc[j][0], acc[j][1]));
}
#endif

/* Memory that a step reads after its landmark scores, fetched into L2 while they stream: n pieces
 * of `bytes` bytes from at[0..n). */
typedef struct {
    const char *const *at;
    int64_t n;
    size_t bytes;
} SidePrefetch;

/* out[j * out_stride + i] = scale * (q_j . L_i) for g float32 queries q [g][d] and n bfloat16
 * landmarks in blocks ([ceil(n/16)][d/2][16][2]). d is even; lanes past n are computed and dropped.
 * side (or NULL): spread over the blocks, a few pieces per block (the scores are compute-light, so
 * the memory system has room for a second stream). */
static void blocked_dots(const float *q, int g, const void *landmarks, int64_t n, int d, float scale, float *out,
                         int64_t out_stride, const SidePrefetch *side) {
    const uint32_t *blocks = (const uint32_t *)landmarks;
    int64_t n_blocks = (n + LM_BLOCK - 1) / LM_BLOCK, side_at = 0;
    int64_t side_per_block = side && n_blocks ? (side->n + n_blocks - 1) / n_blocks : 0;
    float res[LM_QUERIES][LM_BLOCK];
#ifdef __AVX512BF16__
    uint32_t qp[g * (d / 2)];
    int pairs = d % 4 == 0 && bf16_pairs(q, (int64_t)g * d, qp);
#endif
    for (int64_t b = 0; b * LM_BLOCK < n; b++) {
        const uint32_t *blk = blocks + b * (int64_t)(d / 2) * LM_BLOCK;
        int64_t cnt = n - b * LM_BLOCK < LM_BLOCK ? n - b * LM_BLOCK : LM_BLOCK;
        prefetch_bytes(blk + 2 * (d / 2) * LM_BLOCK, (size_t)d * LM_BLOCK * 2); /* two blocks ahead (cold DRAM) */
        for (int64_t k = 0; k < side_per_block && side_at < side->n; k++) prefetch_bytes_l2(side->at[side_at++], side->bytes);
        for (int j0 = 0; j0 < g; j0 += LM_QUERIES) {
            int qn = g - j0 < LM_QUERIES ? g - j0 : LM_QUERIES;
#ifdef __AVX512BF16__
            if (pairs) {
                const uint32_t *qj = qp + j0 * (d / 2);
                if (qn == 4) block_dots_bf16(qj, 4, blk, d, res); /* constant counts: accumulators stay in registers */
                else if (qn == 3) block_dots_bf16(qj, 3, blk, d, res);
                else if (qn == 2) block_dots_bf16(qj, 2, blk, d, res);
                else block_dots_bf16(qj, 1, blk, d, res);
            } else
#endif
            {
                const float *qj = q + (int64_t)j0 * d;
                if (qn == 4) block_dots(qj, 4, blk, d, res);
                else if (qn == 3) block_dots(qj, 3, blk, d, res);
                else if (qn == 2) block_dots(qj, 2, blk, d, res);
                else block_dots(qj, 1, blk, d, res);
            }
            for (int j = 0; j < qn; j++)
                for (int64_t l = 0; l < cnt; l++) out[(j0 + j) * out_stride + b * LM_BLOCK + l] = res[j][l] * scale;
        }
    }
}

/* ---- rows gathered from anywhere (the keys of a head's spans) ------------------------------ */
/* out[j * out_stride + k] = scale * (q_j . row_k) for cnt <= VL rows of the store dtype at rows[k]:
 * widened into L1 once (bfloat16), read by every query, their sums folded together. nv = d / VL
 * and dtype are constants where inlined. */
static inline __attribute__((always_inline)) void row_dots_nv(const void *const *rows, int cnt, const float *q, int g,
                                                              int d, float scale, float *out, int64_t out_stride,
                                                              const int dtype, const int nv) {
    float blk[VL * 256], folded[VL]; /* not zero-initialized: 8-16 KB */
    const float *r[VL];
    for (int k = 0; k < cnt; k++) {
        if (dtype != BF16) { r[k] = (const float *)rows[k]; continue; }
        for (int t = 0; t < nv; t++) st(blk + k * d + t * VL, ld_as(rows[k], t * VL, dtype));
        r[k] = blk + k * d;
    }
    for (int j = 0; j < g; j++) {
        const float *qj = q + (int64_t)j * d;
        vf acc[VL];
        for (int k = 0; k < VL; k++) {
            acc[k] = (vf){0};
            if (k < cnt)
                for (int t = 0; t < nv; t++) acc[k] += ld(qj + t * VL) * ld(r[k] + t * VL);
        }
        hsum_lanes(acc, folded);
        for (int k = 0; k < cnt; k++) out[j * out_stride + k] = folded[k] * scale;
    }
}

#ifdef __AVX512BF16__
/* row_dots_nv of bfloat16 rows for queries given as bfloat16 pairs qp [g][d/2] (d a multiple of 32). */
static inline void row_dots_bf16(const void *const *rows, int cnt, const uint32_t *qp, int g, int d, float scale,
                                 float *out, int64_t out_stride) {
    float folded[VL];
    for (int j = 0; j < g; j++) {
        const uint32_t *qj = qp + (int64_t)j * (d / 2);
        vf acc[VL];
        for (int k = 0; k < VL; k++) {
            __m512 a = _mm512_setzero_ps();
            for (int t = 0; k < cnt && t < d / 32; t++)
                a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(qj + t * 16),
                                     (__m512bh)_mm512_loadu_si512((const uint16_t *)rows[k] + t * 32));
            acc[k] = (vf)a;
        }
        hsum_lanes(acc, folded);
        for (int k = 0; k < cnt; k++) out[j * out_stride + k] = folded[k] * scale;
    }
}
#endif

/* row_dots_nv for any d and dtype; qp: the queries as bfloat16 pairs (bf16_pairs), or NULL. */
static inline void row_dots(const void *const *rows, int cnt, const float *q, const uint32_t *qp, int g, int d,
                            int dtype, float scale, float *out, int64_t out_stride) {
#ifdef __AVX512BF16__
    if (qp && dtype == BF16 && d % 32 == 0) { row_dots_bf16(rows, cnt, qp, g, d, scale, out, out_stride); return; }
#endif
    (void)qp;
    if (dtype == BF16) {
        if (d == 64) row_dots_nv(rows, cnt, q, g, 64, scale, out, out_stride, BF16, 64 / VL);
        else if (d == 128) row_dots_nv(rows, cnt, q, g, 128, scale, out, out_stride, BF16, 128 / VL);
        else row_dots_nv(rows, cnt, q, g, d, scale, out, out_stride, BF16, d / VL);
    } else {
        if (d == 64) row_dots_nv(rows, cnt, q, g, 64, scale, out, out_stride, F32, 64 / VL);
        else if (d == 128) row_dots_nv(rows, cnt, q, g, 128, scale, out, out_stride, F32, 128 / VL);
        else row_dots_nv(rows, cnt, q, g, d, scale, out, out_stride, F32, d / VL);
    }
}
