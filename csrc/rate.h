/*
 * rate.h: a token bucket per direction of a worker, for the limits of
 * vionetd.conf(5)'s "rate tx|rx" (bytes and frames per second).
 *
 * The worker sets the limit with rate_set(); the path asks rate_wait_ns()
 * before it takes the next frame and pays with rate_charge() after. A frame
 * goes when both buckets hold credit (more than nothing), and it may take
 * them below zero: the debt is paid before the next one goes, so over any
 * long run the rate holds exactly, and a frame larger than the burst still
 * passes. Waiting is the caller's: rate_wait_ns() says how long, the path
 * sleeps in ppoll() with that timeout (never a busy wait).
 *
 * Units: credit is kept in 1e-9 of a byte (of a frame), so that refilling
 * for dt nanoseconds adds dt * rate exactly, however short dt is.
 *
 * Invariants:
 * - without a limit (on == 0) the paths test one word per frame and never
 *   read the clock for it; with one, they read it once per frame (vDSO);
 * - a bucket's credit is never above its size; a refill adds at most
 *   2 * fill_ns * rate, about twice the size, which RATE_MAX_* keep below
 *   2^62; a bucket without a rate always holds credit (it is never charged);
 * - rate_set() starts with full buckets; counting rate_held is the path's.
 */
#ifndef VIONETD_RATE_H
#define VIONETD_RATE_H

#include <stdint.h>

uint64_t dp_now_ns(void);  /* datapath.c */

#define RATE_MAX_BYTES 12500000000ull    /* 100 Gbit/s, in bytes per second */
#define RATE_MAX_BURST 1073741824ull     /* 1 GiB */
#define RATE_MAX_FRAMES 100000000ull     /* frames per second */
#define RATE_MAX_FRAME_BURST 1000000ull
#define RATE_MIN_BURST 65536ull          /* one 64 KiB frame */
#define RATE_DEFAULT_BURST_DIV 20        /* a default burst: 1/20 s of the rate, room
					   for a worker scheduled late on a busy host */

/* CDEF BEGIN */

struct rate_bucket {
	uint64_t rate;        /* per second; 0: no limit of this kind */
	int64_t credit;       /* 1e-9 units; may be negative (a debt) */
	uint64_t size;        /* 1e-9 units: the burst */
	uint64_t fill_ns;     /* from empty to full (a refill counts at most twice it) */
};

struct dp_rate {
	uint32_t on;          /* a bucket has a rate */
	uint64_t at;          /* dp_now_ns() of the last refill */
	struct rate_bucket bytes, frames;
};

/* Set the limit (0: none of that kind). A burst of 0 is 50 ms of the rate,
 * at least RATE_MIN_BURST bytes or 1 frame (vionetd.conf(5)). Values
 * beyond RATE_MAX_* are clamped. The buckets start full. */
void rate_set(struct dp_rate *r, uint64_t bytes_per_s, uint64_t burst_bytes,
	      uint64_t frames_per_s, uint64_t burst_frames);

/* 0 when the next frame may go, else the nanoseconds until it may. */
uint64_t rate_wait_ns(struct dp_rate *r, uint64_t now);
/* A frame of len bytes went. */
void rate_charge(struct dp_rate *r, uint64_t len);

/* CDEF END */

/* 0 when the next frame may go, else the nanoseconds until it may: what
 * the paths call before each frame, one test of r->on without a limit. */
static inline uint64_t rate_hold_ns(struct dp_rate *r)
{
	return r->on ? rate_wait_ns(r, dp_now_ns()) : 0;
}

#endif
