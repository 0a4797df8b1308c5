/*
 * parse.c: find the headers of an Ethernet frame (the guest's or the tap's).
 *
 * Scope: Ethernet II with at most one 802.1Q tag (0x8100); a frame whose
 * inner EtherType is another tag (QinQ, 0x8100 or 0x88a8) is "not IP"
 * (PARSE_OK with ip_version 0, ethertype the second tag): we never segment or
 * checksum through two tags.  IPv4 with options; IPv6 with the extension
 * headers Linux's GSO walks (hop-by-hop 0, routing 43, destination options
 * 60; at most IPV6_EXT_MAX of them), a fragment header (44) marks the frame a
 * fragment and ends the walk; TCP with options; UDP.
 *
 * Invariants: every byte read lies below both head_len and HEAD_MAX (need()
 * is the one bounds check), all headers lie within the IP packet (ip_end),
 * and fi is zeroed first, so on an error it holds what was found so far.
 * The IP length itself is reported (ip_end), not compared with frame_len:
 * that is policy, and vnet_validate() applies it.
 */
#include <string.h>

#include "core.h"
#include "wire.h"

enum { IPV6_EXT_MAX = 8 };

/* The one bounds check: may bytes [0, end) of the head be read? */
static int need(size_t end, size_t head_len)
{
	if (end > HEAD_MAX)
		return PARSE_TOO_DEEP;
	if (end > head_len)
		return PARSE_SHORT;
	return PARSE_OK;
}

#define NEED(end) do { int r_ = need((end), head_len); if (r_) return r_; } while (0)

static int parse_ipv4(const uint8_t *h, size_t head_len, size_t off, struct frame_info *fi, size_t *l4)
{
	size_t ihl, tot;

	NEED(off + 20);
	if (h[off] >> 4 != 4)
		return PARSE_BAD_IP;
	ihl = (size_t)(h[off] & 0x0f) * 4;
	if (ihl < 20)
		return PARSE_BAD_IP;
	NEED(off + ihl);
	tot = rd16be(h + off + 2);
	if (tot < ihl)
		return PARSE_BAD_IP;
	fi->ip_version = 4;
	fi->ip_end = (uint32_t)(off + tot);
	fi->l4_proto = h[off + 9];
	/* MF set or a fragment offset: only the first fragment has L4. */
	fi->fragment = (rd16be(h + off + 6) & 0x3fff) != 0;
	*l4 = off + ihl;
	return PARSE_OK;
}

static int parse_ipv6(const uint8_t *h, size_t head_len, size_t off, struct frame_info *fi, size_t *l4)
{
	size_t p = off + 40;
	uint8_t nh;

	NEED(off + 40);
	if (h[off] >> 4 != 6)
		return PARSE_BAD_IP;
	fi->ip_version = 6;
	fi->ip_end = (uint32_t)(off + 40 + rd16be(h + off + 4));
	nh = h[off + 6];
	for (int n = 0; nh == 0 || nh == 43 || nh == 60 || nh == 44; n++) {
		if (n == IPV6_EXT_MAX)
			return PARSE_TOO_DEEP;
		NEED(p + 8);	/* every extension header is at least 8 bytes */
		if (nh == 44) {
			fi->fragment = 1;
			nh = h[p];
			p += 8;
			break;
		}
		size_t len = ((size_t)h[p + 1] + 1) * 8;
		NEED(p + len);
		nh = h[p];
		p += len;
	}
	fi->l4_proto = nh;
	*l4 = p;
	return PARSE_OK;
}

static int parse_l4(const uint8_t *h, size_t head_len, size_t l4, struct frame_info *fi)
{
	size_t len;

	if (fi->l4_proto == IPPROTO_TCP_) {
		NEED(l4 + 20);
		len = (size_t)(h[l4 + 12] >> 4) * 4;
		if (len < 20)
			return PARSE_BAD_L4;
		NEED(l4 + len);
	} else if (fi->l4_proto == IPPROTO_UDP_) {
		NEED(l4 + 8);
		len = 8;
	} else {
		return PARSE_OK;
	}
	fi->l4_off = (uint16_t)l4;
	fi->l4_len = (uint16_t)len;
	fi->hdrs_len = (uint16_t)(l4 + len);
	return PARSE_OK;
}

static int parse_headers(const uint8_t *head, size_t head_len, size_t frame_len,
			 struct frame_info *fi)
{
	size_t off = ETH_HLEN_, l4 = 0;
	uint16_t et;
	int r;

	memset(fi, 0, sizeof(*fi));
	if (head_len > frame_len)
		head_len = frame_len;
	NEED(ETH_HLEN_);
	et = rd16be(head + 12);
	if (et == ETH_P_8021Q_) {
		NEED(18);
		fi->vlan = 1;
		et = rd16be(head + 16);
		off = 18;
	}
	fi->ethertype = et;
	fi->l3_off = (uint16_t)off;
	fi->hdrs_len = (uint16_t)off;
	if (et == ETH_P_IPV4_)
		r = parse_ipv4(head, head_len, off, fi, &l4);
	else if (et == ETH_P_IPV6_)
		r = parse_ipv6(head, head_len, off, fi, &l4);
	else
		return PARSE_OK;
	if (r)
		return r;
	/* Headers past the IP length do not belong to the packet. */
	if (l4 > fi->ip_end)
		return PARSE_BAD_IP;
	fi->hdrs_len = (uint16_t)l4;
	if (fi->fragment)
		return PARSE_OK;
	r = parse_l4(head, head_len, l4, fi);
	if (r)
		return r;
	if (fi->hdrs_len > fi->ip_end)
		return PARSE_BAD_IP;
	return PARSE_OK;
}

/* The parse, and its result kept in fi->parse for the filters that read
 * the same headers later (txpath.c): one parse per frame. */
int frame_parse(const uint8_t *head, size_t head_len, size_t frame_len, struct frame_info *fi)
{
	int r = parse_headers(head, head_len, frame_len, fi);

	fi->parse = (uint8_t)r;
	return r;
}
