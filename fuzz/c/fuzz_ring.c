/*
 * fuzz_ring: the split-ring engine (virtq.c): address translation against a
 * fuzzed memory table, vq_setup's layout checks, the chain walk with
 * indirect tables, and completing (push, unpop, publish, notify, the
 * notification offers).
 *
 * Input: u8 regions (1..4); per region u64 gpa, u16 size - 1, u64 uva; u8
 * log2(num) (num 1..64); u8 mode (bit 0 EVENT_IDX, 1 INDIRECT negotiated,
 * 2 device-writable chains, 3 a call eventfd, 4 dirty logging into a log of
 * LOG_BYTES, used ring logged at the used part's uva taken as a guest
 * address, and each device-writable chain marked whole); the three ring parts each as
 * u8 region + u16 offset in it; u16 base; u32 max_len; u8 operation count and
 * that many operation bytes; then the contents of the regions, in order
 * (descriptor tables, avail ring, indirect tables and buffers all come from
 * here; what the input does not fill is zero).
 * Each region is its own malloc of its exact size.
 * Oracles: every chain lies inside guest memory (and is touched at both
 * ends), its length is the sum of its pieces and within max_len, its head
 * is < num; used->idx is our count after publishing and every used entry we
 * wrote names a head < num; pending never exceeds num; the log (its own
 * malloc of LOG_BYTES) is never written past its end.
 */
#define _GNU_SOURCE
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"

enum { MAX_REG = 4, MAX_OPS = 64, MAX_HELD = 64, LOG_BYTES = 64 };

static uint16_t ld16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int efd = -2;
	static struct vq_chain chain;
	static struct dirty_log dlog;
	static uint8_t *logbits;
	struct in in = { data, size };
	struct guest_mem m;
	struct vq q;
	unsigned nreg, num, mode, nops;
	uint64_t uva[3];
	uint8_t *host[3] = {0};
	uint16_t base, held[MAX_HELD];
	uint32_t max_len;
	uint8_t ops[MAX_OPS];
	unsigned nheld = 0, pushed = 0;
	uint16_t used_start;

	if (efd == -2)
		efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (!logbits)
		logbits = malloc(LOG_BYTES);
	memset(&m, 0, sizeof(m));
	nreg = 1 + u8(&in) % MAX_REG;
	for (unsigned i = 0; i < nreg; i++) {
		struct gmem_region *r = &m.r[i];

		r->gpa = u64(&in);
		r->size = (uint64_t)u16(&in) + 1;
		r->uva = u64(&in);
	}
	/* What gmem_map() must refuse: a region that wraps, or overlaps an
	 * earlier one in either space. gmem_map() itself (on a memfd, so the
	 * mappings are real) must agree region by region; the table used
	 * below is the one it accepted in full. */
	{
		static int mfd = -1;
		struct guest_mem mapped;
		int bad = 0;

		if (mfd < 0 && ((mfd = memfd_create("fuzz_ring", MFD_CLOEXEC)) < 0 ||
				ftruncate(mfd, 1 << 17)))
			abort();
		memset(&mapped, 0, sizeof(mapped));
		for (unsigned i = 0; i < nreg; i++) {
			const struct gmem_region *a = &m.r[i];
			uint64_t moff = (a->gpa & 1) ? (a->uva & 0xffff) : 0;
			int want = GM_OK, got;

			if (a->gpa > UINT64_MAX - (a->size - 1) || a->uva > UINT64_MAX - (a->size - 1))
				want = GM_RANGE;
			for (unsigned j = 0; j < i && want == GM_OK; j++) {
				const struct gmem_region *b = &m.r[j];

				if ((a->gpa <= b->gpa + (b->size - 1) && b->gpa <= a->gpa + (a->size - 1)) ||
				    (a->uva <= b->uva + (b->size - 1) && b->uva <= a->uva + (a->size - 1)))
					want = GM_OVERLAP;
			}
			if (bad)
				break;  /* the reference stops at the first refusal */
			got = gmem_map(&mapped, mfd, a->gpa, a->size, a->uva, moff);
			if (got != want)
				FAIL("gmem_map region %u: %d, expected %d", i, got, want);
			if (got == GM_OK) {
				uint8_t *p = gmem_gpa(&mapped, a->gpa, a->size);

				if (p != mapped.r[mapped.nregions - 1].host ||
				    gmem_uva(&mapped, a->uva + a->size - 1, 1) != p + a->size - 1 ||
				    gmem_gpa(&mapped, a->gpa, a->size + 1) != NULL)
					FAIL("gmem translation of region %u", i);
				(void)*(volatile uint8_t *)(p + a->size - 1);
			}
			bad = got != GM_OK;
		}
		gmem_unmap_all(&mapped);
		if (bad)
			return 0;
	}
	num = 1u << (u8(&in) % 7);
	mode = u8(&in);
	for (unsigned k = 0; k < 3; k++) {
		unsigned ri = u8(&in) % nreg;
		uint16_t off = u16(&in);

		uva[k] = m.r[ri].uva + off;
	}
	base = u16(&in);
	max_len = u32(&in);
	nops = u8(&in) % (MAX_OPS + 1);
	take(&in, ops, nops);
	for (unsigned i = 0; i < nreg; i++) {
		struct gmem_region *r = &m.r[i];

		r->host = calloc(1, r->size);
		if (!r->host)
			abort();
		take(&in, r->host, in.n < r->size ? in.n : r->size);
		r->map_base = r->host;
		r->map_len = r->size;
	}
	m.nregions = nreg;

	/* gmem_gpa/gmem_uva: a hit lies inside a region. */
	for (unsigned k = 0; k < 3; k++) {
		uint64_t len = 1 + (ops[k % (nops ? nops : 1)] & 0x3f);
		uint8_t *p = gmem_uva(&m, uva[k], len);

		if (p && !in_guest(&m, p, len))
			FAIL("gmem_uva(0x%llx, %llu) escapes guest memory",
			     (unsigned long long)uva[k], (unsigned long long)len);
		if (p)
			(void)*(volatile uint8_t *)(p + len - 1);
	}

	if (vq_setup(&q, &m, num, uva[0], uva[1], uva[2], base, mode & 1, mode & 2,
		     (mode & 8) ? efd : -1) != GM_OK)
		goto out;
	if (mode & 16) {
		memset(&dlog, 0, sizeof(dlog));
		dlog.bits = logbits;
		dlog.size = LOG_BYTES;
		dlog.notify_fd = -1;
		q.log = &dlog;
		q.log_used = 1;
		q.log_used_gpa = uva[2];
	}
	host[1] = q.avail;
	host[2] = q.used;
	used_start = q.used_idx;
	for (unsigned k = 0; k < nops; k++) {
		uint8_t op = ops[k];
		int r;

		switch (op & 7) {
		case 0:
		case 1:
			r = vq_pop(&q, &chain, !!(mode & 4), max_len);
			if (r > 1 || r <= -VQE_MAX)
				FAIL("vq_pop returned %d", r);
			/* A refused chain with a valid head is completed empty. */
			if (r < 0 && r != -VQE_AVAIL_IDX && r != -VQE_HEAD_RANGE)
				pushed++;
			if (r != 1)
				break;
			{
				uint64_t total = 0;

				if (chain.head >= num || chain.niov > VQ_IOV_MAX)
					FAIL("chain head %u niov %u", chain.head, chain.niov);
				for (unsigned i = 0; i < chain.niov; i++) {
					uint8_t *b = chain.iov[i].iov_base;
					size_t l = chain.iov[i].iov_len;

					if (!l || !in_guest(&m, b, l))
						FAIL("iov %u (%zu bytes) escapes guest memory", i, l);
					(void)*(volatile uint8_t *)b;
					b[l - 1] ^= 0;
					total += l;
				}
				if (mode & 4)
					vq_log_write(&q, chain.iov, chain.niov, chain.len);
				if (total != chain.len || total > max_len)
					FAIL("chain length %u, pieces %llu, max %u", chain.len,
					     (unsigned long long)total, max_len);
			}
			if (nheld < MAX_HELD)
				held[nheld++] = chain.head;
			else
				vq_push(&q, chain.head, 0), pushed++;
			break;
		case 2:
			if (nheld) {
				vq_push(&q, held[0], (uint32_t)(op >> 3) * 100);
				memmove(held, held + 1, --nheld * sizeof(held[0]));
				pushed++;
			}
			break;
		case 3:
			if (nheld) {
				vq_unpop(&q, 1);
				nheld--;
			}
			break;
		case 4:
			vq_notify(&q);
			break;
		case 5:
			if (vq_enable_notify(&q) > num)
				FAIL("pending beyond num");
			break;
		case 6:
			vq_disable_notify(&q);
			break;
		case 7:         /* the guest makes (op >> 3) more entries available */
			{
				uint16_t v = (uint16_t)(ld16(host[1] + 2) + (op >> 3));

				memcpy(host[1] + 2, &v, 2);
			}
			break;
		}
		if (vq_pending(&q) > num)
			FAIL("vq_pending %u > num %u", vq_pending(&q), num);
	}
	/* Complete what we hold, as the data paths do before returning. */
	while (nheld)
		vq_push(&q, held[--nheld], 0), pushed++;
	vq_notify(&q);
	if (ld16(host[2] + 2) != (uint16_t)(used_start + pushed))
		FAIL("used->idx %u, expected %u", ld16(host[2] + 2), (uint16_t)(used_start + pushed));
	/* The entries we wrote (the last min(pushed, num)) name valid heads,
	 * unless the used ring shares memory with something we wrote since. */
	if (host[2] + 4 + 8 * num <= host[1] || host[1] + 6 + 2 * num <= host[2])
		for (unsigned i = 0; i < pushed && i < num; i++) {
			uint32_t id;

			memcpy(&id, host[2] + 4 + 8 * (size_t)((uint16_t)(used_start + pushed - 1 - i) % num), 4);
			if (id >= num)
				FAIL("used entry names head %u of %u", id, num);
		}
out:
	if (efd >= 0) {
		uint64_t v;

		if (read(efd, &v, sizeof(v)) < 0) {
			/* nothing signalled */
		}
	}
	for (unsigned i = 0; i < nreg; i++)
		free(m.r[i].host);
	return 0;
}
