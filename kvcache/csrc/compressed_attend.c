/* One decode step of a compressed KV store (ShadowKV / NOSA) in one pass, on the CPU.
 *
 * The same math as kvcache/store.py's SequenceKvStore.attend (the PyTorch reference): landmark
 * scores (softmax over chunks per query head, max over the GQA group), chunk selection within
 * the token budget (ShadowKV) or under the locality constraint (NOSA), the NOSA resident-chunk
 * LRU, low-rank key rebuild + RoPE of the selected positions, values from the resident / offload
 * tiers, and exact softmax attention over selected + outliers + sinks + the local window.
 * Written for the ~15 small tensor passes the reference makes per step: here every selected
 * position is touched once, in float32, with no temporaries beyond one head's rows.
 *
 * Rounding follows the reference: a rebuilt key is rounded to the store dtype, rotated in
 * float32 and rounded again; scores and attention are float32. Built by kvcache/native.py
 * (gcc -O3 -march=native), called through ctypes with one StepArgs (kvcache/native_step.py).
 */
#include "vec_math.h"

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
    HeadRows landmarks;        /* [hkv][C = window_start / chunk][d] */
    const int64_t *outliers;   /* [hkv, n_outlier_chunks] chunk ids, ascending */
    const void *outlier_k, *outlier_v; /* [hkv, n_outlier_chunks*chunk, d] contiguous */
    const void *factor_a;      /* [n_fit, rank] */
    const void *factor_b;      /* [rank, hkv*d] */
    HeadRows pending;          /* [hkv][n_pending][d] pre-RoPE keys of positions n_fit.. */
    const float *rope_cos, *rope_sin; /* [>= window_start, d/2] float32 */
    HeadRows sink_k, sink_v;   /* [hkv][n_sink_stored][d] */
    HeadRows win_k, win_v;     /* [hkv][n_win][d] post-RoPE, positions window_start.. */
    HeadRows offload_v;        /* [hkv][window_start][d] */
    const uint8_t *previous;   /* [hkv, prev_chunks] or NULL (NOSA) */
    uint8_t *chunk_mask;       /* out: [hkv, C] chunks taken */
    int64_t *slot_of, *slot_chunk, *last_used; /* NOSA LRU: [hkv, slot_cols], [hkv, capacity] x2 */
    void *resident_v;          /* [hkv, capacity, chunk, d] or NULL */
    void *resident_k;          /* [hkv, capacity, chunk, d] post-RoPE keys of resident chunks, or NULL */
    int64_t *positions;        /* out: [hkv] positions read */
    int64_t offload_bytes, hits, misses, filled; /* out */
} StepArgs;

/* ---- per head ------------------------------------------------------------------------------ */
typedef struct {
    float *rank_score;  /* [C] max over the group of log-softmax landmark scores */
    float *cand_exp;    /* [C] */
    float *logits;      /* [group, C] then [group, M] */
    Scored *cand;       /* [C] */
    uint8_t *in_prev;   /* [C] */
    float *keys, *vals; /* [M, d] */
    float *b;           /* [rank, d] this head's columns of factor_b */
    float *coef;        /* [C * chunk, rank] factor rows of the selected positions */
    int64_t *pos;       /* [C * chunk] selected compressed positions */
    uint8_t *fresh;     /* [C] chunks made resident this step */
    float *row;         /* [d] */
    float *block;       /* [16, d] */
} Work;

static int is_outlier_chunk(const StepArgs *a, int h, int64_t c) {
    const int64_t *o = a->outliers + (int64_t)h * a->n_outlier_chunks;
    for (int i = 0; i < a->n_outlier_chunks; i++) if (o[i] == c) return 1;
    return 0;
}

static void landmark_scores(const StepArgs *a, int h, int64_t C, Work *w) {
    int g = a->group, d = a->d;
    int64_t c = 0;
    for (; c + 16 <= C; c += 16) { /* 16 landmarks per block: their dots folded together */
        for (int k = 0; k < 16; k++)
            load_row(a->landmarks.ptr, a->dtype, h * a->landmarks.head_stride + (c + k) * d, d, w->block + k * d);
        for (int j = 0; j < g; j++) {
            const float *q = a->q + (int64_t)(h * g + j) * d;
            v16 acc[16];
            for (int k = 0; k < 16; k++) {
                acc[k] = (v16){0};
                for (int i = 0; i < d; i += 16) acc[k] += ld(q + i) * ld(w->block + k * d + i);
            }
            hsum16(acc, w->logits + j * C + c);
            for (int k = 0; k < 16; k++) w->logits[j * C + c + k] *= a->scale;
        }
    }
    for (; c < C; c++) {
        load_row(a->landmarks.ptr, a->dtype, h * a->landmarks.head_stride + c * d, d, w->row);
        for (int j = 0; j < g; j++) w->logits[j * C + c] = dot(a->q + (int64_t)(h * g + j) * d, w->row, d) * a->scale;
    }
    for (int64_t c = 0; c < C; c++) w->rank_score[c] = -INFINITY;
    for (int j = 0; j < g; j++) {
        float *s = w->logits + j * C, m = -INFINITY, z = 0.f;
        for (int64_t c = 0; c < C; c++) m = s[c] > m ? s[c] : m;
        for (int64_t c = 0; c < C; c++) w->cand_exp[c] = exp_neg(s[c] - m);
        z = sum(w->cand_exp, C);
        float lse = m + logf(z);
        for (int64_t c = 0; c < C; c++) {
            float v = s[c] - lse;
            if (v > w->rank_score[c]) w->rank_score[c] = v;
        }
    }
}

/* ShadowKV: chunks in score order while their not-yet-kept positions fit in the room. */
static void take_within(const StepArgs *a, int h, int64_t C, int64_t sinks, int64_t room, uint8_t *taken, Work *w) {
    int n = 0, shorter = 0, full = 0;
    for (int64_t c = 0; c < C; c++) {
        if (is_outlier_chunk(a, h, c)) continue;
        int64_t kept = c * a->chunk < sinks ? (sinks - c * a->chunk < a->chunk ? sinks - c * a->chunk : a->chunk) : 0;
        int cnt = a->chunk - (int)kept;
        if (cnt <= 0) continue;
        if (cnt > full) full = cnt;
        w->cand[n++] = (Scored){w->rank_score[c], (int32_t)c};
    }
    if (!n || room <= 0) return;
    for (int i = 0; i < n; i++) shorter += (int64_t)w->cand[i].i * a->chunk < sinks;
    int k = (int)(room / full) + shorter + 1;
    if (k > n) k = n;
    select_best(w->cand, n, k);
    qsort(w->cand, (size_t)k, sizeof(Scored), cmp_desc);
    int64_t used = 0;
    for (int i = 0; i < k; i++) {
        int64_t c = w->cand[i].i;
        int64_t kept = c * a->chunk < sinks ? sinks - c * a->chunk : 0;
        used += a->chunk - (kept < a->chunk ? kept : a->chunk);
        if (used > room) break;
        taken[c] = 1;
    }
}

/* The k best of the chunks flagged in allow (or all eligible when allow is NULL), marked in out. */
static void best_of(const StepArgs *a, int h, int64_t C, int64_t sinks, const uint8_t *allow, int64_t k, uint8_t *out, Work *w) {
    int n = 0;
    if (k <= 0) return;
    for (int64_t c = 0; c < C; c++) {
        if (allow && !allow[c]) continue;
        int sink_only = (c + 1) * a->chunk <= sinks;
        if (sink_only || is_outlier_chunk(a, h, c)) continue;
        w->cand[n++] = (Scored){w->rank_score[c], (int32_t)c};
    }
    if (k > n) k = n;
    select_best(w->cand, n, (int)k);
    for (int i = 0; i < k; i++) out[w->cand[i].i] = 1;
}

/* NOSA: top `count`, at most max_change of them new against the previous step's set. */
static void take_constrained(const StepArgs *a, int h, int64_t C, int64_t sinks, int64_t count, uint8_t *taken, Work *w) {
    if (count < 0) count = 0;
    if (!a->previous) { best_of(a, h, C, sinks, NULL, count, taken, w); return; }
    uint8_t *top = (uint8_t *)calloc((size_t)C + 1, 1);
    best_of(a, h, C, sinks, NULL, count, top, w);
    memset(w->in_prev, 0, (size_t)C);
    for (int64_t c = 0; c < a->prev_chunks && c < C; c++) w->in_prev[c] = a->previous[(int64_t)h * a->prev_chunks + c];
    int64_t n_cand = 0;
    for (int64_t c = 0; c < C; c++) {
        top[c] = top[c] && !w->in_prev[c];
        n_cand += top[c];
    }
    int64_t admit = n_cand < a->max_change ? n_cand : a->max_change;
    best_of(a, h, C, sinks, top, admit, taken, w);
    best_of(a, h, C, sinks, w->in_prev, count - admit, taken, w);
    free(top);
}

/* LRU of resident chunks (kvcache/resident.py): hits refresh, misses take the least recently used free slots. */
static void resident_step(StepArgs *a, int h, int64_t C, const uint8_t *taken, uint8_t *fresh) {
    int64_t *slot_of = a->slot_of + (int64_t)h * a->slot_cols;
    int64_t *slot_chunk = a->slot_chunk + (int64_t)h * a->capacity, *last = a->last_used + (int64_t)h * a->capacity;
    int64_t chunk_elems = (int64_t)a->chunk * a->d;
    for (int64_t c = 0; c < C; c++) if (taken[c] && slot_of[c] >= 0) { last[slot_of[c]] = a->clock; a->hits++; }
    for (int64_t c = 0; c < C; c++) {
        if (!taken[c] || slot_of[c] >= 0) continue;
        a->misses++;
        int best = -1;
        for (int s = 0; s < a->capacity; s++)
            if (last[s] < a->clock && (best < 0 || last[s] < last[best])) best = s;
        if (best < 0) continue; /* more chunks than slots: read uncached */
        if (slot_chunk[best] >= 0) slot_of[slot_chunk[best]] = -1;
        slot_chunk[best] = c;
        slot_of[c] = best;
        last[best] = a->clock;
        fresh[c] = 1;
        for (int t = 0; t < a->chunk; t++)
            copy_row(a->resident_v, a->offload_v.ptr, a->dtype, ((int64_t)h * a->capacity + best) * chunk_elems + (int64_t)t * a->d,
                     h * a->offload_v.head_stride + c * a->chunk * a->d + (int64_t)t * a->d, a->d);
        a->filled++;
    }
}

/* rows x [n][d] += coef [n][rank] @ b [rank][d], two rows at a time in registers (nv = d / 16). */
static inline __attribute__((always_inline)) void matmul_rows_nv(const float *coef, int64_t n, int rank, const float *b,
                                                                  float *x, int d, const int nv) {
    int64_t i = 0;
    for (; i + 2 <= n; i += 2) {
        v16 acc0[MAX_NV], acc1[MAX_NV];
        for (int j = 0; j < nv; j++) acc0[j] = acc1[j] = (v16){0};
        const float *c0 = coef + i * rank, *c1 = c0 + rank;
        for (int r = 0; r < rank; r++) {
            v16 s0 = splat(c0[r]), s1 = splat(c1[r]);
            for (int j = 0; j < nv; j++) {
                v16 bj = ld(b + (int64_t)r * d + 16 * j);
                acc0[j] += s0 * bj;
                acc1[j] += s1 * bj;
            }
        }
        for (int j = 0; j < nv; j++) { st(x + i * d + 16 * j, acc0[j]); st(x + (i + 1) * d + 16 * j, acc1[j]); }
    }
    for (; i < n; i++) {
        v16 acc[MAX_NV];
        for (int j = 0; j < nv; j++) acc[j] = (v16){0};
        for (int r = 0; r < rank; r++)
            for (int j = 0; j < nv; j++) acc[j] += splat(coef[i * rank + r]) * ld(b + (int64_t)r * d + 16 * j);
        for (int j = 0; j < nv; j++) st(x + i * d + 16 * j, acc[j]);
    }
}

static void matmul_rows(const float *coef, int64_t n, int rank, const float *b, float *x, int d) {
    if (d == 64) matmul_rows_nv(coef, n, rank, b, x, 64, 4);
    else if (d == 128) matmul_rows_nv(coef, n, rank, b, x, 128, 8);
    else matmul_rows_nv(coef, n, rank, b, x, d, d / 16);
}

/* Post-RoPE keys of compressed positions pos[0..n) into keys [n][d]: pre-RoPE key rebuilt from the
 * factors (rounded to the store dtype) or read from the pending rows, then rotated and rounded. */
static void rebuilt_keys(const StepArgs *a, int h, const int64_t *pos, int64_t n, Work *w, float *keys) {
    int d = a->d, half = d / 2;
    int64_t n_low = 0; /* positions come chunk by chunk, ascending: the fitted ones first */
    while (n_low < n && pos[n_low] < a->n_fit) n_low++;
    for (int64_t i = 0; i < n_low; i++)
        load_row(a->factor_a, a->dtype, pos[i] * a->rank, a->rank, w->coef + i * a->rank);
    matmul_rows(w->coef, n_low, a->rank, w->b, keys, d);
    for (int64_t i = 0; i < n_low; i++)
        for (int t = 0; t < d; t++) keys[i * d + t] = round_to(keys[i * d + t], a->dtype);
    for (int64_t i = n_low; i < n; i++)
        load_row(a->pending.ptr, a->dtype, h * a->pending.head_stride + (pos[i] - a->n_fit) * d, d, keys + i * d);
    for (int64_t i = 0; i < n; i++) {
        float *x = keys + i * d;
        const float *cs = a->rope_cos + pos[i] * half, *sn = a->rope_sin + pos[i] * half;
        for (int t = 0; t < half; t++) {
            float x1 = x[t], x2 = x[t + half];
            x[t] = round_to(x1 * cs[t] - x2 * sn[t], a->dtype);
            x[t + half] = round_to(x2 * cs[t] + x1 * sn[t], a->dtype);
        }
    }
}

static inline __attribute__((always_inline)) void weighted_sum_nv(const float *p, const float *vals, int64_t m, int d,
                                                                   float inv_z, float *o, const int nv) {
    v16 acc[MAX_NV];
    for (int j = 0; j < nv; j++) acc[j] = (v16){0};
    for (int64_t i = 0; i < m; i++) {
        v16 pi = splat(p[i]);
        for (int j = 0; j < nv; j++) acc[j] += pi * ld(vals + i * d + 16 * j);
    }
    for (int j = 0; j < nv; j++) st(o + 16 * j, acc[j] * inv_z);
}

static void attend_rows(const StepArgs *a, int h, int64_t m, Work *w) {
    int g = a->group, d = a->d;
    for (int j = 0; j < g; j++) {
        const float *q = a->q + (int64_t)(h * g + j) * d;
        float *lg = w->logits, mx = -INFINITY;
        float *o = a->out + (int64_t)(h * g + j) * d;
        if (m == 0) { memset(o, 0, sizeof(float) * (size_t)d); continue; }
        for (int64_t i = 0; i < m; i++) {
            lg[i] = dot(q, w->keys + i * d, d) * a->scale;
            mx = lg[i] > mx ? lg[i] : mx;
        }
        for (int64_t i = 0; i < m; i++) lg[i] = exp_neg(lg[i] - mx);
        float inv_z = 1.f / sum(lg, m);
        if (d == 64) weighted_sum_nv(lg, w->vals, m, 64, inv_z, o, 4);
        else if (d == 128) weighted_sum_nv(lg, w->vals, m, 128, inv_z, o, 8);
        else weighted_sum_nv(lg, w->vals, m, d, inv_z, o, d / 16);
    }
}

static int head_step(StepArgs *a, int h, int64_t C, Work *w) {
    int d = a->d, ch = a->chunk;
    int64_t ws = a->window_start, sinks = a->n_sink_stored < ws ? a->n_sink_stored : ws;
    int64_t n_sink_keep = a->n_sink < a->seq_len ? a->n_sink : a->seq_len;
    int64_t sinks_in_mask = n_sink_keep < ws ? n_sink_keep : ws;
    uint8_t *taken = a->chunk_mask + (int64_t)h * C;
    memset(taken, 0, (size_t)C);
    if (C > 0) {
        landmark_scores(a, h, C, w);
        /* always kept: sinks, outlier chunks, window [seq_len - n_local.., counted from window_start) */
        int64_t keep = n_sink_keep + (a->seq_len - ws);
        for (int i = 0; i < a->n_outlier_chunks; i++) {
            int64_t c = a->outliers[(int64_t)h * a->n_outlier_chunks + i];
            keep += ch - ((c * ch < n_sink_keep) ? (n_sink_keep - c * ch < ch ? n_sink_keep - c * ch : ch) : 0);
        }
        int64_t room = a->budget - keep;
        if (room < 0) return -1;
        if (a->max_change < 0) take_within(a, h, C, sinks_in_mask, room, taken, w);
        else take_constrained(a, h, C, sinks_in_mask, room / ch, taken, w);
        memset(w->fresh, 0, (size_t)C);
        if (a->resident_v) resident_step(a, h, C, taken, w->fresh);
    }
    /* factor_b's columns of this head as float32 [rank, d] */
    for (int r = 0; r < a->rank; r++)
        load_row(a->factor_b, a->dtype, (int64_t)r * a->hkv * d + (int64_t)h * d, d, w->b + (int64_t)r * d);
    int64_t m = 0;
    for (int64_t p = 0; p < sinks; p++, m++) {
        load_row(a->sink_k.ptr, a->dtype, h * a->sink_k.head_stride + p * d, d, w->keys + m * d);
        load_row(a->sink_v.ptr, a->dtype, h * a->sink_v.head_stride + p * d, d, w->vals + m * d);
    }
    int64_t out_elems = (int64_t)a->n_outlier_chunks * ch * d;
    for (int i = 0; i < a->n_outlier_chunks; i++) {
        int64_t c = a->outliers[(int64_t)h * a->n_outlier_chunks + i];
        for (int t = 0; t < ch; t++) {
            if (c * ch + t < sinks || c * ch + t >= ws) continue;
            int64_t off = h * out_elems + ((int64_t)i * ch + t) * d;
            load_row(a->outlier_k, a->dtype, off, d, w->keys + m * d);
            load_row(a->outlier_v, a->dtype, off, d, w->vals + m * d);
            m++;
        }
    }
    /* selected chunks: keys rebuilt (and kept in the resident tier when the chunk was just filled),
     * or, for chunks already resident with their keys, read from there */
    size_t es = a->dtype == BF16 ? 2 : 4;
    int64_t first = m, n_sel = 0, slot_elems = (int64_t)ch * d;
    for (int64_t c = 0; c < C; c++) {
        int64_t slot = a->resident_v ? a->slot_of[(int64_t)h * a->slot_cols + c] : -1;
        if (!taken[c] || (a->resident_k && slot >= 0 && !w->fresh[c])) continue;
        for (int t = 0; t < ch; t++)
            if (c * ch + t >= sinks) w->pos[n_sel++] = c * ch + t;
    }
    rebuilt_keys(a, h, w->pos, n_sel, w, w->keys + first * d);
    for (int64_t i = 0; i < n_sel; i++, m++) {
        int64_t p = w->pos[i], c = p / ch, t = p % ch;
        int64_t slot = a->resident_v ? a->slot_of[(int64_t)h * a->slot_cols + c] : -1;
        int64_t in_slot = ((int64_t)h * a->capacity + slot) * slot_elems + t * d;
        if (slot >= 0) {
            load_row(a->resident_v, a->dtype, in_slot, d, w->vals + m * d);
            if (a->resident_k) store_row(a->resident_k, a->dtype, in_slot, d, w->keys + m * d);
        } else {
            load_row(a->offload_v.ptr, a->dtype, h * a->offload_v.head_stride + p * d, d, w->vals + m * d);
            a->offload_bytes += (int64_t)d * (int64_t)es;
        }
    }
    for (int64_t c = 0; a->resident_k && c < C; c++) {
        int64_t slot = a->slot_of[(int64_t)h * a->slot_cols + c];
        if (!taken[c] || slot < 0 || w->fresh[c]) continue;
        for (int t = 0; t < ch; t++, m++) {
            if (c * ch + t < sinks) { m--; continue; }
            int64_t in_slot = ((int64_t)h * a->capacity + slot) * slot_elems + (int64_t)t * d;
            load_row(a->resident_k, a->dtype, in_slot, d, w->keys + m * d);
            load_row(a->resident_v, a->dtype, in_slot, d, w->vals + m * d);
        }
    }
    for (int64_t i = 0; i < a->n_win; i++, m++) {
        load_row(a->win_k.ptr, a->dtype, h * a->win_k.head_stride + i * d, d, w->keys + m * d);
        load_row(a->win_v.ptr, a->dtype, h * a->win_v.head_stride + i * d, d, w->vals + m * d);
    }
    a->positions[h] = m;
    attend_rows(a, h, m, w);
    return 0;
}

/* Returns 0, -1 when the always-kept positions exceed the budget, -2 on allocation failure. */
int compressed_attend(StepArgs *a) {
    int64_t C = a->window_start / a->chunk;
    int64_t m_max = a->n_sink_stored + (int64_t)a->n_outlier_chunks * a->chunk + C * a->chunk + a->n_win;
    int64_t cols = C > m_max ? C : m_max;
    Work w;
    w.rank_score = (float *)malloc(sizeof(float) * (size_t)(C + 1));
    w.logits = (float *)malloc(sizeof(float) * (size_t)(a->group * cols + 1));
    w.cand_exp = (float *)malloc(sizeof(float) * (size_t)(C + 1));
    w.cand = (Scored *)malloc(sizeof(Scored) * (size_t)(C + 1));
    w.in_prev = (uint8_t *)malloc((size_t)C + 1);
    w.keys = (float *)malloc(sizeof(float) * (size_t)((m_max + 1) * a->d));
    w.vals = (float *)malloc(sizeof(float) * (size_t)((m_max + 1) * a->d));
    w.b = (float *)malloc(sizeof(float) * (size_t)((a->rank + 1) * a->d));
    w.row = (float *)malloc(sizeof(float) * (size_t)a->d);
    w.block = (float *)malloc(sizeof(float) * (size_t)(16 * a->d));
    w.coef = (float *)malloc(sizeof(float) * (size_t)((C * a->chunk + 1) * (a->rank + 1)));
    w.pos = (int64_t *)malloc(sizeof(int64_t) * (size_t)(C * a->chunk + 1));
    w.fresh = (uint8_t *)malloc((size_t)C + 1);
    int rc = (w.rank_score && w.cand_exp && w.logits && w.cand && w.in_prev && w.keys && w.vals && w.b && w.row && w.block && w.coef && w.pos && w.fresh) ? 0 : -2;
    a->offload_bytes = a->hits = a->misses = a->filled = 0;
    for (int h = 0; h < a->hkv && rc == 0; h++) rc = head_step(a, h, C, &w);
    free(w.rank_score); free(w.cand_exp); free(w.logits); free(w.cand); free(w.in_prev);
    free(w.keys); free(w.vals); free(w.b); free(w.row); free(w.block); free(w.coef); free(w.pos); free(w.fresh);
    return rc;
}
