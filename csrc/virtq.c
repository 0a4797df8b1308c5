/*
 * virtq.c: guest memory translation and the split virtqueue engine.
 *
 * The guest owns the ring memory and may change it at any moment, so:
 *  - every address from the guest goes through gmem_gpa()/gmem_uva(), which
 *    check the whole range against one region with overflow-safe arithmetic;
 *  - every ring field is read once (atomically for the indices) into a local,
 *    checked there and used from there;
 *  - avail->idx is read with acquire so the ring entries it covers are seen;
 *    used entries are written before used->idx is stored with release;
 *  - a full fence separates "published used idx / offered avail_event" from
 *    reading the guest's notification fields, as virtio 2.7.7/2.7.10 require.
 * Ring layout (virtio 1.2, 2.7): descriptor 16 bytes {le64 addr, le32 len,
 * le16 flags, le16 next}; avail {le16 flags, le16 idx, le16 ring[num],
 * le16 used_event}; used {le16 flags, le16 idx, {le32 id, le32 len}[num],
 * le16 avail_event}. Little-endian is the host order (see core.h).
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "core.h"
#include "virtq.h"

/* ---- guest memory ------------------------------------------------------- */

/* [a, a + alen) and [b, b + blen) overlap (lengths > 0, ends known not to
 * wrap); compared by last byte so a region ending at 2^64 is fine. */
static int ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a <= b + (blen - 1) && b <= a + (alen - 1);
}

/*
 * mmap size bytes of fd from offset, shared and writable. mmap wants a
 * page-aligned offset, so the mapping starts up to a page early; *host is
 * the byte at offset. Touching a mapping past the end of its file is
 * SIGBUS: a regular file shorter than offset + size is refused first.
 */
static int map_file(int fd, uint64_t size, uint64_t offset, void **base,
		    uint64_t *len, uint8_t **host)
{
	long page = sysconf(_SC_PAGESIZE);
	uint64_t delta = offset & (uint64_t)(page - 1), off = offset - delta;
	struct stat st;
	void *p;

	if (size == 0 || offset > UINT64_MAX - (size - 1) || size > UINT64_MAX - delta ||
	    size + delta > (uint64_t)SIZE_MAX || off > (uint64_t)INT64_MAX)
		return GM_RANGE;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	    (uint64_t)st.st_size < offset + size)
		return GM_FILE;
	p = mmap(NULL, (size_t)(size + delta), PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_NORESERVE, fd, (off_t)off);
	if (p == MAP_FAILED)
		return GM_MMAP;
	*base = p;
	*len = size + delta;
	*host = (uint8_t *)p + delta;
	return GM_OK;
}

int gmem_map(struct guest_mem *m, int fd, uint64_t gpa, uint64_t size,
	     uint64_t uva, uint64_t mmap_offset)
{
	struct gmem_region r = { .gpa = gpa, .size = size, .uva = uva };
	unsigned i;
	int err;

	if (m->nregions >= GMEM_MAX_REGIONS)
		return GM_FULL;
	/* size - 1 <= MAX - x  is "x + size does not wrap" (size > 0). */
	if (size == 0 || gpa > UINT64_MAX - (size - 1) || uva > UINT64_MAX - (size - 1))
		return GM_RANGE;
	for (i = 0; i < m->nregions; i++) {
		if (ranges_overlap(gpa, size, m->r[i].gpa, m->r[i].size) ||
		    ranges_overlap(uva, size, m->r[i].uva, m->r[i].size))
			return GM_OVERLAP;
	}
	err = map_file(fd, size, mmap_offset, &r.map_base, &r.map_len, &r.host);
	if (err)
		return err;
	m->r[m->nregions++] = r;
	return GM_OK;
}

void gmem_unmap_all(struct guest_mem *m)
{
	unsigned i;

	for (i = 0; i < m->nregions && i < GMEM_MAX_REGIONS; i++)
		munmap(m->r[i].map_base, (size_t)m->r[i].map_len);
	memset(m, 0, sizeof(*m));
}

/*
 * The one bounds check: addr..addr+len inside one region. With off = addr -
 * base known < size, "len <= size - off" cannot overflow.
 */
static void *gmem_find(const struct guest_mem *m, int by_uva, uint64_t addr, uint64_t len)
{
	unsigned i;

	for (i = 0; i < m->nregions && i < GMEM_MAX_REGIONS; i++) {
		const struct gmem_region *r = &m->r[i];
		uint64_t base = by_uva ? r->uva : r->gpa;
		uint64_t off;

		if (addr < base)
			continue;
		off = addr - base;
		if (off >= r->size || len > r->size - off)
			continue;
		return r->host + off;
	}
	return NULL;
}

void *gmem_gpa(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	return gmem_find(m, 0, gpa, len);
}

void *gmem_uva(const struct guest_mem *m, uint64_t uva, uint64_t len)
{
	return gmem_find(m, 1, uva, len);
}

/* ---- dirty log ---------------------------------------------------------- */

int dlog_map(struct dirty_log *l, int fd, uint64_t size, uint64_t offset)
{
	int err;

	dlog_unmap(l);
	err = map_file(fd, size, offset, &l->map_base, &l->map_len, &l->bits);
	if (err == GM_OK)
		l->size = size;
	return err;
}

void dlog_unmap(struct dirty_log *l)
{
	if (l->map_base)
		munmap(l->map_base, (size_t)l->map_len);
	l->bits = NULL;
	l->map_base = NULL;
	l->size = l->map_len = 0;
}

/*
 * Set the bit of every page in [gpa, gpa + len): bit (page % 8) of byte
 * (page / 8), page = gpa / VHOST_LOG_PAGE (vhost-user.rst, "Migration").
 * The frontend takes bits away concurrently (atomic exchange), so bits are
 * set atomically; release orders our writes to the page before its bit.
 */
void dlog_mark(struct dirty_log *l, uint64_t gpa, uint64_t len)
{
	uint64_t page, last;

	if (len == 0)
		return;
	if (gpa > UINT64_MAX - (len - 1)) {
		l->outside++;
		return;
	}
	last = (gpa + len - 1) / VHOST_LOG_PAGE;
	for (page = gpa / VHOST_LOG_PAGE; page <= last; page++) {
		uint8_t bit = (uint8_t)(1u << (page % 8)), *byte;

		if (page / 8 >= l->size) {
			l->outside++;
			return;
		}
		byte = l->bits + page / 8;
		if (!(__atomic_fetch_or(byte, bit, __ATOMIC_RELEASE) & bit))
			l->marked++;
	}
}

/* Mark the guest pages under host buffer [p, p + len), which gmem_gpa()
 * gave out, so it lies in one region. */
static void dlog_mark_host(struct dirty_log *l, const struct guest_mem *m,
			   const uint8_t *p, uint64_t len)
{
	unsigned i;

	for (i = 0; i < m->nregions && i < GMEM_MAX_REGIONS; i++) {
		const struct gmem_region *r = &m->r[i];
		uint64_t off = (uint64_t)((uintptr_t)p - (uintptr_t)r->host);

		if ((uintptr_t)p >= (uintptr_t)r->host && off < r->size &&
		    len <= r->size - off) {
			dlog_mark(l, r->gpa + off, len);
			return;
		}
	}
	l->outside++;
}

/* ---- ring field access -------------------------------------------------- */

static inline uint16_t ld16(const uint8_t *p)
{
	return __atomic_load_n((const uint16_t *)(const void *)p, __ATOMIC_RELAXED);
}

static inline uint16_t ld16_acq(const uint8_t *p)
{
	return __atomic_load_n((const uint16_t *)(const void *)p, __ATOMIC_ACQUIRE);
}

static inline void st16(uint8_t *p, uint16_t v)
{
	__atomic_store_n((uint16_t *)(void *)p, v, __ATOMIC_RELAXED);
}

static inline void st32(uint8_t *p, uint32_t v)
{
	__atomic_store_n((uint32_t *)(void *)p, v, __ATOMIC_RELAXED);
}

#define AVAIL_FLAGS(q)       ((q)->avail)
#define AVAIL_IDX(q)         ((q)->avail + 2)
#define AVAIL_RING(q, i)     ((q)->avail + 4 + 2 * (size_t)(i))
#define USED_EVENT(q)        ((q)->avail + 4 + 2 * (size_t)(q)->num)
#define USED_FLAGS(q)        ((q)->used)
#define USED_IDX(q)          ((q)->used + 2)
#define USED_ELEM(q, i)      ((q)->used + 4 + 8 * (size_t)(i))
#define AVAIL_EVENT(q)       ((q)->used + 4 + 8 * (size_t)(q)->num)

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

/* One copy of descriptor i of table t: later guest writes cannot reach it. */
static inline struct desc desc_read(const uint8_t *t, unsigned i)
{
	struct desc d;

	memcpy(&d, t + 16 * (size_t)i, sizeof(d));
	return d;
}

/* ---- setup -------------------------------------------------------------- */

static uint8_t *ring_part(const struct guest_mem *m, uint64_t uva, uint64_t len, uint64_t align)
{
	uint8_t *p;

	if (uva & (align - 1))
		return NULL;
	p = gmem_uva(m, uva, len);
	if (p == NULL || ((uintptr_t)p & (align - 1)))
		return NULL;
	return p;
}

int vq_setup(struct vq *q, const struct guest_mem *m, unsigned num,
	     uint64_t desc_uva, uint64_t avail_uva, uint64_t used_uva,
	     uint16_t base, int event_idx, int indirect, int call_fd)
{
	uint8_t *d, *a, *u;

	memset(q, 0, sizeof(*q));
	q->call_fd = -1;
	if (num == 0 || num > VQ_NUM_MAX || (num & (num - 1)))
		return VQS_NUM;
	if ((d = ring_part(m, desc_uva, 16 * (uint64_t)num, 16)) == NULL)
		return VQS_DESC;
	if ((a = ring_part(m, avail_uva, 6 + 2 * (uint64_t)num, 2)) == NULL)
		return VQS_AVAIL;
	if ((u = ring_part(m, used_uva, 6 + 8 * (uint64_t)num, 4)) == NULL)
		return VQS_USED;
	q->mem = m;
	q->desc = d;
	q->avail = a;
	q->used = u;
	q->num = num;
	q->last_avail = base;
	/* Where the guest expects our next completion. */
	q->used_idx = ld16(USED_IDX(q));
	q->signalled_used = q->used_idx;
	q->event_idx = !!event_idx;
	q->indirect = !!indirect;
	q->call_fd = call_fd;
	q->ready = 1;
	return GM_OK;
}

uint16_t vq_last_avail(const struct vq *q)
{
	return q->last_avail;
}

unsigned vq_pending(const struct vq *q)
{
	uint16_t n;

	if (!q->ready)
		return 0;
	n = (uint16_t)(ld16_acq(AVAIL_IDX(q)) - q->last_avail);
	return n > q->num ? 0 : n;
}

/* ---- taking chains ------------------------------------------------------ */

const char *vq_err_name(int err)
{
	static const char *const names[VQE_MAX] = {
		[VQE_OK] = "ok",
		[VQE_AVAIL_IDX] = "avail_idx",
		[VQE_HEAD_RANGE] = "head_range",
		[VQE_NEXT_RANGE] = "next_range",
		[VQE_LOOP] = "loop",
		[VQE_ADDR] = "addr",
		[VQE_TOO_LONG] = "too_long",
		[VQE_WRITE_ON_TX] = "write_on_tx",
		[VQE_READ_ON_RX] = "read_on_rx",
		[VQE_IND_NEXT] = "indirect_next",
		[VQE_IND_NESTED] = "indirect_nested",
		[VQE_IND_LEN] = "indirect_len",
		[VQE_IND_ADDR] = "indirect_addr",
		[VQE_IND_UNNEGOTIATED] = "indirect_unnegotiated",
		[VQE_TOO_MANY_IOV] = "too_many_iov",
	};

	if (err < 0)
		err = -err;
	return err < VQE_MAX && names[err] ? names[err] : "unknown";
}

/*
 * Walk the chain from head into c. Loops are caught by counting: a chain
 * cannot hold more descriptors than its table has entries (virtio 2.7.5.3).
 */
static int chain_walk(const struct vq *q, struct vq_chain *c, uint16_t head,
		      int write, uint32_t max_len)
{
	const uint8_t *table = q->desc;
	unsigned tsize = q->num, count = 0, i = head;
	int in_indirect = 0;
	uint64_t total = 0;

	c->head = head;
	c->niov = 0;
	c->len = 0;
	for (;;) {
		struct desc d;

		if (++count > tsize)
			return VQE_LOOP;
		d = desc_read(table, i);
		if (d.flags & VRING_DESC_F_INDIRECT) {
			if (!q->indirect)
				return VQE_IND_UNNEGOTIATED;
			if (in_indirect)
				return VQE_IND_NESTED;
			if (d.flags & VRING_DESC_F_NEXT)
				return VQE_IND_NEXT;
			if (d.len == 0 || d.len % 16 || d.len / 16 > VQ_NUM_MAX)
				return VQE_IND_LEN;
			/* Aligned copy reads are not needed: desc_read uses memcpy. */
			if ((table = gmem_gpa(q->mem, d.addr, d.len)) == NULL)
				return VQE_IND_ADDR;
			tsize = d.len / 16;
			i = 0;
			count = 0;
			in_indirect = 1;
			continue;
		}
		if (!!(d.flags & VRING_DESC_F_WRITE) != !!write)
			return write ? VQE_READ_ON_RX : VQE_WRITE_ON_TX;
		if (d.len) {
			void *p;

			total += d.len;
			if (total > max_len)
				return VQE_TOO_LONG;
			if ((p = gmem_gpa(q->mem, d.addr, d.len)) == NULL)
				return VQE_ADDR;
			if (c->niov >= VQ_IOV_MAX)
				return VQE_TOO_MANY_IOV;
			c->iov[c->niov].iov_base = p;
			c->iov[c->niov].iov_len = d.len;
			c->niov++;
		}
		if (!(d.flags & VRING_DESC_F_NEXT))
			break;
		if (d.next >= tsize)
			return VQE_NEXT_RANGE;
		i = d.next;
	}
	c->len = (uint32_t)total;
	return VQE_OK;
}

/* The head `ahead` entries after the next one to take; num if out of range. */
static inline uint16_t avail_head(const struct vq *q, uint16_t ahead)
{
	uint16_t h = ld16(AVAIL_RING(q, (uint16_t)(q->last_avail + ahead) & (q->num - 1)));

	return h < q->num ? h : (uint16_t)q->num;
}

/*
 * Start loading what the next chains will need: the head descriptor of the
 * one after next, and the indirect table of the next (its descriptor was
 * loaded this way one call ago). Between two uses of a chain the caller has
 * moved a whole ring of frames through the cache, so both are misses
 * otherwise. Only hints: an address outside guest memory is not fetched.
 */
static inline void prefetch_ahead(const struct vq *q, uint16_t pending)
{
	uint16_t h;

	if (pending >= 2 && (h = avail_head(q, 1)) < q->num)
		__builtin_prefetch(q->desc + 16 * (size_t)h);
	if (pending >= 1 && q->indirect && (h = avail_head(q, 0)) < q->num) {
		struct desc d = desc_read(q->desc, h);
		const void *t;

		if (d.flags & VRING_DESC_F_INDIRECT && d.len >= 16 &&
		    (t = gmem_gpa(q->mem, d.addr, 16)) != NULL)
			__builtin_prefetch(t);
	}
}

int vq_pop(struct vq *q, struct vq_chain *c, int write, uint32_t max_len)
{
	uint16_t avail_idx, head;
	int err;

	if (!q->ready)
		return 0;
	avail_idx = ld16_acq(AVAIL_IDX(q));
	if (avail_idx == q->last_avail)
		return 0;
	if ((uint16_t)(avail_idx - q->last_avail) > q->num)
		return -VQE_AVAIL_IDX;
	head = ld16(AVAIL_RING(q, q->last_avail & (q->num - 1)));
	q->last_avail++;
	if (head >= q->num)
		return -VQE_HEAD_RANGE;
	prefetch_ahead(q, (uint16_t)(avail_idx - q->last_avail));
	err = chain_walk(q, c, head, write, max_len);
	if (err) {
		/* Give it back, empty, so the guest does not lose the buffers. */
		vq_push(q, head, 0);
		return -err;
	}
	return 1;
}

void vq_unpop(struct vq *q, unsigned n)
{
	q->last_avail = (uint16_t)(q->last_avail - n);
}

/* ---- completing --------------------------------------------------------- */

/* We stored len bytes at p in the used ring: mark them while logging. */
static inline void log_used(struct vq *q, const uint8_t *p, uint64_t len)
{
	uint64_t off = (uint64_t)(p - q->used);

	if (!q->log || !q->log_used)
		return;
	if (q->log_used_gpa > UINT64_MAX - off)
		q->log->outside++;
	else
		dlog_mark(q->log, q->log_used_gpa + off, len);
}

void vq_push(struct vq *q, uint16_t head, uint32_t len)
{
	uint8_t *e = USED_ELEM(q, q->used_idx & (q->num - 1));

	st32(e, head);
	st32(e + 4, len);
	log_used(q, e, 8);
	q->used_idx++;
}

void vq_publish(struct vq *q)
{
	if (!q->ready)
		return;
	__atomic_store_n((uint16_t *)(void *)USED_IDX(q), q->used_idx, __ATOMIC_RELEASE);
	log_used(q, USED_IDX(q), 2);
	if (q->log && q->log->notify_fd >= 0 && q->log->notified != q->log->marked) {
		uint64_t one = 1;

		q->log->notified = q->log->marked;
		if (write(q->log->notify_fd, &one, sizeof(one)) != sizeof(one)) {
			/* full or closed: the frontend reads the log anyway */
		}
	}
}

void vq_log_write(struct vq *q, const struct iovec *iov, unsigned n, size_t len)
{
	unsigned i;

	for (i = 0; q->log && i < n && len; i++) {
		size_t l = iov[i].iov_len < len ? iov[i].iov_len : len;

		dlog_mark_host(q->log, q->mem, iov[i].iov_base, l);
		len -= l;
	}
}

/* virtio 2.7.7.2: with EVENT_IDX, signal if used_event is in (old, new]. */
static int need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
	return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

int vq_notify(struct vq *q)
{
	uint16_t old = q->signalled_used, new_idx = q->used_idx;
	int valid = q->signalled_valid, need;
	uint64_t one = 1;

	if (!q->ready)
		return 0;
	vq_publish(q);
	if (old == new_idx)
		return 0;               /* nothing completed since last time */
	q->signalled_used = new_idx;
	q->signalled_valid = 1;
	/* Our used->idx store must be visible before we read the guest's wish. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (q->event_idx)
		need = !valid || need_event(ld16(USED_EVENT(q)), new_idx, old);
	else
		need = !(ld16(AVAIL_FLAGS(q)) & VRING_AVAIL_F_NO_INTERRUPT);
	if (!need || q->call_fd < 0)
		return 0;
	if (write(q->call_fd, &one, sizeof(one)) != sizeof(one))
		return 0;               /* eventfd full (cannot happen) or closed */
	q->calls++;
	return 1;
}

unsigned vq_enable_notify(struct vq *q)
{
	uint16_t seen;

	if (!q->ready)
		return 0;
	/* With EVENT_IDX ask for a kick at the next entry after the ones we
	 * have seen: after vq_unpop() those may be ahead of last_avail, and
	 * an avail_event the guest is already past would never fire. */
	seen = ld16_acq(AVAIL_IDX(q));
	if (q->event_idx) {
		st16(AVAIL_EVENT(q), seen);
		log_used(q, AVAIL_EVENT(q), 2);
	} else {
		st16(USED_FLAGS(q), 0);
		log_used(q, USED_FLAGS(q), 2);
	}
	/* Offer before looking again, or a kick in between is lost. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return vq_pending(q);
}

void vq_disable_notify(struct vq *q)
{
	/* With EVENT_IDX, avail_event simply stays behind: no kicks until we
	 * move it again. */
	if (q->ready && !q->event_idx) {
		st16(USED_FLAGS(q), VRING_USED_F_NO_NOTIFY);
		log_used(q, USED_FLAGS(q), 2);
	}
}

/* ---- iovec helpers ------------------------------------------------------ */

/* Copy len bytes between buf and the scatter list after skip bytes of it:
 * into the list when to_iov, out of it otherwise. Returns what was copied. */
static size_t iov_copy(const struct iovec *iov, int n, size_t skip, uint8_t *buf,
		       size_t len, int to_iov)
{
	size_t done = 0;
	int i;

	for (i = 0; i < n && done < len; i++) {
		size_t l = iov[i].iov_len, t;
		uint8_t *piece;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		piece = (uint8_t *)iov[i].iov_base + skip;
		t = l - skip < len - done ? l - skip : len - done;
		if (to_iov)
			memcpy(piece, buf + done, t);
		else
			memcpy(buf + done, piece, t);
		done += t;
		skip = 0;
	}
	return done;
}

size_t iov_to_buf(const struct iovec *iov, int n, size_t skip, void *dst, size_t len)
{
	return iov_copy(iov, n, skip, dst, len, 0);
}

size_t iov_from_buf(const struct iovec *iov, int n, size_t skip, const void *src, size_t len)
{
	return iov_copy(iov, n, skip, (uint8_t *)src, len, 1);
}

/* Clear a kick eventfd (EAGAIN only means it was clear already). */
void eventfd_drain(int fd)
{
	uint64_t v;

	if (read(fd, &v, sizeof(v)) < 0) {
		/* nothing to clear */
	}
}

/* out = iov without its first skip bytes; returns the count, -1 if max is too small. */
int iov_tail(const struct iovec *iov, int n, size_t skip, struct iovec *out, int max)
{
	int i, k = 0;

	for (i = 0; i < n; i++) {
		size_t l = iov[i].iov_len;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		if (k >= max)
			return -1;
		out[k].iov_base = (uint8_t *)iov[i].iov_base + skip;
		out[k].iov_len = l - skip;
		k++;
		skip = 0;
	}
	return k;
}
