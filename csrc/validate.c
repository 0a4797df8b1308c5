/*
 * validate.c: accept or refuse the virtio_net_hdr and frame a guest wrote.
 *
 * The rules are at least those of Linux's virtio_net_hdr_to_skb()
 * (include/linux/virtio_net.h, 6.x) and tun.c's hdr_len check, plus what the
 * virtio spec requires and Linux lets pass.  Stricter than Linux:
 *  - unknown flags (anything but NEEDS_CSUM and DATA_VALID) are refused;
 *  - GSO without NEEDS_CSUM is refused (virtio 1.2, 5.1.6.2.1);
 *  - csum_start must leave room for a whole Ethernet (+ tag) and IP header:
 *    14 (+4) + 20, or + 40 for IPv6 (Linux: 20 or 40 from the MAC header);
 *  - the checksum field (csum_start + csum_offset + 2) must lie within the
 *    first HEAD_MAX bytes, so the caller can finish it in its head copy;
 *  - an IP frame whose IP length runs past the frame is refused
 *    (VR_GSO_IP_LENGTH), GSO or not, as soon as its IP header could be read,
 *    whether or not the headers after it (IPv6 extensions, L4) parse: a
 *    software checksum may be written over those (Linux lets csum_start
 *    point anywhere past the IP header), and the frame it makes must pass
 *    this check as written. The IP header itself lies below every
 *    csum_start we accept (CSUM_START_LOW), so the checksum cannot change
 *    the length. (Linux drops such a packet too, as truncated: ip_rcv_core(),
 *    ip6_rcv_core().)
 *  - a GSO frame must parse fully, its IP length field must name exactly the
 *    frame (ip_end == frame_len: Linux guests put the whole super-packet's
 *    length there), for UDP_L4 the UDP length too, and csum_start must be
 *    the L4 header for every GSO type (Linux checks it for TCP at
 *    segmentation time, CVE-2024-43817).
 * UFO (GSO_UDP) is refused: without HOST_UFO as unnegotiated, with it as
 * unknown, since we never offer it and cannot segment it.  The ECN bit alone
 * (gso_type 0x80) is VR_ECN_NOT_TCP.  A payload no larger than gso_size is
 * accepted, as Linux does: segmentation then yields one frame.
 * Each rule gives its own reason, so counters say which one a guest broke.
 */
#include <string.h>

#include "core.h"
#include "wire.h"

#define F_CSUM		(1ull << 0)
#define F_HOST_TSO4	(1ull << 11)
#define F_HOST_TSO6	(1ull << 12)
#define F_HOST_ECN	(1ull << 13)
#define F_HOST_UFO	(1ull << 14)
#define F_HOST_USO	(1ull << 56)

static const char *const reason_names[VR_REASON_MAX] = {
	[VR_OK] = "ok",
	[VR_FRAME_SHORT] = "frame_short",
	[VR_FRAME_LONG] = "frame_long",
	[VR_FLAGS_UNKNOWN] = "flags_unknown",
	[VR_CSUM_UNNEGOTIATED] = "csum_unnegotiated",
	[VR_GSO_UNKNOWN] = "gso_unknown",
	[VR_GSO_UNNEGOTIATED] = "gso_unnegotiated",
	[VR_ECN_UNNEGOTIATED] = "ecn_unnegotiated",
	[VR_ECN_NOT_TCP] = "ecn_not_tcp",
	[VR_GSO_NO_CSUM] = "gso_no_csum",
	[VR_GSO_SIZE_ZERO] = "gso_size_zero",
	[VR_GSO_SIZE_BY_FRAGS] = "gso_size_by_frags",
	[VR_CSUM_START_RANGE] = "csum_start_range",
	[VR_CSUM_OFFSET_RANGE] = "csum_offset_range",
	[VR_CSUM_START_LOW] = "csum_start_low",
	[VR_HDR_LEN] = "hdr_len",
	[VR_PARSE] = "parse",
	[VR_GSO_NOT_IP] = "gso_not_ip",
	[VR_GSO_PROTO] = "gso_proto",
	[VR_GSO_FRAGMENT] = "gso_fragment",
	[VR_GSO_CSUM_START] = "gso_csum_start",
	[VR_TCP_CSUM_OFFSET] = "tcp_csum_offset",
	[VR_UDP_CSUM_OFFSET] = "udp_csum_offset",
	[VR_USO_SEGMENTS] = "uso_segments",
	[VR_GSO_IP_LENGTH] = "gso_ip_length",
};

const char *vnet_reason_name(int reason)
{
	if (reason < 0 || reason >= VR_REASON_MAX || !reason_names[reason])
		return "unknown";
	return reason_names[reason];
}

/* The gso_type and its features, without looking at the frame. */
static int check_gso_type(const struct vnet_hdr *h, uint64_t features)
{
	uint8_t t = h->gso_type & ~VNET_GSO_ECN;
	uint64_t need;

	if (h->gso_type == VNET_GSO_NONE)
		return VR_OK;
	switch (t) {
	case VNET_GSO_NONE:
		return VR_ECN_NOT_TCP;	/* the ECN bit on its own */
	case VNET_GSO_TCPV4:
		need = F_HOST_TSO4;
		break;
	case VNET_GSO_TCPV6:
		need = F_HOST_TSO6;
		break;
	case VNET_GSO_UDP:
		need = F_HOST_UFO;
		break;
	case VNET_GSO_UDP_L4:
		need = F_HOST_USO;
		break;
	default:
		return VR_GSO_UNKNOWN;
	}
	if (!(features & need))
		return VR_GSO_UNNEGOTIATED;
	if (t == VNET_GSO_UDP)
		return VR_GSO_UNKNOWN;	/* UFO: never offered, never segmented */
	if (h->gso_type & VNET_GSO_ECN) {
		if (t == VNET_GSO_UDP_L4)
			return VR_ECN_NOT_TCP;
		if (!(features & F_HOST_ECN))
			return VR_ECN_UNNEGOTIATED;
	}
	if (!(h->flags & VNET_F_NEEDS_CSUM))
		return VR_GSO_NO_CSUM;
	if (h->gso_size == 0)
		return VR_GSO_SIZE_ZERO;
	if (h->gso_size == 0xffff)
		return VR_GSO_SIZE_BY_FRAGS;
	if (t == VNET_GSO_UDP_L4) {
		if (h->csum_offset != UDP_CSUM_OFF)
			return VR_UDP_CSUM_OFFSET;
	} else if (h->csum_offset != TCP_CSUM_OFF) {
		return VR_TCP_CSUM_OFFSET;
	}
	return VR_OK;
}

/* csum_start/csum_offset against the frame, as skb_partial_csum_set() and
 * the nh_min_len check do, on the numbers alone. */
static int check_csum_range(const struct vnet_hdr *h, const uint8_t *head, size_t head_len,
			    size_t frame_len)
{
	uint8_t t = h->gso_type & ~VNET_GSO_ECN;
	size_t start = h->csum_start, field_end = start + h->csum_offset + 2;
	size_t thlen = 0, need, min;
	int v6 = t == VNET_GSO_TCPV6;

	if (t == VNET_GSO_TCPV4 || t == VNET_GSO_TCPV6)
		thlen = 20;
	else if (t == VNET_GSO_UDP_L4)
		thlen = 8;
	need = start + (thlen > h->csum_offset + 2u ? thlen : h->csum_offset + 2u);
	if (start + 2 > frame_len || start + 2 > HEAD_MAX)
		return VR_CSUM_START_RANGE;
	if (need > frame_len || field_end > HEAD_MAX)
		return VR_CSUM_OFFSET_RANGE;
	min = ETH_HLEN_;
	if (rd16be(head + 12) == ETH_P_8021Q_) {
		min += 4;
		if (head_len >= 18 && rd16be(head + 16) == ETH_P_IPV6_)
			v6 = 1;
	} else if (rd16be(head + 12) == ETH_P_IPV6_) {
		v6 = 1;
	}
	min += v6 ? 40 : 20;
	if (start < min)
		return VR_CSUM_START_LOW;
	return VR_OK;
}

/* A GSO frame against its type: what segmentation relies on. */
static int check_gso_frame(const struct vnet_hdr *h, const uint8_t *head, int parsed,
			   size_t frame_len, const struct frame_info *fi)
{
	uint8_t t = h->gso_type & ~VNET_GSO_ECN;
	int want_v = t == VNET_GSO_TCPV4 ? 4 : t == VNET_GSO_TCPV6 ? 6 : 0;
	int want_p = t == VNET_GSO_UDP_L4 ? IPPROTO_UDP_ : IPPROTO_TCP_;

	if (parsed != PARSE_OK)
		return VR_PARSE;
	if (fi->ip_version == 0)
		return VR_GSO_NOT_IP;
	if ((want_v && fi->ip_version != want_v) || fi->l4_proto != want_p)
		return VR_GSO_PROTO;
	if (fi->fragment)
		return VR_GSO_FRAGMENT;
	if (h->csum_start != fi->l4_off)
		return VR_GSO_CSUM_START;
	if (fi->ip_end != frame_len)
		return VR_GSO_IP_LENGTH;
	if (t == VNET_GSO_UDP_L4) {
		if (rd16be(head + fi->l4_off + 4) != frame_len - fi->l4_off)
			return VR_GSO_IP_LENGTH;
		if (frame_len - fi->hdrs_len > (size_t)h->gso_size * UDP_MAX_SEGMENTS)
			return VR_USO_SEGMENTS;
	}
	return VR_OK;
}

int vnet_validate(const struct vnet_hdr *h, const uint8_t *head, size_t head_len,
		  size_t frame_len, uint64_t features, struct frame_info *fi)
{
	int r, parsed;

	memset(fi, 0, sizeof(*fi));
	if (frame_len < ETH_HLEN_)
		return VR_FRAME_SHORT;
	if (frame_len > FRAME_MAX)
		return VR_FRAME_LONG;
	if (head_len > frame_len)
		head_len = frame_len;
	if (head_len < ETH_HLEN_)
		return VR_PARSE;	/* the caller gave too few bytes to judge */
	if (h->flags & ~(VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID))
		return VR_FLAGS_UNKNOWN;
	if ((h->flags & VNET_F_NEEDS_CSUM) && !(features & F_CSUM))
		return VR_CSUM_UNNEGOTIATED;
	r = check_gso_type(h, features);
	if (r)
		return r;
	if (h->hdr_len > frame_len)
		return VR_HDR_LEN;
	if (h->flags & VNET_F_NEEDS_CSUM) {
		r = check_csum_range(h, head, head_len, frame_len);
		if (r)
			return r;
	}
	parsed = frame_parse(head, head_len, frame_len, fi);
	if (h->gso_type != VNET_GSO_NONE)
		return check_gso_frame(h, head, parsed, frame_len, fi);
	/* fi->ip_end is set once the IP header is read, even if parsing then failed */
	if (fi->ip_version && fi->ip_end > frame_len)
		return VR_GSO_IP_LENGTH;
	return VR_OK;
}
