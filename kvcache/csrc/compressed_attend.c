/* One decode step of a compressed KV store (ShadowKV / NOSA) in one pass, on the CPU.
 *
 * The same math as kvcache/store.py's SequenceKvStore.attend (the PyTorch reference): landmark
 * scores (softmax over chunks per query head, max over the GQA group), chunk selection within
 * the token budget (ShadowKV) or under the locality constraint (NOSA), the NOSA resident-chunk
 * LRU, low-rank key rebuild + RoPE of the selected positions (or their exact keys from the offload
 * tier, NOSA with offload_keys), values from the resident / offload tiers, and exact softmax attention over selected + outliers + sinks + the local window.
 * Written for the ~15 small tensor passes the reference makes per step: here every selected
 * position is touched once. Rows are read in place (spans: sinks, outlier chunks, resident chunks,
 * the window), widened to float32 a block at a time; only rebuilt keys go through scratch.
 *
 * This file: key rebuild + RoPE, the spans, attention, one head's step and the batch entry point
 * (OpenMP); selection.c: scores, chunk selection and the LRU; step.h: the shared types.
 *
 * Rounding follows the reference: a rebuilt key is rounded to the store dtype, rotated in
 * float32 and rounded again; scores and attention are float32. Built by kvcache/native.py
 * (gcc -O3 -march=native), called through ctypes with one StepArgs (kvcache/native_step.py).
 */
#include "step.h"

/* Columns [0, tv * VL) of rows x [n][d] = coef [n][rank] @ b [rank][d] (b and x start at the tile's first
 * column): two rows at a time, 2 * tv accumulators plus two broadcasts held in registers. */
static inline __attribute__((always_inline)) void matmul_tile(const float *coef, int64_t n, int rank, const float *b,
                                                               float *x, int d, const int tv) {
    int64_t i = 0;
    for (; i + 2 <= n; i += 2) {
        vf acc0[MAX_NV], acc1[MAX_NV];
        for (int j = 0; j < tv; j++) acc0[j] = acc1[j] = (vf){0};
        const float *c0 = coef + i * rank, *c1 = c0 + rank;
        for (int r = 0; r < rank; r++) {
            vf s0 = splat(c0[r]), s1 = splat(c1[r]);
            for (int j = 0; j < tv; j++) {
                vf bj = ld(b + (int64_t)r * d + VL * j);
                acc0[j] += s0 * bj;
                acc1[j] += s1 * bj;
            }
        }
        for (int j = 0; j < tv; j++) { st(x + i * d + VL * j, acc0[j]); st(x + (i + 1) * d + VL * j, acc1[j]); }
    }
    for (; i < n; i++) {
        vf acc[MAX_NV];
        for (int j = 0; j < tv; j++) acc[j] = (vf){0};
        for (int r = 0; r < rank; r++)
            for (int j = 0; j < tv; j++) acc[j] += splat(coef[i * rank + r]) * ld(b + (int64_t)r * d + VL * j);
        for (int j = 0; j < tv; j++) st(x + i * d + VL * j, acc[j]);
    }
}

/* rows x [n][d] = coef [n][rank] @ b [rank][d] (nv = d / VL), in column tiles of at most 4 vectors: two
 * rows of a whole 64-wide row on AVX2 would need 16 accumulators, all 16 ymm registers, and spill. Each
 * element is the same sum in the same order whatever the tiling. */
static inline __attribute__((always_inline)) void matmul_rows_nv(const float *coef, int64_t n, int rank, const float *b,
                                                                  float *x, int d, const int nv) {
    const int tv = nv % 4 == 0 ? 4 : nv % 2 == 0 ? 2 : 1;
    for (int j0 = 0; j0 < nv; j0 += tv) matmul_tile(coef, n, rank, b + VL * j0, x + VL * j0, d, tv);
}

static void matmul_rows(const float *coef, int64_t n, int rank, const float *b, float *x, int d) {
    if (d == 64) matmul_rows_nv(coef, n, rank, b, x, 64, 64 / VL);
    else if (d == 128) matmul_rows_nv(coef, n, rank, b, x, 128, 128 / VL);
    else matmul_rows_nv(coef, n, rank, b, x, d, d / VL);
}

/* Post-RoPE keys of compressed positions pos[0..n) into keys [n][d] of the store dtype: pre-RoPE
 * key rebuilt from the factors (rounded to the store dtype) or read from the pending rows, then
 * rotated and rounded (in w->rebuilt, float32). */
static void rebuilt_keys(const StepArgs *a, int h, const int64_t *pos, int64_t n, Work *w, void *keys, int64_t at) {
    int d = a->d, half = d / 2;
    float *x0 = w->rebuilt;
    int64_t n_low = 0; /* positions come chunk by chunk, ascending: the fitted ones first */
    while (n_low < n && pos[n_low] < a->n_fit) n_low++;
    for (int64_t i = 0; i < n_low; i++)
        load_row(a->factor_a, a->dtype, pos[i] * a->rank, a->rank, w->coef + i * a->rank);
    matmul_rows(w->coef, n_low, a->rank, w->b, x0, d);
    for (int64_t i = 0; i < n_low; i++)
        for (int t = 0; t < d; t++) x0[i * d + t] = round_to(x0[i * d + t], a->dtype);
    for (int64_t i = n_low; i < n; i++)
        load_row(a->pending.ptr, a->dtype, h * a->pending.head_stride + (pos[i] - a->n_fit) * d, d, x0 + i * d);
    for (int64_t i = 0; i < n; i++) {
        float *x = x0 + i * d;
        const float *cs = a->rope_cos + pos[i] * half, *sn = a->rope_sin + pos[i] * half;
        for (int t = 0; t < half; t++) {
            float x1 = x[t], x2 = x[t + half];
            x[t] = x1 * cs[t] - x2 * sn[t];
            x[t + half] = x2 * cs[t] + x1 * sn[t];
        }
        store_row(keys, a->dtype, (at + i) * d, d, x); /* rounds to the store dtype */
    }
}

/* o_j [d] += sum_k p[j * p_stride + k] * vals_k for the g queries over n rows of the store dtype: VL
 * rows at a time (widened once), each query's accumulators in o_j between blocks (the same sums, in
 * the same order, as one pass per query). nv = d / VL and dtype are constants. */
static inline __attribute__((always_inline)) void add_weighted_nv(const float *p, int64_t p_stride, int g,
                                                                   const void *vals, int64_t n, int d, float *o,
                                                                   const int dtype, const int nv) {
    RowBlocks b; /* not zero-initialized: blk is 8-16 KB */
    b.rows = vals, b.n = n, b.i = b.cnt = 0;
    for (const float *r; (r = next_block(&b, d, dtype, nv));) {
        for (int j = 0; j < g; j++) {
            vf acc[MAX_NV];
            float *oj = o + (int64_t)j * d;
            const float *pj = p + j * p_stride + b.i;
            for (int t = 0; t < nv; t++) acc[t] = ld(oj + t * VL);
            for (int64_t k = 0; k < b.cnt; k++) {
                vf pk = splat(pj[k]);
                for (int t = 0; t < nv; t++) acc[t] += pk * ld(r + k * d + t * VL);
            }
            for (int t = 0; t < nv; t++) st(oj + t * VL, acc[t]);
        }
    }
}

static void add_weighted(const float *p, int64_t p_stride, int g, const void *vals, int dtype, int64_t n, int d,
                         float *o) {
    if (dtype == BF16) {
        if (d == 64) add_weighted_nv(p, p_stride, g, vals, n, 64, o, BF16, 64 / VL);
        else if (d == 128) add_weighted_nv(p, p_stride, g, vals, n, 128, o, BF16, 128 / VL);
        else add_weighted_nv(p, p_stride, g, vals, n, d, o, BF16, d / VL);
    } else {
        if (d == 64) add_weighted_nv(p, p_stride, g, vals, n, 64, o, F32, 64 / VL);
        else if (d == 128) add_weighted_nv(p, p_stride, g, vals, n, 128, o, F32, 128 / VL);
        else add_weighted_nv(p, p_stride, g, vals, n, d, o, F32, d / VL);
    }
}

/* Spans are scattered (resident slots, offloaded chunks): the rows (up to 4 KB) of the span
 * SPAN_AHEAD places on are fetched while this one is read (most spans are one chunk, 1-2 KB: one
 * span ahead leaves too few reads in flight to cover DRAM latency). */
enum { SPAN_AHEAD = 4 };
static inline size_t span_prefix(int64_t n, size_t row_bytes) {
    return (size_t)n * row_bytes < 4096 ? (size_t)n * row_bytes : 4096;
}
static inline void prefetch_span(const void *rows, int64_t n, size_t row_bytes) {
    prefetch_bytes(rows, span_prefix(n, row_bytes));
}

/* prefetch_span of spans [s, s + SPAN_AHEAD) at the start of a pass (k: keys, else values). */
static inline void prefetch_first_spans(const Span *spans, int64_t n_spans, int k, size_t row_bytes) {
    for (int64_t s = 0; s < n_spans && s < SPAN_AHEAD; s++) prefetch_span(k ? spans[s].k : spans[s].v, spans[s].rows, row_bytes);
}

/* logits [g][m] = scale * q_j . key_i for the m rows of the spans in order, VL rows at a time
 * across span boundaries (most spans are one chunk: fewer rows than a vector has lanes). */
static void span_dots(const StepArgs *a, const float *q, const Span *spans, int64_t n_spans, float *logits, int64_t m) {
    int g = a->group, d = a->d;
    size_t row_bytes = (size_t)d * (a->dtype == BF16 ? 2 : 4);
    uint32_t pairs[g * (d / 2)];
    const uint32_t *qp = a->dtype == BF16 && bf16_pairs(q, (int64_t)g * d, pairs) ? pairs : NULL;
    const void *rows[VL];
    int cnt = 0;
    int64_t at = 0;
    prefetch_first_spans(spans, n_spans, 1, row_bytes);
    for (int64_t s = 0; s < n_spans; s++) {
        if (s + SPAN_AHEAD < n_spans) prefetch_span(spans[s + SPAN_AHEAD].k, spans[s + SPAN_AHEAD].rows, row_bytes);
        /* this span's values, read by the second pass: into L2 now */
        prefetch_bytes_l2(spans[s].v, span_prefix(spans[s].rows, row_bytes));
        for (int64_t r = 0; r < spans[s].rows; r++) {
            rows[cnt++] = (const char *)spans[s].k + (size_t)r * row_bytes;
            if (cnt < VL) continue;
            row_dots(rows, VL, q, qp, g, d, a->dtype, a->scale, logits + at, m);
            at += VL, cnt = 0;
        }
    }
    if (cnt) row_dots(rows, cnt, q, qp, g, d, a->dtype, a->scale, logits + at, m);
}

/* Exact softmax attention of the head's g queries over the rows of its spans (read in place). */
static void attend_spans(const StepArgs *a, int h, const Span *spans, int64_t n_spans, int64_t m, Work *w) {
    int g = a->group, d = a->d;
    float *out = a->out + (int64_t)h * g * d, inv_z[g];
    const float *q = a->q + (int64_t)h * g * d;
    memset(out, 0, sizeof(float) * (size_t)(g * d));
    if (m == 0) return;
    span_dots(a, q, spans, n_spans, w->logits, m);
    for (int j = 0; j < g; j++) {
        float *lg = w->logits + j * m;
        exp_shifted(lg, lg, m, max_of(lg, m));
        inv_z[j] = 1.f / sum(lg, m);
    }
    size_t row_bytes = (size_t)d * (a->dtype == BF16 ? 2 : 4);
    prefetch_first_spans(spans, n_spans, 0, row_bytes);
    for (int64_t s = 0, at = 0; s < n_spans; at += spans[s++].rows) {
        if (s + SPAN_AHEAD < n_spans) prefetch_span(spans[s + SPAN_AHEAD].v, spans[s + SPAN_AHEAD].rows, row_bytes);
        add_weighted(w->logits + at, m, g, spans[s].v, a->dtype, spans[s].rows, d, out);
    }
    for (int j = 0; j < g; j++)
        for (int t = 0; t < d; t += VL) st(out + (int64_t)j * d + t, ld(out + (int64_t)j * d + t) * inv_z[j]);
}

static int gather_space(const StepArgs *a, int64_t C, int64_t m, int64_t n_sel, Work *w);

static int head_step(StepArgs *a, int h, int64_t C, Work *w) {
    int d = a->d, ch = a->chunk;
    int64_t ws = a->window_start, sinks = a->n_sink_stored < ws ? a->n_sink_stored : ws;
    int64_t n_sink_keep = a->n_sink < a->seq_len ? a->n_sink : a->seq_len;
    int64_t sinks_in_mask = n_sink_keep < ws ? n_sink_keep : ws;
    uint8_t *taken = a->chunk_mask + (int64_t)h * C;
    memset(taken, 0, (size_t)C);
    if (C > 0) {
        landmark_scores(a, h, C, w);
        mark_outliers(a, h, C, w);
        /* always kept: sinks, outlier chunks, window [seq_len - n_local.., counted from window_start) */
        int64_t keep = n_sink_keep + (a->seq_len - ws);
        for (int i = 0; i < a->n_outlier_chunks; i++) {
            int64_t c = a->outliers[(int64_t)h * a->n_outlier_chunks + i];
            keep += ch - sink_overlap(c, ch, n_sink_keep);
        }
        int64_t room = a->budget - keep;
        if (room < 0) return -1;
        if (a->max_change < 0) take_within(a, h, C, sinks_in_mask, room, taken, w);
        else take_constrained(a, h, C, sinks_in_mask, room / ch, taken, w);
        w->n_ids = nonzero_ids(taken, C, w->ids); /* the taken chunks, ascending */
        memset(w->fresh, 0, (size_t)C);
        if (a->resident_v) resident_step(a, h, w);
    }
    int64_t n_taken = 0; /* positions of the taken chunks (bounds the rebuilt rows) */
    for (int64_t i = 0; i < w->n_ids; i++) n_taken += ch - sink_overlap(w->ids[i], ch, sinks);
    if (gather_space(a, C, sinks + (int64_t)a->n_outlier_chunks * ch + n_taken + a->n_win, n_taken, w)) return -2;
    /* factor_b's columns of this head as float32 [rank, d] */
    for (int r = 0; r < a->rank; r++)
        load_row(a->factor_b, a->dtype, (int64_t)r * a->hkv * d + (int64_t)h * d, d, w->b + (int64_t)r * d);
    /* the rows attended, as spans read in place: sinks, outlier chunks, selected chunks (keys rebuilt
     * into w->keys, or, for chunks already resident with their keys, read there), the window */
    size_t es = a->dtype == BF16 ? 2 : 4;
#define AT(base, off) ((const char *)(base) + (size_t)(off) * es)
    Span *sp = w->spans;
    int64_t ns = 0, m = 0;
    if (sinks) sp[ns++] = (Span){AT(a->sink_k.ptr, h * a->sink_k.head_stride), AT(a->sink_v.ptr, h * a->sink_v.head_stride), sinks};
    int64_t out_elems = (int64_t)a->n_outlier_chunks * ch * d;
    for (int i = 0; i < a->n_outlier_chunks; i++) {
        int64_t c = a->outliers[(int64_t)h * a->n_outlier_chunks + i];
        int64_t t0 = sink_overlap(c, ch, sinks), t1 = ws - c * ch < ch ? ws - c * ch : ch;
        int64_t off = h * out_elems + ((int64_t)i * ch + t0) * d;
        if (t1 > t0) sp[ns++] = (Span){AT(a->outlier_k, off), AT(a->outlier_v, off), t1 - t0};
    }
    int64_t n_sel = 0, slot_elems = (int64_t)ch * d;
    for (int64_t i = 0; i < w->n_ids; i++) {
        int64_t c = w->ids[i], slot = a->resident_v ? a->slot_of[(int64_t)h * a->slot_cols + c] : -1;
        if (a->resident_k && slot >= 0 && !w->fresh[c]) continue;
        for (int t = 0; t < ch; t++)
            if (c * ch + t >= sinks) w->pos[n_sel++] = c * ch + t;
    }
    const int offloaded_keys = a->offload_k.ptr != NULL; /* exact keys read in place, nothing rebuilt */
    if (!offloaded_keys) rebuilt_keys(a, h, w->pos, n_sel, w, w->keys, 0);
    for (int64_t i = 0, run; i < n_sel; i += run) { /* one span per chunk: its keys (rebuilt or offloaded), its values */
        int64_t p = w->pos[i], c = p / ch;
        for (run = 1; i + run < n_sel && w->pos[i + run] / ch == c; run++) {}
        int64_t slot = a->resident_v ? a->slot_of[(int64_t)h * a->slot_cols + c] : -1;
        int64_t in_slot = ((int64_t)h * a->capacity + slot) * slot_elems + (p % ch) * d;
        const void *keys = offloaded_keys ? a->offload_k.ptr : w->keys;
        int64_t k_at = offloaded_keys ? h * a->offload_k.head_stride + p * d : i * d;
        if (slot >= 0) {
            sp[ns++] = (Span){AT(keys, k_at), AT(a->resident_v, in_slot), run};
            if (a->resident_k) copy_row(a->resident_k, keys, a->dtype, in_slot, k_at, (int)(run * d));
        } else {
            sp[ns++] = (Span){AT(keys, k_at), AT(a->offload_v.ptr, h * a->offload_v.head_stride + p * d), run};
            w->offload_bytes += (offloaded_keys ? 2 : 1) * run * d * (int64_t)es;
        }
    }
    /* resident chunks in slot order: ascending addresses, which the hardware prefetcher follows */
    const int64_t *slot_chunk = a->resident_k ? a->slot_chunk + (int64_t)h * a->capacity : NULL;
    for (int64_t slot = 0; a->resident_k && slot < a->capacity; slot++) {
        int64_t c = slot_chunk[slot];
        if (c < 0 || c >= C || !taken[c] || w->fresh[c]) continue;
        int64_t skip = sink_overlap(c, ch, sinks);
        int64_t in_slot = ((int64_t)h * a->capacity + slot) * slot_elems + skip * d;
        sp[ns++] = (Span){AT(a->resident_k, in_slot), AT(a->resident_v, in_slot), ch - skip};
    }
    if (a->n_win) sp[ns++] = (Span){AT(a->win_k.ptr, h * a->win_k.head_stride), AT(a->win_v.ptr, h * a->win_v.head_stride), a->n_win};
#undef AT
    for (int64_t s = 0; s < ns; s++) m += sp[s].rows;
    a->positions[h] = m;
    attend_spans(a, h, sp, ns, m, w);
    return 0;
}

/* A growable buffer of the calling thread (contents not kept when it grows). */
typedef struct {
    void *p;
    size_t bytes;
} Scratch;

enum { S_RANK, S_LOGITS, S_CAND, S_IDS, S_FRESH, S_OUTLIER, S_B, S_SIDE, S_KEYS, S_SPANS,
       S_REBUILT, S_COEF, S_POS, S_COUNT };

/* Per thread, kept across calls (the OpenMP threads persist): a step allocates nothing once the
 * buffers have grown to the largest step seen, so no page faults or heap trims per call. */
static __thread Scratch scratch[S_COUNT];

static void *reserve(int which, size_t bytes) {
    Scratch *s = &scratch[which];
    if (bytes > s->bytes) {
        free(s->p);
        s->bytes = bytes + bytes / 2 + 64;
        s->p = malloc(s->bytes);
        if (!s->p) s->bytes = 0;
    }
    return s->p;
}

/* The selection's scratch of a step with C chunks; 0, or -2 when memory runs out. */
static int selection_space(const StepArgs *a, int64_t C, Work *w) {
    size_t c1 = (size_t)C + 1, d = (size_t)a->d;
    memset(w, 0, sizeof *w);
    w->rank_score = (float *)reserve(S_RANK, sizeof(float) * c1);
    w->logits = (float *)reserve(S_LOGITS, sizeof(float) * (size_t)a->group * c1);
    w->cand = (Scored *)reserve(S_CAND, sizeof(Scored) * 2 * c1); /* NOSA: the previous chunks, then scratch */
    w->ids = (int32_t *)reserve(S_IDS, sizeof(int32_t) * c1);
    w->fresh = (uint8_t *)reserve(S_FRESH, c1);
    w->outlier = (uint8_t *)reserve(S_OUTLIER, c1);
    w->b = (float *)reserve(S_B, sizeof(float) * (size_t)(a->rank + 1) * d);
    w->side = (const char **)reserve(S_SIDE, sizeof(char *) * (2 * (size_t)a->capacity + 1));
    return (w->rank_score && w->logits && w->cand && w->ids && w->fresh && w->outlier
            && w->b && w->side) ? 0 : -2;
}

/* The gather's scratch: m rows at most, n_sel of them rebuilt, in at most 3 + outliers + C spans; 0, or -2. */
static int gather_space(const StepArgs *a, int64_t C, int64_t m, int64_t n_sel, Work *w) {
    size_t d = (size_t)a->d, cols = (size_t)(C > m ? C : m) + 1, es = a->dtype == BF16 ? 2 : 4;
    w->logits = (float *)reserve(S_LOGITS, sizeof(float) * (size_t)a->group * cols); /* landmark logits are spent */
    w->keys = reserve(S_KEYS, es * (size_t)(n_sel + 1) * d);
    w->spans = (Span *)reserve(S_SPANS, sizeof(Span) * (size_t)(C + a->n_outlier_chunks + 3));
    w->rebuilt = (float *)reserve(S_REBUILT, sizeof(float) * (size_t)(n_sel + 1) * d);
    w->coef = (float *)reserve(S_COEF, sizeof(float) * (size_t)(n_sel + 1) * (size_t)(a->rank + 1));
    w->pos = (int64_t *)reserve(S_POS, sizeof(int64_t) * (size_t)(n_sel + 1));
    return (w->logits && w->keys && w->spans && w->rebuilt && w->coef && w->pos) ? 0 : -2;
}

/* One head of one step: head_step on this thread's scratch, its counters added to the step's. */
static int run_head(StepArgs *a, int h) {
    int64_t C = a->window_start / a->chunk;
    Work w;
    int rc = selection_space(a, C, &w);
    if (rc) return rc;
    rc = head_step(a, h, C, &w);
    __atomic_fetch_add(&a->offload_bytes, w.offload_bytes, __ATOMIC_RELAXED);
    __atomic_fetch_add(&a->hits, w.hits, __ATOMIC_RELAXED);
    __atomic_fetch_add(&a->misses, w.misses, __ATOMIC_RELAXED);
    __atomic_fetch_add(&a->filled, w.filled, __ATOMIC_RELAXED);
    return rc;
}

/* n independent steps (distinct stores: each step writes its store's NOSA tables), one KV head of
 * one step per work unit, over up to `threads` OpenMP threads. The library links libgomp.so.1 by
 * name, so in a PyTorch process it shares PyTorch's OpenMP runtime and its (pinned, spinning)
 * threads. rc[i]: 0, -1 when the always-kept positions exceed the budget, -2 on allocation failure. */
int compressed_attend_many(StepArgs *args, int n, int threads, int32_t *rc) {
    int hkv_max = 1;
    for (int i = 0; i < n; i++) {
        args[i].offload_bytes = args[i].hits = args[i].misses = args[i].filled = 0;
        rc[i] = 0;
        if (args[i].hkv > hkv_max) hkv_max = args[i].hkv;
    }
    int units = n * hkv_max;
    if (threads > units) threads = units;
    if (threads < 1) threads = 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int u = 0; u < units; u++) {
        int i = u / hkv_max, h = u % hkv_max;
        if (h >= args[i].hkv) continue;
        int r = run_head(&args[i], h);
        if (r) __atomic_store_n(&rc[i], r, __ATOMIC_RELAXED);
    }
    return threads;
}
