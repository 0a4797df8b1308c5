/*
 * fuzz_tx: the TX data path (txpath.c) over a fuzzed ring and fuzzed
 * frames: header copy and validation, the locked-address and ARP checks, the
 * DHCP diversion (is_dhcp_request, the field extraction that picks frames
 * for the parent), passthrough with the rebuilt header, software checksum
 * and software segmentation, with a nonblocking tap.
 *
 * Input: u64 features, u32 TXF_* flags, u8 log2(num) (1..16), u8 mode
 * (bit 0 EVENT_IDX, bits 1-7 base), u8 batch, then guest memory
 * (ringmem.h's layout). The locked address is 52:54:00:12:34:56.
 * Oracles: every frame the tap gets passes txcheck.h; a diverted frame is
 * a DHCP request of at most DIVERT_MAX bytes; used entries name valid heads;
 * the ring is consistent after tx_reset (nothing held).
 */
#include "txcheck.h"

static const uint8_t LOCKED[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct tx_ctx *c;
	static struct ringmem r;
	struct in in = { data, size };
	unsigned num, mode;
	uint16_t used_start;

	if (!c) {
		c = calloc(1, sizeof(*c));
		if (!c || tx_init(c))
			abort();
		rm_init(&r);
	}
	c->features = u64(&in);
	c->flags = u32(&in);
	num = 1u << (u8(&in) % 5);
	mode = u8(&in);
	c->batch = u8(&in) % 8;
	memcpy(c->locked_mac, LOCKED, 6);
	c->kick_fd = -1;
	c->tap_fd = r.tap[0];
	memset(c->cnt, 0, sizeof(c->cnt));
	rm_map(&r, &in);
	if (rm_setup(&r, &c->q, num, (uint16_t)(mode >> 1) * 0x200, mode & 1) != GM_OK)
		abort();
	used_start = c->q.used_idx;
	for (int k = 0; k < 8; k++) {
		int ret = tx_poll_once(c);

		tx_collect(c, r.tap[1]);
		if (ret == DP_DIVERT)
			tx_check_divert(c);
		else if (ret != DP_CTL)
			FAIL("tx_poll_once returned %d", ret);
		if (!vq_pending(&c->q) && !c->seg_count)
			break;
	}
	tx_reset(c);
	rm_check_used(&r, num, used_start);
	rm_drain(r.tap[1]);
	rm_unmap(&r);
	return 0;
}
