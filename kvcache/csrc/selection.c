/* Selection stage of a compressed store's decode step (kvcache/selection.py, nosa.py, resident.py
 * in PyTorch): landmark scores, ShadowKV's budgeted top chunks, NOSA's locality-constrained top
 * chunks, and the NOSA resident-chunk LRU. */
#include "step.h"

/* w->outlier[c] = 1 for head h's outlier chunks (kept exactly, never selected). */
void mark_outliers(const StepArgs *a, int h, int64_t C, Work *w) {
    memset(w->outlier, 0, (size_t)C);
    for (int i = 0; i < a->n_outlier_chunks; i++) {
        int64_t c = a->outliers[(int64_t)h * a->n_outlier_chunks + i];
        if (c >= 0 && c < C) w->outlier[c] = 1;
    }
}

void landmark_scores(const StepArgs *a, int h, int64_t C, Work *w) {
    int g = a->group, d = a->d;
    const uint16_t *marks = (const uint16_t *)a->landmarks.ptr + h * a->landmarks.head_stride;
    blocked_dots(a->q + (int64_t)h * g * d, g, marks, C, d, a->scale, w->logits, C);
    for (int64_t c = 0; c < C; c++) w->rank_score[c] = -INFINITY;
    for (int j = 0; j < g; j++) { /* log-softmax over the chunks, max over the group */
        const float *s = w->logits + j * C;
        float m = max_of(s, C);
        max_shifted_into(w->rank_score, s, C, m + logf(sum_exp_shifted(s, C, m)));
    }
}

/* ShadowKV: chunks in score order while their not-yet-kept positions fit in the room. */
void take_within(const StepArgs *a, int h, int64_t C, int64_t sinks, int64_t room, uint8_t *taken, Work *w) {
    int n = 0, shorter = 0, full = 0;
    for (int64_t c = 0; c < C; c++) {
        if (w->outlier[c]) continue;
        int cnt = a->chunk - (int)sink_overlap(c, a->chunk, sinks);
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
        used += a->chunk - sink_overlap(c, a->chunk, sinks);
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
        if (sink_only || w->outlier[c]) continue;
        w->cand[n++] = (Scored){w->rank_score[c], (int32_t)c};
    }
    if (k > n) k = n;
    select_best(w->cand, n, (int)k);
    for (int i = 0; i < k; i++) out[w->cand[i].i] = 1;
}

/* best_of over every eligible chunk (allow NULL), without building the candidates: the bucket
 * count of select_best run on the scores in place (the same set: exact top k by score desc, index
 * asc). Chunks below c0 hold only sinks; outliers are skipped. */
static void best_of_all(const StepArgs *a, int h, int64_t C, int64_t sinks, int64_t k, uint8_t *out, Work *w) {
    const float *s = w->rank_score;
    const uint8_t *outlier = w->outlier;
    int64_t c0 = sinks / a->chunk, n = 0;
    for (int64_t c = c0; c < C; c++) n += !outlier[c];
    float lo = min_of(s + c0, C - c0), hi = max_of(s + c0, C - c0); /* outliers included: a wider range is fine */
    Buckets bk;
    if (k <= 0 || k >= n || !make_buckets(lo, hi, n, &bk)) {
        best_of(a, h, C, sinks, NULL, k, out, w);
        return;
    }
    int count[SELECT_BUCKETS] = {0}, above;
    for (int64_t c = c0; c < C; c++) count[bucket_of(bk, s[c])] += !outlier[c];
    int b = boundary_bucket(count, (int)k, &above);
    int t = 0; /* the better buckets marked whole; bucket b's chunks ordered exactly */
    for (int64_t c = c0; c < C; c++) {
        if (outlier[c]) continue;
        int bi = bucket_of(bk, s[c]);
        if (bi > b) out[c] = 1;
        else if (bi == b) w->cand[t++] = (Scored){s[c], (int32_t)c};
    }
    quickselect_best(w->cand, t, (int)k - above);
    for (int i = 0; i < k - above; i++) out[w->cand[i].i] = 1;
}

/* NOSA: top `count`, at most max_change of them new against the previous step's set. */
void take_constrained(const StepArgs *a, int h, int64_t C, int64_t sinks, int64_t count, uint8_t *taken, Work *w) {
    if (count < 0) count = 0;
    if (!a->previous) { best_of_all(a, h, C, sinks, count, taken, w); return; }
    uint8_t *top = w->top;
    memset(top, 0, (size_t)C);
    best_of_all(a, h, C, sinks, count, top, w);
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
}

/* LRU of resident chunks (kvcache/resident.py): hits refresh, misses take the least recently used free slots. */
void resident_step(StepArgs *a, int h, int64_t C, const uint8_t *taken, Work *w) {
    uint8_t *fresh = w->fresh;
    int64_t *slot_of = a->slot_of + (int64_t)h * a->slot_cols;
    int64_t *slot_chunk = a->slot_chunk + (int64_t)h * a->capacity, *last = a->last_used + (int64_t)h * a->capacity;
    int64_t chunk_elems = (int64_t)a->chunk * a->d;
    for (int64_t c = 0; c < C; c++) if (taken[c] && slot_of[c] >= 0) { last[slot_of[c]] = a->clock; w->hits++; }
    for (int64_t c = 0; c < C; c++) {
        if (!taken[c] || slot_of[c] >= 0) continue;
        w->misses++;
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
        w->filled++;
    }
}
