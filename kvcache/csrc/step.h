/* Types shared by the decode-step kernel's files: the step's arguments (mirrored by
 * kvcache/native_step.py's _StepArgs), one head's scratch, and the selection stage's entry points. */
#ifndef SPARSE_SERVE_STEP_H
#define SPARSE_SERVE_STEP_H

#include "dots.h"

typedef struct {
    const void *ptr;   /* element type: the store dtype unless stated */
    int64_t head_stride; /* elements between heads */
} HeadRows;

typedef struct {
    int32_t hkv, group, d, dtype, chunk, max_change; /* max_change < 0: ShadowKV selection */
    int32_t budget, n_sink, rank, n_outlier_chunks, capacity, prev_chunks;
    int64_t seq_len, window_start, n_fit, n_pending, n_win, n_sink_stored, slot_cols, clock;
    float scale;
    const float *q;            /* [hkv*group, d] float32 */
    float *out;                /* [hkv*group, d] float32 */
    HeadRows landmarks;        /* [hkv][C = window_start / chunk][d] int8, blocked: dots.h landmark_dots */
    HeadRows landmark_scale;   /* [hkv][C] float32 (the same blocks of 16) */
    const int64_t *outliers;   /* [hkv, n_outlier_chunks] chunk ids, ascending */
    const void *outlier_k, *outlier_v; /* [hkv, n_outlier_chunks*chunk, d] contiguous */
    const void *factor_a;      /* [n_fit, rank] */
    const void *factor_b;      /* [rank, hkv*d] */
    HeadRows pending;          /* [hkv][n_pending][d] pre-RoPE keys of positions n_fit.. */
    const float *rope_cos, *rope_sin; /* [>= window_start, d/2] float32 */
    HeadRows sink_k, sink_v;   /* [hkv][n_sink_stored][d] */
    HeadRows win_k, win_v;     /* [hkv][n_win][d] post-RoPE, positions window_start.. */
    HeadRows offload_v;        /* [hkv][window_start][d] */
    HeadRows offload_k;        /* [hkv][window_start][d] exact post-RoPE keys (NOSA offload_keys), or ptr NULL */
    const uint8_t *previous;   /* [hkv, prev_chunks] or NULL (NOSA) */
    uint8_t *chunk_mask;       /* out: [hkv, C] chunks taken */
    int64_t *slot_of, *slot_chunk, *last_used; /* NOSA LRU: [hkv, slot_cols], [hkv, capacity] x2 */
    void *resident_v;          /* [hkv, capacity, chunk, d] or NULL */
    void *resident_k;          /* [hkv, capacity, chunk, d] post-RoPE keys of resident chunks, or NULL */
    int64_t *positions;        /* out: [hkv] positions read */
    int64_t offload_bytes, hits, misses, filled; /* out */
} StepArgs;

/* ---- per head ------------------------------------------------------------------------------ */
/* rows consecutive keys and values of the store dtype, read in place (from k and v) by the attention. */
typedef struct Span {
    const void *k, *v;
    int64_t rows;
} Span;

/* Scratch of one head's step: pointers into the calling thread's buffers (compressed_attend.c),
 * which persist across calls and only grow. Sizes: C chunks, M gathered rows, S selected positions. */
typedef struct {
    float *rank_score;  /* [C] max over the group of log-softmax landmark scores */
    float *logits;      /* [group, C] then [group, M] */
    Scored *cand;       /* [2 * (C + 1)] candidates and scratch of the selection */
    int32_t *ids;       /* [C] chunk ids: the best ones during the selection, then the taken ones, ascending */
    int64_t n_ids;      /* taken chunks (after the selection) */
    uint8_t *fresh;     /* [C] chunks made resident this step */
    uint8_t *outlier;   /* [C] outlier chunks of this head */
    float *b;           /* [rank, d] this head's columns of factor_b */
    void *keys;         /* [S, d] rebuilt keys, store dtype (set after the selection) */
    float *rebuilt;     /* [S, d] the same before rounding (idem) */
    struct Span *spans; /* the rows attended (idem) */
    float *coef;        /* [S, rank] factor rows of the selected positions (idem) */
    int64_t *pos;       /* [S] selected compressed positions (idem) */
    const char **side; /* [2 * capacity] resident rows to prefetch during the landmark scores */
    int64_t offload_bytes, hits, misses, filled; /* this head's share of the StepArgs counters */
} Work;

/* Positions of chunk c (of ch tokens) below `sinks`, i.e. already kept as sinks. */
static inline int64_t sink_overlap(int64_t c, int ch, int64_t sinks) {
    int64_t n = sinks - c * ch;
    return n <= 0 ? 0 : (n < ch ? n : ch);
}

/* Ascending indices of the nonzero bytes of m[0..n) into ids; their count. Eight bytes at a time
 * (a step takes a few hundred of thousands of chunks). */
static inline int64_t nonzero_ids(const uint8_t *m, int64_t n, int32_t *ids) {
    int64_t k = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, m + i, 8);
        while (word) {
            int bit = __builtin_ctzll(word) & ~7; /* the byte's first bit: the whole byte is cleared */
            ids[k++] = (int32_t)(i + bit / 8);
            word &= ~(0xFFull << bit);
        }
    }
    for (; i < n; i++) if (m[i]) ids[k++] = (int32_t)i;
    return k;
}

/* ---- selection.c: which compressed chunks a head reads this step ------------------------- */
void landmark_scores(const StepArgs *a, int h, int64_t C, Work *w);
void mark_outliers(const StepArgs *a, int h, int64_t C, Work *w);
void take_within(const StepArgs *a, int h, int64_t C, int64_t sinks, int64_t room, uint8_t *taken, Work *w);
void take_constrained(const StepArgs *a, int h, int64_t C, int64_t sinks, int64_t count, uint8_t *taken, Work *w);
void resident_step(StepArgs *a, int h, Work *w);

#endif
