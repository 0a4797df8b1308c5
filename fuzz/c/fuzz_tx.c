/*
 * fuzz_tx: the TX data path (txpath.c) over a fuzzed ring and fuzzed
 * frames: header copy and validation, the locked-address and ARP checks, the
 * DHCP diversion (is_dhcp_request, the field extraction that picks frames
 * for the parent), TXF_INET6's (router solicitations and DHCPv6 to the
 * parent, the guest's router messages dropped: local_v6), passthrough with the rebuilt header, software checksum
 * and software segmentation, with a nonblocking tap.
 *
 * Input: u64 features, u32 TXF_* flags, u8 log2(num) (1..16), u8 mode
 * (bit 0 EVENT_IDX, bits 1-7 base), u8 batch (bits 0-2; bit 3: serve through
 * tx_run() with a kick eventfd instead of tx_poll_once(); bit 4: a tap with
 * the smallest send buffer, read by the "kernel" only every other call, so
 * writes meet EAGAIN (frames handed back, segments left waiting) or
 * EMSGSIZE (a write error); bit 5: passthrough frames staged and written
 * through the io_uring of txuring.c, when the kernel allows one; bit 6: a
 * rate limit of RATE_PPS frames a second with a burst of one, rate.c), then
 * guest memory (ringmem.h's layout). The locked address is 52:54:00:12:34:56,
 * its IPv6 sources fe80::5054:ff:fe12:3456 and fd00:1::5054:ff:fe12:3456.
 * Oracles: every frame the tap gets passes txcheck.h (as written and as the
 * kernel completes its partial checksum); a diverted frame is
 * a DHCP request, a router solicitation or a DHCPv6 client message (as
 * the flags ask) of at most DIVERT_MAX bytes; used entries name valid heads;
 * the ring is consistent after tx_reset (nothing held); with the limit, no
 * more frames pass than its burst, the one it lets into debt and what it
 * earned meanwhile (a run is far shorter than a second: RATE_SLACK).
 */
#include <errno.h>
#include <sys/eventfd.h>

#include "txcheck.h"
#include "txuring.h"

static const uint8_t LOCKED[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
enum { RATE_PPS = 2, RATE_SLACK = 2 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct tx_ctx *c;
	static struct txu *ring;
	static struct ringmem r;
	static int small[2], kick;
	struct in in = { data, size };
	unsigned num, mode, b;
	uint16_t used_start;
	int tap_k;

	if (!c) {
		int buf = 1;            /* the kernel's minimum: a few KiB */

		c = calloc(1, sizeof(*c));
		if (!c || tx_init(c))
			abort();
		ring = txu_open();      /* NULL where io_uring is off: bit 5 does nothing */
		rm_init(&r);
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, small) ||
		    setsockopt(small[0], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf)) ||
		    (kick = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
			abort();
		for (int i = -1; i <= DC_MAX; i++)      /* every counter has a name */
			if (!dp_counter_name(i) || !*dp_counter_name(i))
				abort();
	}
	c->features = u64(&in);
	c->flags = u32(&in);
	num = 1u << (u8(&in) % 5);
	mode = u8(&in);
	b = u8(&in);
	c->batch = b % 8;
	memcpy(c->locked_mac, LOCKED, 6);
	/* TXF_LOCKED_IP6: the link-local and a SLAAC address of LOCKED (fd00:1::/64) */
	memcpy(c->locked_ip6[0], "\xfe\x80\0\0\0\0\0\0\x50\x54\x00\xff\xfe\x12\x34\x56", 16);
	memcpy(c->locked_ip6[1], "\xfd\x00\0\x01\0\0\0\0\x50\x54\x00\xff\xfe\x12\x34\x56", 16);
	c->kick_fd = (b & 8) ? kick : -1;
	c->uring = (b & 32) ? ring : NULL;
	c->tap_fd = (b & 16) ? small[0] : r.tap[0];
	tap_k = (b & 16) ? small[1] : r.tap[1];
	c->waiting_out = 0;
	rate_set(&c->rate, 0, 0, (b & 64) ? RATE_PPS : 0, 1);
	memset(c->cnt, 0, sizeof(c->cnt));
	rm_map(&r, &in);
	if (rm_setup(&r, &c->q, num, (uint16_t)(mode >> 1) * 0x200, mode & 1) != GM_OK)
		abort();
	used_start = c->q.used_idx;
	for (int k = 0; k < 8; k++) {
		int ret;

		if (b & 8) {
			uint64_t one = 1;

			if (write(kick, &one, sizeof(one)) != sizeof(one))
				abort();
			ret = tx_run(c, r.ctl[0]);
		} else {
			ret = tx_poll_once(c);
		}
		if (!(b & 16) || (k & 1)) {
			tx_collect(c, tap_k);
			c->waiting_out = 0;     /* the kernel has read: writable again */
		}
		if (ret == DP_DIVERT)
			tx_check_divert(c);
		else if (ret != DP_CTL)
			FAIL("tx_poll_once returned %d (errno %d)", ret, errno);
		if (!vq_pending(&c->q) && !c->seg_count)
			break;
	}
	if ((b & 64) && c->cnt[DC_FRAMES] > 2 + RATE_SLACK)
		FAIL("%llu frames passed a limit of %d a second", (unsigned long long)c->cnt[DC_FRAMES],
		     RATE_PPS);
	tx_reset(c);
	rm_check_used(&r, num, used_start);
	rm_drain(tap_k);
	eventfd_drain(kick);
	rm_unmap(&r);
	return 0;
}
