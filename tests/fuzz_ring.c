/*
 * fuzz_ring.c: a bounded random fuzzer for the ring engine and both data
 * paths, built with AddressSanitizer and UBSan by tests/test_fuzz_ring.py.
 *
 * A hostile guest: every round rewrites the descriptor table (addresses near
 * and across the memory's edges, random lengths, flags and next indices, a
 * few indirect tables), posts random heads and lets vq_pop, the TX path
 * (all policy modes, a socketpair as the tap) and the RX path (mergeable or
 * not, random frames from the socketpair) run over it. Checked: every iovec
 * handed out lies inside guest memory, every used entry names a head < num,
 * used->idx never passes avail->idx, and ASan/UBSan stay quiet (the contexts
 * and TX scratch live on the heap, where ASan watches them).
 * Usage: fuzz_ring ROUNDS SEED
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "core.h"
#include "virtq.h"
#include "datapath.h"

#define MEM_SIZE (256 * 1024)
#define GPA 0x100000ULL
#define UVA 0x7f0000000000ULL
#define NUM 16

static uint64_t rng;

static uint32_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)rng;
}

static uint8_t *mem;            /* our own view of guest memory */

/* Ring parts at fixed offsets; buffers above 64 KiB. */
enum { DESC = 0, AVAIL = 4096, USED = 8192, TABLES = 16384, BUFS = 65536 };

static void put16(size_t off, uint16_t v) { memcpy(mem + off, &v, 2); }
static uint16_t get16(size_t off) { uint16_t v; memcpy(&v, mem + off, 2); return v; }

static uint64_t rnd_addr(void)
{
	switch (rnd() % 8) {
	case 0: return rnd() % 2 ? ~0ULL - rnd() % 64 : (uint64_t)rnd() << 20;
	case 1: return GPA + MEM_SIZE - rnd() % 128;   /* across the end */
	case 2: return GPA - rnd() % 64;               /* before the start */
	default: return GPA + BUFS + rnd() % (MEM_SIZE - BUFS);
	}
}

static uint32_t rnd_len(void)
{
	switch (rnd() % 6) {
	case 0: return rnd();
	case 1: return 12;
	case 2: return rnd() % 70000;
	default: return rnd() % 2048;
	}
}

static void write_desc(size_t table, unsigned i, uint64_t a, uint32_t l, uint16_t f, uint16_t n)
{
	uint8_t *d = mem + table + 16 * (size_t)i;

	memcpy(d, &a, 8);
	memcpy(d + 8, &l, 4);
	memcpy(d + 12, &f, 2);
	memcpy(d + 14, &n, 2);
}

/* A plausible frame at off: vnet header + Ethernet/IPv4/TCP, then mutations. */
static void seed_frame(size_t off, size_t plen)
{
	uint8_t *p = mem + off;
	uint16_t tot = (uint16_t)(40 + plen);

	memset(p, 0, 12 + 54);
	p[0] = (uint8_t)(rnd() % 4);                    /* flags */
	p[1] = (uint8_t)((uint8_t[]){0, 1, 4, 5, 0x81, 3}[rnd() % 6]);
	put16(off + 4, (uint16_t)(rnd() % 3 ? 1448 : rnd()));
	put16(off + 6, (uint16_t)(rnd() % 3 ? 34 : rnd() % 200));
	put16(off + 8, (uint16_t)(rnd() % 3 ? 16 : rnd() % 64));
	p += 12;
	memset(p, 0xaa, 12);
	p[12] = 0x08;
	p[14] = 0x45;
	p[16] = (uint8_t)(tot >> 8);
	p[17] = (uint8_t)tot;
	p[22] = 64;
	p[23] = 6;
	p[46] = 0x50;
	for (int k = (int)(rnd() % 4); k > 0; k--)
		p[rnd() % 54] = (uint8_t)rnd();
}

static void fill_ring(int write_bias)
{
	unsigned i;

	for (i = 0; i < NUM; i++) {
		uint16_t f = (uint16_t)(rnd() % 8);

		if (rnd() % 4)
			f &= (uint16_t)~VRING_DESC_F_INDIRECT;
		if (write_bias >= 0 && rnd() % 4)
			f = (uint16_t)((f & ~VRING_DESC_F_WRITE) | (write_bias ? VRING_DESC_F_WRITE : 0));
		if (f & VRING_DESC_F_INDIRECT && rnd() % 2) {
			size_t t = TABLES + 512 * (i % 8);
			unsigned k, n = 1 + rnd() % 8;

			for (k = 0; k < n; k++)
				write_desc(t, k, rnd_addr(), rnd_len(),
					   (uint16_t)(rnd() % 8), (uint16_t)(rnd() % 10));
			write_desc(DESC, i, GPA + t, rnd() % 5 ? 16 * n : rnd_len(), f,
				   (uint16_t)(rnd() % 20));
			continue;
		}
		write_desc(DESC, i, rnd_addr(), rnd_len(), f, (uint16_t)(rnd() % 20));
	}
	/* some sane chains: header + frame */
	for (i = 0; i < 4; i++) {
		size_t off = BUFS + 8192 * (size_t)i;
		size_t plen = rnd() % 4000;

		seed_frame(off, plen);
		write_desc(DESC, 2 * i, GPA + off, 12, VRING_DESC_F_NEXT, (uint16_t)(2 * i + 1));
		write_desc(DESC, 2 * i + 1, GPA + off + 12, (uint32_t)(54 + plen),
			   write_bias > 0 ? VRING_DESC_F_WRITE : 0, 0);
	}
}

static void post(unsigned n)
{
	uint16_t idx = get16(AVAIL + 2);

	while (n--) {
		put16(AVAIL + 4 + 2 * (idx % NUM), (uint16_t)(rnd() % 5 ? rnd() % 8 : rnd() % 40));
		idx++;
	}
	put16(AVAIL + 2, idx);
}

static int check_used(void)
{
	uint16_t u = get16(USED + 2), a = get16(AVAIL + 2);
	unsigned i;

	if ((uint16_t)(a - u) > NUM) {
		fprintf(stderr, "used idx %u passed avail idx %u\n", u, a);
		return 1;
	}
	for (i = 0; i < NUM; i++) {
		uint32_t id;

		memcpy(&id, mem + USED + 4 + 8 * i, 4);
		if (id >= NUM && id != 0xffffffff) {
			fprintf(stderr, "used id %u\n", id);
			return 1;
		}
	}
	return 0;
}

static int check_chain(const struct guest_mem *gm, const struct vq_chain *c)
{
	const uint8_t *lo = gm->r[0].host, *hi = lo + MEM_SIZE;
	unsigned k;

	for (k = 0; k < c->niov; k++) {
		const uint8_t *b = c->iov[k].iov_base;

		if (b < lo || c->iov[k].iov_len > (size_t)(hi - b)) {
			fprintf(stderr, "iov %u escapes guest memory\n", k);
			return 1;
		}
		/* touch it: a mapping we do not own would fault here */
		volatile uint8_t x = b[0];
		(void)x;
		((uint8_t *)b)[c->iov[k].iov_len - 1] ^= 0;
	}
	return 0;
}

static void drain(int fd)
{
	static uint8_t buf[1 << 17];

	while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
}

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? atol(argv[1]) : 1000;
	int fd = memfd_create("fuzz_ring", 0), sv[2], ctl[2];
	struct guest_mem *gm = calloc(1, sizeof(*gm));
	struct tx_ctx *tx = calloc(1, sizeof(*tx));
	struct rx_ctx *rx = calloc(1, sizeof(*rx));
	struct vq_chain *c = calloc(1, sizeof(*c));
	static uint8_t frame[70000];
	long r, pops = 0;
	uint64_t tx_frames = 0, tx_refused = 0, rx_frames = 0;

	rng = argc > 2 ? strtoull(argv[2], NULL, 0) | 1 : 88172645463325252ULL;
	if (fd < 0 || ftruncate(fd, MEM_SIZE) || !gm || !tx || !rx || !c ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0, sv) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, ctl))
		return 2;
	mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED || gmem_map(gm, fd, GPA, MEM_SIZE, UVA, 0) != GM_OK)
		return 2;
	if (tx_init(tx))
		return 2;
	if (write(ctl[1], "x", 1) != 1)     /* *_run always returns after a batch */
		return 2;
	for (r = 0; r < rounds; r++) {
		int mode = (int)(rnd() % 3), ev = (int)(rnd() % 2);
		uint16_t base = (uint16_t)(rnd() % 3 ? 0 : 65530);
		unsigned k;

		memset(mem, 0, BUFS);
		put16(AVAIL + 2, base);
		put16(USED + 2, base);
		fill_ring(mode == 2 ? -1 : mode);
		post(1 + rnd() % NUM);
		if (mode == 2) {            /* the ring engine alone */
			struct vq q;

			if (vq_setup(&q, gm, NUM, UVA + DESC, UVA + AVAIL, UVA + USED, base,
				     ev, (int)(rnd() % 2), -1))
				return 3;
			for (k = 0; k < 2 * NUM; k++) {
				int p = vq_pop(&q, c, (int)(rnd() % 2), 12 + FRAME_MAX);

				if (p == 1) {
					pops++;
					if (check_chain(gm, c))
						return 1;
					vq_push(&q, c->head, rnd() % 100);
				}
				if (p == 0 || p == -VQE_AVAIL_IDX)
					break;
			}
			vq_notify(&q);
		} else if (mode == 0) {     /* TX */
			memset(&tx->q, 0, sizeof(tx->q));
			if (vq_setup(&tx->q, gm, NUM, UVA + DESC, UVA + AVAIL, UVA + USED, base,
				     ev, 1, -1))
				return 3;
			tx->kick_fd = -1;
			tx->tap_fd = sv[0];
			tx->features = ~0ULL;
			/* any policy mix; the ring enabled most of the time */
			tx->flags = (uint32_t)(rnd() % 32 & ~TXF_ENABLED) |
				    (rnd() % 8 ? TXF_ENABLED : 0);
			memcpy(tx->locked_mac, "\xaa\xaa\xaa\xaa\xaa\xaa", 6);
			for (k = 0; k < 4; k++) {
				tx_run(tx, ctl[0]);
				drain(sv[1]);
			}
			tx_reset(tx);
			tx_frames += tx->cnt[DC_FRAMES];
			for (k = DC_VR_BASE; k < DC_MAX; k++)
				tx_refused += tx->cnt[k];
			memset(tx->cnt, 0, sizeof(tx->cnt));
		} else {                    /* RX */
			memset(rx, 0, sizeof(*rx));
			if (vq_setup(&rx->q, gm, NUM, UVA + DESC, UVA + AVAIL, UVA + USED, base,
				     ev, 1, -1))
				return 3;
			rx->kick_fd = -1;
			rx->tap_fd = sv[0];
			rx->features = rnd() % 2 ? ~0ULL : (uint64_t)rnd();
			rx->flags = RXF_ENABLED | (rnd() % 2 ? RXF_SW_CSUM : 0);
			rx->frame_max = rnd() % 2 ? 1518 : 0;
			drain(sv[0]);
			for (k = 0; k < 3; k++) {
				size_t len = rnd() % 3 ? 12 + 54 + rnd() % 1500 : rnd() % 70000;

				seed_frame(BUFS + 8192 * 7, 0);     /* borrow a header */
				memcpy(frame, mem + BUFS + 8192 * 7, 12 + 54);
				for (size_t b = 66; b < len && b < sizeof(frame); b += 97)
					frame[b] = (uint8_t)rnd();
				if (send(sv[1], frame, len < sizeof(frame) ? len : sizeof(frame),
					 MSG_DONTWAIT) < 0)
					break;
			}
			rx_run(rx, ctl[0]);
			if (rnd() % 4 == 0)
				rx_inject(rx, frame, rnd() % 3000);
			drain(sv[0]);
			rx_frames += rx->cnt[DC_FRAMES];
		}
		if (check_used())
			return 1;
	}
	tx_fini(tx);
	gmem_unmap_all(gm);
	free(c);
	free(rx);
	free(tx);
	free(gm);
	printf("ok %ld rounds\npops %ld tx_frames %llu tx_refused %llu rx_frames %llu\n",
	       rounds, pops, (unsigned long long)tx_frames, (unsigned long long)tx_refused,
	       (unsigned long long)rx_frames);
	return 0;
}
