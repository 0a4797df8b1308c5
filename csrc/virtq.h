/*
 * virtq.h: guest memory and the split virtqueue engine (virtio 1.2, 2.7).
 *
 * Guest memory is a table of at most GMEM_MAX_REGIONS mappings made by
 * gmem_map() from the vhost-user SET_MEM_TABLE regions. gmem_gpa() and
 * gmem_uva() are the only places a guest or frontend address becomes a host
 * pointer: they check that the WHOLE range [addr, addr + len) lies in one
 * region, without overflow.
 *
 * A struct vq is one split ring whose three parts were checked once by
 * vq_setup(). The guest is untrusted and writes the ring concurrently: every
 * field is read once into a local before it is checked and used. A chain is
 * taken with vq_pop(); a bad one is counted, returned to the used ring with
 * length 0 when its head is a valid index, and never reaches the caller.
 * Completions are queued with vq_push(), made visible with vq_publish() (a
 * release store of used->idx) and signalled with vq_notify(), which follows
 * NO_INTERRUPT or, with EVENT_IDX, used_event.
 *
 * Dirty logging (vhost-user live migration): while the frontend migrates
 * the guest's memory it hands us a bitmap, one bit per VHOST_LOG_PAGE of
 * guest-physical memory. A ring with q->log set marks every page the device
 * writes: the data paths call vq_log_write() for guest buffers they filled,
 * and with q->log_used the ring itself marks its used-ring stores (by
 * q->log_used_gpa, the frontend's log_guest_addr). A page is marked after
 * it was written, so the frontend's next pass over the log copies it again.
 * dlog_mark() is the only place a bit is set; it is bounded by the log's
 * size and counts, never marks, what lies beyond it.
 *
 * Invariant: between calls the ring is consistent: every chain vq_pop() gave
 * out has been pushed, or handed back with vq_unpop(), before the owner
 * returns to Python.
 */
#ifndef VIONETD_VIRTQ_H
#define VIONETD_VIRTQ_H

#include <stdint.h>
#include <stddef.h>
#include <sys/uio.h>

/* CDEF BEGIN */

enum {
	GMEM_MAX_REGIONS = 8,
	VQ_NUM_MAX = 32768,
	/* iovecs per chain: fits writev()'s UIO_MAXIOV (1024) with room for
	 * the two pieces (header, head copy) the TX path puts in front. */
	VQ_IOV_MAX = 1000,
	VRING_DESC_F_NEXT = 1,
	VRING_DESC_F_WRITE = 2,
	VRING_DESC_F_INDIRECT = 4,
	VRING_AVAIL_F_NO_INTERRUPT = 1,
	VRING_USED_F_NO_NOTIFY = 1,
	VHOST_LOG_PAGE = 4096
};

/* gmem_map() and vq_setup() results. */
enum gmem_err {
	GM_OK = 0,
	GM_FULL = -1,        /* already GMEM_MAX_REGIONS regions */
	GM_RANGE = -2,       /* size 0, or gpa/uva/offset + size wraps */
	GM_OVERLAP = -3,     /* overlaps another region in gpa or uva space */
	GM_MMAP = -4,        /* mmap() failed (errno kept) */
	GM_FILE = -5,        /* the fd is a file smaller than mmap_offset + size */
	VQS_NUM = -10,       /* num 0, not a power of 2, or > VQ_NUM_MAX */
	VQS_DESC = -11,      /* descriptor table outside memory or misaligned */
	VQS_AVAIL = -12,     /* available ring outside memory or misaligned */
	VQS_USED = -13       /* used ring outside memory or misaligned */
};

struct gmem_region {
	uint64_t gpa;
	uint64_t size;
	uint64_t uva;
	uint8_t *host;       /* host address of gpa */
	void *map_base;      /* what mmap() returned (page aligned) */
	uint64_t map_len;
};

struct guest_mem {
	unsigned nregions;
	struct gmem_region r[8];
};

/* The frontend's dirty bitmap (SET_LOG_BASE), mapped by dlog_map(). */
struct dirty_log {
	uint8_t *bits;
	uint64_t size;       /* bytes of bitmap: it covers size * 8 pages */
	void *map_base;
	uint64_t map_len;
	uint64_t marked;     /* bits we set that were clear */
	uint64_t outside;    /* writes to pages beyond the bitmap (not marked) */
	int notify_fd;       /* -1, or an eventfd signalled after a batch that
				marked pages (SET_LOG_FD) */
	uint64_t notified;   /* marked when it was last signalled */
};

/* Why a chain was refused; each is a counter. Names: vq_err_name(). */
enum vq_err {
	VQE_OK = 0,
	VQE_AVAIL_IDX,       /* avail->idx more than num ahead of us: ring ignored */
	VQE_HEAD_RANGE,      /* head index >= num (cannot even be returned) */
	VQE_NEXT_RANGE,      /* next >= num (or >= the indirect table's size) */
	VQE_LOOP,            /* more descriptors than the ring/table holds */
	VQE_ADDR,            /* buffer not inside one guest memory region */
	VQE_TOO_LONG,        /* total chain length over the caller's limit */
	VQE_WRITE_ON_TX,     /* write-only descriptor where read-only belongs */
	VQE_READ_ON_RX,      /* read-only descriptor where write-only belongs */
	VQE_IND_NEXT,        /* INDIRECT together with NEXT */
	VQE_IND_NESTED,      /* INDIRECT inside an indirect table */
	VQE_IND_LEN,         /* indirect table length 0, not a multiple of 16, or too big */
	VQE_IND_ADDR,        /* indirect table outside guest memory */
	VQE_IND_UNNEGOTIATED,/* INDIRECT without VIRTIO_F_RING_INDIRECT_DESC */
	VQE_TOO_MANY_IOV,    /* more than VQ_IOV_MAX buffers */
	VQE_MAX
};

const char *vq_err_name(int err);

struct vq {
	const struct guest_mem *mem;
	uint8_t *desc;       /* host pointers, checked by vq_setup() */
	uint8_t *avail;
	uint8_t *used;
	unsigned num;
	uint16_t last_avail; /* next avail entry to take */
	uint16_t used_idx;   /* our copy of used->idx, ahead of it until vq_publish() */
	uint16_t signalled_used;
	uint8_t signalled_valid;
	uint8_t event_idx;
	uint8_t indirect;
	uint8_t ready;
	int call_fd;         /* -1: no call fd (the frontend polls) */
	uint64_t calls;      /* signals written to call_fd */
	/* Set by the owner after vq_setup(): NULL while not logging. */
	struct dirty_log *log;
	uint8_t log_used;    /* mark used-ring stores too (VHOST_VRING_F_LOG) */
	uint64_t log_used_gpa; /* guest-physical address of the used ring */
};

/* One chain as host buffers. */
struct vq_chain {
	uint16_t head;
	uint16_t niov;
	uint32_t len;        /* sum of iov lengths */
	struct iovec iov[1000];
};

/* Guest memory. */
int gmem_map(struct guest_mem *m, int fd, uint64_t gpa, uint64_t size,
	     uint64_t uva, uint64_t mmap_offset);
void gmem_unmap_all(struct guest_mem *m);
void *gmem_gpa(const struct guest_mem *m, uint64_t gpa, uint64_t len);
void *gmem_uva(const struct guest_mem *m, uint64_t uva, uint64_t len);

/* The dirty log: map size bytes of fd from offset (0 or GM_MMAP/GM_FILE/
 * GM_RANGE), unmap, mark guest-physical [gpa, gpa + len). */
int dlog_map(struct dirty_log *l, int fd, uint64_t size, uint64_t offset);
void dlog_unmap(struct dirty_log *l);
void dlog_mark(struct dirty_log *l, uint64_t gpa, uint64_t len);

/*
 * The ring. Addresses are frontend virtual addresses (vhost-user
 * SET_VRING_ADDR). base is the next avail index (SET_VRING_BASE); the used
 * index is read from the ring. indirect: VIRTIO_F_RING_INDIRECT_DESC.
 */
int vq_setup(struct vq *q, const struct guest_mem *m, unsigned num,
	     uint64_t desc_uva, uint64_t avail_uva, uint64_t used_uva,
	     uint16_t base, int event_idx, int indirect, int call_fd);
uint16_t vq_last_avail(const struct vq *q);
/* Entries the guest made available that we have not taken (0..num;
 * 0 also when avail->idx is impossible). */
unsigned vq_pending(const struct vq *q);

/*
 * Take the next chain. write: 1 for a device-writable chain (RX), 0 for a
 * device-readable one (TX); max_len bounds the chain's total length.
 * Returns 1 with *c filled, 0 if the ring is empty, or -VQE_x: the chain
 * was refused and consumed (and pushed with length 0 if its head was valid).
 * -VQE_AVAIL_IDX is the exception: nothing was consumed, treat as empty.
 */
int vq_pop(struct vq *q, struct vq_chain *c, int write, uint32_t max_len);
/* Give back the last n chains taken and not pushed (they are taken again later). */
void vq_unpop(struct vq *q, unsigned n);
void vq_push(struct vq *q, uint16_t head, uint32_t len);
void vq_publish(struct vq *q);
/* Publish, then signal call_fd if something completed since the last call
 * and the guest wants it (NO_INTERRUPT / used_event); returns 1 if signalled. */
int vq_notify(struct vq *q);
/* Ask for kicks while we wait (EVENT_IDX: avail_event = the avail->idx
 * seen; else used->flags = 0), then look again: returns vq_pending(), so
 * a caller that finds more than it knew about must not sleep. */
unsigned vq_enable_notify(struct vq *q);
void vq_disable_notify(struct vq *q);
/* The device wrote the first len bytes of iov (guest buffers of this ring's
 * memory): mark their pages if the ring is logging. */
void vq_log_write(struct vq *q, const struct iovec *iov, unsigned n, size_t len);

/* CDEF END */

/* iovec helpers, for the data paths (not exported to Python). */
size_t iov_to_buf(const struct iovec *iov, int n, size_t skip, void *dst, size_t len);
size_t iov_from_buf(const struct iovec *iov, int n, size_t skip, const void *src, size_t len);
int iov_tail(const struct iovec *iov, int n, size_t skip, struct iovec *out, int max);
void eventfd_drain(int fd);

#endif
