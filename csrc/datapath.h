/*
 * datapath.h: the worker data paths, TX (guest ring -> tap, txpath.c) and
 * RX (tap -> guest ring, rxpath.c), as the Python worker drives them.
 *
 * The worker fills a context (allocated with ffi.new, so zeroed): guest
 * memory with gmem_map(), the ring with vq_setup(&ctx->q, ...), the fds,
 * negotiated features and policy flags, then calls tx_init()/rx_init() once
 * and tx_run()/rx_run() in a loop. *_run() serves the ring until ctl_fd is
 * readable (or, for TX, a DHCP, DHCPv6 or router solicitation frame was diverted) and returns with the ring
 * consistent: every chain taken is completed or handed back, so
 * vq_last_avail(&ctx->q) is the vhost-user GET_VRING_BASE answer.
 *
 * Notifications: a batch publishes what it completed at once (the guest
 * may reap it without an interrupt) and turns kicks off. TX asks for kicks
 * again only after the ring has stayed dry for linger_us, looking at it
 * meanwhile; RX asks for kicks only when the guest is out of buffers (as
 * it always did). Signals (call eventfd): a completion after a quiet spell
 * (no signal for DP_QUIET_WINDOWS x linger_us) is signalled at once;
 * otherwise the signal waits up to linger_us after the first unsignalled
 * completion, so frames of a stream share kicks and interrupts while a
 * lone frame waits for nothing (see tx_ctx.linger_us, rx_ctx.linger_us).
 *
 * Rate limit: ctx->rate (rate.h), set by the worker with rate_set(). Before
 * each frame the path asks the bucket (one test of rate.on without a
 * limit); over the limit, TX takes no more chains (they wait in the ring,
 * the guest's queue pushes back) and RX reads no more from the tap (the
 * kernel's queue fills and drops), until rate_until, a ppoll() timeout.
 *
 * Counters: ctx->cnt[DC_*], all uint64, named by dp_counter_name(i) for
 * 0 <= i < DC_MAX: fixed counters, then one per ring error (DC_RING_BASE +
 * VQE_*), then one per refused header (DC_VR_BASE + VR_*).
 */
#ifndef VIONETD_DATAPATH_H
#define VIONETD_DATAPATH_H

#include <stdint.h>
#include <time.h>
#include "core.h"
#include "virtq.h"
#include "rate.h"

/* CDEF BEGIN */

enum dp_counter {
	DC_FRAMES = 0,        /* frames moved (TX: chains accepted; RX: frames delivered) */
	DC_BYTES,             /* their bytes, without the vnet header */
	DC_PASSTHROUGH,       /* TX: written with their header to the tap */
	DC_SW_CSUM,           /* checksum completed in software */
	DC_SW_SEGMENTED,      /* TX: GSO frames cut in software */
	DC_SEGMENTS_OUT,      /* TX: frames those made */
	DC_NOTIFICATIONS,     /* call eventfd signals */
	DC_KICKS,             /* kick eventfd wake-ups */
	DC_BATCHES,           /* wake-ups that moved at least one chain/frame */
	DC_DISABLED_DROP,     /* TX chains discarded while the ring is disabled */
	DC_TAP_FULL,          /* TX: tap said EAGAIN; frame kept and retried */
	DC_TAP_ERROR,         /* TX: writev failed otherwise (frame dropped);
				 RX: readv failed otherwise */
	DC_NO_HDR,            /* TX chain shorter than the vnet header */
	DC_LOCKED_MAC_DROP,   /* TX: source MAC is not the locked one */
	DC_LOCKED_ARP_DROP,   /* TX: ARP claiming another hardware address */
	DC_GSO_IN,            /* TX: GSO frames from the guest (either path) */
	DC_CSUM_IN,           /* TX: partially checksummed frames from the guest */
	DC_DHCP_DIVERTED,
	DC_DIVERT_TOO_LONG,   /* TX: DHCP frame larger than DIVERT_MAX, dropped */
	DC_SW_GSO_FAIL,       /* TX: segmentation refused (too many segments) */
	DC_SW_CSUM_FAIL,      /* checksum range outside the frame */
	DC_RX_NO_BUFFERS,     /* RX: waits for the guest to add buffers */
	DC_RX_TOO_BIG,        /* RX: frame did not fit the buffers, lost */
	DC_RX_BAD_HDR,        /* RX: tap header the guest did not negotiate, or a runt */
	DC_RX_BUF_SMALL,      /* RX: chain shorter than a vnet header + Ethernet header */
	DC_RX_ABANDONED,      /* RX: gathered chains returned empty after a bad chain */
	DC_RX_BOUNCED,        /* RX: read via the private buffer, the guest was short of buffers */
	DC_RX_INJECTED,
	DC_RX_INJECT_NOBUF,
	DC_LINGER_FOUND,      /* TX: chains found by looking while kicks were
				 off after the ring ran dry (kicks the guest
				 did not send); RX: frames that came from the
				 tap while a signal was pending (they share it) */
	DC_NOTIFY_DEFERRED,   /* batches whose completions were not signalled at
				 once (the last signal was recent) */
	DC_RX_SPILLED,        /* RX: frames larger than the batch expected, their
				 end copied from the spill buffer (rxpath.c) */
	DC_TAP_SUBMITS,       /* TX: io_uring submissions, each writing the
				 frames of a batch (txpath.c, txuring.c) */
	DC_TAP_URING_OFF,     /* TX: the tap refused a write that may not wait
				 (EOPNOTSUPP): io_uring given up, a write per frame */
	DC_V6_DIVERTED,       /* TX: router solicitations and DHCPv6 client
				 messages handed to Python (TXF_INET6) */
	DC_V6_ROUTER_DROP,    /* TX: router advertisements, redirects and
				 DHCPv6 server messages from the guest (TXF_INET6) */
	DC_LOCKED_IP6_DROP,   /* TX: IPv6 from a source not in locked_ip6 */
	DC_V6_UNPARSED_DROP,  /* TX: IPv6 whose headers do not parse (TXF_INET6, TXF_LOCKED_IP6) */
	DC_CSUM_FIELD_DROP,   /* TX: NEEDS_CSUM not at the L4 checksum, where a filter reads L4 */
	DC_RATE_HELD,         /* the rate limit held the next frame back (TX:
				 left in the ring; RX: left in the tap) */
	DC_FIXED_MAX
};
/* Separate enums: cffi resolves a name only once its enum is complete. */
enum { DC_RING_BASE = DC_FIXED_MAX };
enum { DC_VR_BASE = DC_RING_BASE + VQE_MAX };
enum { DC_MAX = DC_VR_BASE + VR_REASON_MAX };

const char *dp_counter_name(int i);

/* *_run() results. */
enum {
	DP_CTL = 0,           /* the control fd is readable (or hung up) */
	DP_DIVERT = 1,        /* TX: a DHCP, DHCPv6 or router solicitation
				 frame is in ctx->divert[0:divert_len] */
	DP_ERROR = -1,        /* poll() failed; errno says why */
	DP_FD_ERROR = -2      /* the kick or tap fd is invalid or in error
				 (POLLNVAL/POLLERR/POLLHUP: e.g. the tap was
				 deleted): returned at once rather than spin */
};

enum {
	/* tx_ctx.flags */
	TXF_ENABLED = 1,      /* SET_VRING_ENABLE 1; else chains are taken and discarded */
	TXF_SW_CSUM = 2,      /* complete NEEDS_CSUM (non-GSO) frames ourselves */
	TXF_SW_TSO4 = 4,      /* cut TCPV4 frames ourselves */
	TXF_LOCKED_MAC = 8,   /* drop frames whose source is not locked_mac */
	TXF_DHCP_DIVERT = 16, /* hand IPv4 UDP 68->67 to Python */
	TXF_SW_TSO6 = 32,     /* cut TCPV6 frames ourselves */
	TXF_SW_USO = 64,      /* cut UDP_L4 frames ourselves */
	TXF_SW_GSO = 100,     /* all three */
	TXF_INET6 = 128,      /* a local interface's IPv6: hand ICMPv6 router
				 solicitations and UDP 546->547 (DHCPv6) to
				 Python; drop what only a router or a DHCPv6
				 server sends (RA, redirect, UDP 547->546),
				 IPv6 that does not parse, and NEEDS_CSUM
				 off the L4 checksum (txpath.c filter_unreadable) */
	TXF_LOCKED_IP6 = 256, /* drop IPv6 frames whose source is none of
				 locked_ip6[] (nor :: in ICMPv6: duplicate
				 address detection, solicitations, MLD) */
	LOCKED_IP6_MAX = 4,
	/* rx_ctx.flags */
	RXF_ENABLED = 1,      /* else the tap is not read */
	RXF_SW_CSUM = 2,      /* complete partial checksums, deliver DATA_VALID */
	DP_BATCH = 64,        /* default frames per wake-up */
	DP_LINGER_US = 250,   /* default linger_us */
	DP_QUIET_WINDOWS = 4, /* no signal for this many linger_us: signal at once */
	DP_LINGER_STEP_US = 25, /* TX: how often the ring is looked at meanwhile
				   (plus the kernel's timer slack, 50 us by default) */
	DIVERT_MAX = 2048,
	/* TX: a frame this long or shorter is copied whole (tens of ns) and
	 * goes out in one write(); a longer one is a writev() of the head copy
	 * and guest memory (see txpath.c tap_send()). */
	TX_COPY_MAX = 2048,
	TX_MAX_SEGS = 2048,   /* scratch for software GSO: FRAME_MAX + segs * HEAD_MAX */
	RX_MAX_BUFS = 1023,
	RX_READ_PIECES = 1022,  /* guest pieces in one readv(): 1024 - header - spill */
	/* virtio-net feature bits the paths look at */
	VNF_GUEST_CSUM = 1,
	VNF_GUEST_TSO4 = 7,
	VNF_GUEST_TSO6 = 8,
	VNF_GUEST_UFO = 10,
	VNF_MRG_RXBUF = 15,
	VNF_GUEST_USO4 = 54,
	VNF_GUEST_USO6 = 55
};

struct tx_stage;          /* txpath.c: frames waiting for one io_uring submission */

/* A TX frame's vnet header and first bytes, copied from the guest once and
 * validated: end to end, so the two are one piece (txpath.c join_hdr()). */
struct tx_copy {
	struct vnet_hdr hdr;
	uint8_t head[TX_COPY_MAX];
};

struct tx_ctx {
	struct vq q;
	int kick_fd;          /* -1 until SET_VRING_KICK */
	int tap_fd;
	struct txu *uring;    /* txu_open()ed: a batch's frames in one system
				 call; NULL: one write() or writev() each */
	uint64_t features;    /* negotiated */
	uint32_t flags;       /* TXF_* */
	unsigned batch;       /* 0: DP_BATCH */
	/* After the ring runs dry, kicks stay off and the ring is looked at
	 * every DP_LINGER_STEP_US for this long before kicks are asked for
	 * again; completions are published after every batch and signalled
	 * at once after a quiet spell, else when the worker goes idle, a
	 * batch is full, or this long after the first unsignalled one.
	 * 0: DP_LINGER_US; negative: none (kicks on and a signal after
	 * every batch). */
	int linger_us;
	uint8_t locked_mac[6];
	/* TXF_LOCKED_IP6: the IPv6 sources the guest may use (its link-local,
	 * SLAAC and DHCPv6 addresses); unused entries are all zero, which
	 * matches no source but :: (checked apart). */
	uint8_t locked_ip6[4][16];
	uint64_t cnt[DC_MAX];
	uint32_t divert_len;
	uint8_t divert[2048];
	/* private below */
	int waiting_out;
	int armed;            /* kicks asked for (vq_enable_notify) since the last batch */
	uint64_t linger_until;  /* dp_now_ns() until which we look without kicks */
	uint64_t unsignalled_since; /* 0: every completion signalled */
	uint64_t last_signal;   /* dp_now_ns() of the last call written */
	unsigned seg_next, seg_count;
	size_t seg_off;
	struct tx_copy *cp;   /* the current frame's copy: own, or its stage slot's */
	struct tx_copy own;
	struct vq_chain chain;
	struct iovec wiov[1024];
	uint8_t *scratch;
	size_t scratch_cap;
	uint32_t *seg_lens;
	struct tx_stage *stage;
	/* The rate limit (the worker sets rate with rate_set(); rate_until is
	 * the path's), last: the fields above keep the places and cache lines
	 * they had before it. */
	struct dp_rate rate;  /* rate_set(); without a limit the path pays one test */
	uint64_t rate_until;  /* dp_now_ns() the limit holds the ring until; 0: not held */
};

struct rx_buf {
	uint16_t head;
	uint16_t niov;
	uint32_t len;
};

struct rx_ctx {
	struct vq q;
	int kick_fd;
	int tap_fd;
	uint64_t features;
	uint32_t flags;       /* RXF_* */
	unsigned batch;
	/* Completions are published after every batch and signalled at once
	 * after a quiet spell, else this long after the first unsignalled one
	 * (at once when a batch is full, the guest is out of buffers or
	 * rx_run() returns), so frames arriving meanwhile share one
	 * interrupt. 0: DP_LINGER_US; negative: none (a signal after every
	 * batch). */
	int linger_us;
	uint32_t frame_max;   /* largest frame the tap may deliver; 0: FRAME_MAX */
	uint64_t cnt[DC_MAX];
	/* private below */
	int waiting_bufs;
	uint64_t unsignalled_since; /* 0: every completion signalled */
	uint64_t last_signal;   /* dp_now_ns() of the last call written */
	unsigned nbufs, niov;
	unsigned first_buf, first_iov; /* where the gathered ones start (rxpath.c BUF) */
	uint64_t total;       /* bytes gathered: at most 1023 lengths of 32 bits */
	uint32_t expect;      /* bytes a frame is read straight into (0: all) */
	uint32_t seen_max;    /* the largest frame of this batch, header included */
	struct vnet_hdr hdr;
	uint8_t overflow[8];
	uint32_t held_len;    /* a frame read into held[] waits for buffers */
	struct vnet_hdr held_hdr;
	uint8_t held[65560];  /* FRAME_MAX, rounded up */
	struct rx_buf bufs[1023];
	struct iovec iov[1024];
	struct iovec riov[1024];
	struct vq_chain tmp;
	/* The rate limit, last, as in tx_ctx. */
	struct dp_rate rate;  /* rate_set(); without a limit the path pays one test */
	uint64_t rate_until;  /* dp_now_ns() the limit leaves the tap unread until; 0: not held */
};

/* Allocate the TX scratch (once; 0 or -1). */
int tx_init(struct tx_ctx *c);
void tx_fini(struct tx_ctx *c);
int tx_run(struct tx_ctx *c, int ctl_fd);
/* Forget transient state (segments waiting for the tap, the wait for
 * POLLOUT): on GET_VRING_BASE / RESET_OWNER, before a new vq_setup().
 * Counters and the scratch stay. Segments dropped are counted as tap_error. */
void tx_reset(struct tx_ctx *c);
/* Drain one batch without waiting (for tests and the worker's stop path):
 * returns DP_CTL when the ring is empty or the batch is done, DP_DIVERT. */
int tx_poll_once(struct tx_ctx *c);

int rx_init(struct rx_ctx *c);
/* The same for RX (nothing is ever held between calls; clears the wait). */
void rx_reset(struct rx_ctx *c);
int rx_run(struct rx_ctx *c, int ctl_fd);
/* Put one frame built by the worker into the ring, with a zero header.
 * 0, or -1 if the guest has no room for it now (counted). */
int rx_inject(struct rx_ctx *c, const uint8_t *frame, size_t len);

/* CDEF END */

/* Shared by the paths (not exported to Python). */
uint64_t dp_now_ns(void);
/* linger_us as nanoseconds: 0 means DP_LINGER_US, negative none. */
uint64_t dp_linger_ns(int linger_us);
/* Publish what was completed, then signal it now, unless not force and
 * the last signal written (*last) is less than DP_QUIET_WINDOWS windows
 * old: then it stays published and unsignalled, *since is set on the
 * first such deferral, and it is signalled by the first call after
 * dp_signal_due() (window after *since) or a forced one. window 0: always
 * now. Returns the signals written (0 or 1). So in a stream the guest
 * takes about one interrupt per window, while a completion after a quiet
 * spell (a ping reply) is signalled at once. */
int dp_complete(struct vq *q, uint64_t *cnt, uint64_t *since, uint64_t *last,
		uint64_t window, int force);
int dp_signal_due(uint64_t since, uint64_t window, uint64_t now);
/* The limit holds the path for wait ns (rate_hold_ns()): *until is set,
 * and rate_held counted once per hold (not again while *until stands). */
void dp_hold(uint64_t *until, uint64_t *cnt, uint64_t wait);
/* A hold is over at now: *until is cleared; 1 if it was set. */
int dp_hold_over(uint64_t *until, uint64_t now);
/* ns as a ppoll() timeout. */
struct timespec dp_timespec(uint64_t ns);

#endif
