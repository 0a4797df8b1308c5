/*
 * bench.h: loops for bench/core.py, run in C so that Python's call overhead
 * is not what gets measured.  Each repeats one operation reps times on the
 * same buffers and returns something that depends on every run.
 */
#ifndef VIONETD_BENCH_H
#define VIONETD_BENCH_H

#include "core.h"

/* CDEF BEGIN */
uint64_t bench_memcpy(void *dst, const void *src, size_t len, unsigned reps);
uint64_t bench_csum(const void *buf, size_t len, unsigned reps);
uint64_t bench_csum_copy(void *dst, const void *src, size_t len, unsigned reps);
/* Returns the number of segments produced over all runs, or -1 on failure. */
int64_t bench_gso(const struct vnet_hdr *h, const struct frame_info *fi,
		  const uint8_t *head, const struct iovec *iov, int iovcnt,
		  size_t frame_len, uint8_t *out, size_t out_cap,
		  uint32_t *seg_lens, unsigned max_segs, unsigned reps);
/* CDEF END */

#endif
