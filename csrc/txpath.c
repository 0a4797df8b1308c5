/*
 * txpath.c: guest TX ring -> tap.
 *
 * Each chain is a 12-byte virtio_net_hdr and a frame. We copy the header and
 * the frame's first bytes into the context (a frame up to TX_COPY_MAX whole,
 * else its first HEAD_MAX bytes), validate THAT copy (vnet_validate) and from
 * then on use only it for everything the kernel or our software offloads
 * interpret: a guest rewriting its buffers after the check changes payload
 * only (TOCTOU), never headers.
 *
 * Passthrough writes [our rebuilt header and our copy, which lie end to
 * end][the rest straight from guest memory]: a frame copied whole is one
 * write(), a longer one a writev() with no payload copy. Software checksum
 * patches the head copy (or linearises into scratch when the field lies
 * beyond it); software GSO cuts the frame into scratch. Either way the frame
 * goes out behind a zero header.
 *
 * With an io_uring (c->uring), passthrough frames are staged instead and a
 * batch of them goes to the tap in one system call: see "The stage" below.
 *
 * The tap is nonblocking. A passthrough frame that meets EAGAIN is handed
 * back to the ring (vq_unpop) and retried when the tap is writable, so it is
 * not lost. Frames already copied into scratch let the chain be completed at
 * once; the remaining segments wait in scratch. Either way the ring is
 * consistent whenever tx_run() returns: every chain taken is completed,
 * handed back, or (io_uring, tap full) kept in the stage until written.
 */
#define _GNU_SOURCE             /* ppoll */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>

#include "core.h"
#include "virtq.h"
#include "datapath.h"
#include "wire.h"
#include "txuring.h"

enum tx_res { TX_DONE, TX_AGAIN, TX_DIVERT, TX_STAGED };

static const struct vnet_hdr zero_hdr;

/*
 * The stage. With c->uring, a passthrough frame is not written at once: a
 * copy of its header and head (the only bytes we validated) and its iovec,
 * whose other pieces point into guest memory, wait in a slot, and the
 * staged frames go to the tap in one io_uring submission when the batch
 * ends or the stage is full (stage_flush()).
 *
 * Chains are completed in the order they were taken, as without io_uring (a
 * replaced worker resumes from the used index: datapath.py start_ring()).
 * So a chain completed while frames are staged (dropped, diverted, cut in
 * software) is staged too, with nothing to write; and a frame written at
 * once (software checksum or segments) flushes the stage first, so frames
 * reach the tap in the order they were taken.
 *
 * A full tap (-EAGAIN) keeps every staged chain until the frames that met
 * it are written when the tap drains; the ring waits meanwhile, as on the
 * writev() path. The requests are not linked: a link costs more than half
 * of what batching saves (measured, tapwrite with 64 KiB frames), and only
 * on a full tap, which a tap whose sndbuf nobody lowered never is, could a
 * later frame of the same submission overtake one that met EAGAIN.
 */
enum { STAGE_IOV = 4096 };      /* pieces of staged frames; a chain has at most VQ_IOV_MAX */

struct tx_slot {
	uint16_t head;          /* the chain, completed once the frame is written */
	uint16_t niov;          /* 0: nothing to write */
	uint8_t unsent;         /* to be submitted */
	int32_t res;            /* what the write returned: bytes or -errno */
	uint32_t iov;           /* its pieces: stage->iov[iov, iov + niov) */
	struct tx_copy copy;    /* its header and head, the first piece */
};

struct tx_stage {
	unsigned n;             /* slots in use */
	unsigned iov_used;
	int err;                /* io_uring itself failed: errno; tx_run() gives up */
	int32_t res[TXU_ENTRIES];
	struct tx_slot slot[TXU_ENTRIES];
	struct iovec iov[STAGE_IOV];
};

/* Room for one more chain of any length. */
static int stage_has_room(const struct tx_stage *s)
{
	return s->n < TXU_ENTRIES && s->iov_used + VQ_IOV_MAX + 1 <= STAGE_IOV;
}

/*
 * The slot for the chain just taken (the caller checked stage_has_room()):
 * niov pieces already built at stage->iov + iov_used (stage_next_iov()),
 * the first of them its copy, made in this slot (tx_batch() sets c->cp).
 */
static void stage_slot(struct tx_ctx *c, unsigned niov)
{
	struct tx_stage *s = c->stage;
	struct tx_slot *t = &s->slot[s->n++];

	t->head = c->chain.head;
	t->niov = (uint16_t)niov;
	t->unsent = niov > 0;
	t->res = 0;
	t->iov = s->iov_used;
	s->iov_used += niov;
}

/* Where the next staged frame's pieces go. */
static struct iovec *stage_next_iov(struct tx_ctx *c)
{
	return c->stage->iov + c->stage->iov_used;
}

/* Where the next chain's copy goes: in the slot that may stage it. */
static struct tx_copy *stage_next_copy(struct tx_ctx *c)
{
	return &c->stage->slot[c->stage->n].copy;
}

/* The chain just taken is done: complete it now, or after the staged ones. */
static void tx_complete(struct tx_ctx *c)
{
	if (c->stage->n)
		stage_slot(c, 0);
	else
		vq_push(&c->q, c->chain.head, 0);    /* TX buffers are read-only: length 0 */
}

static void slot_complete(struct tx_ctx *c, const struct tx_slot *t)
{
	if (t->niov)
		c->cnt[t->res >= 0 ? DC_PASSTHROUGH : DC_TAP_ERROR]++;
	vq_push(&c->q, t->head, 0);
}

/*
 * Submit every unsent frame in one go. A tap that cannot take a write
 * without waiting (RWF_NOWAIT: EOPNOTSUPP) wrote nothing: io_uring is given
 * up for this worker and those frames stay unsent. 0, or -1 when io_uring
 * failed (s->err).
 */
static int uring_submit(struct tx_ctx *c)
{
	struct tx_stage *s = c->stage;
	unsigned i, queued = 0;
	int r;

	for (i = 0; i < s->n; i++) {
		struct tx_slot *t = &s->slot[i];

		if (t->unsent) {
			txu_queue_writev(c->uring, c->tap_fd, s->iov + t->iov, t->niov, i);
			queued++;
		}
	}
	if (!queued)
		return 0;
	if ((r = txu_submit(c->uring, s->res)) < 0) {
		s->err = -r;
		return -1;
	}
	c->cnt[DC_TAP_SUBMITS]++;
	for (i = 0; i < s->n; i++) {
		struct tx_slot *t = &s->slot[i];

		if (!t->unsent)
			continue;
		t->res = s->res[i];
		t->unsent = t->res == -EAGAIN || t->res == -EOPNOTSUPP;
		if (t->res == -EOPNOTSUPP && c->uring) {
			c->uring = NULL;
			c->cnt[DC_TAP_URING_OFF]++;
		}
	}
	return 0;
}

/* Without io_uring: one writev() per unsent frame, in order, up to a full tap. */
static void writev_each(struct tx_ctx *c)
{
	struct tx_stage *s = c->stage;
	unsigned i;

	for (i = 0; i < s->n; i++) {
		struct tx_slot *t = &s->slot[i];

		if (!t->unsent)
			continue;
		t->res = writev(c->tap_fd, s->iov + t->iov, t->niov) < 0 ? -errno : 0;
		if (t->res == -EAGAIN)
			return;
		t->unsent = 0;
	}
}

/* Write every unsent frame; 0, or -1 when io_uring failed (s->err). */
static int stage_submit(struct tx_ctx *c)
{
	if (c->uring && uring_submit(c) < 0)
		return -1;
	if (!c->uring)
		writev_each(c);
	return 0;
}

/*
 * Write what is staged and complete it in order. 0: the stage is empty;
 * 1: the tap is full and everything waits for it (c->waiting_out); -1:
 * io_uring failed (c->stage->err).
 */
static int stage_flush(struct tx_ctx *c)
{
	struct tx_stage *s = c->stage;
	unsigned i;

	if (stage_submit(c) < 0)
		return -1;
	for (i = 0; i < s->n; i++) {
		if (s->slot[i].unsent) {
			c->cnt[DC_TAP_FULL]++;
			c->waiting_out = 1;
			return 1;
		}
	}
	for (i = 0; i < s->n; i++)
		slot_complete(c, &s->slot[i]);
	s->n = s->iov_used = 0;
	return 0;
}

/* The ring stops: complete what is staged, counting what was never written. */
static void stage_drop(struct tx_ctx *c)
{
	struct tx_stage *s = c->stage;
	unsigned i;

	for (i = 0; i < s->n; i++) {
		struct tx_slot *t = &s->slot[i];

		if (t->unsent)
			t->res = -EAGAIN;
		slot_complete(c, t);
	}
	s->n = s->iov_used = 0;
}

int tx_init(struct tx_ctx *c)
{
	if (c->scratch)
		return 0;
	c->scratch_cap = FRAME_MAX + (size_t)TX_MAX_SEGS * HEAD_MAX;
	c->scratch = malloc(c->scratch_cap);
	c->seg_lens = malloc(TX_MAX_SEGS * sizeof(*c->seg_lens));
	c->stage = calloc(1, sizeof(*c->stage));
	c->cp = &c->own;
	if (!c->scratch || !c->seg_lens || !c->stage) {
		tx_fini(c);
		return -1;
	}
	return 0;
}

void tx_fini(struct tx_ctx *c)
{
	free(c->scratch);
	free(c->seg_lens);
	free(c->stage);
	c->scratch = NULL;
	c->seg_lens = NULL;
	c->stage = NULL;
	c->scratch_cap = 0;
}

void tx_reset(struct tx_ctx *c)
{
	stage_drop(c);
	c->cnt[DC_TAP_ERROR] += c->seg_count - c->seg_next;
	c->seg_next = c->seg_count = 0;
	c->seg_off = 0;
	c->waiting_out = 0;
	c->rate_until = 0;
	c->armed = 0;
	c->linger_until = 0;
	c->unsignalled_since = 0;
	c->last_signal = 0;
}

/*
 * One frame, behind its vnet header, in n pieces. One piece is a write():
 * the kernel then copies from one buffer instead of walking an iovec (5 to
 * 9% of what it spends on a frame of 64 to 1514 bytes, measured with
 * perf). 0, 1 for EAGAIN, -1 for an error (counted, or io_uring's:
 * c->stage->err).
 */
static int tap_send(struct tx_ctx *c, const struct iovec *v, int n)
{
	ssize_t r;

	if (c->stage->n && (r = stage_flush(c)) != 0)
		return r > 0 ? 1 : -1;  /* frames staged before this one go first */
	r = n == 1 ? write(c->tap_fd, v[0].iov_base, v[0].iov_len) : writev(c->tap_fd, v, n);
	if (r >= 0)
		return 0;
	if (errno == EAGAIN || errno == EWOULDBLOCK)
		return 1;
	c->cnt[DC_TAP_ERROR]++;
	return -1;
}

/* Write one frame behind a zero header. 0, 1 for EAGAIN, -1 for an error. */
static int tap_write_linear(struct tx_ctx *c, const uint8_t *frame, size_t len)
{
	struct iovec v[2] = {
		{ (void *)&zero_hdr, VNET_HDR_LEN },
		{ (void *)frame, len },
	};

	return tap_send(c, v, 2);
}

/* Send the segments still waiting in scratch; 1 if the tap filled up again. */
static int tx_flush_segments(struct tx_ctx *c)
{
	while (c->seg_next < c->seg_count) {
		uint32_t l = c->seg_lens[c->seg_next];

		if (tap_write_linear(c, c->scratch + c->seg_off, l) == 1) {
			c->cnt[DC_TAP_FULL]++;
			c->waiting_out = 1;
			return 1;
		}
		c->seg_off += l;
		c->seg_next++;
		c->cnt[DC_SEGMENTS_OUT]++;
	}
	c->seg_next = c->seg_count = 0;
	return 0;
}

/*
 * The frame as an iovec in v: [head copy][guest bytes after it]. hlen bytes
 * of head; the guest part skips the vnet header and those bytes. Returns
 * the count (at most VQ_IOV_MAX + 1).
 */
static int frame_iov(struct tx_ctx *c, struct iovec *v, size_t hlen)
{
	int n;

	v[0].iov_base = c->cp->head;
	v[0].iov_len = hlen;
	n = iov_tail(c->chain.iov, c->chain.niov, VNET_HDR_LEN + hlen, v + 1, VQ_IOV_MAX);
	return n < 0 ? -1 : n + 1;
}

/* The copy's hdr and head lie end to end, so header and head are one piece. */
_Static_assert(sizeof(struct vnet_hdr) == VNET_HDR_LEN &&
	       offsetof(struct tx_copy, head) == VNET_HDR_LEN,
	       "tx_copy: hdr must end where head begins");

/* Make v[0] the header and the head copy together (after frame_iov). */
static void join_hdr(struct tx_ctx *c, struct iovec *v)
{
	v[0].iov_base = &c->cp->hdr;
	v[0].iov_len += VNET_HDR_LEN;
}

/* The header the kernel gets: validated fields only, hdr_len recomputed. */
static void rebuild_hdr(struct tx_ctx *c, const struct frame_info *fi, size_t frame_len)
{
	struct vnet_hdr *h = &c->cp->hdr;
	uint32_t hl = fi->hdrs_len;

	h->flags &= VNET_F_NEEDS_CSUM;  /* DATA_VALID means nothing to a tap */
	if (h->flags & VNET_F_NEEDS_CSUM &&
	    (uint32_t)h->csum_start + h->csum_offset + 2 > hl)
		hl = (uint32_t)h->csum_start + h->csum_offset + 2;
	if (hl > frame_len)
		hl = (uint32_t)frame_len;
	h->hdr_len = (uint16_t)hl;
	h->num_buffers = 0;
}

static enum tx_res tx_passthrough(struct tx_ctx *c, size_t hlen)
{
	struct iovec *v = c->uring ? stage_next_iov(c) : c->wiov;
	int n, r;

	if ((n = frame_iov(c, v, hlen)) < 0)
		return TX_DONE;         /* cannot happen: niov <= VQ_IOV_MAX */
	join_hdr(c, v);
	if (c->uring) {
		stage_slot(c, (unsigned)n);
		return TX_STAGED;
	}
	if ((r = tap_send(c, v, n)) == 1)
		return TX_AGAIN;
	if (r == 0)
		c->cnt[DC_PASSTHROUGH]++;
	return TX_DONE;
}

/* Copy the whole frame (head copy + guest rest) into scratch. */
static void linearise(struct tx_ctx *c, size_t hlen, size_t frame_len)
{
	memcpy(c->scratch, c->cp->head, hlen);
	iov_to_buf(c->chain.iov, c->chain.niov, VNET_HDR_LEN + hlen,
		   c->scratch + hlen, frame_len - hlen);
}

static enum tx_res tx_sw_csum(struct tx_ctx *c, size_t hlen, size_t frame_len)
{
	size_t end = (size_t)c->cp->hdr.csum_start + c->cp->hdr.csum_offset + 2;
	uint16_t v;
	int n, r;

	if (end <= hlen) {
		/* The field is in our copy: sum in place, no payload copy. */
		if ((n = frame_iov(c, c->wiov, hlen)) < 0 ||
		    csum_complete_iov(c->wiov, n, frame_len, c->cp->hdr.csum_start,
				      c->cp->hdr.csum_offset, &v) < 0) {
			c->cnt[DC_SW_CSUM_FAIL]++;
			return TX_DONE;
		}
		memcpy(c->cp->head + c->cp->hdr.csum_start + c->cp->hdr.csum_offset, &v, 2);
		c->cp->hdr = zero_hdr;      /* the sum is done: nothing left for the kernel */
		join_hdr(c, c->wiov);
		if ((r = tap_send(c, c->wiov, n)) == 1)
			return TX_AGAIN;
		if (r == 0)
			c->cnt[DC_SW_CSUM]++;
		return TX_DONE;
	}
	linearise(c, hlen, frame_len);
	if (csum_complete(c->scratch, frame_len, c->cp->hdr.csum_start, c->cp->hdr.csum_offset) < 0) {
		c->cnt[DC_SW_CSUM_FAIL]++;
		return TX_DONE;
	}
	r = tap_write_linear(c, c->scratch, frame_len);
	if (r == 1)
		return TX_AGAIN;        /* redone from the ring later */
	if (r == 0)
		c->cnt[DC_SW_CSUM]++;
	return TX_DONE;
}

/* Cut into scratch; the chain is then ours to complete whatever the tap does. */
static enum tx_res tx_sw_gso(struct tx_ctx *c, const struct frame_info *fi,
			     size_t hlen, size_t frame_len)
{
	int n, segs;

	if ((n = frame_iov(c, c->wiov, hlen)) < 0)
		return TX_DONE;
	segs = gso_segment(&c->cp->hdr, fi, c->cp->head, c->wiov, n, frame_len,
			   c->scratch, c->scratch_cap, c->seg_lens, TX_MAX_SEGS);
	if (segs < 0) {
		c->cnt[DC_SW_GSO_FAIL]++;
		return TX_DONE;
	}
	c->cnt[DC_SW_SEGMENTED]++;
	c->seg_next = 0;
	c->seg_count = (unsigned)segs;
	c->seg_off = 0;
	tx_flush_segments(c);       /* leftovers go out when the tap drains */
	return TX_DONE;
}

/* IPv4 UDP 68 -> 67, not a fragment (RFC 2131). */
static int is_dhcp_request(const uint8_t *head, size_t hlen, const struct frame_info *fi)
{
	if (fi->parse != PARSE_OK)
		return 0;
	if (fi->ip_version != 4 || fi->l4_proto != 17 || fi->fragment ||
	    (size_t)fi->l4_off + 4 > hlen)
		return 0;
	return head[fi->l4_off] == 0 && head[fi->l4_off + 1] == 68 &&
	       head[fi->l4_off + 2] == 0 && head[fi->l4_off + 3] == 67;
}

/*
 * TXF_LOCKED_IP6: an IPv6 frame's source must be one of locked_ip6[], or
 * :: in ICMPv6 (RFC 4862 5.4.2, RFC 4861 6.3.7, RFC 3810 5.2.13 send from
 * it before an address is usable). Too short to tell: refused.
 */
static int ip6_source_refused(const struct tx_ctx *c, const struct frame_info *fi, size_t hlen)
{
	static const uint8_t unspecified[16];
	const uint8_t *src;

	if (fi->ethertype != 0x86DD)
		return 0;
	if (hlen < (size_t)fi->l3_off + 40)
		return 1;
	src = c->cp->head + fi->l3_off + 8;
	if (!memcmp(src, unspecified, 16))
		return fi->ip_version != 6 || fi->l4_proto != 58;
	for (int i = 0; i < LOCKED_IP6_MAX; i++)
		if (!memcmp(src, c->locked_ip6[i], 16))
			return 0;
	return 1;
}

/*
 * TXF_INET6, TXF_LOCKED_IP6 (IPv6) and TXF_DHCP_DIVERT (IPv4) judge a frame
 * by its transport header, so they must see the one the tap will get:
 *  - an IPv6 frame whose headers do not parse (a router advertisement
 *    behind more extension headers than frame_parse() walks) is refused:
 *    nothing could tell what it is;
 *  - NEEDS_CSUM must name the transport's own checksum field (TCP 16,
 *    UDP 6, ICMPv6 2, at the transport header), else the sum, written by
 *    us or by the kernel, could rewrite the bytes judged (an echo request
 *    whose type byte becomes 134, UDP 1234->67 whose port becomes 68).
 *    Linux accepts any field within the frame, but its guests (virtio_net
 *    without the tunnel features, which we never offer) only send these.
 * Frames the filters do not read (not IP, or the other family) pass.
 * 0, or the counter of the refusal.
 */
static int filter_unreadable(const struct tx_ctx *c, const struct frame_info *fi)
{
	const struct vnet_hdr *h = &c->cp->hdr;
	int v6 = fi->ethertype == 0x86DD;
	uint16_t want;

	if (v6 ? !(c->flags & (TXF_INET6 | TXF_LOCKED_IP6)) :
	    !(c->flags & TXF_DHCP_DIVERT) || fi->ethertype != 0x0800)
		return 0;
	if (v6 && fi->parse != PARSE_OK)
		return DC_V6_UNPARSED_DROP;
	if (!(h->flags & VNET_F_NEEDS_CSUM))
		return 0;
	if (fi->parse != PARSE_OK || fi->fragment)
		return DC_CSUM_FIELD_DROP;
	if (fi->l4_proto == 6 || fi->l4_proto == 17)
		want = fi->l4_proto == 6 ? TCP_CSUM_OFF : UDP_CSUM_OFF;
	else if (v6 && fi->l4_proto == 58)
		want = 2;                       /* RFC 4443 2.1 */
	else
		return DC_CSUM_FIELD_DROP;
	return h->csum_start == fi->hdrs_len - fi->l4_len && h->csum_offset == want ?
	       0 : DC_CSUM_FIELD_DROP;
}

/* What TXF_INET6 does with a frame (RFC 4861 4.1-4.5, RFC 8415 7.2). */
enum v6_verdict { V6_PASS, V6_DIVERT, V6_DROP };

static enum v6_verdict local_v6(const uint8_t *head, size_t hlen, const struct frame_info *fi)
{
	if (fi->ip_version != 6 || fi->fragment)
		return V6_PASS;
	if (fi->l4_proto == 58 && (size_t)fi->hdrs_len + 1 <= hlen) {
		uint8_t type = head[fi->hdrs_len];

		if (type == 133)                        /* router solicitation */
			return V6_DIVERT;
		if (type == 134 || type == 137)         /* advertisement, redirect */
			return V6_DROP;
		return V6_PASS;
	}
	if (fi->l4_proto != 17 || fi->l4_off == 0 || (size_t)fi->l4_off + 4 > hlen)
		return V6_PASS;
	uint16_t sport = rd16be(head + fi->l4_off), dport = rd16be(head + fi->l4_off + 2);

	if (sport == 546 && dport == 547)
		return V6_DIVERT;
	if (sport == 547 && dport == 546)
		return V6_DROP;
	return V6_PASS;
}

/* Copy the whole frame to c->divert for Python: TX_DIVERT, or TX_DONE
 * (dropped, counted) when it is longer than DIVERT_MAX. */
static enum tx_res tx_divert(struct tx_ctx *c, size_t hlen, size_t frame_len, int counter)
{
	struct vq_chain *ch = &c->chain;

	if (frame_len > DIVERT_MAX) {
		c->cnt[DC_DIVERT_TOO_LONG]++;
		return TX_DONE;
	}
	memcpy(c->divert, c->cp->head, hlen);
	iov_to_buf(ch->iov, ch->niov, VNET_HDR_LEN + hlen, c->divert + hlen, frame_len - hlen);
	c->divert_len = (uint32_t)frame_len;
	c->cnt[counter]++;
	return TX_DIVERT;
}

/* One chain, already taken. */
/* The TXF_SW_* flag that asks for this GSO type to be cut here. */
static uint32_t sw_gso_flag(uint8_t gso_type)
{
	switch (gso_type & ~VNET_GSO_ECN) {
	case VNET_GSO_TCPV4:
		return TXF_SW_TSO4;
	case VNET_GSO_TCPV6:
		return TXF_SW_TSO6;
	case VNET_GSO_UDP_L4:
		return TXF_SW_USO;
	}
	return 0;
}

/*
 * locked lladdr: an ARP packet whose sender hardware address is not the
 * guest's own would poison its neighbours' caches, whatever the Ethernet
 * source says (RFC 826 layout: sha at offset 8 of the ARP header).
 */
static int arp_claims_other(const struct tx_ctx *c, const struct frame_info *fi, size_t hlen)
{
	size_t arp = fi->l3_off;

	if (fi->ethertype != 0x0806)
		return 0;
	if (hlen < arp + 14)
		return 1;               /* too short to tell: refuse */
	return memcmp(c->cp->head + arp + 8, c->locked_mac, 6) != 0;
}

static enum tx_res tx_frame(struct tx_ctx *c)
{
	struct vq_chain *ch = &c->chain;
	struct frame_info fi;
	size_t frame_len, hlen;
	int r;

	if (ch->len < VNET_HDR_LEN) {
		c->cnt[DC_NO_HDR]++;
		return TX_DONE;
	}
	frame_len = ch->len - VNET_HDR_LEN;
	hlen = frame_len <= TX_COPY_MAX ? frame_len : HEAD_MAX;
	iov_to_buf(ch->iov, ch->niov, 0, &c->cp->hdr, VNET_HDR_LEN);
	iov_to_buf(ch->iov, ch->niov, VNET_HDR_LEN, c->cp->head, hlen);
	memset(&fi, 0, sizeof(fi));
	/* headers are parsed from the first HEAD_MAX bytes, however many we copied */
	r = vnet_validate(&c->cp->hdr, c->cp->head, hlen < HEAD_MAX ? hlen : HEAD_MAX, frame_len,
			  c->features, &fi);
	if (r != VR_OK) {
		if (r > 0 && r < VR_REASON_MAX)
			c->cnt[DC_VR_BASE + r]++;
		return TX_DONE;
	}
	if (c->flags & TXF_LOCKED_MAC && memcmp(c->cp->head + 6, c->locked_mac, 6)) {
		c->cnt[DC_LOCKED_MAC_DROP]++;
		return TX_DONE;
	}
	if (c->flags & TXF_LOCKED_MAC && arp_claims_other(c, &fi, hlen)) {
		c->cnt[DC_LOCKED_ARP_DROP]++;
		return TX_DONE;
	}
	if (c->flags & (TXF_INET6 | TXF_LOCKED_IP6 | TXF_DHCP_DIVERT) &&
	    (r = filter_unreadable(c, &fi)) != 0) {
		c->cnt[r]++;
		return TX_DONE;
	}
	if (c->flags & TXF_LOCKED_IP6 && ip6_source_refused(c, &fi, hlen)) {
		c->cnt[DC_LOCKED_IP6_DROP]++;
		return TX_DONE;
	}
	if (c->flags & TXF_DHCP_DIVERT && is_dhcp_request(c->cp->head, hlen, &fi))
		return tx_divert(c, hlen, frame_len, DC_DHCP_DIVERTED);
	if (c->flags & TXF_INET6) {
		enum v6_verdict v = local_v6(c->cp->head, hlen, &fi);

		if (v == V6_DIVERT)
			return tx_divert(c, hlen, frame_len, DC_V6_DIVERTED);
		if (v == V6_DROP) {
			c->cnt[DC_V6_ROUTER_DROP]++;
			return TX_DONE;
		}
	}
	rebuild_hdr(c, &fi, frame_len);
	c->cnt[DC_FRAMES]++;
	c->cnt[DC_BYTES] += frame_len;
	if (c->rate.on)
		rate_charge(&c->rate, frame_len);
	c->cnt[DC_GSO_IN] += c->cp->hdr.gso_type != VNET_GSO_NONE;
	c->cnt[DC_CSUM_IN] += !!(c->cp->hdr.flags & VNET_F_NEEDS_CSUM);
	if (c->flags & sw_gso_flag(c->cp->hdr.gso_type))
		return tx_sw_gso(c, &fi, hlen, frame_len);
	if (c->cp->hdr.gso_type == VNET_GSO_NONE && c->cp->hdr.flags & VNET_F_NEEDS_CSUM &&
	    c->flags & TXF_SW_CSUM)
		return tx_sw_csum(c, hlen, frame_len);
	return tx_passthrough(c, hlen);
}

/*
 * Take and serve up to a batch; kicks are off from here until tx_arm().
 * *more: stopped with work left. Returns DP_CTL, DP_DIVERT or DP_ERROR
 * (io_uring failed: errno); *done: the
 * chains taken. What was completed is published; it is signalled at once
 * when force_signal, else as dp_complete() throttles.
 */
static int tx_batch(struct tx_ctx *c, int *more, unsigned *done_out, int force_signal)
{
	unsigned limit = c->batch ? c->batch : DP_BATCH, done = 0;
	int ret = DP_CTL, held = 0;

	*more = 0;
	vq_disable_notify(&c->q);
	c->armed = 0;
	if (c->stage->n && stage_flush(c))
		goto out;
	if (c->seg_count && tx_flush_segments(c))
		goto out;
	while (done < limit) {
		enum tx_res res;
		uint64_t wait;
		int r;

		if ((wait = rate_hold_ns(&c->rate)) != 0) {
			/* over the limit: the chains wait in the ring */
			dp_hold(&c->rate_until, c->cnt, wait);
			held = 1;
			goto out;
		}
		if (!stage_has_room(c->stage) && stage_flush(c))
			goto out;
		r = vq_pop(&c->q, &c->chain, 0, VNET_HDR_LEN + FRAME_MAX);

		if (r == 0)
			goto out;               /* dry: the caller lingers or arms */
		if (r < 0) {
			c->cnt[DC_RING_BASE - r]++;
			if (r == -VQE_AVAIL_IDX)
				goto out;       /* broken ring: wait for a reset */
			done++;
			continue;
		}
		done++;
		if (!(c->flags & TXF_ENABLED)) {
			c->cnt[DC_DISABLED_DROP]++;
			tx_complete(c);
			continue;
		}
		/* copied once, where a staged frame keeps it */
		c->cp = c->uring ? stage_next_copy(c) : &c->own;
		res = tx_frame(c);
		if (res == TX_AGAIN) {
			/* Not written at all: give the chain back, retry later. */
			vq_unpop(&c->q, 1);
			c->cnt[DC_TAP_FULL]++;
			c->waiting_out = 1;
			goto out;
		}
		if (res != TX_STAGED)
			tx_complete(c);
		if (res == TX_DIVERT) {
			ret = DP_DIVERT;
			*more = 1;
			goto out;
		}
		if (c->seg_count)
			goto out;       /* tap full mid-segments */
	}
	*more = 1;
out:
	if (c->stage->n && !c->waiting_out)
		stage_flush(c);         /* what this batch staged */
	if (c->stage->err) {
		errno = c->stage->err;
		ret = DP_ERROR;
	}
	if (done)
		c->cnt[DC_BATCHES]++;
	/* A full batch, a wait for the tap or the limit, a divert: signal
	 * now (the guest may be waiting for room: its queue stays stopped
	 * until it hears of what was done); else throttled. */
	c->cnt[DC_NOTIFICATIONS] += dp_complete(&c->q, c->cnt, &c->unsignalled_since,
						&c->last_signal, dp_linger_ns(c->linger_us),
						force_signal || *more || c->waiting_out || held);
	*done_out = done;
	return ret;
}

/*
 * Going idle: signal what is unsignalled, ask for kicks, then look again
 * (a chain added before our offer was seen would get no kick). Returns 1
 * when the ring is not empty after all: do not sleep.
 */
static int tx_arm(struct tx_ctx *c)
{
	c->cnt[DC_NOTIFICATIONS] += dp_complete(&c->q, c->cnt, &c->unsignalled_since,
						&c->last_signal, 0, 1);
	c->armed = 1;
	return vq_enable_notify(&c->q) > 0;
}

int tx_poll_once(struct tx_ctx *c)
{
	unsigned done;
	int more, ret = tx_batch(c, &more, &done, 1);

	if (!more && !c->waiting_out)
		tx_arm(c);
	return ret;
}

int tx_run(struct tx_ctx *c, int ctl_fd)
{
	uint64_t linger = dp_linger_ns(c->linger_us);
	int more = 1;   /* kicks may have come while Python had control */

	for (;;) {
		struct pollfd p[3] = {
			{ .fd = ctl_fd, .events = POLLIN },
			{ .fd = c->kick_fd, .events = POLLIN },
			{ .fd = c->waiting_out ? c->tap_fd : -1, .events = POLLOUT },
		};
		struct timespec ts = { 0, 0 }, *tsp = &ts;
		int n, look = 0;

		if (c->rate_until && !more && !c->waiting_out) {
			/* Held by the limit: look at the ring when it lets go. */
			uint64_t now = dp_now_ns();

			if (dp_hold_over(&c->rate_until, now))
				more = 1;
			else
				ts = dp_timespec(c->rate_until - now);
		} else if (!more || c->waiting_out) {
			uint64_t now = dp_now_ns();

			if (c->waiting_out || c->armed) {
				tsp = NULL;                     /* a kick, the tap or ctl */
			} else if (now < c->linger_until) {
				/* Kicks off: look at the ring again shortly. */
				uint64_t left = c->linger_until - now;
				uint64_t step = (uint64_t)DP_LINGER_STEP_US * 1000u;

				ts.tv_nsec = (long)(left < step ? left : step);
				look = 1;
			} else if (tx_arm(c)) {
				more = 1;                       /* raced with the guest */
			} else {
				tsp = NULL;
			}
		}
		n = ppoll(p, 3, tsp, NULL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return DP_ERROR;
		}
		if ((p[1].revents | p[2].revents) & (POLLERR | POLLHUP | POLLNVAL))
			return DP_FD_ERROR;
		if (p[1].revents & POLLIN) {
			eventfd_drain(c->kick_fd);
			c->cnt[DC_KICKS]++;
			more = 1;
		}
		if (p[2].revents) {
			c->waiting_out = 0;
			more = 1;
		}
		if (look && !more && vq_pending(&c->q)) {
			c->cnt[DC_LINGER_FOUND]++;      /* the guest did not kick for it */
			more = 1;
		}
		if (more && !c->waiting_out) {
			unsigned done;
			int r = tx_batch(c, &more, &done, 0);

			if (r != DP_CTL)
				return r;       /* DP_DIVERT, or DP_ERROR: io_uring failed */
			if (done)
				c->linger_until = dp_now_ns() + linger;
		} else if (c->waiting_out) {
			more = 0;
		}
		if (p[0].revents) {
			/* Python gets a ring that asks for kicks, all signalled. */
			if (!more && !c->waiting_out && !c->armed)
				tx_arm(c);
			return DP_CTL;
		}
	}
}
