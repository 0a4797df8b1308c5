/*
 * fuzz_hostile: a guest that rewrites its ring while the device walks it.
 *
 * Per input, a second thread (the "guest") keeps rewriting guest memory
 * while this thread runs the TX or RX data path over it: descriptor fields
 * (addresses, lengths, flags, next), avail->idx and avail entries, indirect
 * tables and the headers and frames in the buffers, at positions and with
 * values drawn from an xorshift generator seeded by the input.
 * Single-fetch is what makes this safe: every ring field and the vnet
 * header and head of a frame are read once into the device's own memory,
 * checked there and used from there.
 *
 * Input: u8 mode (bit 0 RX instead of TX, bit 1 EVENT_IDX), u64 features,
 * u32 TXF_/RXF_ flags, u32 seed, u8 what the guest rewrites (bit 0
 * descriptors, 1 avail idx and entries, 2 buffers, 3 used ring), u8 number
 * of tap frames (RX: 0..3) each as u16 length + bytes, then guest memory
 * (ringmem.h's layout, num 16).
 * Oracles (ASan + UBSan on every buffer, guest memory included): TX: every
 * frame the tap got passes validation of the bytes actually written
 * (txcheck.h), a diverted frame is a DHCP request; RX and TX: the paths
 * return with no chain held.
 */
#include <pthread.h>

#include "txcheck.h"

enum { NUM = 16 };

struct guest {
	uint8_t *mem;
	size_t size;
	uint64_t rng;
	unsigned what;
	int stop;
	unsigned long writes;   /* loop turns, written or not */
};

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void wr(uint8_t *p, const void *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		__atomic_store_n(p + i, ((const uint8_t *)v)[i], __ATOMIC_RELAXED);
}

static void *guest_thread(void *arg)
{
	struct guest *g = arg;

	while (!__atomic_load_n(&g->stop, __ATOMIC_ACQUIRE)) {
		uint64_t x = xs(&g->rng);
		unsigned kind = (unsigned)(x & 7);

		x >>= 3;
		if ((kind == 0 || kind == 1) && (g->what & 1)) {
			/* a descriptor field: addr somewhere in or near memory, len, flags, next */
			size_t d = RM_DESC + 16 * (x % NUM);
			uint64_t a = RM_GPA + (x >> 8) % (g->size + 64) - 32;
			uint32_t l = (uint32_t)(x >> 20) % 4096;
			uint16_t f = (uint16_t)((x >> 40) & 7), n = (uint16_t)((x >> 44) % 20);

			switch ((x >> 4) & 3) {
			case 0: wr(g->mem + d, &a, 8); break;
			case 1: wr(g->mem + d + 8, &l, 4); break;
			case 2: wr(g->mem + d + 12, &f, 2); break;
			case 3: wr(g->mem + d + 14, &n, 2); break;
			}
		} else if ((kind == 2 || kind == 3) && (g->what & 2)) {
			uint16_t v = (uint16_t)(x >> 8);

			if (x & 1)      /* avail->idx jumps, forwards or back */
				v = (uint16_t)(rm_ld16(g->mem + RM_AVAIL + 2) + (int)((x >> 8) % 5) - 1);
			wr(g->mem + ((x & 1) ? RM_AVAIL + 2 : RM_AVAIL + 4 + 2 * ((x >> 24) % NUM)),
			   &v, 2);
		} else if (kind >= 4 && kind <= 6 && (g->what & 4)) {
			/* bytes of buffers: vnet headers, frame headers, indirect tables */
			size_t span = g->size - RM_BUFS;
			uint8_t b = (uint8_t)(x >> 40);

			wr(g->mem + RM_BUFS + (x % span), &b, 1);
		} else if (kind == 7 && (g->what & 8)) {
			uint8_t b = (uint8_t)(x >> 40);

			wr(g->mem + RM_USED + (x % (6 + 8 * NUM)), &b, 1);
		}
		__atomic_fetch_add(&g->writes, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct tx_ctx *tx;
	static struct rx_ctx *rx;
	static struct ringmem r;
	struct in in = { data, size };
	struct guest g = {0};
	pthread_t t;
	unsigned mode, nframes;
	uint64_t features;
	uint32_t flags;

	if (!tx) {
		tx = calloc(1, sizeof(*tx));
		rx = calloc(1, sizeof(*rx));
		if (!tx || !rx || tx_init(tx))
			abort();
		rm_init(&r);
	}
	mode = u8(&in);
	features = u64(&in);
	flags = u32(&in);
	g.rng = u32(&in) | 0x100000000ull;
	g.what = u8(&in);
	nframes = (mode & 1) ? u8(&in) % 4 : 0;
	rm_drain(r.tap[0]);
	rm_drain(r.tap[1]);
	for (unsigned i = 0; i < nframes; i++) {
		uint16_t l = u16(&in) % 9000;
		uint8_t *f = malloc(l ? l : 1);

		take(&in, f, l);
		if (send(r.tap[1], f, l, MSG_DONTWAIT) < 0) {
			/* the socket is full: fewer frames */
		}
		free(f);
	}
	rm_map(&r, &in);
	g.mem = r.mem;
	g.size = r.size;

	if (mode & 1) {
		memset(rx, 0, sizeof(*rx));
		rx->features = features;
		rx->flags = flags & 3;
		rx->kick_fd = -1;
		rx->tap_fd = r.tap[0];
		if (rm_setup(&r, &rx->q, NUM, 0, mode & 2) != GM_OK)
			abort();
		rx_init(rx);
	} else {
		tx->features = features;
		tx->flags = flags;
		memcpy(tx->locked_mac, "\x52\x54\x00\x12\x34\x56", 6);
		tx->kick_fd = -1;
		tx->tap_fd = r.tap[0];
		tx->batch = 0;
		if (rm_setup(&r, &tx->q, NUM, 0, mode & 2) != GM_OK)
			abort();
	}
	if (pthread_create(&t, NULL, guest_thread, &g))
		abort();
	/* Serve at least 6 times, and on until the guest has been at work
	 * (a thread just created may not have run yet on a busy machine);
	 * waiting for it idle would cost more than serving meanwhile. */
	for (int k = 0; k < 6 || (k < 64 && __atomic_load_n(&g.writes, __ATOMIC_RELAXED) < 64); k++) {
		if (mode & 1) {
			if (rx_run(rx, r.ctl[0]) != DP_CTL || rx->nbufs)
				FAIL("rx_run under a hostile guest");
		} else {
			int ret = tx_poll_once(tx);

			tx_collect(tx, r.tap[1]);
			if (ret == DP_DIVERT)
				tx_check_divert(tx);
			else if (ret != DP_CTL)
				FAIL("tx_poll_once returned %d", ret);
		}
	}
	__atomic_store_n(&g.stop, 1, __ATOMIC_RELEASE);
	pthread_join(t, NULL);
	if (mode & 1) {
		rx_reset(rx);
	} else {
		tx_collect(tx, r.tap[1]);
		tx_reset(tx);
	}
	rm_unmap(&r);
	return 0;
}
