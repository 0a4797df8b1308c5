/*
 * txcheck.h: what fuzz_tx and fuzz_hostile check of every frame the TX path
 * wrote to the tap (the bytes the "kernel" got), and of a diverted frame.
 */
#ifndef VIONETD_FUZZ_TXCHECK_H
#define VIONETD_FUZZ_TXCHECK_H

#include "ringmem.h"

static inline int is_dhcp_frame(const uint8_t *f, size_t len)
{
	struct frame_info fi;
	size_t hl = len < HEAD_MAX ? len : HEAD_MAX;

	return frame_parse(f, hl, len, &fi) == PARSE_OK && fi.ip_version == 4 &&
	       fi.l4_proto == 17 && !fi.fragment && fi.l4_off && fi.l4_off + 4 <= hl &&
	       f[fi.l4_off] == 0 && f[fi.l4_off + 1] == 68 &&
	       f[fi.l4_off + 2] == 0 && f[fi.l4_off + 3] == 67;
}

/* TXF_INET6's classes, RFC 4861 and RFC 8415 ports: 1 a router
 * solicitation or a DHCPv6 client message (to the parent), 2 what only a
 * router or a DHCPv6 server sends (dropped), 0 anything else. */
static inline int v6_kind(const uint8_t *f, size_t len)
{
	struct frame_info fi;
	size_t hl = len < HEAD_MAX ? len : HEAD_MAX;
	unsigned sport, dport;

	if (frame_parse(f, hl, len, &fi) != PARSE_OK || fi.ip_version != 6 || fi.fragment)
		return 0;
	if (fi.l4_proto == 58 && fi.hdrs_len < hl) {
		uint8_t t = f[fi.hdrs_len];
		return t == 133 ? 1 : (t == 134 || t == 137) ? 2 : 0;
	}
	if (fi.l4_proto != 17 || !fi.l4_off || fi.l4_off + 4u > hl)
		return 0;
	sport = (unsigned)f[fi.l4_off] << 8 | f[fi.l4_off + 1];
	dport = (unsigned)f[fi.l4_off + 2] << 8 | f[fi.l4_off + 3];
	return sport == 546 && dport == 547 ? 1 : sport == 547 && dport == 546 ? 2 : 0;
}

/* TXF_LOCKED_IP6: not IPv6 (behind one 802.1Q tag at most), or from one of
 * locked_ip6[], or from :: in ICMPv6. */
static inline int ip6_source_ok(const struct tx_ctx *c, const uint8_t *f, size_t len)
{
	static const uint8_t zero[16];
	struct frame_info fi;
	size_t hl = len < HEAD_MAX ? len : HEAD_MAX, off = 14;
	unsigned et;

	if (len < 14)
		return 1;
	et = f[12] << 8 | f[13];
	if (et == 0x8100) {
		if (len < 18)
			return 1;
		et = f[16] << 8 | f[17];
		off = 18;
	}
	if (et != 0x86DD)
		return 1;
	if (len < off + 40)
		return 0;
	for (int i = 0; i < LOCKED_IP6_MAX; i++)
		if (!memcmp(f + off + 8, c->locked_ip6[i], 16) && memcmp(f + off + 8, zero, 16))
			return 1;
	frame_parse(f, hl, len, &fi);   /* what it found, even if it then failed */
	return !memcmp(f + off + 8, zero, 16) && fi.ip_version == 6 && fi.l4_proto == 58;
}

static inline uint32_t sw_flag_for(uint8_t gso_type)
{
	switch (gso_type & 0x7f) {
	case VNET_GSO_TCPV4: return TXF_SW_TSO4;
	case VNET_GSO_TCPV6: return TXF_SW_TSO6;
	case VNET_GSO_UDP_L4: return TXF_SW_USO;
	}
	return 0;
}

/* TXF_INET6, TXF_LOCKED_IP6: an IPv6 frame (behind one 802.1Q tag at
 * most) whose headers do not parse, which no filter could judge. */
static inline int ip6_unparsed(const uint8_t *f, size_t len)
{
	struct frame_info fi;
	size_t hl = len < HEAD_MAX ? len : HEAD_MAX;

	return frame_parse(f, hl, len, &fi) != PARSE_OK && fi.ethertype == 0x86DD;
}

/* What the filters promise of a frame the kernel gets: f is its first
 * hl bytes (at most HEAD_MAX) of len. */
static inline void tx_check_filters(const struct tx_ctx *c, const uint8_t *f, size_t hl,
				    size_t len, const char *what)
{
	if ((c->flags & TXF_LOCKED_MAC) && memcmp(f + 6, c->locked_mac, 6))
		FAIL("%s: frame from another MAC passed the lock", what);
	if ((c->flags & TXF_DHCP_DIVERT) && is_dhcp_frame(f, hl) && len <= DIVERT_MAX)
		FAIL("%s: DHCP request went to the tap instead of the parent", what);
	if ((c->flags & TXF_INET6) && v6_kind(f, hl) == 1 && len <= DIVERT_MAX)
		FAIL("%s: router solicitation or DHCPv6 went to the tap instead of the parent", what);
	if ((c->flags & TXF_INET6) && v6_kind(f, hl) == 2)
		FAIL("%s: the guest's router message went to the tap", what);
	if ((c->flags & (TXF_INET6 | TXF_LOCKED_IP6)) && ip6_unparsed(f, hl))
		FAIL("%s: IPv6 frame whose headers do not parse passed the filter", what);
	if ((c->flags & TXF_LOCKED_IP6) && !ip6_source_ok(c, f, hl))
		FAIL("%s: IPv6 frame from another source passed the lock", what);
}

/*
 * One frame as written: [vnet header][frame]. It must pass validation as
 * it is (the header we rebuilt, the head we copied), carry only what the
 * policy lets through to the kernel, and respect the locked addresses, the
 * DHCP diversion and TXF_INET6, both as written and as the kernel makes
 * it when it completes a partial checksum (where the guest said).
 */
static inline void tx_check_out(const struct tx_ctx *c, const uint8_t *buf, size_t n)
{
	struct vnet_hdr h;
	struct frame_info fi;
	size_t len, hl;
	uint8_t *head;
	int vr;

	if (n < VNET_HDR_LEN + 14)
		FAIL("tap got a frame of %zu bytes", n);
	memcpy(&h, buf, VNET_HDR_LEN);
	len = n - VNET_HDR_LEN;
	hl = len < HEAD_MAX ? len : HEAD_MAX;
	head = exact_copy(buf + VNET_HDR_LEN, hl);
	vr = vnet_validate(&h, head, hl, len, c->features, &fi);
	if (vr != VR_OK)
		FAIL("frame written to the tap fails validation: %s", vnet_reason_name(vr));
	if (h.flags & ~VNET_F_NEEDS_CSUM || h.num_buffers)
		FAIL("tap header flags 0x%x num_buffers %u", h.flags, h.num_buffers);
	if (h.gso_type && (c->flags & sw_flag_for(h.gso_type)))
		FAIL("GSO type %u passed to the tap though cut in software", h.gso_type);
	if (!h.gso_type && (h.flags & VNET_F_NEEDS_CSUM) && (c->flags & TXF_SW_CSUM))
		FAIL("partial checksum passed to the tap though done in software");
	tx_check_filters(c, head, hl, len, "as written");
	free(head);
	if (!h.gso_type && (h.flags & VNET_F_NEEDS_CSUM)) {
		uint8_t *done = exact_copy(buf + VNET_HDR_LEN, len);

		if (csum_complete(done, len, h.csum_start, h.csum_offset) < 0)
			FAIL("the kernel could not complete the checksum at %u+%u of %zu",
			     h.csum_start, h.csum_offset, len);
		tx_check_filters(c, done, hl, len, "checksum completed");
		free(done);
	}
}

static inline void tx_check_divert(const struct tx_ctx *c)
{
	uint8_t *f;

	if (c->divert_len > DIVERT_MAX || c->divert_len < 14)
		FAIL("divert_len %u", c->divert_len);
	f = exact_copy(c->divert, c->divert_len);
	if (!(c->flags & TXF_DHCP_DIVERT && is_dhcp_frame(f, c->divert_len)) &&
	    !(c->flags & TXF_INET6 && v6_kind(f, c->divert_len) == 1))
		FAIL("diverted frame is neither DHCP nor a solicitation or DHCPv6 (flags %#x)",
		     c->flags);
	free(f);
}

/* Read every frame the path wrote and check it. */
static inline unsigned tx_collect(const struct tx_ctx *c, int fd)
{
	static uint8_t buf[1 << 17];
	unsigned k = 0;
	ssize_t n;

	while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) >= 0) {
		tx_check_out(c, buf, (size_t)n);
		k++;
	}
	return k;
}

#endif
