/*
 * vhostbench.c: drive vionetd (or a bare tap) at full speed, without a guest.
 *
 * A test tool, built by bench/backend.py (gcc -O2); not part of vionetd.
 * One mode per run, one JSON line on stdout at the end (modes that must be
 * ready before a traffic source starts print "ready" first):
 *
 *   tx -s SOCK -k KIND -t SEC     vhost-user FRONTEND, guest TX: keep the TX
 *                                 ring full of one precomputed frame and
 *                                 count the chains the device completes
 *   rx -s SOCK -t SEC             vhost-user FRONTEND, guest RX: keep the RX
 *                                 ring stocked with buffers, count frames
 *   tapwrite -i TAP -k KIND -t SEC   the TX limit: write the same frames
 *                                 straight into a tap of our own
 *   tapread -i TAP -t SEC         the RX limit: read a tap of our own
 *   source -i IF -k KIND -t SEC   write frames INTO a tap (AF_PACKET with
 *                                 PACKET_VNET_HDR), so its reader gets them
 *
 * KIND: 64k (TSO4 super-frame, gso_size 1448), 1514, 64; all IPv4/TCP with a
 * partial checksum (NEEDS_CSUM, the pseudo-header sum in the TCP field), as
 * a Linux guest with offloads sends them.
 *
 * The frontend is a well-behaved guest: it negotiates in the order QEMU uses
 * (tests/vmm.py Frontend.negotiate), shares one memfd region, lays out split
 * rings (virtio 1.2, 2.7: 0 RX, 1 TX), publishes avail entries with release
 * ordering, and honours notification suppression both ways: it kicks only
 * when used->flags or avail_event (EVENT_IDX) asks, and asks to be called
 * only after a batch of completions (used_event / NO_INTERRUPT). Timing of
 * the rx and tapread modes starts at the first frame, so the order in which
 * source and reader start does not matter.
 *
 * Invariants: every wait is bounded (poll with a timeout, a deadline); the
 * data loops allocate nothing; buffers are recycled by descriptor id.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
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

/* ---- numbers (virtio 1.2; QEMU docs/interop/vhost-user.rst) ----------- */

enum {
	VU_GET_FEATURES = 1, VU_SET_FEATURES = 2, VU_SET_OWNER = 3,
	VU_SET_MEM_TABLE = 5, VU_SET_VRING_NUM = 8, VU_SET_VRING_ADDR = 9,
	VU_SET_VRING_BASE = 10, VU_SET_VRING_KICK = 12, VU_SET_VRING_CALL = 13,
	VU_GET_PROTOCOL_FEATURES = 15, VU_SET_PROTOCOL_FEATURES = 16,
	VU_GET_QUEUE_NUM = 17, VU_SET_VRING_ENABLE = 18,
	VU_VERSION = 1, VU_REPLY = 1 << 2, VU_NEED_REPLY = 1 << 3,
	PF_MQ = 0, PF_REPLY_ACK = 3,
};

enum {
	F_MRG_RXBUF = 15, F_INDIRECT = 28, F_EVENT_IDX = 29, F_PROTOCOL = 30,
	F_GUEST_TSO4 = 7, F_GUEST_CSUM = 1, F_CSUM = 0, F_HOST_TSO4 = 11,
};

#define HAS(f, b) (((f) >> (b)) & 1ULL)

enum { D_NEXT = 1, D_WRITE = 2, D_INDIRECT = 4 };
enum { AVAIL_NO_INTERRUPT = 1, USED_NO_NOTIFY = 1 };

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct used_elem { uint32_t id, len; };
struct vnet { uint8_t flags, gso_type; uint16_t hdr_len, gso_size, csum_start,
	      csum_offset, num_buffers; };

enum { VNET_LEN = 12, PAGE = 4096, MAX_FRAME = 65550, MAX_PIECES = 20 };

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

static void ring_init(struct ring *r, struct mem *m, unsigned num, int event_idx)
{
	r->num = num;
	r->desc = mem_alloc(m, 16 * num, PAGE);
	r->avail = mem_alloc(m, 6 + 2 * num, PAGE);
	r->used = mem_alloc(m, 6 + 8 * num, PAGE);
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
 * Sleep until at least want more used entries (or 10 ms): ask for a call
 * then, check again (the device may have raced us), wait on the call fd.
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
	if (used_idx(r) == r->last_used) {
		r->waits++;
		if (poll(&p, 1, 10) == 1) {
			drain(r->call);
			r->calls++;
		}
	}
	if (!r->event_idx)
		__atomic_store_n(&AVAIL_FLAGS(r), AVAIL_NO_INTERRUPT, __ATOMIC_RELAXED);
}

/* ---- negotiation -------------------------------------------------------- */

struct dev {
	struct vu vu;
	struct mem mem;
	struct ring ring[2];
	uint64_t features;
};

static void dev_connect(struct dev *d, const char *path, unsigned num, size_t memsize,
			uint64_t refuse)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint64_t offered, pf;
	int i;

	d->vu.sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (strlen(path) >= sizeof(sa.sun_path))
		die("socket path too long");
	strcpy(sa.sun_path, path);
	if (d->vu.sock < 0 || connect(d->vu.sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect %s: %s", path, strerror(errno));
	d->vu.proto = 0;
	mem_init(&d->mem, memsize);

	/* QEMU's order (tests/vmm.py Frontend.negotiate) */
	offered = vu_get(&d->vu, VU_GET_FEATURES);
	if (HAS(offered, F_PROTOCOL)) {
		pf = vu_get(&d->vu, VU_GET_PROTOCOL_FEATURES) &
		     (1ULL << PF_MQ | 1ULL << PF_REPLY_ACK);
		vu_set(&d->vu, VU_SET_PROTOCOL_FEATURES, &pf, 8, NULL, 0, 0);
		d->vu.proto = pf;
		if (HAS(pf, PF_MQ) && vu_get(&d->vu, VU_GET_QUEUE_NUM) < 1)
			die("device has no queue pair");
	}
	vu_set(&d->vu, VU_SET_OWNER, NULL, 0, NULL, 0, 0);
	d->features = offered & ~refuse;
	for (i = 0; i < 2; i++)
		ring_init(&d->ring[i], &d->mem, num, HAS(d->features, F_EVENT_IDX));
	for (i = 0; i < 2; i++)
		vu_fd(&d->vu, VU_SET_VRING_CALL, (uint32_t)i, d->ring[i].call);
	vu_set(&d->vu, VU_SET_FEATURES, &d->features, 8, NULL, 0, 1);
	{
		struct { uint32_t n, pad; uint64_t gpa, size, uva, off; } mt = {
			1, 0, GPA_BASE, d->mem.size, (uint64_t)(uintptr_t)d->mem.base, 0 };

		vu_set(&d->vu, VU_SET_MEM_TABLE, &mt, sizeof(mt), &d->mem.fd, 1, 1);
	}
}

/* Hand the rings to the device: call this once they hold their buffers. */
static void dev_start(struct dev *d)
{
	int i;

	for (i = 0; i < 2; i++) {
		struct ring *r = &d->ring[i];
		struct { uint32_t i, flags; uint64_t desc, used, avail, log; } a = {
			(uint32_t)i, 0, (uint64_t)(uintptr_t)r->desc,
			(uint64_t)(uintptr_t)r->used, (uint64_t)(uintptr_t)r->avail, 0 };

		vu_state(&d->vu, VU_SET_VRING_NUM, (uint32_t)i, r->num, 0);
		vu_state(&d->vu, VU_SET_VRING_BASE, (uint32_t)i, 0, 0);
		vu_set(&d->vu, VU_SET_VRING_ADDR, &a, sizeof(a), NULL, 0, 0);
		vu_fd(&d->vu, VU_SET_VRING_KICK, (uint32_t)i, r->kick);
		vu_fd(&d->vu, VU_SET_VRING_CALL, (uint32_t)i, r->call);
	}
	if (HAS(d->features, F_PROTOCOL))
		for (i = 0; i < 2; i++)
			vu_state(&d->vu, VU_SET_VRING_ENABLE, (uint32_t)i, 1, 1);
}

/* ---- tx: guest to tap --------------------------------------------------- */

struct opts {
	const char *sock, *kind, *ifname;
	double seconds;
	unsigned num;
	uint64_t refuse;
};

/*
 * Lay out one chain as Linux's virtio-net start_xmit does: [vnet header +
 * L2-L4 headers] then the payload in page-sized pieces. Returns the number
 * of pieces written to out (addresses are guest physical).
 */
static int chain_pieces(const struct mem *m, const uint8_t *buf, size_t total,
			struct desc *out)
{
	size_t off = VNET_LEN + 54 < total ? VNET_LEN + 54 : total;
	int n = 0;

	out[n++] = (struct desc){ gpa(m, buf), (uint32_t)off, 0, 0 };
	while (off < total && n < MAX_PIECES) {
		size_t l = total - off < PAGE ? total - off : PAGE;

		out[n++] = (struct desc){ gpa(m, buf + off), (uint32_t)l, 0, 0 };
		off += l;
	}
	if (off < total)
		die("frame needs more than %d pieces", MAX_PIECES);
	return n;
}

static int run_tx(const struct opts *o)
{
	struct dev d;
	struct ring *r;
	struct desc pieces[MAX_PIECES];
	size_t flen = kind_len(o->kind);
	uint8_t *buf;
	uint16_t *freelist;
	unsigned nfree = 0, chains, per, i, k;
	int np, indirect;
	uint64_t frames = 0, bytes = 0;
	double t0, t1 = 0, c0, end;
	struct vnet h;

	dev_connect(&d, o->sock, o->num, 16 << 20, o->refuse);
	r = &d.ring[1];
	buf = mem_alloc(&d.mem, VNET_LEN + flen, PAGE);
	build_frame(buf + VNET_LEN, flen, PEER_MAC, GUEST_MAC, &h);
	memcpy(buf, &h, sizeof(h));
	np = chain_pieces(&d.mem, buf, VNET_LEN + flen, pieces);
	indirect = HAS(d.features, F_INDIRECT) && np > 1;
	per = indirect ? 1 : (unsigned)np;
	chains = r->num / per;
	if (chains == 0)
		die("ring of %u cannot hold a chain of %u descriptors", r->num, per);
	freelist = calloc(chains, sizeof(*freelist));
	/* chain k: descriptors k*per .. k*per+per-1, head k*per */
	for (k = 0; k < chains; k++) {
		struct desc *dd = &r->desc[k * per];

		if (indirect) {
			struct desc *t = mem_alloc(&d.mem, 16 * (size_t)np, 16);

			for (i = 0; i < (unsigned)np; i++) {
				t[i] = pieces[i];
				t[i].flags = i + 1 < (unsigned)np ? D_NEXT : 0;
				t[i].next = (uint16_t)(i + 1);
			}
			*dd = (struct desc){ gpa(&d.mem, t), 16 * (uint32_t)np, D_INDIRECT, 0 };
		} else {
			for (i = 0; i < per; i++) {
				dd[i] = pieces[i];
				dd[i].flags = i + 1 < per ? D_NEXT : 0;
				dd[i].next = (uint16_t)(k * per + i + 1);
			}
		}
		freelist[nfree++] = (uint16_t)(k * per);
	}
	AVAIL_FLAGS(r) = r->event_idx ? 0 : AVAIL_NO_INTERRUPT;
	dev_start(&d);

	c0 = cpu_self();
	t0 = now();
	end = t0 + o->seconds;
	for (;;) {
		uint16_t u = used_idx(r), old = r->avail_idx;

		while (r->last_used != u) {
			freelist[nfree++] = (uint16_t)USED_ELEM(r, r->last_used).id;
			r->last_used++;
			frames++;
			bytes += flen;
		}
		if ((t1 = now()) >= end)
			break;
		while (nfree)
			AVAIL_RING(r, r->avail_idx++) = freelist[--nfree];
		ring_publish(r, old);
		/* the ring is full now: sleep until half of it came back */
		ring_wait(r, chains / 2);
	}
	printf("{\"mode\": \"tx\", \"kind\": \"%s\", \"frames\": %llu, \"bytes\": %llu, "
	       "\"seconds\": %.6f, \"kicks\": %llu, \"calls\": %llu, \"waits\": %llu, "
	       "\"features\": %llu, \"indirect\": %d, \"chains\": %u, \"cpu_s\": %.4f}\n",
	       o->kind, (unsigned long long)frames, (unsigned long long)bytes, t1 - t0,
	       (unsigned long long)r->kicks, (unsigned long long)r->calls,
	       (unsigned long long)r->waits, (unsigned long long)d.features, indirect,
	       chains, cpu_self() - c0);
	close(d.vu.sock);
	return 0;
}

/* ---- rx: tap to guest --------------------------------------------------- */

/* Take the used entries; put their buffers back at once. */
static void rx_reap(struct ring *r, const uint8_t *bufs, size_t bsize, int mrg,
		    unsigned *left, uint64_t *frames, uint64_t *bytes, uint64_t *buffers)
{
	uint16_t u = used_idx(r);

	while (r->last_used != u) {
		struct used_elem e = USED_ELEM(r, r->last_used);
		uint32_t id = e.id < r->num ? e.id : 0;

		if (*left == 0) {
			struct vnet h;

			memcpy(&h, bufs + id * bsize, sizeof(h));
			*left = mrg && h.num_buffers ? h.num_buffers : 1;
			++*frames;
			*bytes += e.len >= VNET_LEN ? e.len - VNET_LEN : 0;
		} else {
			*bytes += e.len;
		}
		--*left;
		++*buffers;
		AVAIL_RING(r, r->avail_idx++) = (uint16_t)id;
		r->last_used++;
	}
}

/*
 * Measure from the first frame for o->seconds; then keep recycling buffers
 * until nothing came for QUIET seconds (bounded), so the device is never
 * left with frames to deliver and a ring we stopped serving.
 */
#define QUIET 0.3

static int run_rx(const struct opts *o)
{
	struct dev d;
	struct ring *r;
	int mrg;
	size_t bsize;
	uint8_t *bufs;
	unsigned i, left = 0, min_posted;
	uint64_t frames = 0, bytes = 0, buffers = 0, f = 0, b = 0, n = 0;
	double t0 = 0, t1 = 0, c0 = 0, c1 = 0, end = 0, last = 0, idle, stop = 0;

	dev_connect(&d, o->sock, o->num, ((size_t)o->num * PAGE + (2 << 20)) * 2,
		    o->refuse);
	r = &d.ring[0];
	mrg = HAS(d.features, F_MRG_RXBUF);
	/* mergeable: page-sized buffers; otherwise each must hold the largest frame */
	bsize = mrg ? PAGE : (VNET_LEN + MAX_FRAME + PAGE - 1) / PAGE * PAGE;
	if (!mrg && r->num > 128)
		die("without MRG_RXBUF, use a ring of at most 128");
	bufs = mem_alloc(&d.mem, r->num * bsize, PAGE);
	for (i = 0; i < r->num; i++) {
		r->desc[i] = (struct desc){ gpa(&d.mem, bufs + i * bsize), (uint32_t)bsize,
					    D_WRITE, 0 };
		AVAIL_RING(r, r->avail_idx++) = (uint16_t)i;
	}
	min_posted = r->num;
	r->avail[1] = r->avail_idx;
	AVAIL_FLAGS(r) = r->event_idx ? 0 : AVAIL_NO_INTERRUPT;
	dev_start(&d);
	/* As a guest's driver does after filling its RX ring (the device may
	 * be waiting for buffers from an earlier connection). */
	wake(r->kick);
	r->kicks++;
	printf("ready\n");
	fflush(stdout);

	idle = now() + 10;              /* no first frame within 10 s: give up */
	for (;;) {
		uint16_t old = r->avail_idx;
		unsigned posted = (uint16_t)(r->avail_idx - used_idx(r));

		if (end && !stop && posted < min_posted)
			min_posted = posted;   /* what the device had left to fill */
		rx_reap(r, bufs, bsize, mrg, &left, &f, &b, &n);
		t1 = now();
		if (r->avail_idx != old)
			last = t1;
		if (f && !end) {
			t0 = t1;
			c0 = cpu_self();
			end = t0 + o->seconds;
			f = b = n = 0;          /* count from the first frame on */
		}
		if (end && !stop && t1 >= end) {
			frames = f, bytes = b, buffers = n;
			c1 = cpu_self();
			stop = t1;
		}
		if ((stop && t1 - last >= QUIET) || (stop && t1 - stop > 10) ||
		    (!end && t1 >= idle))
			break;
		ring_publish(r, old);
		if (r->last_used == used_idx(r))
			ring_wait(r, r->num / 4);
	}
	printf("{\"mode\": \"rx\", \"frames\": %llu, \"bytes\": %llu, \"buffers\": %llu, "
	       "\"seconds\": %.6f, \"kicks\": %llu, \"calls\": %llu, \"waits\": %llu, "
	       "\"features\": %llu, \"mrg_rxbuf\": %d, \"ring\": %u, \"min_posted\": %u, "
	       "\"drained_frames\": %llu, \"cpu_s\": %.4f}\n",
	       (unsigned long long)frames, (unsigned long long)bytes,
	       (unsigned long long)buffers, stop ? stop - t0 : 0.0,
	       (unsigned long long)r->kicks, (unsigned long long)r->calls,
	       (unsigned long long)r->waits, (unsigned long long)d.features, mrg, r->num,
	       min_posted, (unsigned long long)(f - frames), stop ? c1 - c0 : 0.0);
	close(d.vu.sock);
	return 0;
}

/* ---- taps of our own: the limits ---------------------------------------- */

/* A tap with 12-byte vnet headers and the given offloads, up. */
static int tap_open(const char *name, unsigned offload)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC), s, hs = VNET_LEN;

	if (fd < 0)
		die("/dev/net/tun: %s", strerror(errno));
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
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

static int run_tapwrite(const struct opts *o)
{
	size_t flen = kind_len(o->kind);
	uint8_t *buf = calloc(1, VNET_LEN + flen);
	int fd = tap_open(o->ifname, 0);
	uint64_t frames = 0, bytes = 0, errors = 0, n = 0;
	double t0, t1 = 0, c0, end;
	struct vnet h;

	build_frame(buf + VNET_LEN, flen, PEER_MAC, GUEST_MAC, &h);
	memcpy(buf, &h, sizeof(h));
	c0 = cpu_self();
	t0 = now();
	end = t0 + o->seconds;
	for (;;) {
		if ((++n & 15) == 0 && (t1 = now()) >= end)
			break;
		if (write(fd, buf, VNET_LEN + flen) < 0) {
			errors++;
			continue;
		}
		frames++;
		bytes += flen;
	}
	printf("{\"mode\": \"tapwrite\", \"kind\": \"%s\", \"frames\": %llu, \"bytes\": %llu, "
	       "\"errors\": %llu, \"seconds\": %.6f, \"cpu_s\": %.4f}\n", o->kind,
	       (unsigned long long)frames, (unsigned long long)bytes,
	       (unsigned long long)errors, t1 - t0, cpu_self() - c0);
	return 0;
}

static int run_tapread(const struct opts *o)
{
	size_t cap = VNET_LEN + MAX_FRAME + 64;
	uint8_t *buf = malloc(cap);
	int fd = tap_open(o->ifname, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
	uint64_t frames = 0, bytes = 0;
	double t0 = 0, t1 = 0, c0 = 0, end = 0, idle = now() + 10;

	if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0)
		die("fcntl: %s", strerror(errno));
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		ssize_t n = read(fd, buf, cap);

		if (n < 0) {
			struct pollfd p = { fd, POLLIN, 0 };

			if (errno != EAGAIN)
				die("tap read: %s", strerror(errno));
			t1 = now();
			if ((end && t1 >= end) || (!end && t1 >= idle))
				break;
			poll(&p, 1, 10);
			continue;
		}
		if (!end) {
			t0 = now();
			c0 = cpu_self();
			end = t0 + o->seconds;
		} else if (n >= VNET_LEN) {
			frames++;
			bytes += (uint64_t)n - VNET_LEN;
		}
		if (((frames & 15) == 0) && (t1 = now()) >= end)
			break;
	}
	printf("{\"mode\": \"tapread\", \"frames\": %llu, \"bytes\": %llu, "
	       "\"seconds\": %.6f, \"cpu_s\": %.4f}\n", (unsigned long long)frames,
	       (unsigned long long)bytes, end ? t1 - t0 : 0.0, end ? cpu_self() - c0 : 0.0);
	return 0;
}

/* ---- source: frames into a tap, so that its reader receives them -------- */

static int run_source(const struct opts *o)
{
	size_t flen = kind_len(o->kind);
	uint8_t *buf = calloc(1, sizeof(struct virtio_net_hdr) + flen);
	struct sockaddr_ll sa = { .sll_family = AF_PACKET };
	uint64_t frames = 0, bytes = 0, errors = 0, n = 0;
	struct virtio_net_hdr vh;
	struct ifreq ifr;
	int fd, one = 1;
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
	c0 = cpu_self();
	t0 = now();
	end = t0 + o->seconds;
	for (;;) {
		if ((++n & 15) == 0 && (t1 = now()) >= end)
			break;
		if (send(fd, buf, sizeof(vh) + flen, MSG_DONTWAIT) < 0) {
			errors++;
			if (errno == EAGAIN || errno == ENOBUFS) {
				/* The tap's queue is full (tun drops and says
				 * so through PACKET_QDISC_BYPASS): its reader
				 * has hundreds of frames to go, so leave it the
				 * CPU instead of spinning on drops. */
				struct timespec ts = { 0, 50000 };

				nanosleep(&ts, NULL);
				continue;
			}
			if (errors > 1000 && frames == 0)
				die("send: %s", strerror(errno));
			continue;
		}
		frames++;
		bytes += flen;
	}
	printf("{\"mode\": \"source\", \"kind\": \"%s\", \"frames\": %llu, \"bytes\": %llu, "
	       "\"errors\": %llu, \"seconds\": %.6f, \"cpu_s\": %.4f}\n", o->kind,
	       (unsigned long long)frames, (unsigned long long)bytes,
	       (unsigned long long)errors, t1 - t0, cpu_self() - c0);
	return 0;
}

/* ---- main ---------------------------------------------------------------- */

static void usage(void)
{
	fprintf(stderr,
		"usage: vhostbench tx|rx -s SOCK [-k KIND] [-t SEC] [-q NUM] [-n BIT]...\n"
		"       vhostbench tapwrite|source -i IFNAME -k KIND [-t SEC]\n"
		"       vhostbench tapread -i IFNAME [-t SEC]\n"
		"  KIND: 64k | 1514 | 64; -n BIT: do not accept feature BIT\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct opts o = { .seconds = 5, .num = 256 };
	const char *mode;
	int c;

	if (argc < 2)
		usage();
	mode = argv[1];
	optind = 2;
	while ((c = getopt(argc, argv, "s:k:t:q:i:n:")) != -1) {
		switch (c) {
		case 's': o.sock = optarg; break;
		case 'k': o.kind = optarg; break;
		case 't': o.seconds = atof(optarg); break;
		case 'q': o.num = (unsigned)atoi(optarg); break;
		case 'i': o.ifname = optarg; break;
		case 'n': o.refuse |= 1ULL << (atoi(optarg) & 63); break;
		default: usage();
		}
	}
	if (o.num < 2 || o.num > 32768 || (o.num & (o.num - 1)))
		die("ring size must be a power of 2 in 2..32768");
	if (o.seconds <= 0 || o.seconds > 3600)
		die("seconds out of range");
	if (!strcmp(mode, "tx") || !strcmp(mode, "rx")) {
		if (!o.sock)
			usage();
		return mode[0] == 't' ? run_tx(&o) : run_rx(&o);
	}
	if (!o.ifname)
		usage();
	if (!strcmp(mode, "tapwrite"))
		return run_tapwrite(&o);
	if (!strcmp(mode, "tapread"))
		return run_tapread(&o);
	if (!strcmp(mode, "source"))
		return run_source(&o);
	usage();
	return 2;
}
