/*
 * fuzz_segment: software segmentation (gso_segment) and checksum completion
 * (csum_complete, csum_complete_iov) of frames vnet_validate() accepted.
 *
 * Input: the 10 bytes of a virtio_net_hdr, u8 options (bit 0: store the
 * right pseudo-header sum in the L4 checksum field, as a guest's stack does;
 * bit 1: give gso_segment one byte less output than it needs), u8 number of
 * cuts (0..15) and that many u16 cut points, then the frame. The frame is
 * handed over as a scatter list of exact-size pieces cut there.
 * Oracle: the linear and scatter checksum completions agree; segmentation
 * needs exactly max(1, ceil(payload / gso_size)) segments and
 * segments * hdrs_len + payload bytes and refuses less room; every segment
 * parses with the headers of the original, has IP (and UDP) lengths naming
 * exactly itself, passes vnet_validate with a zero header, and with the
 * right pseudo-header sum its IPv4 and L4 checksums verify; the payloads of
 * the segments put together are the original payload.
 */
#include "fuzz.h"

enum { MAX_SEGS = 4096 };

/* The guest's part of NEEDS_CSUM: the folded pseudo-header sum in the field. */
static void put_pseudo(uint8_t *f, const struct frame_info *fi, size_t len, uint16_t off)
{
	const uint8_t *ip = f + fi->l3_off;
	size_t l4len = len - fi->l4_off;
	uint8_t tail[4] = { (uint8_t)(l4len >> 8), (uint8_t)l4len, 0, fi->l4_proto };
	uint64_t s = fi->ip_version == 4 ? csum_partial(ip + 12, 8, 0) : csum_partial(ip + 8, 32, 0);
	uint16_t v;

	s = csum_partial(tail, 4, s);
	v = (uint16_t)~csum_fold(s);
	memcpy(f + fi->l4_off + off, &v, 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = { data, size };
	struct vnet_hdr h = {0};
	struct frame_info fi;
	struct iovec iov[16];
	size_t cuts[16];
	uint8_t opt;
	unsigned ncut, cnt;
	size_t len, head_len, pos;
	uint8_t *frame, *head, *lin;

	take(&in, &h, 10);
	opt = u8(&in);
	ncut = u8(&in) % 16;
	for (unsigned i = 0; i < ncut; i++)
		cuts[i] = u16(&in);
	len = in.n;
	frame = exact_copy(in.p, len);
	head_len = len < HEAD_MAX ? len : HEAD_MAX;
	head = exact_copy(frame, head_len);
	if (vnet_validate(&h, head, head_len, len, ~0ull, &fi) != VR_OK) {
		free(head);
		free(frame);
		return 0;
	}
	if (h.gso_type && (opt & 1)) {
		put_pseudo(frame, &fi, len, h.csum_offset);
		memcpy(head, frame, head_len);
	}
	/* The scatter list: sorted cut points, pieces of their exact size. */
	for (unsigned i = 0; i < ncut; i++)
		cuts[i] = len ? cuts[i] % (len + 1) : 0;
	for (unsigned i = 1; i < ncut; i++)
		for (unsigned j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
			size_t t = cuts[j];
			cuts[j] = cuts[j - 1];
			cuts[j - 1] = t;
		}
	cnt = ncut + 1;
	pos = 0;
	for (unsigned i = 0; i < cnt; i++) {
		size_t end = i < ncut ? cuts[i] : len;

		iov[i].iov_base = exact_copy(frame + pos, end - pos);
		iov[i].iov_len = end - pos;
		pos = end;
	}

	if (h.flags & VNET_F_NEEDS_CSUM) {
		uint16_t v;

		lin = exact_copy(frame, len);
		if (csum_complete_iov(iov, (int)cnt, len, h.csum_start, h.csum_offset, &v) ||
		    csum_complete(lin, len, h.csum_start, h.csum_offset))
			FAIL("checksum completion refused an accepted frame");
		if (memcmp(&v, lin + h.csum_start + h.csum_offset, 2))
			FAIL("csum_complete_iov and csum_complete disagree");
		if (csum_complete_iov(iov, (int)cnt, len + 1, h.csum_start, h.csum_offset, &v) == 0)
			FAIL("csum_complete_iov summed past the scatter list");
		free(lin);
	}

	if (h.gso_type) {
		size_t payload = len - fi.hdrs_len;
		size_t nseg = payload ? (payload + h.gso_size - 1) / h.gso_size : 1;
		size_t need = nseg * fi.hdrs_len + payload;
		size_t cap = need - ((opt & 2) ? 1 : 0);
		unsigned max = nseg > MAX_SEGS ? MAX_SEGS : (unsigned)nseg;
		uint8_t *out = malloc(cap ? cap : 1);
		uint32_t *lens = malloc(sizeof(*lens) * max);
		int n;

		if (!out || !lens)
			abort();
		n = gso_segment(&h, &fi, head, iov, (int)cnt, len, out, cap, lens, max);
		if (nseg > MAX_SEGS || (opt & 2)) {
			if (n >= 0)
				FAIL("gso_segment wrote %d segments into too little room", n);
		} else if (n != (int)nseg) {
			FAIL("gso_segment made %d segments, expected %zu", n, nseg);
		} else {
			size_t off = 0, done = 0;
			struct vnet_hdr zero = {0};

			for (int i = 0; i < n; i++) {
				uint8_t *s = out + off;
				size_t sl = lens[i];
				struct frame_info si;
				size_t pl = sl - fi.hdrs_len;

				if (sl < fi.hdrs_len || off + sl > cap || pl > h.gso_size ||
				    (i + 1 < n && pl != h.gso_size))
					FAIL("segment %d of %zu bytes", i, sl);
				if (frame_parse(s, sl, sl, &si) != PARSE_OK ||
				    si.hdrs_len != fi.hdrs_len || si.l4_off != fi.l4_off ||
				    si.ip_end != sl)
					FAIL("segment %d does not parse as its original", i);
				if ((h.gso_type & 0x7f) == VNET_GSO_UDP_L4 &&
				    (size_t)(s[si.l4_off + 4] << 8 | s[si.l4_off + 5]) != sl - si.l4_off)
					FAIL("segment %d: UDP length", i);
				if (vnet_validate(&zero, s, sl < HEAD_MAX ? sl : HEAD_MAX, sl, 0, &si))
					FAIL("segment %d does not validate", i);
				if ((opt & 1) && rx_csum_verify(s, sl) != 1)
					FAIL("segment %d: checksums do not verify", i);
				if (memcmp(s + fi.hdrs_len, frame + fi.hdrs_len + done, pl))
					FAIL("segment %d: payload differs", i);
				done += pl;
				off += sl;
			}
			if (done != payload || off != need)
				FAIL("segments hold %zu of %zu payload bytes", done, payload);
		}
		free(lens);
		free(out);
	}
	for (unsigned i = 0; i < cnt; i++)
		free(iov[i].iov_base);
	free(head);
	free(frame);
	return 0;
}
