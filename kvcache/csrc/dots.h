/* Dot products of a head's queries with many rows: int8 landmarks in blocks (selection.c) and keys
 * gathered across spans (compressed_attend.c). Landmark scores are exact integer dot products of the
 * int16-quantized query with 16 landmarks at a time, one per 32-bit lane (AVX512-VNNI or AVX2: a pair
 * of dims per multiply-add). Key dots accumulate one row per vector lane and fold VL rows' sums together, so
 * no row pays a horizontal sum of its own; with AVX512-BF16 and bfloat16-exact queries (a bfloat16
 * store's) a pair of dims is multiplied in one instruction (products exact either way; sums in
 * another order). Static functions, included once. */
#pragma once
#include <string.h>
#include "vec_math.h"
#if defined(__AVX512BF16__) || defined(__AVX512VNNI__) || defined(__AVX2__)
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

/* ---- int8 landmarks in blocks (kvcache/buffers.py LandmarkBuffer) -------------------------- */
enum { LM_BLOCK = 16 }; /* landmarks per block */
#define LM_QUERIES 4    /* queries scored together */
#define QUERY_LEVELS 32767.f /* kvcache/landmarks.py QUERY_LEVELS */
#define QUANT_TINY 1e-30f    /* kvcache/landmarks.py _TINY */

/* q [d] as int16 values q16 [d] (round half to even); returns the scale max|q| / 32767 (0 for a zero
 * query). The same float32 operations as kvcache/landmarks.py quantize_queries. */
static inline float quantize_query(const float *q, int d, int16_t *q16) {
    float amax = 0.f;
    for (int t = 0; t < d; t++) amax = fabsf(q[t]) > amax ? fabsf(q[t]) : amax;
    float inv = QUERY_LEVELS / (amax > QUANT_TINY ? amax : QUANT_TINY); /* finite: a zero query stays 0 */
    for (int t = 0; t < d; t++) {
        float r = nearbyintf(q[t] * inv);
        q16[t] = (int16_t)(r > QUERY_LEVELS ? QUERY_LEVELS : r < -QUERY_LEVELS ? -QUERY_LEVELS : r);
    }
    return amax / QUERY_LEVELS;
}

/* res[j][l] = q16_j . L_l (exact int32) for qn (a constant where inlined) int16 queries q16 [qn][d]
 * and the 16 int8 landmarks of one block blk [d/2][16][2], one per lane: each 16-bit unit of the
 * block holds a landmark's dims 2t (low byte) and 2t + 1 (high byte). */
typedef int16_t vh16 __attribute__((vector_size(VL * 2), aligned(2)));
typedef int32_t vi32 __attribute__((vector_size(VL * 4)));
typedef uint32_t vu32 __attribute__((vector_size(VL * 4)));
static inline __attribute__((always_inline)) void block_dots_i8(const int16_t *q16, int qn, const int8_t *blk, int d,
                                                                int32_t res[LM_QUERIES][LM_BLOCK]) {
    enum { NA = LM_BLOCK / VL };
    vi32 acc[LM_QUERIES][NA];
    for (int j = 0; j < LM_QUERIES; j++)
        for (int u = 0; u < NA; u++) acc[j][u] = (vi32){0};
    for (int t = 0; t < d / 2; t++) {
        for (int u = 0; u < NA; u++) {
            vi32 w = __builtin_convertvector(*(const vh16 *)(blk + (t * LM_BLOCK + u * VL) * 2), vi32);
            vi32 even = (vi32)((vu32)w << 24) >> 24, odd = w >> 8; /* the two sign-extended bytes */
            for (int j = 0; j < qn; j++) acc[j][u] += even * q16[j * d + 2 * t] + odd * q16[j * d + 2 * t + 1];
        }
    }
    for (int j = 0; j < qn; j++)
        for (int u = 0; u < NA; u++) memcpy(res[j] + u * VL, &acc[j][u], sizeof acc[j][u]);
}

#if defined(__AVX512VNNI__) || defined(__AVX2__)
#define LM_PAIRS 1 /* the query as int16 pairs qp (two in 32 bits) times the widened landmark pairs */
/* block_dots_i8 in integer multiply-adds of pairs: a pair of dims of the 16 landmarks, widened to
 * int16, times the query's pair qp in one vpdpwssd (AVX512-VNNI) or vpmaddwd + vpaddd per 8 lanes
 * (AVX2): the same exact sums. */
static inline __attribute__((always_inline)) void block_dots_pairs(const uint32_t *qp, int qn, const int8_t *blk, int d,
                                                                   int32_t res[LM_QUERIES][LM_BLOCK]) {
#ifdef __AVX512VNNI__
    __m512i acc[LM_QUERIES][2]; /* two chains per query: even and odd pairs */
    for (int j = 0; j < LM_QUERIES; j++) acc[j][0] = acc[j][1] = _mm512_setzero_si512();
    for (int t = 0; t < d / 2; t += 2) {
        __m512i x0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(blk + t * LM_BLOCK * 2)));
        __m512i x1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(blk + (t + 1) * LM_BLOCK * 2)));
        for (int j = 0; j < qn; j++) {
            acc[j][0] = _mm512_dpwssd_epi32(acc[j][0], x0, _mm512_set1_epi32((int)qp[j * (d / 2) + t]));
            acc[j][1] = _mm512_dpwssd_epi32(acc[j][1], x1, _mm512_set1_epi32((int)qp[j * (d / 2) + t + 1]));
        }
    }
    for (int j = 0; j < qn; j++) _mm512_storeu_si512(res[j], _mm512_add_epi32(acc[j][0], acc[j][1]));
#else
    __m256i acc[LM_QUERIES][2]; /* landmarks 0-7 and 8-15 of the block */
    for (int j = 0; j < LM_QUERIES; j++) acc[j][0] = acc[j][1] = _mm256_setzero_si256();
    for (int t = 0; t < d / 2; t++) {
        const int8_t *row = blk + t * LM_BLOCK * 2;
        __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)row));
        __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + 16)));
        for (int j = 0; j < qn; j++) {
            __m256i qv = _mm256_set1_epi32((int)qp[j * (d / 2) + t]);
            acc[j][0] = _mm256_add_epi32(acc[j][0], _mm256_madd_epi16(x0, qv));
            acc[j][1] = _mm256_add_epi32(acc[j][1], _mm256_madd_epi16(x1, qv));
        }
    }
    for (int j = 0; j < qn; j++) {
        _mm256_storeu_si256((__m256i *)res[j], acc[j][0]);
        _mm256_storeu_si256((__m256i *)(res[j] + 8), acc[j][1]);
    }
#endif
}
#endif

/* Memory that a step reads after its landmark scores, fetched into L2 while they stream: n pieces
 * of `bytes` bytes from at[0..n). */
typedef struct {
    const char *const *at;
    int64_t n;
    size_t bytes;
} SidePrefetch;

/* out[j * out_stride + i] = ((q16_j . L_i * sq_j) * lscale_i) * scale for g float32 queries q [g][d]
 * (quantize_query: q16_j, sq_j) and n int8 landmarks in blocks ([ceil(n/16)][d/2][16][2], scales
 * lscale [ceil(n/16) * 16]): kvcache/landmarks.py Int8Landmarks.logits, bit for bit. d is even
 * (a multiple of 4 for VNNI); lanes past n are computed and dropped. side (or NULL): spread over the
 * blocks, a few pieces per block (the scores are compute-light, so the memory system has room for
 * a second stream). */
static void landmark_dots(const float *q, int g, const int8_t *blocks, const float *lscale, int64_t n, int d,
                          float scale, float *out, int64_t out_stride, const SidePrefetch *side) {
    int64_t n_blocks = (n + LM_BLOCK - 1) / LM_BLOCK, side_at = 0;
    int64_t side_per_block = side && n_blocks ? (side->n + n_blocks - 1) / n_blocks : 0;
    int16_t q16[g * d];
    float sq[g];
    for (int j = 0; j < g; j++) sq[j] = quantize_query(q + (int64_t)j * d, d, q16 + (int64_t)j * d);
#ifdef LM_PAIRS
    uint32_t qp[g * (d / 2)];
    for (int i = 0; i < g * (d / 2); i++) qp[i] = (uint16_t)q16[2 * i] | (uint32_t)(uint16_t)q16[2 * i + 1] << 16;
    const int pairs = d % 4 == 0;
#endif
    int32_t res[LM_QUERIES][LM_BLOCK];
    size_t block_bytes = (size_t)d * LM_BLOCK;
    for (int64_t b = 0; b < n_blocks; b++) {
        const int8_t *blk = blocks + b * (int64_t)block_bytes;
        int64_t cnt = n - b * LM_BLOCK < LM_BLOCK ? n - b * LM_BLOCK : LM_BLOCK;
        prefetch_bytes(blk + 2 * block_bytes, block_bytes); /* two blocks ahead (cold DRAM) */
        for (int64_t k = 0; k < side_per_block && side_at < side->n; k++) prefetch_bytes_l2(side->at[side_at++], side->bytes);
        for (int j0 = 0; j0 < g; j0 += LM_QUERIES) {
            int qn = g - j0 < LM_QUERIES ? g - j0 : LM_QUERIES;
#ifdef LM_PAIRS
            if (pairs) {
                const uint32_t *qj = qp + j0 * (d / 2);
                if (qn == 4) block_dots_pairs(qj, 4, blk, d, res); /* constant counts: accumulators stay in registers */
                else if (qn == 3) block_dots_pairs(qj, 3, blk, d, res);
                else if (qn == 2) block_dots_pairs(qj, 2, blk, d, res);
                else block_dots_pairs(qj, 1, blk, d, res);
            } else
#endif
            {
                const int16_t *qj = q16 + (int64_t)j0 * d;
                if (qn == 4) block_dots_i8(qj, 4, blk, d, res);
                else if (qn == 3) block_dots_i8(qj, 3, blk, d, res);
                else if (qn == 2) block_dots_i8(qj, 2, blk, d, res);
                else block_dots_i8(qj, 1, blk, d, res);
            }
            for (int j = 0; j < qn; j++)
                for (int64_t l = 0; l < cnt; l++)
                    out[(j0 + j) * out_stride + b * LM_BLOCK + l] = (float)res[j][l] * sq[j0 + j] * lscale[b * LM_BLOCK + l] * scale;
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
