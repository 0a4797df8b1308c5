/* rate.c: see rate.h. */
#include <stdint.h>

#include "rate.h"

#define NS_PER_S 1000000000ull

static uint64_t clamp(uint64_t v, uint64_t max)
{
	return v > max ? max : v;
}

static void bucket_set(struct rate_bucket *b, uint64_t rate, uint64_t burst,
		       uint64_t min_burst)
{
	b->rate = rate;
	if (!burst)
		burst = rate / RATE_DEFAULT_BURST_DIV;
	if (burst < min_burst)
		burst = min_burst;
	b->size = burst * NS_PER_S;
	b->fill_ns = rate ? b->size / rate : 0;
	b->credit = (int64_t)b->size;    /* full; without a rate: credit for ever */
}

void rate_set(struct dp_rate *r, uint64_t bytes_per_s, uint64_t burst_bytes,
	      uint64_t frames_per_s, uint64_t burst_frames)
{
	bucket_set(&r->bytes, clamp(bytes_per_s, RATE_MAX_BYTES),
		   clamp(burst_bytes, RATE_MAX_BURST), RATE_MIN_BURST);
	bucket_set(&r->frames, clamp(frames_per_s, RATE_MAX_FRAMES),
		   clamp(burst_frames, RATE_MAX_FRAME_BURST), 1);
	r->on = r->bytes.rate || r->frames.rate;
	r->at = dp_now_ns();
}

/* Add what dt nanoseconds earned (at most twice the size: a debt of up to
 * one size is paid at once after a long pause), capped at the size. */
static void bucket_refill(struct rate_bucket *b, uint64_t dt)
{
	int64_t c;

	if (!b->rate)
		return;
	dt = clamp(dt, 2 * b->fill_ns + 1);
	c = b->credit + (int64_t)(dt * b->rate);
	b->credit = c > (int64_t)b->size ? (int64_t)b->size : c;
}

/* Nanoseconds until the bucket holds credit: 0 if it does. */
static uint64_t bucket_wait(const struct rate_bucket *b)
{
	uint64_t need;

	if (b->credit > 0)
		return 0;
	need = (uint64_t)(-b->credit) + 1;
	return (need + b->rate - 1) / b->rate;
}

uint64_t rate_wait_ns(struct dp_rate *r, uint64_t now)
{
	uint64_t a, b;

	if (now > r->at) {
		bucket_refill(&r->bytes, now - r->at);
		bucket_refill(&r->frames, now - r->at);
		r->at = now;
	}
	a = bucket_wait(&r->bytes);
	b = bucket_wait(&r->frames);
	return a > b ? a : b;
}

void rate_charge(struct dp_rate *r, uint64_t len)
{
	if (!r->on)
		return;
	if (r->bytes.rate)
		r->bytes.credit -= (int64_t)(clamp(len, 1u << 20) * NS_PER_S);
	if (r->frames.rate)
		r->frames.credit -= (int64_t)NS_PER_S;
}
