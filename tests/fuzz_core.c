/*
 * fuzz_core.c: a bounded random-mutation fuzzer for the C core, built with
 * AddressSanitizer and UBSan by tests/test_fuzz.py.  Every buffer is
 * allocated at its exact size, so a read one byte past head_len, the frame,
 * an iovec piece or the output is an ASan report and a failed test.
 *
 * Seeds: valid TSO4/TSO6/USO frames written here; each round flips bytes of
 * the frame and fields of the header, validates, and on VR_OK segments the
 * frame from a random scatter list, completes its checksum, and verifies it.
 * Usage: fuzz_core ROUNDS SEED
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

static uint64_t rng;

static uint32_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)rng;
}

/* Ethernet + IPv4 or IPv6 (+ one dest-options header) + TCP or UDP + payload,
 * lengths consistent, as a guest would send a GSO frame. */
static size_t seed(uint8_t *f, int v6, int udp, size_t plen)
{
	size_t l3 = 14, l4, hl;

	memset(f, 0, 14);
	f[12] = v6 ? 0x86 : 0x08;
	f[13] = v6 ? 0xdd : 0x00;
	if (v6) {
		memset(f + l3, 0, 48);
		f[l3] = 0x60;
		f[l3 + 6] = 60;
		f[l3 + 40] = udp ? 17 : 6;
		l4 = l3 + 48;
	} else {
		memset(f + l3, 0, 20);
		f[l3] = 0x45;
		f[l3 + 9] = udp ? 17 : 6;
		l4 = l3 + 20;
	}
	hl = udp ? 8 : 20;
	memset(f + l4, 0, hl);
	if (!udp)
		f[l4 + 12] = 0x50;
	for (size_t i = 0; i < plen; i++)
		f[l4 + hl + i] = (uint8_t)rnd();
	size_t end = l4 + hl + plen;
	if (v6) {
		f[l3 + 4] = (uint8_t)((end - l3 - 40) >> 8);
		f[l3 + 5] = (uint8_t)(end - l3 - 40);
	} else {
		f[l3 + 2] = (uint8_t)((end - l3) >> 8);
		f[l3 + 3] = (uint8_t)(end - l3);
	}
	if (udp) {
		f[l4 + 4] = (uint8_t)((end - l4) >> 8);
		f[l4 + 5] = (uint8_t)(end - l4);
	}
	return end;
}

/* What a guest's stack puts in the L4 checksum field before NEEDS_CSUM: the
 * folded pseudo-header sum for the frame's addresses and L4 length. */
static void put_pseudo(uint8_t *f, const struct frame_info *fi, size_t len, uint16_t off)
{
	const uint8_t *ip = f + fi->l3_off;
	size_t l4len = len - fi->l4_off;
	uint8_t tail[4] = { (uint8_t)(l4len >> 8), (uint8_t)l4len, 0, fi->l4_proto };
	uint64_t s;

	if (fi->ip_version == 4)
		s = csum_partial(ip + 12, 8, 0);
	else
		s = csum_partial(ip + 8, 32, 0);
	s = csum_partial(tail, 4, s);
	uint16_t v = (uint16_t)~csum_fold(s);
	memcpy(f + fi->l4_off + off, &v, 2);
}

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? atol(argv[1]) : 1000;
	long accepted = 0, segmented = 0;
	static uint8_t tmpl[70000];

	rng = argc > 2 ? strtoull(argv[2], NULL, 0) : 88172645463325252ull;
	if (!rng)
		rng = 1;
	for (long r = 0; r < rounds; r++) {
		int v6 = rnd() & 1, udp = rnd() & 1;
		size_t plen = rnd() % (rnd() & 1 ? 3000 : 200);
		size_t len = seed(tmpl, v6, udp, plen);
		struct vnet_hdr h = {
			.flags = VNET_F_NEEDS_CSUM,
			.gso_type = udp ? VNET_GSO_UDP_L4 : v6 ? VNET_GSO_TCPV6 : VNET_GSO_TCPV4,
			.gso_size = (uint16_t)(1 + rnd() % 1500),
			.csum_start = (uint16_t)(v6 ? 62 : 34),
			.csum_offset = udp ? 6 : 16,
		};
		int nmut = rnd() % 4;
		for (int m = 0; m < nmut; m++) {
			if (rnd() & 1)
				tmpl[rnd() % (len < 120 ? len : 120)] ^= (uint8_t)(1u << (rnd() % 8));
			else
				((uint8_t *)&h)[rnd() % 10] ^= (uint8_t)(1u << (rnd() % 8));
		}
		if (rnd() % 8 == 0)
			len -= rnd() % (len + 1);
		uint8_t *frame = malloc(len ? len : 1);
		memcpy(frame, tmpl, len);
		size_t head_len = len < HEAD_MAX ? len : HEAD_MAX;
		if (rnd() % 8 == 0)
			head_len = rnd() % (head_len + 1);
		uint8_t *head = malloc(head_len ? head_len : 1);
		memcpy(head, frame, head_len);
		struct frame_info fi;
		int vr = vnet_validate(&h, head, head_len, len, ~0ull, &fi);
		(void)rx_csum_verify(frame, len);
		if (vr == VR_OK && h.gso_type) {
			accepted++;
			put_pseudo(frame, &fi, len, h.csum_offset);
			memcpy(head, frame, head_len);
			/* scatter list of exact-size pieces */
			struct iovec iov[8];
			int cnt = 1 + rnd() % 8;
			size_t pos = 0;
			for (int i = 0; i < cnt; i++) {
				size_t n = i == cnt - 1 ? len - pos : rnd() % (len - pos + 1);
				iov[i].iov_base = malloc(n ? n : 1);
				memcpy(iov[i].iov_base, frame + pos, n);
				iov[i].iov_len = n;
				pos += n;
			}
			uint16_t out16;
			if (csum_complete_iov(iov, cnt, len, h.csum_start, h.csum_offset, &out16) ||
			    csum_complete(frame, len, h.csum_start, h.csum_offset) ||
			    memcmp(&out16, frame + h.csum_start + h.csum_offset, 2)) {
				fprintf(stderr, "round %ld: csum_complete disagrees\n", r);
				return 1;
			}
			size_t payload = len - fi.hdrs_len;
			size_t nseg = payload ? (payload + h.gso_size - 1) / h.gso_size : 1;
			size_t cap = nseg * fi.hdrs_len + payload - (rnd() % 4 == 0);
			uint8_t *out = malloc(cap ? cap : 1);
			uint32_t *lens = malloc(sizeof(uint32_t) * (nseg ? nseg : 1));
			int n = gso_segment(&h, &fi, head, iov, cnt, len, out, cap, lens, (unsigned)nseg);
			if (n > 0) {
				size_t off = 0;
				segmented++;
				for (int i = 0; i < n; i++) {
					if (rx_csum_verify(out + off, lens[i]) != 1) {
						fprintf(stderr, "round %ld: segment %d does not verify\n", r, i);
						return 1;
					}
					off += lens[i];
				}
			}
			free(out);
			free(lens);
			for (int i = 0; i < cnt; i++)
				free(iov[i].iov_base);
		}
		free(frame);
		free(head);
	}
	printf("%ld %ld\n", accepted, segmented);
	return 0;
}
