/*
 * fuzz_rx: RX delivery (rxpath.c) into fuzzed guest buffers: gathering
 * chains (mergeable or not), the direct readv into guest memory with the
 * overflow byte, the bounce through held[] when the guest is short of
 * buffers, header checks against the negotiated features, software
 * checksum completion over guest buffers, and rx_inject.
 *
 * Input: u64 features, u8 RXF_* flags, u16 frame_max, u8 batch, u8
 * log2(num) (1..16), u8 mode (bit 0 EVENT_IDX, bit 1 inject, bits 2-3
 * number of rx_run calls - 1, bit 4 a rate limit of RATE_PPS frames a
 * second with a burst of one, rate.c), u8 number of tap frames (0..7) and each as
 * u16 length + bytes (vnet header + frame, as a tap delivers them), u16
 * inject length + bytes, then guest memory (ringmem.h's layout).
 * Oracles: ASan/UBSan on every guest buffer and the context; used entries
 * name valid heads (when no buffer covers the used ring); no more frames
 * delivered than the tap had; what was delivered counts its bytes; with
 * the limit, no more than its burst, the one it lets into debt and what a
 * run far shorter than a second earns (RATE_SLACK).
 */
#include "ringmem.h"

enum { MAX_FRAMES = 7, RATE_PPS = 2, RATE_SLACK = 2 };

/*
 * Could the path's writes into guest buffers land on the used ring? Asked
 * before the run: a buffer over the descriptor table or the avail ring
 * counts too, since a frame written there can turn a descriptor into one
 * over the used ring (a crash input did: the descriptors read afterwards
 * were frame bytes).
 */
static int buffers_cover_used(const struct ringmem *r, unsigned num)
{
	for (unsigned i = 0; i < num; i++) {
		uint64_t a;
		uint32_t l;
		uint16_t f;

		memcpy(&a, r->mem + RM_DESC + 16 * i, 8);
		memcpy(&l, r->mem + RM_DESC + 16 * i + 8, 4);
		memcpy(&f, r->mem + RM_DESC + 16 * i + 12, 2);
		if (f & VRING_DESC_F_INDIRECT)
			return 1;
		if (a < RM_GPA + RM_BUFS && a + l > RM_GPA + RM_DESC)
			return 1;
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct rx_ctx *c;
	static struct ringmem r;
	struct in in = { data, size };
	unsigned num, mode, nframes, sent = 0, runs;
	int covered;
	uint16_t used_start, ilen;
	uint8_t *inject;

	if (!c) {
		c = calloc(1, sizeof(*c));
		if (!c)
			abort();
		rm_init(&r);
	}
	memset(c, 0, sizeof(*c));
	c->features = u64(&in);
	c->flags = u8(&in) & 3;
	c->frame_max = u16(&in);
	c->batch = u8(&in) % 8;
	num = 1u << (u8(&in) % 5);
	mode = u8(&in);
	runs = 1 + ((mode >> 2) & 3);
	nframes = u8(&in) % (MAX_FRAMES + 1);
	rm_drain(r.tap[0]);
	for (unsigned i = 0; i < nframes; i++) {
		uint16_t l = u16(&in) % 9000;
		uint8_t *f = malloc(l ? l : 1);

		take(&in, f, l);
		if (send(r.tap[1], f, l, MSG_DONTWAIT) == (ssize_t)l)
			sent++;
		free(f);
	}
	ilen = u16(&in) % 4096;
	inject = malloc(ilen ? ilen : 1);
	take(&in, inject, ilen);
	c->kick_fd = -1;
	c->tap_fd = r.tap[0];
	rm_map(&r, &in);
	if (rm_setup(&r, &c->q, num, 0, mode & 1) != GM_OK)
		abort();
	rx_init(c);
	rate_set(&c->rate, 0, 0, (mode & 16) ? RATE_PPS : 0, 1);
	used_start = c->q.used_idx;
	covered = buffers_cover_used(&r, num);
	for (unsigned k = 0; k < runs; k++) {
		int ret = rx_run(c, r.ctl[0]);

		if (ret != DP_CTL)
			FAIL("rx_run returned %d", ret);
		if (c->nbufs)
			FAIL("rx_run returned holding %u chains", c->nbufs);
	}
	if (mode & 2) {
		rx_inject(c, inject, ilen);
		if (c->nbufs)
			FAIL("rx_inject returned holding %u chains", c->nbufs);
	}
	if (c->cnt[DC_FRAMES] > sent)
		FAIL("%llu frames delivered of %u sent", (unsigned long long)c->cnt[DC_FRAMES], sent);
	if (c->cnt[DC_BYTES] > (uint64_t)c->cnt[DC_FRAMES] * FRAME_MAX)
		FAIL("delivered bytes");
	if ((mode & 16) && c->cnt[DC_FRAMES] > 2 + RATE_SLACK)
		FAIL("%llu frames passed a limit of %d a second", (unsigned long long)c->cnt[DC_FRAMES],
		     RATE_PPS);
	if (!covered)
		rm_check_used(&r, num, used_start);
	rx_reset(c);
	rm_drain(r.tap[0]);
	rm_unmap(&r);
	free(inject);
	return 0;
}
