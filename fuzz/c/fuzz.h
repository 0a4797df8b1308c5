/*
 * fuzz.h: what the libFuzzer targets in fuzz/c/ share: a reader that takes
 * fixed-size fields from the front of the input (zero once it runs out), and
 * helpers to lay out guest memory for the ring targets.
 *
 * Every buffer a target hands to the core is malloc'd at its exact size, so
 * AddressSanitizer reports a read or write one byte past it. Guest memory
 * regions are malloc'd too (not mmap'd): struct guest_mem is filled by hand,
 * which puts every guest buffer under ASan as well.
 */
#ifndef VIONETD_FUZZ_H
#define VIONETD_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "virtq.h"

struct in {
	const uint8_t *p;
	size_t n;
};

static inline void take(struct in *in, void *dst, size_t len)
{
	size_t k = len < in->n ? len : in->n;

	memcpy(dst, in->p, k);
	memset((uint8_t *)dst + k, 0, len - k);
	in->p += k;
	in->n -= k;
}

static inline uint8_t u8(struct in *in)
{
	uint8_t v;

	take(in, &v, 1);
	return v;
}

static inline uint16_t u16(struct in *in)
{
	uint16_t v;

	take(in, &v, 2);
	return v;
}

static inline uint32_t u32(struct in *in)
{
	uint32_t v;

	take(in, &v, 4);
	return v;
}

static inline uint64_t u64(struct in *in)
{
	uint64_t v;

	take(in, &v, 8);
	return v;
}

/* A copy of len bytes (len may be 0) in a buffer of exactly that size. */
static inline uint8_t *exact_copy(const void *src, size_t len)
{
	uint8_t *p = malloc(len ? len : 1);

	if (!p)
		abort();
	if (len)
		memcpy(p, src, len);
	return p;
}

/* A finding: print it and abort, which libFuzzer reports as a crash. */
#define FAIL(...) do { fprintf(stderr, "ORACLE: " __VA_ARGS__); fputc('\n', stderr); abort(); } while (0)

/* Does [p, p + len) lie inside one region of m? */
static inline int in_guest(const struct guest_mem *m, const void *p, size_t len)
{
	const uint8_t *b = p;

	for (unsigned i = 0; i < m->nregions; i++) {
		const uint8_t *lo = m->r[i].host;

		if (b >= lo && b <= lo + m->r[i].size && len <= (size_t)(lo + m->r[i].size - b))
			return 1;
	}
	return 0;
}

#endif
