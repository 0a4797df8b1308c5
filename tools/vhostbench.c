/*
 * vhostbench.c: drive vionetd (or a bare tap) at full speed, without a guest.
 *
 * A test tool, built by bench/backend.py (gcc -O2 -pthread -luring); not part of
 * vionetd. One mode per run, one JSON line on stdout at the end (modes that
 * must be ready before a traffic source starts print "ready" first):
 *
 *   tx -s SOCK -k KIND -t SEC     vhost-user FRONTEND, guest TX: keep the TX
 *                                 ring(s) full of one precomputed frame and
 *                                 count the chains the device completes
 *   rx -s SOCK -t SEC             vhost-user FRONTEND, guest RX: keep the RX
 *                                 ring(s) stocked with buffers, count frames
 *   tapwrite -i TAP -k KIND -t SEC   the TX limit: write the same frames
 *                                 straight into a tap of our own, from one
 *                                 buffer, or (-G) in the pieces of tx's
 *                                 chains, one writev() each, or (-U N) N
 *                                 writes per io_uring submission
 *   tapread -i TAP -t SEC         the RX limit: read a tap of our own
 *                                 into one buffer, or (-G -k KIND) into the
 *                                 buffers rx posts, one readv() each
 *   source -i IF -k KIND -t SEC   write frames INTO a tap (AF_PACKET with
 *                                 PACKET_VNET_HDR), so its reader gets them
 *
 * Options: -Q N (tx, rx, tapwrite, tapread): N queue pairs, one thread per
 * pair. The frontend negotiates MQ (feature 22, protocol feature MQ,
 * GET_QUEUE_NUM), sets up rings 2i (RX) and 2i+1 (TX) of each pair i and
 * drives each pair's ring from its own thread; the tap modes open the tap
 * IFF_MULTI_QUEUE with one fd, and one thread, per queue. Figures are the
 * sums over the threads (per_pair has each one's share).
 * -F N (source): N flows, the TCP source port cycling over N values frame
 * by frame, so that a multiqueue tap spreads them over its queues by flow
 * hash. -L (tx, rx): dirty logging on while measuring, the way QEMU turns
 * it on when a migration starts (see log_start()); a thread of ours syncs
 * the log every LOG_SYNC_MS like QEMU's migration thread and counts the
 * pages marked (log_pages).
 *
 * KIND: 64k (TSO4 super-frame, gso_size 1448), 1514, 64; all IPv4/TCP with a
 * partial checksum (NEEDS_CSUM, the pseudo-header sum in the TCP field), as
 * a Linux guest with offloads sends them.
 *
 * The frontend is a well-behaved guest: it negotiates in the order QEMU uses
 * (tests/vmm.py Frontend.negotiate), shares one memfd region, lays out split
 * rings (virtio 1.2, 2.7), publishes avail entries with release ordering,
 * and honours notification suppression both ways: it kicks only when
 * used->flags or avail_event (EVENT_IDX) asks, and sleeps until a batch of
 * completions is there (used_event / NO_INTERRUPT: TX 3/4 of the ring, as
 * Linux's virtio-net asks when its TX ring is full, RX a quarter), as a
 * guest driver under load would: its cost per frame is a few loads and
 * stores (cpu_s in the result). TX chains are laid out as Linux lays out a
 * TCP skb: headers, then the payload in 32 KiB pieces (-P). Timing starts at the same instant for every
 * thread: for tx once the rings run (and logging is on), for rx and tapread
 * at the first frame, so the order in which source and reader start does
 * not matter.
 *
 * Invariants: every wait is bounded (poll with a timeout, a deadline; a
 * thread that overruns its deadline makes the process exit); the data loops
 * allocate nothing; buffers are recycled by descriptor id; threads share
 * nothing but the start time, the done count and the dirty log.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/if.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <net/ethernet.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <liburing.h>

/* ---- numbers (virtio 1.2; QEMU docs/interop/vhost-user.rst) ----------- */

enum {
	VU_GET_FEATURES = 1, VU_SET_FEATURES = 2, VU_SET_OWNER = 3,
	VU_SET_MEM_TABLE = 5, VU_SET_LOG_BASE = 6, VU_SET_VRING_NUM = 8,
	VU_SET_VRING_ADDR = 9, VU_SET_VRING_BASE = 10, VU_SET_VRING_KICK = 12,
	VU_SET_VRING_CALL = 13, VU_GET_PROTOCOL_FEATURES = 15,
	VU_SET_PROTOCOL_FEATURES = 16, VU_GET_QUEUE_NUM = 17, VU_SET_VRING_ENABLE = 18,
	VU_VERSION = 1, VU_REPLY = 1 << 2, VU_NEED_REPLY = 1 << 3,
	PF_MQ = 0, PF_LOG_SHMFD = 1, PF_REPLY_ACK = 3,
	VRING_F_LOG = 1,
};

enum {
	F_MRG_RXBUF = 15, F_INDIRECT = 28, F_EVENT_IDX = 29, F_PROTOCOL = 30,
	F_GUEST_TSO4 = 7, F_GUEST_CSUM = 1, F_CSUM = 0, F_HOST_TSO4 = 11,
	F_MQ = 22, F_LOG_ALL = 26,
};

#define HAS(f, b) (((f) >> (b)) & 1ULL)

enum { D_NEXT = 1, D_WRITE = 2, D_INDIRECT = 4 };
enum { AVAIL_NO_INTERRUPT = 1, USED_NO_NOTIFY = 1 };

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct used_elem { uint32_t id, len; };
struct vnet { uint8_t flags, gso_type; uint16_t hdr_len, gso_size, csum_start,
	      csum_offset, num_buffers; };

enum { VNET_LEN = 12, PAGE = 4096, MAX_FRAME = 65550, MAX_PIECES = 20 };
enum { MAX_PAIRS = 8, LOG_SYNC_MS = 100 };

/* ---- small helpers ----------------------------------------------------- */

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "vhostbench: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_self(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
	       (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

static double thread_cpu(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void wake(int fd)
{
	uint64_t one = 1;

	if (write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		die("eventfd write: %s", strerror(errno));
}

static void drain(int fd)
{
	uint64_t v;

	if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		die("eventfd read: %s", strerror(errno));
}

/* ---- frames ------------------------------------------------------------ */

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t s)
{
	for (; n > 1; p += 2, n -= 2)
		s += (uint32_t)(p[0] << 8 | p[1]);
	if (n)
		s += (uint32_t)p[0] << 8;
	return s;
}

static uint16_t fold(uint32_t s)
{
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)s;
}

static const uint8_t GUEST_MAC[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
static const uint8_t PEER_MAC[6] = { 0x02, 0x00, 0x5e, 0x00, 0x53, 0x01 };

/*
 * An IPv4/TCP frame of len bytes (>= 54) at f, and its virtio_net_hdr: a
 * partial checksum (the pseudo-header sum, length included, in the TCP
 * field, as Linux's tcp_v4_send_check leaves it) and, above 1514 bytes,
 * TSO4 with MSS 1448. dst: the destination MAC.
 */
static void build_frame(uint8_t *f, size_t len, const uint8_t *dst, const uint8_t *src,
			struct vnet *h)
{
	uint8_t *ip = f + 14, *tcp = ip + 20;
	size_t tl = len - 34, i;
	uint32_t ps;

	memcpy(f, dst, 6);
	memcpy(f + 6, src, 6);
	f[12] = 0x08, f[13] = 0x00;
	memset(ip, 0, 20);
	ip[0] = 0x45;
	ip[2] = (uint8_t)((len - 14) >> 8), ip[3] = (uint8_t)(len - 14);
	ip[6] = 0x40;                          /* DF */
	ip[8] = 64, ip[9] = 6;
	ip[12] = 198, ip[13] = 51, ip[14] = 100, ip[15] = 1;     /* RFC 5737 */
	ip[16] = 198, ip[17] = 51, ip[18] = 100, ip[19] = 2;
	i = (uint16_t)~fold(sum16(ip, 20, 0));
	ip[10] = (uint8_t)(i >> 8), ip[11] = (uint8_t)i;
	memset(tcp, 0, 20);
	tcp[0] = 0x13, tcp[1] = 0x89;          /* 5001 -> 40000 */
	tcp[2] = 0x9c, tcp[3] = 0x40;
	tcp[4] = 0, tcp[5] = 1, tcp[6] = 0, tcp[7] = 0;          /* seq */
	tcp[12] = 5 << 4, tcp[13] = 0x18;      /* ACK PSH */
	tcp[14] = 0xff, tcp[15] = 0xff;
	for (i = 54; i < len; i++)
		f[i] = (uint8_t)(i * 7);
	ps = sum16(ip + 12, 8, 0) + 6 + (uint32_t)tl;
	ps = fold(ps);
	tcp[16] = (uint8_t)(ps >> 8), tcp[17] = (uint8_t)ps;
	memset(h, 0, sizeof(*h));
	h->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
	h->csum_start = 34;
	h->csum_offset = 16;
	h->hdr_len = 54;
	if (len > 1514) {
		h->gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
		h->gso_size = 1448;
	}
}

/* 64k: 45 full segments of 1448, IP total length 65200. */
static size_t kind_len(const char *k)
{
	if (!k)
		die("no frame kind (-k 64k|1514|64)");
	if (!strcmp(k, "64k"))
		return 54 + 45 * 1448;
	if (!strcmp(k, "1514"))
		return 1514;
	if (!strcmp(k, "64"))
		return 64;
	die("unknown frame kind %s", k);
	return 0;
}

/* ---- vhost-user messages ------------------------------------------------ */

struct vu {
	int sock;
	uint64_t proto;         /* protocol features acked */
};

static void vu_send(struct vu *v, uint32_t req, int need_reply, const void *p,
		    uint32_t size, const int *fds, int nfds)
{
	uint32_t hdr[3] = { req, VU_VERSION | (need_reply ? VU_NEED_REPLY : 0), size };
	struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)p, size } };
	char cbuf[CMSG_SPACE(8 * sizeof(int))];
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = size ? 2 : 1 };
	ssize_t n;

	if (nfds) {
		struct cmsghdr *c;

		memset(cbuf, 0, sizeof(cbuf));
		m.msg_control = cbuf;
		m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	n = sendmsg(v->sock, &m, MSG_NOSIGNAL);
	if (n != (ssize_t)(sizeof(hdr) + size))
		die("vhost-user send %u: %s", req, n < 0 ? strerror(errno) : "short");
}

static void recv_exact(int fd, void *buf, size_t n)
{
	size_t got = 0;

	while (got < n) {
		struct pollfd p = { fd, POLLIN, 0 };
		ssize_t r;

		if (poll(&p, 1, 5000) != 1)
			die("vhost-user: no reply within 5 s");
		r = recv(fd, (char *)buf + got, n - got, 0);
		if (r <= 0)
			die("vhost-user: connection closed by the device");
		got += (size_t)r;
	}
}

static uint64_t vu_reply_u64(struct vu *v, uint32_t req)
{
	uint32_t hdr[3];
	uint64_t val;

	recv_exact(v->sock, hdr, sizeof(hdr));
	if (hdr[0] != req || !(hdr[1] & VU_REPLY) || hdr[2] != 8)
		die("vhost-user: bad reply to %u (req %u flags %#x size %u)", req,
		    hdr[0], hdr[1], hdr[2]);
	recv_exact(v->sock, &val, 8);
	return val;
}

static uint64_t vu_get(struct vu *v, uint32_t req)
{
	vu_send(v, req, 0, NULL, 0, NULL, 0);
	return vu_reply_u64(v, req);
}

/* A request without a reply body; with REPLY_ACK, wait for the ack. */
static void vu_set(struct vu *v, uint32_t req, const void *p, uint32_t size,
		   const int *fds, int nfds, int ack)
{
	ack = ack && HAS(v->proto, PF_REPLY_ACK);
	vu_send(v, req, ack, p, size, fds, nfds);
	if (ack && vu_reply_u64(v, req) != 0)
		die("vhost-user: device refused request %u", req);
}

static void vu_state(struct vu *v, uint32_t req, uint32_t i, uint32_t num, int ack)
{
	uint32_t s[2] = { i, num };

	vu_set(v, req, s, sizeof(s), NULL, 0, ack);
}

static void vu_fd(struct vu *v, uint32_t req, uint32_t i, int fd)
{
	uint64_t val = i;

	vu_set(v, req, &val, 8, &fd, 1, 0);
}

/* ---- guest memory and rings -------------------------------------------- */

struct mem {
	int fd;
	uint8_t *base;          /* our mapping: user_addr of the region */
	size_t size, next;
};

#define GPA_BASE 0x100000ULL

static void mem_init(struct mem *m, size_t size)
{
	m->fd = memfd_create("vhostbench-guest", MFD_CLOEXEC);
	if (m->fd < 0 || ftruncate(m->fd, (off_t)size) < 0)
		die("memfd: %s", strerror(errno));
	m->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
	if (m->base == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	m->size = size;
	m->next = 0;
}

static void *mem_alloc(struct mem *m, size_t n, size_t align)
{
	size_t off = (m->next + align - 1) & ~(align - 1);

	if (off + n > m->size)
		die("guest memory exhausted");
	m->next = off + n;
	return m->base + off;
}

static uint64_t gpa(const struct mem *m, const void *p)
{
	return GPA_BASE + (uint64_t)((const uint8_t *)p - m->base);
}

struct ring {
	unsigned num;
	struct desc *desc;
	uint16_t *avail;        /* flags, idx, ring[num], used_event */
	uint8_t *used;          /* flags, idx, elems[num], avail_event */
	uint16_t avail_idx, last_used;
	int kick, call;
	int event_idx;
	uint64_t kicks, calls, waits;
};

#define AVAIL_FLAGS(r) ((r)->avail[0])
#define AVAIL_RING(r, i) ((r)->avail[2 + ((i) & ((r)->num - 1))])
#define USED_EVENT(r) ((r)->avail[2 + (r)->num])
#define USED_FLAGS(r) (*(volatile uint16_t *)(r)->used)
#define USED_ELEM(r, i) (((struct used_elem *)((r)->used + 4))[(i) & ((r)->num - 1)])
#define AVAIL_EVENT(r) (*(volatile uint16_t *)((r)->used + 4 + 8 * (r)->num))
#define USED_BYTES(num) (6 + 8 * (size_t)(num))

static void ring_init(struct ring *r, struct mem *m, unsigned num, int event_idx)
{
	r->num = num;
	r->desc = mem_alloc(m, 16 * num, PAGE);
	r->avail = mem_alloc(m, 6 + 2 * num, PAGE);
	r->used = mem_alloc(m, USED_BYTES(num), PAGE);
	r->avail_idx = r->last_used = 0;
	r->event_idx = event_idx;
	r->kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	r->call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (r->kick < 0 || r->call < 0)
		die("eventfd: %s", strerror(errno));
	r->kicks = r->calls = r->waits = 0;
}

static uint16_t used_idx(struct ring *r)
{
	return __atomic_load_n((uint16_t *)(r->used + 2), __ATOMIC_ACQUIRE);
}

/* Publish avail entries written since old; kick if the device asked. */
static void ring_publish(struct ring *r, uint16_t old)
{
	uint16_t new = r->avail_idx, ev;

	if (new == old)
		return;
	__atomic_store_n(&r->avail[1], new, __ATOMIC_RELEASE);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);   /* idx before reading suppression */
	if (r->event_idx) {
		ev = AVAIL_EVENT(r);
		if ((uint16_t)(new - ev - 1) >= (uint16_t)(new - old))
			return;
	} else if (USED_FLAGS(r) & USED_NO_NOTIFY) {
		return;
	}
	wake(r->kick);
	r->kicks++;
}

/*
 * Sleep until want more used entries are there (or 10 ms): ask for a call
 * at that point (used_event; without EVENT_IDX, any call), check again
 * (the device may have raced us) and sleep on the call fd unless they are
 * already there. Fewer may be there on return.
 */
static void ring_wait(struct ring *r, unsigned want)
{
	struct pollfd p = { r->call, POLLIN, 0 };

	if (want < 1)
		want = 1;
	if (r->event_idx)
		__atomic_store_n(&USED_EVENT(r), (uint16_t)(r->last_used + want - 1),
				 __ATOMIC_RELAXED);
	else
		__atomic_store_n(&AVAIL_FLAGS(r), 0, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if ((uint16_t)(used_idx(r) - r->last_used) < want) {
		r->waits++;
		if (poll(&p, 1, 10) == 1) {
			drain(r->call);
			r->calls++;
		}
	}
	if (!r->event_idx)
		__atomic_store_n(&AVAIL_FLAGS(r), AVAIL_NO_INTERRUPT, __ATOMIC_RELAXED);
}

/* ---- one start instant for every thread ------------------------------- */

/* Nanoseconds (CLOCK_MONOTONIC) at which counting starts; 0: not yet. */
static uint64_t g_start_ns;
static unsigned g_done;         /* threads that have finished */

static uint64_t to_ns(double t)
{
	return (uint64_t)(t * 1e9);
}

/* The start, set once: by the first caller (rx: the first frame). */
static double start_at(double t)
{
	uint64_t zero = 0;

	__atomic_compare_exchange_n(&g_start_ns, &zero, to_ns(t), 0, __ATOMIC_SEQ_CST,
				    __ATOMIC_SEQ_CST);
	return __atomic_load_n(&g_start_ns, __ATOMIC_SEQ_CST) * 1e-9;
}

static double start_time(void)
{
	return __atomic_load_n(&g_start_ns, __ATOMIC_SEQ_CST) * 1e-9;
}

/* What each thread measured, from its first counted frame to its stop. */
struct share {
	uint64_t frames, bytes, buffers, drained, errors, kicks, calls, waits;
	double t0, t1, cpu;
	unsigned min_posted;
};

struct totals {
	uint64_t frames, bytes, buffers, drained, errors, kicks, calls, waits;
	double t0, t1, cpu;
	unsigned min_posted;
};

static void add_share(struct totals *t, const struct share *s, int first)
{
	if (first) {
		memset(t, 0, sizeof(*t));
		t->t0 = s->t0, t->t1 = s->t1, t->min_posted = s->min_posted;
	}
	t->frames += s->frames, t->bytes += s->bytes, t->buffers += s->buffers;
	t->drained += s->drained, t->errors += s->errors, t->kicks += s->kicks;
	t->calls += s->calls, t->waits += s->waits, t->cpu += s->cpu;
	if (s->t0 && (!t->t0 || s->t0 < t->t0))
		t->t0 = s->t0;
	if (s->t1 > t->t1)
		t->t1 = s->t1;
	if (s->min_posted < t->min_posted)
		t->min_posted = s->min_posted;
}

static void print_shares(const struct share *s, unsigned n)
{
	unsigned i;

	printf("\"per_pair\": [");
	for (i = 0; i < n; i++)
		printf("%s{\"frames\": %llu, \"bytes\": %llu, \"seconds\": %.6f, "
		       "\"kicks\": %llu, \"calls\": %llu, \"waits\": %llu, \"errors\": %llu, "
		       "\"cpu_s\": %.4f}", i ? ", " : "",
		       (unsigned long long)s[i].frames, (unsigned long long)s[i].bytes,
		       s[i].t1 > s[i].t0 ? s[i].t1 - s[i].t0 : 0.0,
		       (unsigned long long)s[i].kicks, (unsigned long long)s[i].calls,
		       (unsigned long long)s[i].waits, (unsigned long long)s[i].errors,
		       s[i].cpu);
	printf("]");
}

static void thread_done(void)
{
	__atomic_add_fetch(&g_done, 1, __ATOMIC_SEQ_CST);
}

typedef void *(*thread_fn)(void *);

static void spawn(pthread_t *th, thread_fn fn, void *arg)
{
	int e = pthread_create(th, NULL, fn, arg);

	if (e)
		die("pthread_create: %s", strerror(e));
}

/* ---- negotiation -------------------------------------------------------- */

struct dev {
	struct vu vu;
	struct mem mem;
	unsigned pairs, nrings;
	struct ring ring[2 * MAX_PAIRS];
	uint64_t features;
	/* dirty log (-L) */
	uint64_t *log;
	size_t log_size;
	int log_fd;
	uint8_t *expect;        /* pages the device may write: 1 per page */
	uint8_t *written;       /* pages we saw it write (used entries we took) */
	uint8_t *marked;        /* pages the log ever marked */
	size_t npages;
	uint64_t log_pages, log_unexpected, log_syncs, log_base_reply;
	int log_base_reply_size;
	double log_cpu;
};

struct opts {
	const char *sock, *kind, *ifname;
	double seconds;
	unsigned num, pairs, flows;
	size_t piece;           /* tx: payload bytes per descriptor */
	size_t bufsize;         /* rx: bytes per mergeable buffer */
	int log;
	int guest_layout;       /* tapwrite -G, tapread -G */
	unsigned batch;         /* tapwrite -U: writes per io_uring submission (0: none) */
	uint64_t refuse;
};

static void dev_connect(struct dev *d, const struct opts *o, size_t memsize)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint64_t offered, pf, want, qn = 1;
	unsigned i;

	memset(d, 0, sizeof(*d));
	d->pairs = o->pairs;
	d->nrings = 2 * o->pairs;
	d->log_fd = -1;
	d->vu.sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (strlen(o->sock) >= sizeof(sa.sun_path))
		die("socket path too long");
	strcpy(sa.sun_path, o->sock);
	if (d->vu.sock < 0 || connect(d->vu.sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect %s: %s", o->sock, strerror(errno));
	d->vu.proto = 0;
	mem_init(&d->mem, memsize);

	/* QEMU's order (tests/vmm.py Frontend.negotiate) */
	offered = vu_get(&d->vu, VU_GET_FEATURES);
	if (d->pairs > 1 && !HAS(offered, F_MQ))
		die("device does not offer MQ (feature 22): give the interface queues %u",
		    d->pairs);
	if (o->log && !HAS(offered, F_LOG_ALL))
		die("device does not offer LOG_ALL (feature 26): no dirty logging");
	if (HAS(offered, F_PROTOCOL)) {
		want = 1ULL << PF_MQ | 1ULL << PF_REPLY_ACK | (o->log ? 1ULL << PF_LOG_SHMFD : 0);
		pf = vu_get(&d->vu, VU_GET_PROTOCOL_FEATURES) & want;
		vu_set(&d->vu, VU_SET_PROTOCOL_FEATURES, &pf, 8, NULL, 0, 0);
		d->vu.proto = pf;
		if (HAS(pf, PF_MQ) && (qn = vu_get(&d->vu, VU_GET_QUEUE_NUM)) < 1)
			die("device has no queue pair");
	}
	if (o->log && !HAS(d->vu.proto, PF_LOG_SHMFD))
		die("device does not offer protocol feature LOG_SHMFD (1): no dirty logging");
	if (qn < d->pairs)
		die("device has %llu queue pair(s), %u asked", (unsigned long long)qn, d->pairs);
	vu_set(&d->vu, VU_SET_OWNER, NULL, 0, NULL, 0, 0);
	/* LOG_ALL is acked only while logging, as QEMU does */
	d->features = offered & ~o->refuse & ~(1ULL << F_LOG_ALL);
	if (d->pairs == 1)
		d->features &= ~(1ULL << F_MQ);
	for (i = 0; i < d->nrings; i++)
		ring_init(&d->ring[i], &d->mem, o->num, HAS(d->features, F_EVENT_IDX));
	for (i = 0; i < d->nrings; i++)
		vu_fd(&d->vu, VU_SET_VRING_CALL, i, d->ring[i].call);
	vu_set(&d->vu, VU_SET_FEATURES, &d->features, 8, NULL, 0, 1);
	{
		struct { uint32_t n, pad; uint64_t gpa, size, uva, off; } mt = {
			1, 0, GPA_BASE, d->mem.size, (uint64_t)(uintptr_t)d->mem.base, 0 };

		vu_set(&d->vu, VU_SET_MEM_TABLE, &mt, sizeof(mt), &d->mem.fd, 1, 1);
	}
}

static void set_vring_addr(struct dev *d, unsigned i, int log)
{
	struct ring *r = &d->ring[i];
	struct { uint32_t i, flags; uint64_t desc, used, avail, log; } a = {
		i, log ? VRING_F_LOG : 0, (uint64_t)(uintptr_t)r->desc,
		(uint64_t)(uintptr_t)r->used, (uint64_t)(uintptr_t)r->avail,
		log ? gpa(&d->mem, r->used) : 0 };

	vu_set(&d->vu, VU_SET_VRING_ADDR, &a, sizeof(a), NULL, 0, log);
}

/* Hand the rings to the device: call this once they hold their buffers. */
static void dev_start(struct dev *d)
{
	unsigned i;

	for (i = 0; i < d->nrings; i++) {
		struct ring *r = &d->ring[i];

		vu_state(&d->vu, VU_SET_VRING_NUM, i, r->num, 0);
		vu_state(&d->vu, VU_SET_VRING_BASE, i, 0, 0);
		set_vring_addr(d, i, 0);
		vu_fd(&d->vu, VU_SET_VRING_KICK, i, r->kick);
		vu_fd(&d->vu, VU_SET_VRING_CALL, i, r->call);
	}
	if (HAS(d->features, F_PROTOCOL))
		for (i = 0; i < d->nrings; i++)
			vu_state(&d->vu, VU_SET_VRING_ENABLE, i, 1, 1);
}

/* ---- dirty logging (-L), as QEMU does it when a migration starts -------- */

/* Pages the device may legitimately write: every used ring, and [p, p+n). */
static void log_expect(struct dev *d, const void *p, size_t n)
{
	uint64_t a = gpa(&d->mem, p), e = a + n, pg;

	for (pg = a / PAGE; pg <= (e - 1) / PAGE && pg < d->npages; pg++)
		d->expect[pg] = 1;
}

/*
 * [p, p+n) was written by the device: we took a used entry for it (a
 * thread's own stores, no ordering needed: read after the threads end).
 */
static void note_written(struct dev *d, const void *p, size_t n)
{
	uint8_t *w = __atomic_load_n(&d->written, __ATOMIC_ACQUIRE);
	uint64_t a = gpa(&d->mem, p), pg;

	if (!w || !n)
		return;
	for (pg = a / PAGE; pg <= (a + n - 1) / PAGE && pg < d->npages; pg++)
		w[pg] = 1;
}

/* Pages we saw the device write that the log never marked. */
static uint64_t log_missed(const struct dev *d)
{
	uint64_t n = 0;
	size_t pg;

	for (pg = 0; d->written && pg < d->npages; pg++)
		n += d->written[pg] && !d->marked[pg];
	return n;
}

/*
 * QEMU's vhost_migration_log(): SET_LOG_BASE with the log's memfd
 * (LOG_SHMFD; QEMU waits for the back-end's reply), SET_FEATURES with
 * LOG_ALL added, then SET_VRING_ADDR of every ring again with the log
 * flag and the used ring's guest physical address. Called while the rings
 * run. The log has one bit per 4 KiB page of guest physical memory, in
 * u64 words (QEMU's VHOST_LOG_CHUNK).
 */
static void log_start(struct dev *d)
{
	uint64_t top = GPA_BASE + d->mem.size, feat = d->features | 1ULL << F_LOG_ALL;
	struct { uint64_t size, offset; } lb;
	uint32_t hdr[3];
	uint8_t *written;
	unsigned i;

	d->npages = top / PAGE;
	d->log_size = (d->npages + 63) / 64 * 8;
	d->expect = calloc(d->npages, 1);
	written = calloc(d->npages, 1);
	d->marked = calloc(d->npages, 1);
	d->log_fd = memfd_create("vhostbench-log", MFD_CLOEXEC);
	if (!d->expect || !written || !d->marked || d->log_fd < 0 || ftruncate(d->log_fd, (off_t)d->log_size) < 0)
		die("log memfd: %s", strerror(errno));
	d->log = mmap(NULL, d->log_size, PROT_READ | PROT_WRITE, MAP_SHARED, d->log_fd, 0);
	if (d->log == MAP_FAILED)
		die("log mmap: %s", strerror(errno));
	for (i = 0; i < d->nrings; i++)
		log_expect(d, d->ring[i].used, USED_BYTES(d->ring[i].num));

	lb.size = d->log_size, lb.offset = 0;
	vu_send(&d->vu, VU_SET_LOG_BASE, 0, &lb, sizeof(lb), &d->log_fd, 1);
	recv_exact(d->vu.sock, hdr, sizeof(hdr));
	if (hdr[0] != VU_SET_LOG_BASE || !(hdr[1] & VU_REPLY) || hdr[2] > 8)
		die("vhost-user: bad reply to SET_LOG_BASE (req %u flags %#x size %u)",
		    hdr[0], hdr[1], hdr[2]);
	d->log_base_reply_size = (int)hdr[2];
	if (hdr[2])
		recv_exact(d->vu.sock, &d->log_base_reply, hdr[2]);
	vu_set(&d->vu, VU_SET_FEATURES, &feat, 8, NULL, 0, 1);
	for (i = 0; i < d->nrings; i++)
		set_vring_addr(d, i, 1);
	/* the device logs from here on: the threads note what it writes */
	__atomic_store_n(&d->written, written, __ATOMIC_RELEASE);
}

/* QEMU's vhost_dev_sync_region(): take each word, leave 0, count its bits. */
static void log_sync(struct dev *d)
{
	size_t i, n = d->log_size / 8;
	double c0 = thread_cpu();

	for (i = 0; i < n; i++) {
		uint64_t v = __atomic_exchange_n(&d->log[i], 0, __ATOMIC_SEQ_CST);

		while (v) {
			unsigned b = (unsigned)__builtin_ctzll(v);
			size_t pg = i * 64 + b;

			d->log_pages++;
			if (pg >= d->npages || !d->expect[pg])
				d->log_unexpected++;
			else
				d->marked[pg] = 1;
			v &= v - 1;
		}
	}
	d->log_syncs++;
	d->log_cpu += thread_cpu() - c0;
}

static void print_log(const struct dev *d)
{
	if (!d->log)
		return;
	printf(", \"log_pages\": %llu, \"log_pages_unexpected\": %llu, "
	       "\"log_pages_missed\": %llu, \"log_syncs\": %llu, "
	       "\"log_bytes\": %zu, \"log_sync_cpu_s\": %.4f, \"log_base_reply_size\": %d",
	       (unsigned long long)d->log_pages, (unsigned long long)d->log_unexpected,
	       (unsigned long long)log_missed(d),
	       (unsigned long long)d->log_syncs, d->log_size, d->log_cpu,
	       d->log_base_reply_size);
}

/*
 * The main thread while the pair threads run: sync the log every
 * LOG_SYNC_MS (if logging), until all nthreads are done; past the deadline,
 * exit (the threads cannot be trusted to end).
 */
static void supervise(struct dev *d, unsigned nthreads, double deadline)
{
	while (__atomic_load_n(&g_done, __ATOMIC_SEQ_CST) < nthreads) {
		poll(NULL, 0, LOG_SYNC_MS);
		if (d && d->log)
			log_sync(d);
		if (now() > deadline)
			die("threads still running at the deadline");
	}
	if (d && d->log)
		log_sync(d);            /* what the last interval marked */
}

/* ---- tx: guest to tap --------------------------------------------------- */

/*
 * Cut a frame of total bytes (vnet header included) as Linux's virtio-net
 * start_xmit lays out a TCP skb: [vnet header + L2-L4 headers] (the header
 * pushed in front of the skb's head), then the payload in pieces of `piece`
 * bytes: TCP fills an skb's frags from the socket's page_frag, 32 KiB
 * compound pages (SKB_FRAG_PAGE_ORDER), so a 64 KiB TSO frame is 3 pieces;
 * -P 4096 gives one per page, as a guest without high-order pages would.
 * Returns the number of pieces of the frame at buf written to out.
 */
static int frame_pieces(uint8_t *buf, size_t total, size_t piece, struct iovec *out)
{
	size_t off = VNET_LEN + 54 < total ? VNET_LEN + 54 : total;
	int n = 0;

	out[n++] = (struct iovec){ buf, off };
	while (off < total && n < MAX_PIECES) {
		size_t l = total - off < piece ? total - off : piece;

		out[n++] = (struct iovec){ buf + off, l };
		off += l;
	}
	if (off < total)
		die("frame needs more than %d pieces", MAX_PIECES);
	return n;
}

/* One chain's descriptors for the frame at buf (guest physical addresses). */
static int chain_pieces(const struct mem *m, uint8_t *buf, size_t total,
			size_t piece, struct desc *out)
{
	struct iovec v[MAX_PIECES];
	int i, n = frame_pieces(buf, total, piece, v);

	for (i = 0; i < n; i++)
		out[i] = (struct desc){ gpa(m, v[i].iov_base), (uint32_t)v[i].iov_len, 0, 0 };
	return n;
}

struct txq {
	pthread_t th;
	struct dev *d;
	struct ring *r;
	const struct opts *o;
	size_t flen;
	uint16_t *freelist;
	unsigned nfree, chains;
	int indirect;
	int running;            /* the device has completed a chain (atomic) */
	int log;                /* -L: note the pages the device writes */
	struct share s;
};

/* Fill one TX ring's descriptor table with chains of the frame. */
static void txq_init(struct txq *q, struct dev *d, struct ring *r, const struct opts *o)
{
	struct desc pieces[MAX_PIECES];
	uint8_t *buf;
	unsigned per, i, k;
	struct vnet h;
	int np;

	memset(q, 0, sizeof(*q));
	q->d = d;
	q->r = r;
	q->o = o;
	q->log = o->log;
	q->flen = kind_len(o->kind);
	buf = mem_alloc(&d->mem, VNET_LEN + q->flen, PAGE);
	build_frame(buf + VNET_LEN, q->flen, PEER_MAC, GUEST_MAC, &h);
	memcpy(buf, &h, sizeof(h));
	np = chain_pieces(&d->mem, buf, VNET_LEN + q->flen, o->piece, pieces);
	q->indirect = HAS(d->features, F_INDIRECT) && np > 1;
	per = q->indirect ? 1 : (unsigned)np;
	q->chains = r->num / per;
	if (q->chains == 0)
		die("ring of %u cannot hold a chain of %u descriptors", r->num, per);
	q->freelist = calloc(q->chains, sizeof(*q->freelist));
	/* chain k: descriptors k*per .. k*per+per-1, head k*per */
	for (k = 0; k < q->chains; k++) {
		struct desc *dd = &r->desc[k * per];

		if (q->indirect) {
			struct desc *t = mem_alloc(&d->mem, 16 * (size_t)np, 16);

			for (i = 0; i < (unsigned)np; i++) {
				t[i] = pieces[i];
				t[i].flags = i + 1 < (unsigned)np ? D_NEXT : 0;
				t[i].next = (uint16_t)(i + 1);
			}
			*dd = (struct desc){ gpa(&d->mem, t), 16 * (uint32_t)np, D_INDIRECT, 0 };
		} else {
			for (i = 0; i < per; i++) {
				dd[i] = pieces[i];
				dd[i].flags = i + 1 < per ? D_NEXT : 0;
				dd[i].next = (uint16_t)(k * per + i + 1);
			}
		}
		q->freelist[q->nfree++] = (uint16_t)(k * per);
	}
	AVAIL_FLAGS(r) = r->event_idx ? 0 : AVAIL_NO_INTERRUPT;
}

/*
 * One TX ring: keep it full; sleep until 3/4 of it came back. Frames
 * complete from the moment the rings run; they count from the start
 * instant on (main sets it once logging, if any, is on).
 */
static void *tx_thread(void *arg)
{
	struct txq *q = arg;
	struct ring *r = q->r;
	uint64_t f = 0;
	double t, end = 0, give_up = now() + 30, c0 = 0;
	int counting = 0;

	for (;;) {
		uint16_t u = used_idx(r), old = r->avail_idx;

		while (r->last_used != u) {
			q->freelist[q->nfree++] = (uint16_t)USED_ELEM(r, r->last_used).id;
			if (q->log)
				note_written(q->d, &USED_ELEM(r, r->last_used), sizeof(struct used_elem));
			r->last_used++;
			f++;
		}
		t = now();
		if (!counting) {
			if (f)
				__atomic_store_n(&q->running, 1, __ATOMIC_RELEASE);
			double s = start_time();

			if (s && t >= s) {
				counting = 1;
				f = 0;
				q->s.t0 = t;
				end = s + q->o->seconds;
				c0 = thread_cpu();
				r->kicks = r->calls = r->waits = 0;
			} else if (t > give_up) {
				die("tx: no start within 30 s");
			}
		} else if (t >= end) {
			break;
		}
		while (q->nfree)
			AVAIL_RING(r, r->avail_idx++) = q->freelist[--q->nfree];
		ring_publish(r, old);
		/* The ring is full now: sleep until 3/4 of it came back, as
		 * Linux's virtio-net asks when its TX ring is full
		 * (virtqueue_enable_cb_delayed()); each call costs the device
		 * a wakeup of this thread. */
		ring_wait(r, q->chains * 3 / 4);
	}
	q->s.t1 = t;
	q->s.frames = f;
	q->s.bytes = f * q->flen;
	q->s.cpu = thread_cpu() - c0;
	q->s.kicks = r->kicks, q->s.calls = r->calls, q->s.waits = r->waits;
	thread_done();
	return NULL;
}

static int run_tx(const struct opts *o)
{
	struct dev d;
	struct txq q[MAX_PAIRS];
	struct share sh[MAX_PAIRS];
	struct totals t;
	unsigned i;

	dev_connect(&d, o, (size_t)(16 << 20) * o->pairs);
	for (i = 0; i < d.pairs; i++)
		txq_init(&q[i], &d, &d.ring[2 * i + 1], o);
	dev_start(&d);
	for (i = 0; i < d.pairs; i++)
		spawn(&q[i].th, tx_thread, &q[i]);
	/* Start once every ring runs (the device's worker of a second pair
	 * may start later than the first's); with -L, turn logging on first,
	 * while the rings run, as a migration would. */
	for (i = 0; i < d.pairs; i++) {
		double give_up = now() + 10;

		while (!__atomic_load_n(&q[i].running, __ATOMIC_ACQUIRE)) {
			if (now() > give_up)
				die("tx: ring %u: no chain completed within 10 s", 2 * i + 1);
			poll(NULL, 0, 1);
		}
	}
	if (o->log)
		log_start(&d);
	start_at(now());
	supervise(&d, d.pairs, now() + o->seconds + 30);
	for (i = 0; i < d.pairs; i++) {
		pthread_join(q[i].th, NULL);
		sh[i] = q[i].s;
		add_share(&t, &sh[i], i == 0);
	}
	printf("{\"mode\": \"tx\", \"kind\": \"%s\", \"pairs\": %u, \"frames\": %llu, "
	       "\"bytes\": %llu, \"seconds\": %.6f, \"kicks\": %llu, \"calls\": %llu, "
	       "\"waits\": %llu, \"features\": %llu, \"indirect\": %d, \"chains\": %u, "
	       "\"cpu_s\": %.4f, ", o->kind, d.pairs, (unsigned long long)t.frames,
	       (unsigned long long)t.bytes, t.t1 - t.t0, (unsigned long long)t.kicks,
	       (unsigned long long)t.calls, (unsigned long long)t.waits,
	       (unsigned long long)d.features, q[0].indirect, q[0].chains, t.cpu);
	print_shares(sh, d.pairs);
	print_log(&d);
	printf("}\n");
	close(d.vu.sock);
	return 0;
}

/* ---- rx: tap to guest --------------------------------------------------- */

struct rxq {
	pthread_t th;
	struct dev *d;
	struct ring *r;
	const struct opts *o;
	uint8_t *bufs;
	size_t bsize;
	int mrg;
	struct share s;
};

/* Take the used entries; put their buffers back at once. */
static void rx_reap(struct rxq *q, unsigned *left, uint64_t *frames, uint64_t *bytes,
		    uint64_t *buffers)
{
	struct ring *r = q->r;
	uint16_t u = used_idx(r);

	while (r->last_used != u) {
		struct used_elem e = USED_ELEM(r, r->last_used);
		uint32_t id = e.id < r->num ? e.id : 0;

		if (*left == 0) {
			struct vnet h;

			memcpy(&h, q->bufs + id * q->bsize, sizeof(h));
			*left = q->mrg && h.num_buffers ? h.num_buffers : 1;
			++*frames;
			*bytes += e.len >= VNET_LEN ? e.len - VNET_LEN : 0;
		} else {
			*bytes += e.len;
		}
		--*left;
		++*buffers;
		if (q->d->log) {
			note_written(q->d, q->bufs + id * q->bsize, e.len < q->bsize ? e.len : q->bsize);
			note_written(q->d, &USED_ELEM(r, r->last_used), sizeof(e));
		}
		AVAIL_RING(r, r->avail_idx++) = (uint16_t)id;
		r->last_used++;
	}
}

/* Post every buffer of one RX ring (before the rings start). */
static void rxq_init(struct rxq *q, struct dev *d, struct ring *r, const struct opts *o)
{
	unsigned i;

	memset(q, 0, sizeof(*q));
	q->d = d;
	q->r = r;
	q->o = o;
	q->mrg = HAS(d->features, F_MRG_RXBUF);
	/* mergeable: -B bytes each, packed (Linux sizes them from the average
	 * frame: 1536 for frames up to 1518 bytes, up to a page for GSO
	 * traffic, in 32 KiB page frags); otherwise each must hold the
	 * largest frame */
	q->bsize = q->mrg ? o->bufsize : (VNET_LEN + MAX_FRAME + PAGE - 1) / PAGE * PAGE;
	if (!q->mrg && r->num > 128)
		die("without MRG_RXBUF, use a ring of at most 128");
	q->bufs = mem_alloc(&d->mem, r->num * q->bsize, PAGE);
	for (i = 0; i < r->num; i++) {
		r->desc[i] = (struct desc){ gpa(&d->mem, q->bufs + i * q->bsize),
					    (uint32_t)q->bsize, D_WRITE, 0 };
		AVAIL_RING(r, r->avail_idx++) = (uint16_t)i;
	}
	r->avail[1] = r->avail_idx;
	AVAIL_FLAGS(r) = r->event_idx ? 0 : AVAIL_NO_INTERRUPT;
}

/*
 * One RX ring. Count from the start instant (the first frame on any ring)
 * for o->seconds; then keep recycling buffers until nothing came for QUIET
 * seconds (bounded), so the device is never left with frames to deliver
 * and a ring we stopped serving.
 */
#define QUIET 0.3

static void *rx_thread(void *arg)
{
	struct rxq *q = arg;
	struct ring *r = q->r;
	unsigned left = 0, min_posted = r->num;
	uint64_t f = 0, b = 0, n = 0;
	double t, end = 0, last = 0, stop = 0, c0 = 0, c1 = 0, idle = now() + 10;

	for (;;) {
		uint16_t old = r->avail_idx;
		unsigned posted = (uint16_t)(r->avail_idx - used_idx(r));

		if (end && !stop && posted < min_posted)
			min_posted = posted;   /* what the device had left to fill */
		rx_reap(q, &left, &f, &b, &n);
		t = now();
		if (r->avail_idx != old)
			last = t;
		if (!end) {
			double s = f ? start_at(t) : start_time();

			if (s) {
				q->s.t0 = t;
				c0 = thread_cpu();
				end = s + q->o->seconds;
				f = b = n = 0;          /* count from the start on */
				r->kicks = r->calls = r->waits = 0;
			}
		}
		if (end && !stop && t >= end) {
			q->s.frames = f, q->s.bytes = b, q->s.buffers = n;
			q->s.kicks = r->kicks, q->s.calls = r->calls, q->s.waits = r->waits;
			c1 = thread_cpu();
			stop = t;
		}
		if ((stop && t - last >= QUIET) || (stop && t - stop > 10) ||
		    (!end && t >= idle))
			break;
		ring_publish(r, old);
		if (r->last_used == used_idx(r))
			ring_wait(r, r->num / 4);
	}
	q->s.t1 = stop;
	if (!stop)
		q->s.t0 = 0;
	q->s.cpu = stop ? c1 - c0 : 0.0;
	q->s.min_posted = min_posted;
	q->s.drained = f - q->s.frames;
	thread_done();
	return NULL;
}

static int run_rx(const struct opts *o)
{
	struct dev d;
	struct rxq q[MAX_PAIRS];
	struct share sh[MAX_PAIRS];
	struct totals t;
	unsigned i;

	dev_connect(&d, o, ((size_t)o->num * PAGE + (2 << 20)) * 2 * o->pairs);
	for (i = 0; i < d.pairs; i++)
		rxq_init(&q[i], &d, &d.ring[2 * i], o);
	dev_start(&d);
	/* As a guest's driver does after filling its RX ring (the device may
	 * be waiting for buffers from an earlier connection). */
	for (i = 0; i < d.pairs; i++) {
		wake(q[i].r->kick);
		q[i].r->kicks++;
	}
	if (o->log) {
		log_start(&d);
		for (i = 0; i < d.pairs; i++)
			log_expect(&d, q[i].bufs, q[i].r->num * q[i].bsize);
	}
	for (i = 0; i < d.pairs; i++)
		spawn(&q[i].th, rx_thread, &q[i]);
	printf("ready\n");
	fflush(stdout);
	supervise(&d, d.pairs, now() + 10 + o->seconds + 10 + QUIET + 5);
	for (i = 0; i < d.pairs; i++) {
		pthread_join(q[i].th, NULL);
		sh[i] = q[i].s;
		add_share(&t, &sh[i], i == 0);
	}
	printf("{\"mode\": \"rx\", \"pairs\": %u, \"frames\": %llu, \"bytes\": %llu, "
	       "\"buffers\": %llu, \"seconds\": %.6f, \"kicks\": %llu, \"calls\": %llu, "
	       "\"waits\": %llu, \"features\": %llu, \"mrg_rxbuf\": %d, \"ring\": %u, "
	       "\"min_posted\": %u, \"drained_frames\": %llu, \"cpu_s\": %.4f, ",
	       d.pairs, (unsigned long long)t.frames, (unsigned long long)t.bytes,
	       (unsigned long long)t.buffers, t.t1 > t.t0 ? t.t1 - t.t0 : 0.0,
	       (unsigned long long)t.kicks, (unsigned long long)t.calls,
	       (unsigned long long)t.waits, (unsigned long long)d.features, q[0].mrg,
	       q[0].r->num, t.min_posted, (unsigned long long)t.drained, t.cpu);
	print_shares(sh, d.pairs);
	print_log(&d);
	printf("}\n");
	close(d.vu.sock);
	return 0;
}

/* ---- taps of our own: the limits ---------------------------------------- */

/* One queue of a tap with 12-byte vnet headers and the given offloads, up. */
static int tap_open(const char *name, unsigned offload, int multi)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC), s, hs = VNET_LEN;

	if (fd < 0)
		die("/dev/net/tun: %s", strerror(errno));
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multi ? IFF_MULTI_QUEUE : 0);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &hs) < 0 ||
	    ioctl(fd, TUNSETOFFLOAD, offload) < 0)
		die("tap %s: %s", name, strerror(errno));
	s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		die("tap %s flags: %s", name, strerror(errno));
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		die("tap %s up: %s", name, strerror(errno));
	close(s);
	return fd;
}

struct tapq {
	pthread_t th;
	int fd;
	const struct opts *o;
	uint8_t *buf;
	size_t flen, cap;
	struct iovec v[MAX_PIECES];     /* tapwrite -G: the frame in the guest's pieces */
	int nv;
	struct mem pool;        /* tapread -G: -q buffers of -B bytes, as rx posts them */
	uint8_t *bufs;
	unsigned next, per;     /* the next buffer to read into; buffers per frame */
	struct share s;
};

/*
 * tapwrite -U N: the frame written N times per io_uring submission, as
 * vionetd's tx worker writes a batch (csrc/txuring.c): the tap work with the
 * system call per frame taken out. Returns the frames written.
 */
static uint64_t tapwrite_batched(struct tapq *q, double end, double *t, uint64_t *errors)
{
	struct io_uring ring;
	struct io_uring_cqe *cqe;
	struct iovec one = { q->buf, VNET_LEN + q->flen };
	uint64_t frames = 0;
	unsigned j, n = q->o->batch;
	int r;

	if ((r = io_uring_queue_init(n, &ring, 0)) < 0)
		die("io_uring: %s", strerror(-r));
	while ((*t = now()) < end) {
		for (j = 0; j < n; j++)
			io_uring_prep_writev(io_uring_get_sqe(&ring), q->fd, q->nv ? q->v : &one,
					     q->nv ? (unsigned)q->nv : 1, 0);
		if ((r = io_uring_submit_and_wait(&ring, n)) < 0)
			die("io_uring_submit: %s", strerror(-r));
		for (j = 0; j < n; j++) {
			if ((r = io_uring_wait_cqe(&ring, &cqe)) < 0)
				die("io_uring_wait_cqe: %s", strerror(-r));
			if (cqe->res < 0)
				(*errors)++;
			else
				frames++;
			io_uring_cqe_seen(&ring, cqe);
		}
	}
	io_uring_queue_exit(&ring);
	return frames;
}

/* The frame written one write() or writev() at a time. Returns the frames written. */
static uint64_t tapwrite_each(struct tapq *q, double end, double *t, uint64_t *errors)
{
	uint64_t frames = 0, n = 0;
	ssize_t r;

	for (;;) {
		if ((++n & 15) == 0 && (*t = now()) >= end)
			break;
		r = q->nv ? writev(q->fd, q->v, q->nv) : write(q->fd, q->buf, VNET_LEN + q->flen);
		if (r < 0)
			(*errors)++;
		else
			frames++;
	}
	return frames;
}

/*
 * The TX limit, one queue: write the frame as fast as the tap takes it, from
 * one buffer, or (-G) with one writev() of the pieces a guest would give it
 * in (frame_pieces()), which is the form in which any backend finds it; -U:
 * in batches through io_uring (tapwrite_batched()).
 */
static void *tapwrite_thread(void *arg)
{
	struct tapq *q = arg;
	uint64_t frames, errors = 0;
	double t = 0, c0 = thread_cpu(), end;

	q->s.t0 = start_time();
	end = q->s.t0 + q->o->seconds;
	frames = q->o->batch ? tapwrite_batched(q, end, &t, &errors)
			     : tapwrite_each(q, end, &t, &errors);
	q->s.t1 = t;
	q->s.frames = frames;
	q->s.bytes = frames * q->flen;
	q->s.errors = errors;
	q->s.cpu = thread_cpu() - c0;
	thread_done();
	return NULL;
}

/*
 * tapread -G: the next frame's buffers, taken in turn from a pool laid out
 * as rx lays out its ring's (-q buffers of -B bytes in one shared memory
 * region), as many as a KIND frame fills: a backend copies each frame into
 * buffers spread over the guest's ring, never into one warm buffer.
 */
static int pool_iov(struct tapq *q, struct iovec *v)
{
	size_t size = q->o->bufsize;
	unsigned i;

	for (i = 0; i < q->per; i++) {
		v[i] = (struct iovec){ q->bufs + q->next * size, size };
		q->next = q->next + 1 == q->o->num ? 0 : q->next + 1;
	}
	return (int)q->per;
}

/* The RX limit, one queue: read until the end (counting from the first
 * frame on any queue), or 10 s without a frame. */
static void *tapread_thread(void *arg)
{
	struct tapq *q = arg;
	uint64_t frames = 0, bytes = 0, k = 0;
	double t = 0, end = 0, c0 = 0, idle = now() + 10, s;
	struct iovec v[MAX_FRAME / 128 + 2];

	for (;;) {
		ssize_t n = q->per ? readv(q->fd, v, pool_iov(q, v))
				   : read(q->fd, q->buf, q->cap);

		if (n < 0) {
			struct pollfd p = { q->fd, POLLIN, 0 };

			if (errno != EAGAIN)
				die("tap read: %s", strerror(errno));
			t = now();
			if (!end && (s = start_time())) {
				q->s.t0 = t;
				c0 = thread_cpu();
				end = s + q->o->seconds;
			}
			if ((end && t >= end) || (!end && t >= idle))
				break;
			poll(&p, 1, 10);
			continue;
		}
		if (!end) {
			t = now();
			s = start_at(t);
			q->s.t0 = t;
			c0 = thread_cpu();
			end = s + q->o->seconds;
			continue;               /* counting starts after the first */
		}
		if (n >= VNET_LEN) {
			frames++;
			bytes += (uint64_t)n - VNET_LEN;
		}
		if ((++k & 15) == 0 && (t = now()) >= end)
			break;
	}
	q->s.t1 = end ? t : 0;
	if (!end)
		q->s.t0 = 0;
	q->s.frames = frames;
	q->s.bytes = bytes;
	q->s.cpu = end ? thread_cpu() - c0 : 0.0;
	thread_done();
	return NULL;
}

static int run_tap(const struct opts *o, int writer)
{
	struct tapq q[MAX_PAIRS];
	struct share sh[MAX_PAIRS];
	struct totals t;
	unsigned i;

	for (i = 0; i < o->pairs; i++) {
		memset(&q[i], 0, sizeof(q[i]));
		q[i].o = o;
		q[i].fd = tap_open(o->ifname, writer ? 0 : TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
				   o->pairs > 1);
		if (writer) {
			struct vnet h;

			q[i].flen = kind_len(o->kind);
			q[i].buf = calloc(1, VNET_LEN + q[i].flen);
			build_frame(q[i].buf + VNET_LEN, q[i].flen, PEER_MAC, GUEST_MAC, &h);
			memcpy(q[i].buf, &h, sizeof(h));
			if (o->guest_layout)
				q[i].nv = frame_pieces(q[i].buf, VNET_LEN + q[i].flen, o->piece, q[i].v);
		} else if (o->guest_layout) {
			q[i].per = (unsigned)((VNET_LEN + kind_len(o->kind) + o->bufsize - 1) /
					      o->bufsize);
			if (q[i].per > o->num)
				die("a %s frame needs %u buffers, more than -q %u", o->kind,
				    q[i].per, o->num);
			mem_init(&q[i].pool, (size_t)o->num * o->bufsize + PAGE);
			q[i].bufs = mem_alloc(&q[i].pool, (size_t)o->num * o->bufsize, PAGE);
		} else {
			q[i].cap = VNET_LEN + MAX_FRAME + 64;
			q[i].buf = malloc(q[i].cap);
		}
		if (!writer && fcntl(q[i].fd, F_SETFL, O_NONBLOCK) < 0)
			die("fcntl: %s", strerror(errno));
	}
	if (writer)
		start_at(now());
	for (i = 0; i < o->pairs; i++)
		spawn(&q[i].th, writer ? tapwrite_thread : tapread_thread, &q[i]);
	if (!writer) {
		printf("ready\n");
		fflush(stdout);
	}
	supervise(NULL, o->pairs, now() + 10 + o->seconds + 15);
	for (i = 0; i < o->pairs; i++) {
		pthread_join(q[i].th, NULL);
		sh[i] = q[i].s;
		add_share(&t, &sh[i], i == 0);
	}
	printf("{\"mode\": \"%s\", ", writer ? "tapwrite" : "tapread");
	if (o->kind)
		printf("\"kind\": \"%s\", ", o->kind);
	printf("\"guest_layout\": %d, \"batch\": %u, ", o->guest_layout, o->batch);
	if (!writer && o->guest_layout)
		printf("\"buffers_per_frame\": %u, \"buffer_bytes\": %zu, \"buffers\": %u, ",
		       q[0].per, o->bufsize, o->num);
	printf("\"pairs\": %u, \"frames\": %llu, \"bytes\": %llu, \"errors\": %llu, "
	       "\"seconds\": %.6f, \"cpu_s\": %.4f, ", o->pairs,
	       (unsigned long long)t.frames, (unsigned long long)t.bytes,
	       (unsigned long long)t.errors, t.t1 > t.t0 ? t.t1 - t.t0 : 0.0, t.cpu);
	print_shares(sh, o->pairs);
	printf("}\n");
	return 0;
}

/* ---- source: frames into a tap, so that its reader receives them -------- */

static int run_source(const struct opts *o)
{
	size_t flen = kind_len(o->kind);
	uint8_t *buf = calloc(1, sizeof(struct virtio_net_hdr) + flen), *sport;
	struct sockaddr_ll sa = { .sll_family = AF_PACKET };
	uint64_t frames = 0, bytes = 0, full = 0, other = 0, n = 0;
	struct virtio_net_hdr vh;
	struct ifreq ifr;
	int fd, one = 1, last_errno = 0;
	unsigned flow = 0;
	double t0, t1 = 0, c0, end;
	struct vnet h;

	fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("AF_PACKET: %s", strerror(errno));
	/* AF_PACKET's vnet header is the 10-byte virtio_net_hdr */
	if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0)
		die("PACKET_VNET_HDR: %s", strerror(errno));
	if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0)
		die("PACKET_QDISC_BYPASS: %s", strerror(errno));
	sa.sll_protocol = htons(ETH_P_IP);
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", o->ifname);
	if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0)
		die("no interface %s: %s", o->ifname, strerror(errno));
	sa.sll_ifindex = ifr.ifr_ifindex;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("bind %s: %s", o->ifname, strerror(errno));
	build_frame(buf + sizeof(vh), flen, GUEST_MAC, PEER_MAC, &h);
	memset(&vh, 0, sizeof(vh));
	vh.flags = h.flags;
	vh.gso_type = h.gso_type;
	vh.hdr_len = h.hdr_len;
	vh.gso_size = h.gso_size;
	vh.csum_start = h.csum_start;
	vh.csum_offset = h.csum_offset;
	memcpy(buf, &vh, sizeof(vh));
	/* the TCP source port: the partial checksum in the TCP header covers
	 * only the pseudo-header, so a new port needs no new checksum */
	sport = buf + sizeof(vh) + 34;
	c0 = cpu_self();
	t0 = now();
	end = t0 + o->seconds;
	for (;;) {
		if ((++n & 15) == 0 && (t1 = now()) >= end)
			break;
		if (o->flows > 1) {
			unsigned port = 5001 + flow;

			sport[0] = (uint8_t)(port >> 8), sport[1] = (uint8_t)port;
			if (++flow == o->flows)
				flow = 0;
		}
		if (send(fd, buf, sizeof(vh) + flen, MSG_DONTWAIT) < 0) {
			last_errno = errno;
			if (errno == EAGAIN || errno == ENOBUFS) {
				/* The tap's queue is full (tun drops and says
				 * so through PACKET_QDISC_BYPASS): its reader
				 * has hundreds of frames to go, so leave it the
				 * CPU instead of spinning on drops. */
				struct timespec ts = { 0, 50000 };

				full++;
				nanosleep(&ts, NULL);
				continue;
			}
			if (++other > 1000 && frames == 0)
				die("send: %s", strerror(errno));
			continue;
		}
		frames++;
		bytes += flen;
	}
	printf("{\"mode\": \"source\", \"kind\": \"%s\", \"flows\": %u, \"frames\": %llu, "
	       "\"bytes\": %llu, \"errors\": %llu, \"errors_full\": %llu, \"last_errno\": %d, "
	       "\"seconds\": %.6f, \"cpu_s\": %.4f}\n", o->kind, o->flows,
	       (unsigned long long)frames, (unsigned long long)bytes,
	       (unsigned long long)(full + other), (unsigned long long)full, last_errno,
	       t1 - t0, cpu_self() - c0);
	return 0;
}

/* ---- main ---------------------------------------------------------------- */

static void usage(void)
{
	fprintf(stderr,
		"usage: vhostbench tx|rx -s SOCK [-k KIND] [-t SEC] [-q NUM] [-Q PAIRS] [-L]"
		" [-P BYTES] [-B BYTES] [-n BIT]...\n"
		"       vhostbench tapwrite -i IFNAME -k KIND [-t SEC] [-Q QUEUES] [-G [-P BYTES]] [-U N]\n"
		"       vhostbench tapread -i IFNAME [-t SEC] [-Q QUEUES] [-G -k KIND [-q NUM] [-B BYTES]]\n"
		"       vhostbench source -i IFNAME -k KIND [-t SEC] [-F FLOWS]\n"
		"  KIND: 64k | 1514 | 64; -q: ring size; -Q: queue pairs, a thread each;\n"
		"  -L: dirty logging on; -F: TCP flows; -n BIT: do not accept feature BIT;\n"
		"  -G: tapwrite writes each frame in the pieces tx lays its chains out in;\n"
		"      tapread reads each into the next of NUM buffers of BYTES, as rx posts them;\n"
		"  -U: tapwrite submits its writes through io_uring, N at a time;\n"
		"  -P: tx payload bytes per descriptor (default 32768);\n"
		"  -B: rx (tapread -G) bytes per mergeable buffer (default 4096)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct opts o = { .seconds = 5, .num = 256, .pairs = 1, .flows = 1, .piece = 32768,
			  .bufsize = PAGE };
	const char *mode;
	int c;

	if (argc < 2)
		usage();
	mode = argv[1];
	optind = 2;
	while ((c = getopt(argc, argv, "s:k:t:q:i:n:Q:F:LGP:B:U:")) != -1) {
		switch (c) {
		case 's': o.sock = optarg; break;
		case 'k': o.kind = optarg; break;
		case 't': o.seconds = atof(optarg); break;
		case 'q': o.num = (unsigned)atoi(optarg); break;
		case 'i': o.ifname = optarg; break;
		case 'n': o.refuse |= 1ULL << (atoi(optarg) & 63); break;
		case 'Q': o.pairs = (unsigned)atoi(optarg); break;
		case 'F': o.flows = (unsigned)atoi(optarg); break;
		case 'L': o.log = 1; break;
		case 'G': o.guest_layout = 1; break;
		case 'P': o.piece = (size_t)atol(optarg); break;
		case 'B': o.bufsize = (size_t)atol(optarg); break;
		case 'U': o.batch = (unsigned)atoi(optarg); break;
		default: usage();
		}
	}
	if (o.num < 2 || o.num > 32768 || (o.num & (o.num - 1)))
		die("ring size must be a power of 2 in 2..32768");
	if (o.seconds <= 0 || o.seconds > 3600)
		die("seconds out of range");
	if (o.pairs < 1 || o.pairs > MAX_PAIRS)
		die("queue pairs must be in 1..%d", MAX_PAIRS);
	if (o.flows < 1 || o.flows > 60000)
		die("flows must be in 1..60000");
	if (o.piece < 64 || o.piece > 65536)
		die("piece size must be in 64..65536");
	if (o.batch > 4096)
		die("-U must be in 0..4096");
	if (o.bufsize < 128 || o.bufsize > PAGE || o.bufsize % 64)
		die("rx buffer size must be a multiple of 64 in 128..%d", PAGE);
	if (!strcmp(mode, "tx") || !strcmp(mode, "rx")) {
		if (!o.sock)
			usage();
		return mode[0] == 't' ? run_tx(&o) : run_rx(&o);
	}
	if (!o.ifname)
		usage();
	if (!strcmp(mode, "tapwrite"))
		return run_tap(&o, 1);
	if (!strcmp(mode, "tapread"))
		return run_tap(&o, 0);
	if (!strcmp(mode, "source"))
		return run_source(&o);
	usage();
	return 2;
}
