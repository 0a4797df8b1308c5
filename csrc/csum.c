/*
 * csum.c: the Internet checksum (RFC 1071) and its incremental update
 * (RFC 1624), the only place vionetd sums bytes.
 *
 * A partial sum is a uint64_t holding a one's complement sum of the buffer's
 * 16-bit words read in host order (little-endian on every target).  Because
 * 2^64 - 1 is a multiple of 2^16 - 1, any 64-bit one's complement value folds
 * to the same 16-bit checksum, so partial sums of any width can be added with
 * add64() (end-around carry) and folded once at the end.
 *
 * Speed: the inner loops add 32-bit halves of 64-bit loads into separate
 * 64-bit accumulators (no carry can be lost before 2^32 additions, and the
 * loops restart their accumulators every CHUNK bytes), four or eight lanes
 * wide.  On x86_64 with AVX2 the same scheme runs on 256-bit vectors; the
 * choice is made once, at load time.  There is no byte-at-a-time loop: at
 * most one trailing byte is handled on its own.
 *
 * Odd offsets: a piece that starts at an odd offset of the summed range has
 * its bytes in the other half of every 16-bit word, so its folded sum is
 * byte-swapped before it is added (RFC 1071 section 2.B).
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "wire.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* Accumulators restart every CHUNK bytes so 32-bit lane sums cannot overflow. */
#define CHUNK ((size_t)1 << 30)

typedef uint64_t (*sum_fn)(const uint8_t *, size_t);
typedef uint64_t (*copy_fn)(uint8_t *, const uint8_t *, size_t);

/* The tail shorter than 32 bytes: 4-byte words, then 2, then one byte, which
 * is the low-addressed byte of a word and so the low byte in host order. */
static uint64_t sum_tail(const uint8_t *p, size_t len)
{
	uint64_t s = 0;
	uint32_t w;
	uint16_t h;

	while (len >= 4) {
		memcpy(&w, p, 4);
		s += w;
		p += 4;
		len -= 4;
	}
	if (len >= 2) {
		memcpy(&h, p, 2);
		s += h;
		p += 2;
		len -= 2;
	}
	if (len)
		s += *p;
	return s;
}

static uint64_t sum_scalar(const uint8_t *p, size_t len)
{
	uint64_t lo0 = 0, hi0 = 0, lo1 = 0, hi1 = 0, v[4];

	while (len >= 32) {
		memcpy(v, p, 32);
		lo0 += v[0] & 0xffffffffu;
		hi0 += v[0] >> 32;
		lo1 += v[1] & 0xffffffffu;
		hi1 += v[1] >> 32;
		lo0 += v[2] & 0xffffffffu;
		hi0 += v[2] >> 32;
		lo1 += v[3] & 0xffffffffu;
		hi1 += v[3] >> 32;
		p += 32;
		len -= 32;
	}
	return add64(add64(lo0, hi0), add64(add64(lo1, hi1), sum_tail(p, len)));
}

static uint64_t copy_scalar(uint8_t *d, const uint8_t *p, size_t len)
{
	uint64_t lo0 = 0, hi0 = 0, lo1 = 0, hi1 = 0, v[4];

	while (len >= 32) {
		memcpy(v, p, 32);
		memcpy(d, v, 32);
		lo0 += v[0] & 0xffffffffu;
		hi0 += v[0] >> 32;
		lo1 += v[1] & 0xffffffffu;
		hi1 += v[1] >> 32;
		lo0 += v[2] & 0xffffffffu;
		hi0 += v[2] >> 32;
		lo1 += v[3] & 0xffffffffu;
		hi1 += v[3] >> 32;
		p += 32;
		d += 32;
		len -= 32;
	}
	memcpy(d, p, len);
	return add64(add64(lo0, hi0), add64(add64(lo1, hi1), sum_tail(p, len)));
}

#if defined(__x86_64__)
__attribute__((target("avx2")))
static uint64_t reduce256(__m256i a)
{
	uint64_t l[4];

	_mm256_storeu_si256((__m256i *)l, a);
	return add64(add64(l[0], l[1]), add64(l[2], l[3]));
}

/* The low and the high 32-bit halves of every 64-bit lane of a block of four
 * vectors, added as a tree so the accumulators' dependency chains stay short.
 * AND and shift run on other ports than the loads and stores. */
#define SUM4(a, b, c, d) do {						\
	lo = _mm256_add_epi64(lo, _mm256_add_epi64(			\
		_mm256_add_epi64(_mm256_and_si256(a, mask), _mm256_and_si256(b, mask)), \
		_mm256_add_epi64(_mm256_and_si256(c, mask), _mm256_and_si256(d, mask)))); \
	hi = _mm256_add_epi64(hi, _mm256_add_epi64(			\
		_mm256_add_epi64(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(b, 32)), \
		_mm256_add_epi64(_mm256_srli_epi64(c, 32), _mm256_srli_epi64(d, 32)))); \
} while (0)

#define LOAD(p, i) _mm256_loadu_si256((const __m256i *)(p) + (i))
#define STORE(p, i, v) _mm256_storeu_si256((__m256i *)(p) + (i), v)

/* Bytes before the next 32-byte boundary of p (at most len): done apart so
 * the vector loop's accesses do not straddle cache lines. */
static size_t lead(const void *p, size_t len)
{
	size_t n = (size_t)(-(uintptr_t)p) & 31;

	return n < len ? n : len;
}

/* Add the sum of what follows a lead of k bytes: if k is odd, every later
 * byte sits in the other half of its 16-bit word. */
static uint64_t join(uint64_t head, size_t k, uint64_t body)
{
	if (k & 1)
		body = __builtin_bswap16(fold16(body));
	return add64(head, body);
}

__attribute__((target("avx2")))
static uint64_t sum_avx2(const uint8_t *p, size_t len)
{
	const __m256i mask = _mm256_set1_epi64x(0xffffffff);
	__m256i lo = _mm256_setzero_si256(), hi = lo;
	size_t k = lead(p, len);
	uint64_t head = sum_tail(p, k);

	p += k;
	len -= k;
	while (len >= 128) {
		__m256i a = LOAD(p, 0), b = LOAD(p, 1), c = LOAD(p, 2), d = LOAD(p, 3);
		SUM4(a, b, c, d);
		p += 128;
		len -= 128;
	}
	while (len >= 32) {
		__m256i a = LOAD(p, 0), z = _mm256_setzero_si256();
		SUM4(a, z, z, z);
		p += 32;
		len -= 32;
	}
	return join(head, k, add64(add64(reduce256(lo), reduce256(hi)), sum_tail(p, len)));
}

/* As sum_avx2, aligning the destination instead: split stores cost more
 * than split loads. */
__attribute__((target("avx2")))
static uint64_t copy_avx2(uint8_t *dst, const uint8_t *p, size_t len)
{
	const __m256i mask = _mm256_set1_epi64x(0xffffffff);
	__m256i lo = _mm256_setzero_si256(), hi = lo;
	size_t k = lead(dst, len);
	uint64_t head = sum_tail(p, k);

	memcpy(dst, p, k);
	p += k;
	dst += k;
	len -= k;
	while (len >= 128) {
		__m256i a = LOAD(p, 0), b = LOAD(p, 1), c = LOAD(p, 2), d = LOAD(p, 3);
		STORE(dst, 0, a);
		STORE(dst, 1, b);
		STORE(dst, 2, c);
		STORE(dst, 3, d);
		SUM4(a, b, c, d);
		p += 128;
		dst += 128;
		len -= 128;
	}
	while (len >= 32) {
		__m256i a = LOAD(p, 0), z = _mm256_setzero_si256();
		STORE(dst, 0, a);
		SUM4(a, z, z, z);
		p += 32;
		dst += 32;
		len -= 32;
	}
	memcpy(dst, p, len);
	return join(head, k, add64(add64(reduce256(lo), reduce256(hi)), sum_tail(p, len)));
}
#endif

static sum_fn sum_block = sum_scalar;
static copy_fn copy_block = copy_scalar;
static const char *impl = "generic";

/* Chosen once, at load time, before any sandbox: VIONETD_CSUM_GENERIC=1 in
 * the environment keeps the portable loops (tests run both). */
__attribute__((constructor))
static void csum_select(void)
{
	const char *e = getenv("VIONETD_CSUM_GENERIC");

	if (e && *e == '1')
		return;
#if defined(__x86_64__)
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2")) {
		sum_block = sum_avx2;
		copy_block = copy_avx2;
		impl = "avx2";
	}
#endif
}

const char *csum_impl(void)
{
	return impl;
}

uint64_t csum_partial(const void *buf, size_t len, uint64_t sum)
{
	const uint8_t *p = buf;

	while (len > CHUNK) {
		sum = add64(sum, sum_block(p, CHUNK));
		p += CHUNK;
		len -= CHUNK;
	}
	/* Short buffers (headers) skip the vector setup. */
	return add64(sum, len < 64 ? sum_tail(p, len) : sum_block(p, len));
}

uint64_t csum_copy(void *dst, const void *src, size_t len, uint64_t sum)
{
	uint8_t *d = dst;
	const uint8_t *p = src;

	while (len > CHUNK) {
		sum = add64(sum, copy_block(d, p, CHUNK));
		p += CHUNK;
		d += CHUNK;
		len -= CHUNK;
	}
	if (len < 64) {
		memcpy(d, p, len);
		return add64(sum, sum_tail(p, len));
	}
	return add64(sum, copy_block(d, p, len));
}

uint64_t csum_iov(const struct iovec *iov, int iovcnt, size_t skip, size_t len, uint64_t sum)
{
	size_t pos = 0;	/* bytes of the range summed so far */

	for (int i = 0; i < iovcnt && pos < len; i++) {
		const uint8_t *base = iov[i].iov_base;
		size_t n = iov[i].iov_len;
		uint64_t s;

		if (skip >= n) {
			skip -= n;
			continue;
		}
		base += skip;
		n -= skip;
		skip = 0;
		if (n > len - pos)
			n = len - pos;
		s = csum_partial(base, n, 0);
		if (pos & 1)
			s = __builtin_bswap16(fold16(s));
		sum = add64(sum, s);
		pos += n;
	}
	return sum;
}

uint16_t csum_fold(uint64_t sum)
{
	return (uint16_t)~fold16(sum);
}

uint16_t csum_update16(uint16_t check, uint16_t old_word, uint16_t new_word)
{
	uint64_t s = (uint16_t)~check;

	s += (uint16_t)~old_word;
	s += new_word;
	return (uint16_t)~fold16(s);
}
