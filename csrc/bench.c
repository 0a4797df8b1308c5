/*
 * bench.c: timing loops for bench/core.py (see bench.h).  The empty asm with
 * a memory clobber keeps the compiler from merging or dropping repeated runs.
 */
#include <string.h>

#include "bench.h"

#define BARRIER() __asm__ __volatile__("" ::: "memory")

uint64_t bench_memcpy(void *dst, const void *src, size_t len, unsigned reps)
{
	uint64_t acc = 0;

	for (unsigned i = 0; i < reps; i++) {
		memcpy(dst, src, len);
		BARRIER();
		acc += ((const uint8_t *)dst)[i % (len ? len : 1)];
	}
	return acc;
}

uint64_t bench_csum(const void *buf, size_t len, unsigned reps)
{
	uint64_t acc = 0;

	for (unsigned i = 0; i < reps; i++) {
		acc += csum_fold(csum_partial(buf, len, i));
		BARRIER();
	}
	return acc;
}

uint64_t bench_csum_copy(void *dst, const void *src, size_t len, unsigned reps)
{
	uint64_t acc = 0;

	for (unsigned i = 0; i < reps; i++) {
		acc += csum_fold(csum_copy(dst, src, len, i));
		BARRIER();
	}
	return acc;
}

int64_t bench_gso(const struct vnet_hdr *h, const struct frame_info *fi,
		  const uint8_t *head, const struct iovec *iov, int iovcnt,
		  size_t frame_len, uint8_t *out, size_t out_cap,
		  uint32_t *seg_lens, unsigned max_segs, unsigned reps)
{
	int64_t total = 0;

	for (unsigned i = 0; i < reps; i++) {
		int n = gso_segment(h, fi, head, iov, iovcnt, frame_len, out, out_cap,
				    seg_lens, max_segs);
		if (n < 0)
			return -1;
		total += n;
		BARRIER();
	}
	return total;
}
