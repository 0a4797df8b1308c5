/*
 * rxpath.c: tap -> guest RX ring.
 *
 * A frame is read with one readv() of [our private header][the guest's
 * buffers after their first 12 bytes]: the payload lands in guest memory
 * directly, the header the kernel wrote stays ours to check and rewrite, and
 * only then is it copied in front of the frame.
 *
 * A tap cannot be peeked, so buffers for the largest frame it may deliver
 * (12 + frame_max) are gathered BEFORE reading: with MRG_RXBUF as many chains
 * as that takes, without it one chain (the guest sized it). If the guest has
 * posted some buffers but not that many, the frame is read into a private
 * buffer (held[]) instead and copied into the guest's buffers once they
 * suffice for its real length: the one copy is paid only when the guest is
 * short of buffers. With no buffers at all, kicks are enabled and the frame
 * waits in the tap: backpressure, not loss. Chains gathered but not filled
 * are kept for the next frame of the batch and handed back (vq_unpop) when
 * it ends, so the ring is consistent always when rx_run() returns.
 *
 * The kernel checks and walks every iovec a readv() passes: importing the
 * iovecs of the 43 small buffers gathered for a 64 KiB frame was 9% of the
 * worker's time on 1514-byte frames (perf; the copy itself took 20%). So a
 * frame is read straight into as many buffers as the largest frame of the
 * last batch took (c->expect), and into a private spill buffer (held[],
 * free then) for the rest of what was gathered. A frame longer than
 * expected is finished by copying its end from there into the next
 * gathered buffers, and the rest of the batch reads into all of them. A
 * readv() takes 1024 iovecs, so at most RX_READ_PIECES guest pieces are read
 * into directly (more are gathered only from buffers under 64 bytes).
 *
 * A frame that does not fit what was gathered is dropped and counted (the
 * tap truncates silently; a private overflow byte after what was gathered
 * tells us), and the chains are handed back.
 *
 * Checksums: a partial checksum (NEEDS_CSUM, not GSO) is completed over the
 * guest buffers when the policy asks or when the guest lacks GUEST_CSUM,
 * which also forbids any flag (virtio 1.2, 5.1.6.4).
 */
#define _GNU_SOURCE             /* ppoll */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>

#include "core.h"
#include "virtq.h"
#include "datapath.h"

enum rx_res { RX_DONE, RX_TAP_EMPTY, RX_NO_BUFS };

static int has(const struct rx_ctx *c, int bit)
{
	return (c->features >> bit) & 1;
}

/*
 * The gathered chains are a window of bufs[] and iov[] starting at
 * first_buf/first_iov: a completed frame moves the window's start instead
 * of moving the rest down (1.2 KB per frame when 43 small buffers are
 * gathered for the largest frame, 3% of a 1514-byte frame's cost). The
 * window is moved to the arrays' start only when it reaches their end.
 */
#define BUF(c, i) ((c)->bufs[(c)->first_buf + (i)])
#define IOV(c) ((c)->iov + (c)->first_iov)

static void rx_compact(struct rx_ctx *c)
{
	memmove(c->bufs, &BUF(c, 0), c->nbufs * sizeof(c->bufs[0]));
	memmove(c->iov, IOV(c), c->niov * sizeof(c->iov[0]));
	c->first_buf = c->first_iov = 0;
}

/* Nothing gathered any more (the chains were handed back or completed). */
static void rx_forget(struct rx_ctx *c)
{
	c->nbufs = c->niov = c->first_buf = c->first_iov = 0;
	c->total = 0;
}

int rx_init(struct rx_ctx *c)
{
	rx_forget(c);
	c->expect = c->seen_max = 0;
	c->waiting_bufs = 0;
	return 0;
}

void rx_reset(struct rx_ctx *c)
{
	if (c->held_len)
		c->cnt[DC_RX_TOO_BIG]++;        /* the ring stops: the held frame is lost */
	c->held_len = 0;
	c->rate_until = 0;
	c->unsignalled_since = 0;
	c->last_signal = 0;
	rx_init(c);
}

/* Hand back every gathered chain, untouched. */
static void rx_release(struct rx_ctx *c)
{
	vq_unpop(&c->q, c->nbufs);
	rx_forget(c);
}

/* A bad chain came in the middle: the ones before it cannot be handed back
 * across it (it is already completed), so complete them empty. */
static void rx_abandon(struct rx_ctx *c)
{
	unsigned i;

	for (i = 0; i < c->nbufs; i++)
		vq_push(&c->q, BUF(c, i).head, 0);
	c->cnt[DC_RX_ABANDONED] += c->nbufs;
	rx_forget(c);
}

/*
 * Gather chains until need bytes (one chain without MRG_RXBUF).
 * 1: enough (or all the guest can ever give); 0: not enough now; what was
 * gathered is kept (the caller uses it or releases it) and kicks are on.
 */
static int rx_gather(struct rx_ctx *c, uint32_t need)
{
	int mrg = has(c, VNF_MRG_RXBUF);

	for (;;) {
		int r;

		if (c->nbufs && (!mrg || c->total >= need))
			return 1;
		if (c->nbufs >= RX_MAX_BUFS || c->nbufs >= c->q.num)
			return 1;       /* the whole ring: take what fits */
		r = vq_pop(&c->q, &c->tmp, 1, UINT32_MAX);
		if (r == 0) {
			/* Ask for a kick, then look again: what we hold is
			 * not pending, so anything pending is news. */
			if (vq_enable_notify(&c->q) > 0)
				continue;
			return 0;
		}
		if (r < 0) {
			c->cnt[DC_RING_BASE - r]++;
			if (r == -VQE_AVAIL_IDX) {
				rx_release(c);
				vq_enable_notify(&c->q);
				return 0;
			}
			rx_abandon(c);
			continue;
		}
		if (c->tmp.len < VNET_HDR_LEN + 14 && c->nbufs == 0) {
			/* Cannot take even a header and an Ethernet header. */
			vq_push(&c->q, c->tmp.head, 0);
			c->cnt[DC_RX_BUF_SMALL]++;
			continue;
		}
		if (c->niov + c->tmp.niov > 1023) {
			vq_unpop(&c->q, 1);
			return 1;       /* no room for more pieces */
		}
		if (c->first_buf + c->nbufs >= RX_MAX_BUFS ||
		    c->first_iov + c->niov + c->tmp.niov > 1023)
			rx_compact(c);          /* the window is at the arrays' end */
		memcpy(IOV(c) + c->niov, c->tmp.iov, c->tmp.niov * sizeof(struct iovec));
		BUF(c, c->nbufs).head = c->tmp.head;
		BUF(c, c->nbufs).niov = c->tmp.niov;
		BUF(c, c->nbufs).len = c->tmp.len;
		c->nbufs++;
		c->niov += c->tmp.niov;
		c->total += c->tmp.len;
	}
}

/*
 * Complete the gathered chains with n bytes (header included). The unused
 * ones stay gathered for the next frame of the batch (taking them from the
 * ring again for every small frame would cost more than moving them down);
 * rx_release() hands them back when the batch ends. Returns the chains used.
 */
static unsigned rx_complete(struct rx_ctx *c, size_t n)
{
	unsigned i, used = 0, used_iov = 0;
	uint64_t gone = 0;

	vq_log_write(&c->q, IOV(c), c->niov, n);   /* what we wrote, when migrating */
	for (i = 0; i < c->nbufs && n; i++) {
		uint32_t l = BUF(c, i).len < n ? BUF(c, i).len : (uint32_t)n;

		vq_push(&c->q, BUF(c, i).head, l);
		n -= l;
		used_iov += BUF(c, i).niov;
		gone += BUF(c, i).len;
		used++;
	}
	c->nbufs -= used;
	c->niov -= used_iov;
	c->total -= gone;
	c->first_buf = c->nbufs ? c->first_buf + used : 0;
	c->first_iov = c->nbufs ? c->first_iov + used_iov : 0;
	return used;
}

/* The buffers used by n bytes, for num_buffers. */
static unsigned rx_count_used(const struct rx_ctx *c, size_t n)
{
	unsigned i;

	for (i = 0; i < c->nbufs && n; i++)
		n -= BUF(c, i).len < n ? BUF(c, i).len : n;
	return i;
}

/* May the guest take this GSO type (the tap should only send those)? */
static int gso_allowed(const struct rx_ctx *c, uint8_t gso)
{
	switch (gso & ~VNET_GSO_ECN) {
	case VNET_GSO_NONE:
		return !(gso & VNET_GSO_ECN);
	case VNET_GSO_TCPV4:
		return has(c, VNF_GUEST_TSO4);
	case VNET_GSO_TCPV6:
		return has(c, VNF_GUEST_TSO6);
	case VNET_GSO_UDP:
		return has(c, VNF_GUEST_UFO);
	case VNET_GSO_UDP_L4:
		return has(c, VNF_GUEST_USO4) || has(c, VNF_GUEST_USO6);
	}
	return 0;
}

/*
 * Make c->hdr right for the guest; the frame (frame_len bytes) is in the
 * gathered buffers after the header slot. 0, or -1 to drop the frame.
 */
static int rx_fix_hdr(struct rx_ctx *c, size_t frame_len)
{
	struct vnet_hdr *h = &c->hdr;
	int guest_csum = has(c, VNF_GUEST_CSUM);
	uint16_t v;

	if (!gso_allowed(c, h->gso_type) || (h->gso_type && !guest_csum)) {
		c->cnt[DC_RX_BAD_HDR]++;
		return -1;
	}
	h->flags &= VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID;
	if (h->flags & VNET_F_NEEDS_CSUM && h->gso_type == VNET_GSO_NONE &&
	    (c->flags & RXF_SW_CSUM || !guest_csum)) {
		int n = iov_tail(IOV(c), c->niov, VNET_HDR_LEN, c->riov, 1024);

		/* Summed over guest memory: a guest changing its own RX
		 * buffers now only spoils its own frame. */
		if (n < 0 || csum_complete_iov(c->riov, n, frame_len, h->csum_start,
					       h->csum_offset, &v) < 0) {
			c->cnt[DC_SW_CSUM_FAIL]++;
			return -1;
		}
		iov_from_buf(IOV(c), c->niov,
			     VNET_HDR_LEN + (size_t)h->csum_start + h->csum_offset, &v, 2);
		c->cnt[DC_SW_CSUM]++;
		h->flags = VNET_F_DATA_VALID;
		h->csum_start = h->csum_offset = 0;
	}
	if (!guest_csum) {
		h->flags = 0;
		h->csum_start = h->csum_offset = 0;
	}
	return 0;
}

/* The frame (n bytes with its header slot) is in the gathered buffers and
 * its header in c->hdr: check it, fill num_buffers, publish. */
static enum rx_res rx_finish(struct rx_ctx *c, size_t n)
{
	if (rx_fix_hdr(c, n - VNET_HDR_LEN) < 0) {
		rx_release(c);
		return RX_DONE;
	}
	c->hdr.num_buffers = has(c, VNF_MRG_RXBUF) ? (uint16_t)rx_count_used(c, n) : 1;
	iov_from_buf(IOV(c), c->niov, 0, &c->hdr, VNET_HDR_LEN);
	rx_complete(c, n);
	c->cnt[DC_FRAMES]++;
	c->cnt[DC_BYTES] += n - VNET_HDR_LEN;
	if (c->rate.on)
		rate_charge(&c->rate, n - VNET_HDR_LEN);
	return RX_DONE;
}

/* The held frame into the guest's buffers, once they are enough for it. */
static enum rx_res rx_deliver_held(struct rx_ctx *c)
{
	size_t n = VNET_HDR_LEN + (size_t)c->held_len;

	if (!rx_gather(c, (uint32_t)n) && c->total < n) {
		rx_release(c);
		c->cnt[DC_RX_NO_BUFFERS]++;
		return RX_NO_BUFS;              /* the frame stays held */
	}
	if (c->total < n) {                     /* all the guest can give: too small */
		c->cnt[DC_RX_TOO_BIG]++;
		rx_release(c);
		c->held_len = 0;
		return RX_DONE;
	}
	iov_from_buf(IOV(c), c->niov, VNET_HDR_LEN, c->held, c->held_len);
	c->hdr = c->held_hdr;
	c->held_len = 0;
	c->cnt[DC_RX_BOUNCED]++;
	return rx_finish(c, n);
}

/* Some buffers, fewer than the largest frame needs: read into held[]. */
static enum rx_res rx_read_held(struct rx_ctx *c)
{
	struct iovec v[2] = {
		{ .iov_base = &c->held_hdr, .iov_len = VNET_HDR_LEN },
		{ .iov_base = c->held, .iov_len = sizeof(c->held) },
	};
	ssize_t n = readv(c->tap_fd, v, 2);

	if (n < 0) {
		rx_release(c);
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return RX_TAP_EMPTY;
		c->cnt[DC_TAP_ERROR]++;
		return RX_TAP_EMPTY;
	}
	if ((size_t)n < VNET_HDR_LEN + 14 || (size_t)n - VNET_HDR_LEN > FRAME_MAX) {
		c->cnt[DC_RX_BAD_HDR]++;
		rx_release(c);
		return RX_DONE;
	}
	c->held_len = (uint32_t)((size_t)n - VNET_HDR_LEN);
	return rx_deliver_held(c);
}

/*
 * The gathered bytes a frame is read straight into: whole buffers, enough
 * for c->expect bytes (all of them when it is 0), in at most RX_READ_PIECES
 * iovecs (readv() takes 1024: ours are the header, these and the spill).
 * *niov: their iovecs. What is gathered beyond them is the spill's to take.
 */
static size_t rx_direct(const struct rx_ctx *c, unsigned *niov)
{
	size_t direct = 0;
	unsigned i;

	*niov = 0;
	for (i = 0; i < c->nbufs && (!c->expect || direct < c->expect); i++) {
		if (*niov + BUF(c, i).niov > RX_READ_PIECES)
			break;
		direct += BUF(c, i).len;
		*niov += BUF(c, i).niov;
	}
	return direct;
}

static enum rx_res rx_frame(struct rx_ctx *c)
{
	uint32_t fmax = c->frame_max && c->frame_max < FRAME_MAX ? c->frame_max : FRAME_MAX;
	size_t direct, spill;
	unsigned direct_iov;
	ssize_t n;
	int k;

	if (c->held_len)
		return rx_deliver_held(c);
	if (!rx_gather(c, VNET_HDR_LEN + fmax)) {
		if (c->nbufs)
			return rx_read_held(c);
		c->cnt[DC_RX_NO_BUFFERS]++;
		return RX_NO_BUFS;
	}
	memset(&c->hdr, 0, sizeof(c->hdr));
	c->riov[0] = (struct iovec){ .iov_base = &c->hdr, .iov_len = VNET_HDR_LEN };
	direct = rx_direct(c, &direct_iov);
	spill = c->total - direct < sizeof(c->held) ? c->total - direct : sizeof(c->held) - 1;
	k = iov_tail(IOV(c), (int)direct_iov, VNET_HDR_LEN, c->riov + 1, RX_READ_PIECES);
	if (k < 0)
		k = 0;                  /* cannot happen: direct_iov <= RX_READ_PIECES */
	/* One byte past what was gathered: a tap truncates a frame that does
	 * not fit and says nothing, so a byte landing there is how we know.
	 * It is the spill buffer's last byte when there is one (one iovec
	 * fewer for the kernel to check), else a byte of its own. */
	if (spill)
		c->riov[k + 1] = (struct iovec){ .iov_base = c->held, .iov_len = spill + 1 };
	else
		c->riov[k + 1] = (struct iovec){ .iov_base = c->overflow, .iov_len = 1 };
	/* GCC 12 at -O1 with ASan takes c->riov for its first iov_base member
	 * and warns that readv reads past 8 bytes: a false positive. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstringop-overread"
	n = readv(c->tap_fd, c->riov, k + 2);
#pragma GCC diagnostic pop
	if (n < 0) {
		int e = errno;

		rx_release(c);
		if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR)
			return RX_TAP_EMPTY;
		/* The kernel drops a frame that does not fit (EFAULT/EINVAL). */
		c->cnt[e == EFAULT || e == EINVAL ? DC_RX_TOO_BIG : DC_TAP_ERROR]++;
		return e == EFAULT || e == EINVAL ? RX_DONE : RX_TAP_EMPTY;
	}
	if ((size_t)n > direct + spill) {
		c->cnt[DC_RX_TOO_BIG]++;
		rx_release(c);
		return RX_DONE;
	}
	if ((size_t)n < VNET_HDR_LEN + 14) {
		c->cnt[DC_RX_BAD_HDR]++;        /* a runt: nothing to deliver */
		rx_release(c);
		return RX_DONE;
	}
	if ((size_t)n > direct) {
		iov_from_buf(IOV(c), c->niov, direct, c->held, (size_t)n - direct);
		c->cnt[DC_RX_SPILLED]++;
		c->expect = 0;
	}
	if ((uint32_t)n > c->seen_max)
		c->seen_max = (uint32_t)n;
	return rx_finish(c, (size_t)n);
}

/* Serve up to a batch. Completions are published; they are signalled at
 * once when the batch is full or the guest is out of buffers, else as
 * dp_complete() throttles. Returns the frames handled. */
static unsigned rx_batch(struct rx_ctx *c, int *more)
{
	unsigned limit = c->batch ? c->batch : DP_BATCH, i;
	uint16_t published = c->q.used_idx;

	*more = 0;
	vq_disable_notify(&c->q);
	if (c->seen_max)
		c->expect = c->seen_max;        /* what the last batch needed */
	c->seen_max = 0;
	for (i = 0; i < limit; i++) {
		enum rx_res r;
		uint64_t wait;

		if ((wait = rate_hold_ns(&c->rate)) != 0) {
			dp_hold(&c->rate_until, c->cnt, wait);  /* the tap waits */
			break;
		}
		r = rx_frame(c);

		if (r == RX_TAP_EMPTY)
			break;
		if (r == RX_NO_BUFS) {
			c->waiting_bufs = 1;
			break;
		}
		/* Large frames take many buffers each: a batch of them can use
		 * the whole ring. Hand back every quarter ring as it fills, so
		 * the guest refills while we go on instead of after. */
		if ((uint16_t)(c->q.used_idx - published) >= c->q.num / 4) {
			c->cnt[DC_NOTIFICATIONS] += dp_complete(&c->q, c->cnt,
				&c->unsignalled_since, &c->last_signal,
				dp_linger_ns(c->linger_us), 0);
			published = c->q.used_idx;
		}
	}
	if (i)
		c->cnt[DC_BATCHES]++;
	if (i == limit)
		*more = 1;
	rx_release(c);          /* chains gathered for a frame that did not come */
	c->cnt[DC_NOTIFICATIONS] += dp_complete(&c->q, c->cnt, &c->unsignalled_since,
						&c->last_signal, dp_linger_ns(c->linger_us),
						*more || c->waiting_bufs);
	return i;
}

/* While the limit holds the tap: wake when it lets go, or sooner for the
 * timeout ppoll() already has (tsp: NULL, or ts). */
static struct timespec *rx_hold_timeout(struct rx_ctx *c, struct timespec *ts,
					struct timespec *tsp)
{
	uint64_t now = dp_now_ns(), left = c->rate_until > now ? c->rate_until - now : 0;

	if (!tsp || (uint64_t)ts->tv_sec * 1000000000u + (uint64_t)ts->tv_nsec > left)
		*ts = dp_timespec(left);
	return ts;
}

int rx_run(struct rx_ctx *c, int ctl_fd)
{
	uint64_t linger = dp_linger_ns(c->linger_us);
	int more = 1;

	for (;;) {
		int tap_on;
		struct pollfd p[3] = {
			{ .fd = ctl_fd, .events = POLLIN },
			{ .fd = c->kick_fd, .events = POLLIN },
			{ .fd = -1, .events = POLLIN },      /* the tap, when tap_on */
		};
		struct timespec ts = { 0, 0 }, *tsp = &ts;
		int n;

		if (c->rate_until && dp_hold_over(&c->rate_until, dp_now_ns()))
			more = 1;               /* the limit lets go: read the tap */
		tap_on = (c->flags & RXF_ENABLED) && !c->waiting_bufs && !c->rate_until;
		p[2].fd = tap_on ? c->tap_fd : -1;
		if (!(more && tap_on)) {
			tsp = NULL;
			if (c->unsignalled_since) {
				/* Wait for the tap no longer than the signal may wait. */
				uint64_t now = dp_now_ns(), end = c->unsignalled_since + linger;

				if (dp_signal_due(c->unsignalled_since, linger, now)) {
					c->cnt[DC_NOTIFICATIONS] += dp_complete(
						&c->q, c->cnt, &c->unsignalled_since,
						&c->last_signal, 0, 1);
				} else {
					ts.tv_nsec = (long)(end - now);
					tsp = &ts;
				}
			}
			if (c->rate_until)
				tsp = rx_hold_timeout(c, &ts, tsp);
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
			c->waiting_bufs = 0;
			more = 1;
		}
		if (p[2].revents) {
			if (c->unsignalled_since && !more)
				c->cnt[DC_LINGER_FOUND]++;  /* shares the pending signal */
			more = 1;
		}
		tap_on = (c->flags & RXF_ENABLED) && !c->waiting_bufs && !c->rate_until;
		if (more && tap_on)
			rx_batch(c, &more);
		else
			more = 0;
		if (p[0].revents) {
			/* Python gets a ring with every completion signalled. */
			c->cnt[DC_NOTIFICATIONS] += dp_complete(&c->q, c->cnt,
								&c->unsignalled_since,
								&c->last_signal, 0, 1);
			return DP_CTL;
		}
	}
}

int rx_inject(struct rx_ctx *c, const uint8_t *frame, size_t len)
{
	if (len > FRAME_MAX || !(c->flags & RXF_ENABLED) ||
	    !rx_gather(c, (uint32_t)(VNET_HDR_LEN + len)) ||
	    c->total < VNET_HDR_LEN + len) {
		rx_release(c);
		c->cnt[DC_RX_INJECT_NOBUF]++;
		return -1;
	}
	memset(&c->hdr, 0, sizeof(c->hdr));
	c->hdr.num_buffers = has(c, VNF_MRG_RXBUF) ?
		(uint16_t)rx_count_used(c, VNET_HDR_LEN + len) : 1;
	iov_from_buf(IOV(c), c->niov, 0, &c->hdr, VNET_HDR_LEN);
	iov_from_buf(IOV(c), c->niov, VNET_HDR_LEN, frame, len);
	rx_complete(c, VNET_HDR_LEN + len);
	rx_release(c);
	c->cnt[DC_RX_INJECTED]++;
	c->cnt[DC_NOTIFICATIONS] += dp_complete(&c->q, c->cnt, &c->unsignalled_since,
						&c->last_signal, 0, 1);
	return 0;
}
