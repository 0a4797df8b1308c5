/*
 * ringmem.h: the guest the data-path targets (fuzz_tx, fuzz_rx,
 * fuzz_hostile) share: one region of guest memory, malloc'd at its exact
 * size, with the ring parts at fixed offsets and the rest for buffers and
 * indirect tables. The input writes all of it, so descriptors, avail
 * entries, indices and frames are all fuzzed.
 *
 * Layout (offsets in the region; gpa = GPA + offset, uva = UVA + offset):
 *   0     descriptor table (num <= 16: 256 bytes)
 *   256   avail ring {flags, idx, ring[num], used_event}
 *   512   used ring {flags, idx, {id, len}[num], avail_event}
 *   1024  buffers and indirect tables, up to the end of the region
 * The tap is a nonblocking SOCK_SEQPACKET socketpair: it keeps frame
 * boundaries and, like a tap, truncates a frame larger than the read.
 */
#ifndef VIONETD_FUZZ_RINGMEM_H
#define VIONETD_FUZZ_RINGMEM_H

#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"
#include "datapath.h"

enum {
	RM_DESC = 0, RM_AVAIL = 256, RM_USED = 512, RM_BUFS = 1024,
	RM_MIN = 2048, RM_MAX = 1 << 17
};
#define RM_GPA 0x100000ULL
#define RM_UVA 0x7f0000000000ULL

struct ringmem {
	struct guest_mem m;
	uint8_t *mem;
	size_t size;
	int tap[2];     /* [0] the data path's end, [1] the "kernel's" */
	int ctl[2];     /* ctl[0] always readable: *_run() returns after a batch */
};

/* The sockets, once per process. */
static inline void rm_init(struct ringmem *r)
{
	static int ready;
	static int tap[2], ctl[2];
	int buf = 4 << 20;

	if (!ready) {
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, tap) ||
		    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) ||
		    write(ctl[1], "x", 1) != 1)
			abort();
		setsockopt(tap[0], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
		setsockopt(tap[1], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
		ready = 1;
	}
	r->tap[0] = tap[0];
	r->tap[1] = tap[1];
	r->ctl[0] = ctl[0];
	r->ctl[1] = ctl[1];
}

/* Guest memory of max(RM_MIN, what is left of the input) bytes, filled from it. */
static inline void rm_map(struct ringmem *r, struct in *in)
{
	size_t n = in->n < RM_MAX ? in->n : RM_MAX;

	r->size = n > RM_MIN ? n : RM_MIN;
	r->mem = calloc(1, r->size);
	if (!r->mem)
		abort();
	take(in, r->mem, n);
	memset(&r->m, 0, sizeof(r->m));
	r->m.nregions = 1;
	r->m.r[0] = (struct gmem_region){
		.gpa = RM_GPA, .size = r->size, .uva = RM_UVA,
		.host = r->mem, .map_base = r->mem, .map_len = r->size,
	};
}

static inline int rm_setup(struct ringmem *r, struct vq *q, unsigned num, uint16_t base,
			   int event_idx)
{
	return vq_setup(q, &r->m, num, RM_UVA + RM_DESC, RM_UVA + RM_AVAIL, RM_UVA + RM_USED,
			base, event_idx, 1, -1);
}

static inline void rm_unmap(struct ringmem *r)
{
	free(r->mem);
	r->mem = NULL;
}

/* Empty one end of the tap (frames the path wrote, or left unread). A
 * zero-length datagram reads as 0, an empty queue as -1 (EAGAIN). */
static inline void rm_drain(int fd)
{
	static uint8_t buf[1 << 17];

	while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) >= 0)
		;
}

static inline uint16_t rm_ld16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return v;
}

/* Used entries published since used_start name heads < num. */
static inline void rm_check_used(const struct ringmem *r, unsigned num, uint16_t used_start)
{
	uint16_t idx = rm_ld16(r->mem + RM_USED + 2);
	uint16_t n = (uint16_t)(idx - used_start);

	for (unsigned i = 0; i < n && i < num; i++) {
		uint32_t id, len;
		const uint8_t *e = r->mem + RM_USED + 4 + 8 * (size_t)((uint16_t)(idx - 1 - i) % num);

		memcpy(&id, e, 4);
		memcpy(&len, e + 4, 4);
		if (id >= num)
			FAIL("used entry names head %u of %u", id, num);
		if (len > VNET_HDR_LEN + FRAME_MAX)
			FAIL("used entry of %u bytes", len);
	}
}

#endif
