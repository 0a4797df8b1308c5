/*
 * offload.c: the offloads a guest asks for, done in software: finishing a
 * NEEDS_CSUM checksum, cutting a TSO/USO super-frame into wire frames, and
 * verifying a received frame's checksums.
 *
 * Segmentation follows Linux's software GSO (net/ipv4/af_inet.c
 * inet_gso_segment, net/ipv6/ip6_offload.c ipv6_gso_segment,
 * net/ipv4/tcp_offload.c tcp_gso_segment, net/ipv4/udp_offload.c
 * __udp_gso_segment), so a frame cut here is the frame the host's stack
 * would have put on the wire:
 *  - IPv4: tot_len per segment, id = first id + segment index (mod 2^16;
 *    virtio has no FIXEDID), header checksum recomputed;
 *  - IPv6: payload_len per segment, extension headers copied as they are;
 *  - TCP: seq advanced by gso_size per segment; FIN and PSH only on the
 *    last segment, CWR only on the first (Linux clears CWR on the later ones
 *    unless the GSO type is AccECN, which virtio cannot express);
 *  - UDP_L4: every segment its own datagram, length set, gso_size bytes of
 *    UDP payload each (the last may be shorter); a UDP checksum of 0 is sent
 *    as 0xffff;
 *  - L4 checksum: the guest's pseudo-header sum (NEEDS_CSUM) adjusted from
 *    the super-frame's length to the segment's, as Linux does, plus the
 *    segment's header and payload.  The payload is copied and summed in one
 *    pass (csum_copy), never read twice.
 * Headers come from the caller's validated copy (head), never again from
 * guest memory; the payload is read from the scatter list once.
 */
#include <string.h>

#include "core.h"
#include "wire.h"

/* ---- NEEDS_CSUM ---------------------------------------------------------- */

/* A checksum field: the folded complement, with 0 sent as 0xffff (Linux's
 * CSUM_MANGLED_0; equal in one's complement, and required for UDP). */
static uint16_t finish(uint64_t sum)
{
	uint16_t c = csum_fold(sum);

	return c ? c : 0xffff;
}

int csum_complete(uint8_t *frame, size_t len, uint16_t start, uint16_t offset)
{
	if ((size_t)start + offset + 2 > len)
		return -1;
	wr16mem(frame + start + offset, finish(csum_partial(frame + start, len - start, 0)));
	return 0;
}

static size_t iov_total(const struct iovec *iov, int iovcnt)
{
	size_t t = 0;

	for (int i = 0; i < iovcnt; i++)
		t += iov[i].iov_len;
	return t;
}

int csum_complete_iov(const struct iovec *iov, int iovcnt, size_t frame_len,
		      uint16_t start, uint16_t offset, uint16_t *out)
{
	if ((size_t)start + offset + 2 > frame_len || iov_total(iov, iovcnt) < frame_len)
		return -1;
	*out = finish(csum_iov(iov, iovcnt, start, frame_len - start, 0));
	return 0;
}

/* ---- segmentation -------------------------------------------------------- */

/* A read position in a scatter list. */
struct cursor {
	const struct iovec *iov;
	int cnt, i;
	size_t off;
};

static void cursor_skip(struct cursor *c, size_t n)
{
	while (c->i < c->cnt && n >= c->iov[c->i].iov_len - c->off) {
		n -= c->iov[c->i].iov_len - c->off;
		c->i++;
		c->off = 0;
	}
	c->off += n;
}

/* Copy n bytes (the caller checked they are there) and return their sum;
 * a piece that starts at an odd offset of the copied range is byte-swapped. */
static uint64_t cursor_copy(struct cursor *c, uint8_t *dst, size_t n)
{
	uint64_t sum = 0;
	size_t done = 0;

	while (done < n) {
		const struct iovec *v = &c->iov[c->i];
		size_t k = v->iov_len - c->off;
		uint64_t s;

		if (k > n - done)
			k = n - done;
		s = csum_copy(dst + done, (const uint8_t *)v->iov_base + c->off, k, 0);
		if (done & 1)
			s = __builtin_bswap16(fold16(s));
		sum = add64(sum, s);
		done += k;
		c->off += k;
		if (c->off == v->iov_len) {
			c->i++;
			c->off = 0;
		}
	}
	return sum;
}

/* What every segment shares, worked out once from the validated headers. */
struct gso_plan {
	size_t hdrs, l3, l4, payload, mss;
	int tcp, v4;
	uint16_t ip_id;		/* IPv4 id of the first segment */
	uint32_t seq;		/* TCP seq of the first segment */
	uint16_t pseudo;	/* the guest's pseudo-header sum, memory order */
	uint16_t old_len;	/* the length in that sum, memory order */
};

static int plan_gso(const struct vnet_hdr *h, const struct frame_info *fi,
		    const uint8_t *head, size_t frame_len, struct gso_plan *p)
{
	uint8_t t = h->gso_type & ~VNET_GSO_ECN;

	memset(p, 0, sizeof(*p));
	p->tcp = t == VNET_GSO_TCPV4 || t == VNET_GSO_TCPV6;
	if (!p->tcp && t != VNET_GSO_UDP_L4)
		return -1;
	/* Re-check what segmentation relies on: fi may be stale or forged. */
	if (fi->l4_proto != (p->tcp ? IPPROTO_TCP_ : IPPROTO_UDP_) || fi->fragment ||
	    (fi->ip_version != 4 && fi->ip_version != 6) || h->gso_size == 0 ||
	    fi->hdrs_len > HEAD_MAX || fi->hdrs_len > frame_len ||
	    fi->l4_off + fi->l4_len != fi->hdrs_len ||
	    fi->l4_len < (p->tcp ? 20 : 8) ||
	    fi->l3_off + (fi->ip_version == 4 ? 20u : 40u) > fi->l4_off)
		return -1;
	p->v4 = fi->ip_version == 4;
	/* The IPv4 header checksum is taken over IHL bytes: they must be ours. */
	if (p->v4 && fi->l3_off + (size_t)(head[fi->l3_off] & 0x0f) * 4 != fi->l4_off)
		return -1;
	p->hdrs = fi->hdrs_len;
	p->l3 = fi->l3_off;
	p->l4 = fi->l4_off;
	p->payload = frame_len - p->hdrs;
	p->mss = h->gso_size;
	if (p->v4)
		p->ip_id = rd16be(head + p->l3 + 4);
	if (p->tcp) {
		p->seq = rd32be(head + p->l4 + 4);
		p->pseudo = rd16mem(head + p->l4 + TCP_CSUM_OFF);
		/* tcp_gso_segment: the sum holds the whole TCP length. */
		p->old_len = net16((uint16_t)(frame_len - p->l4));
	} else {
		p->pseudo = rd16mem(head + p->l4 + UDP_CSUM_OFF);
		/* __udp_gso_segment: the sum holds the UDP length field. */
		p->old_len = rd16mem(head + p->l4 + 4);
	}
	return 0;
}

/* Write segment i's headers at o for a payload of n bytes; return the sum of
 * the L4 header with the adjusted pseudo-header sum in its checksum field. */
static uint64_t seg_headers(const struct gso_plan *p, const uint8_t *head, uint8_t *o,
			    unsigned i, unsigned nseg, size_t n)
{
	uint16_t l4len = (uint16_t)(p->hdrs - p->l4 + n);
	uint8_t *th = o + p->l4;
	size_t csum_at;

	memcpy(o, head, p->hdrs);
	if (p->v4) {
		uint8_t *ip = o + p->l3;
		size_t ihl = (size_t)(ip[0] & 0x0f) * 4;

		wr16be(ip + 2, (uint16_t)(p->hdrs - p->l3 + n));
		wr16be(ip + 4, (uint16_t)(p->ip_id + i));
		wr16mem(ip + 10, 0);
		wr16mem(ip + 10, csum_fold(csum_partial(ip, ihl, 0)));
	} else {
		wr16be(o + p->l3 + 4, (uint16_t)(p->hdrs - p->l3 - 40 + n));
	}
	if (p->tcp) {
		wr32be(th + 4, p->seq + (uint32_t)(i * p->mss));
		if (i + 1 < nseg)
			th[13] &= (uint8_t)~(TCP_F_FIN | TCP_F_PSH);
		if (i > 0)
			th[13] &= (uint8_t)~TCP_F_CWR;
		csum_at = TCP_CSUM_OFF;
	} else {
		wr16be(th + 4, l4len);
		csum_at = UDP_CSUM_OFF;
	}
	/* RFC 1624: swap the super-frame's length for the segment's. */
	wr16mem(th + csum_at, (uint16_t)~csum_update16((uint16_t)~p->pseudo, p->old_len,
						       net16(l4len)));
	return csum_partial(th, p->hdrs - p->l4, 0);
}

int gso_segment(const struct vnet_hdr *h, const struct frame_info *fi,
		const uint8_t *head, const struct iovec *iov, int iovcnt,
		size_t frame_len, uint8_t *out, size_t out_cap,
		uint32_t *seg_lens, unsigned max_segs)
{
	struct gso_plan p;
	struct cursor c = { iov, iovcnt, 0, 0 };
	size_t nseg, left, need;
	uint8_t *o = out;

	if (iovcnt < 0 || frame_len > FRAME_MAX || plan_gso(h, fi, head, frame_len, &p) ||
	    iov_total(iov, iovcnt) < frame_len)
		return -1;
	nseg = p.payload ? (p.payload + p.mss - 1) / p.mss : 1;
	need = nseg * p.hdrs + p.payload;
	if (nseg > max_segs || need > out_cap)
		return -1;
	cursor_skip(&c, p.hdrs);
	left = p.payload;
	for (unsigned i = 0; i < nseg; i++) {
		size_t n = left < p.mss ? left : p.mss;
		uint64_t sum = seg_headers(&p, head, o, i, (unsigned)nseg, n);
		size_t csum_at = p.l4 + (p.tcp ? TCP_CSUM_OFF : UDP_CSUM_OFF);

		/* The L4 header has an even length: the payload sum lines up. */
		sum = add64(sum, cursor_copy(&c, o + p.hdrs, n));
		wr16mem(o + csum_at, p.tcp ? csum_fold(sum) : finish(sum));
		seg_lens[i] = (uint32_t)(p.hdrs + n);
		o += p.hdrs + n;
		left -= n;
	}
	return (int)nseg;
}

/* ---- receive-side verification ------------------------------------------ */

/* The pseudo-header sum (RFC 793 / RFC 8200 8.1) of an L4 length of len. */
static uint64_t pseudo_sum(const uint8_t *f, const struct frame_info *fi, size_t len)
{
	const uint8_t *ip = f + fi->l3_off;
	uint64_t s;

	if (fi->ip_version == 4)
		s = csum_partial(ip + 12, 8, 0);
	else
		s = csum_partial(ip + 8, 32, 0);
	s += net16((uint16_t)(len >> 16)) + net16((uint16_t)len);
	return s + net16(fi->l4_proto);
}

int rx_csum_verify(const uint8_t *frame, size_t len)
{
	struct frame_info fi;
	size_t l4len;

	if (frame_parse(frame, len, len, &fi) != PARSE_OK || fi.ip_version == 0 ||
	    fi.fragment || fi.l4_off == 0)
		return -1;
	if (fi.ip_end > len)
		return 0;	/* truncated: cannot be right */
	if (fi.ip_version == 4 &&
	    csum_fold(csum_partial(frame + fi.l3_off, (size_t)(frame[fi.l3_off] & 0x0f) * 4, 0)))
		return 0;
	l4len = fi.ip_end - fi.l4_off;
	if (fi.l4_proto == IPPROTO_UDP_) {
		if (rd16be(frame + fi.l4_off + 4) != l4len)
			return 0;
		/* UDP over IPv4 may go without a checksum; over IPv6 it may not. */
		if (rd16mem(frame + fi.l4_off + UDP_CSUM_OFF) == 0)
			return fi.ip_version == 4;
	}
	return csum_fold(add64(pseudo_sum(frame, &fi, l4len),
			       csum_partial(frame + fi.l4_off, l4len, 0))) == 0;
}
