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

/* Landmark scores of head h into w->rank_score. While the landmarks stream, the resident chunks the
 * previous step read (NOSA: most of this step's, by the locality constraint) are fetched into L2. */
void landmark_scores(const StepArgs *a, int h, int64_t C, Work *w) {
    int g = a->group, d = a->d;
    const int8_t *marks = (const int8_t *)a->landmarks.ptr + h * a->landmarks.head_stride;
    const float *lscale = (const float *)a->landmark_scale.ptr + h * a->landmark_scale.head_stride;
    size_t chunk_bytes = (size_t)a->chunk * d * (a->dtype == BF16 ? 2 : 4);
    SidePrefetch side = {w->side, 0, chunk_bytes};
    if (a->resident_v) {
        const int64_t *last = a->last_used + (int64_t)h * a->capacity;
        for (int64_t s = 0; s < a->capacity; s++) {
            if (last[s] != a->clock - 1) continue;
            size_t at = (size_t)((int64_t)h * a->capacity + s) * chunk_bytes;
            if (a->resident_k) w->side[side.n++] = (const char *)a->resident_k + at;
            w->side[side.n++] = (const char *)a->resident_v + at;
        }
    }
    landmark_dots(a->q + (int64_t)h * g * d, g, marks, lscale, C, d, a->scale, w->logits, C, &side);
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

/* Eligible for selection: not only sinks (kept anyway), not an outlier (kept exactly). */
static inline int eligible(const StepArgs *a, int64_t c, int64_t sinks, const Work *w) {
    return (c + 1) * a->chunk > sinks && !w->outlier[c];
}

/* Mark the k best (score desc, index asc) of the n candidates v in out. */
static void mark_best(Scored *v, int n, int64_t k, uint8_t *out) {
    if (k > n) k = n;
    if (k <= 0) return;
    select_best(v, n, (int)k);
    for (int64_t i = 0; i < k; i++) out[v[i].i] = 1;
}

/* Ids of the k best eligible chunks (unordered) into ids; their count. A bucket count of the
 * scores in place (the same set as select_best: exact top k by score desc, index asc) without
 * building the candidates: chunks below c0 hold only sinks; outliers are skipped. tmp: scratch
 * of C candidates. */
static int64_t best_ids_all(const StepArgs *a, int64_t C, int64_t sinks, int64_t k, int32_t *ids, Scored *tmp,
                            Work *w) {
    const float *s = w->rank_score;
    const uint8_t *outlier = w->outlier;
    int64_t c0 = sinks / a->chunk, n = 0, t = 0;
    if (k <= 0) return 0;
    for (int64_t c = c0; c < C; c++) n += !outlier[c];
    float lo = min_of(s + c0, C - c0), hi = max_of(s + c0, C - c0); /* outliers included: a wider range is fine */
    Buckets bk;
    if (k >= n || !make_buckets(lo, hi, n, &bk)) {
        int m = 0;
        for (int64_t c = c0; c < C; c++) if (eligible(a, c, sinks, w)) tmp[m++] = (Scored){s[c], (int32_t)c};
        if (k > m) k = m;
        select_best(tmp, m, (int)k);
        for (int64_t i = 0; i < k; i++) ids[i] = tmp[i].i;
        return k;
    }
    int count[SELECT_BUCKETS] = {0}, above, m = 0;
    for (int64_t c = c0; c < C; c++) count[bucket_of(bk, s[c])] += !outlier[c];
    int b = boundary_bucket(count, (int)k, &above);
    for (int64_t c = c0; c < C; c++) { /* the better buckets whole; bucket b's chunks ordered exactly */
        if (outlier[c]) continue;
        int bi = bucket_of(bk, s[c]);
        if (bi > b) ids[t++] = (int32_t)c;
        else if (bi == b) tmp[m++] = (Scored){s[c], (int32_t)c};
    }
    quickselect_best(tmp, m, (int)k - above);
    for (int i = 0; i < k - above; i++) ids[t++] = tmp[i].i;
    return t;
}

/* best_ids_all from a threshold that the previous step's chunks give: the k-th best score t among
 * the n_old >= k chunks `old` (current scores) has at least k eligible chunks at or above it, so
 * the chunks scoring >= t (one pass) hold the k best; these few are selected exactly. The same set
 * as best_ids_all; -1 where it does not apply (fewer old chunks than k, a non-finite threshold).
 * tmp: scratch of C + 1 candidates. */
static int64_t best_ids_above_old(const StepArgs *a, int64_t C, int64_t sinks, int64_t k, const Scored *old,
                                  int64_t n_old, int32_t *ids, Scored *tmp, Work *w) {
    if (k <= 0 || n_old < k) return -1;
    memcpy(tmp, old, sizeof(Scored) * (size_t)n_old);
    quickselect_best(tmp, (int)n_old, (int)k);
    float t = INFINITY;
    for (int64_t i = 0; i < k; i++) t = tmp[i].s < t ? tmp[i].s : t;
    if (!isfinite(t)) return -1;
    const float *s = w->rank_score;
    const uint8_t *outlier = w->outlier;
    int m = 0;
    for (int64_t c = sinks / a->chunk; c < C; c++) { /* branch-free: every chunk written, the kept ones counted */
        tmp[m] = (Scored){s[c], (int32_t)c};
        m += !outlier[c] & (s[c] >= t);
    }
    select_best(tmp, m, (int)k);
    for (int64_t i = 0; i < k; i++) ids[i] = tmp[i].i;
    return k;
}

/* NOSA: top `count`, at most max_change of them new against the previous step's set. Works on
 * id lists (a few hundred of thousands of chunks), not on per-chunk flags. */
void take_constrained(const StepArgs *a, int h, int64_t C, int64_t sinks, int64_t count, uint8_t *taken, Work *w) {
    if (count < 0) count = 0;
    if (!a->previous) {
        int64_t n_top = best_ids_all(a, C, sinks, count, w->ids, w->cand, w);
        for (int64_t i = 0; i < n_top; i++) taken[w->ids[i]] = 1;
        return;
    }
    const uint8_t *prev = a->previous + (int64_t)h * a->prev_chunks;
    int64_t n_prev = a->prev_chunks < C ? a->prev_chunks : C;
    Scored *old = w->cand, *tmp = w->cand + C + 1; /* the previous step's eligible chunks; scratch */
    int64_t m = nonzero_ids(prev, n_prev, w->ids), n_old = 0;
    for (int64_t i = 0; i < m; i++)
        if (eligible(a, w->ids[i], sinks, w)) old[n_old++] = (Scored){w->rank_score[w->ids[i]], w->ids[i]};
    int64_t n_top = best_ids_above_old(a, C, sinks, count, old, n_old, w->ids, tmp, w);
    if (n_top < 0) n_top = best_ids_all(a, C, sinks, count, w->ids, tmp, w);
    int n_new = 0; /* the best chunks not taken at the previous step */
    for (int64_t i = 0; i < n_top; i++) {
        int32_t c = w->ids[i];
        if (c >= n_prev || !prev[c]) tmp[n_new++] = (Scored){w->rank_score[c], c};
    }
    int64_t admit = n_new < a->max_change ? n_new : a->max_change;
    mark_best(tmp, n_new, admit, taken);
    mark_best(old, (int)n_old, count - admit, taken); /* then the best of the previous step's chunks */
}

/* LRU of resident chunks (kvcache/resident.py): hits refresh, misses take the least recently used
 * free slots, in ascending chunk order (w->ids: the taken chunks). */
void resident_step(StepArgs *a, int h, Work *w) {
    uint8_t *fresh = w->fresh;
    int64_t *slot_of = a->slot_of + (int64_t)h * a->slot_cols;
    int64_t *slot_chunk = a->slot_chunk + (int64_t)h * a->capacity, *last = a->last_used + (int64_t)h * a->capacity;
    int64_t chunk_elems = (int64_t)a->chunk * a->d;
    for (int64_t i = 0; i < w->n_ids; i++)
        if (slot_of[w->ids[i]] >= 0) { last[slot_of[w->ids[i]]] = a->clock; w->hits++; }
    for (int64_t i = 0; i < w->n_ids; i++) {
        int64_t c = w->ids[i];
        if (slot_of[c] >= 0) continue;
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
