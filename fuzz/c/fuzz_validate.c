/*
 * fuzz_validate: header validation and frame parsing (validate.c, parse.c)
 * and the receive-side checksum check (offload.c rx_csum_verify).
 *
 * Input: u64 features, the 10 bytes of a virtio_net_hdr up to num_buffers,
 * u8 head selector, then the frame. The head is min(frame, HEAD_MAX) bytes,
 * or fewer when the selector says so (a caller that gives too few bytes),
 * each in a buffer of its exact size.
 * Oracles: what vnet_validate() promises on VR_OK (core.h): the checksum
 * field inside HEAD_MAX and the frame; for GSO, headers parsed within the
 * head, csum_start at the L4 header, the IP length naming the frame; any
 * accepted IP frame ends within the frame; frame_parse's offsets are inside
 * what it was given; every refusal has a name.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = { data, size };
	struct vnet_hdr h = {0};
	struct frame_info fi, pi;
	uint64_t features = u64(&in);
	uint8_t sel;
	size_t len, head_len;
	uint8_t *frame, *head;
	int vr, pr;

	take(&in, &h, 10);
	sel = u8(&in);
	len = in.n;
	frame = exact_copy(in.p, len);
	head_len = len < HEAD_MAX ? len : HEAD_MAX;
	if (sel & 0x80)
		head_len = head_len ? (sel & 0x7f) % (head_len + 1) : 0;
	head = exact_copy(frame, head_len);

	vr = vnet_validate(&h, head, head_len, len, features, &fi);
	if (vr < 0 || vr >= VR_REASON_MAX || !strcmp(vnet_reason_name(vr), "unknown"))
		FAIL("vnet_validate returned %d", vr);
	if (vr == VR_OK) {
		if (len < 14 || len > FRAME_MAX)
			FAIL("accepted a frame of %zu bytes", len);
		if (h.flags & ~(VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID))
			FAIL("accepted unknown flags 0x%x", h.flags);
		if (h.flags & VNET_F_NEEDS_CSUM) {
			size_t end = (size_t)h.csum_start + h.csum_offset + 2;

			if (!(features & 1))
				FAIL("NEEDS_CSUM accepted without CSUM");
			if (end > HEAD_MAX || end > len)
				FAIL("checksum field at %zu outside the frame or head", end);
		}
		if (h.hdr_len > len)
			FAIL("hdr_len %u accepted for %zu bytes", h.hdr_len, len);
		/* once the IP header is read, parsed further or not */
		if (fi.ip_version && fi.ip_end > len && h.gso_type == 0)
			FAIL("IP packet ends at %u beyond the frame (%zu)", fi.ip_end, len);
		if (h.gso_type != VNET_GSO_NONE) {
			if (!(h.flags & VNET_F_NEEDS_CSUM) || h.gso_size == 0)
				FAIL("GSO accepted without NEEDS_CSUM or gso_size");
			if (fi.hdrs_len > head_len || fi.l4_off == 0 || fi.l4_off != h.csum_start)
				FAIL("GSO headers: hdrs_len %u head %zu l4_off %u csum_start %u",
				     fi.hdrs_len, head_len, fi.l4_off, h.csum_start);
			if (fi.ip_end != len || fi.fragment)
				FAIL("GSO ip_end %u frame %zu fragment %u", fi.ip_end, len, fi.fragment);
			if ((h.gso_type & 0x7f) == VNET_GSO_UDP_L4 &&
			    (len - fi.hdrs_len) > (size_t)h.gso_size * UDP_MAX_SEGMENTS)
				FAIL("USO with too many segments");
		}
	}
	pr = frame_parse(head, head_len, len, &pi);
	if (pr < 0 || pr > PARSE_TOO_DEEP)
		FAIL("frame_parse returned %d", pr);
	if (pr == PARSE_OK) {
		if (pi.hdrs_len > head_len || pi.hdrs_len > HEAD_MAX)
			FAIL("hdrs_len %u past the head (%zu)", pi.hdrs_len, head_len);
		if (pi.l4_off && (pi.l4_off + pi.l4_len != pi.hdrs_len || pi.l4_off < pi.l3_off))
			FAIL("l4 %u+%u vs hdrs_len %u", pi.l4_off, pi.l4_len, pi.hdrs_len);
		if (pi.ip_version && pi.hdrs_len > pi.ip_end)
			FAIL("headers end at %u past the IP packet (%u)", pi.hdrs_len, pi.ip_end);
	}
	pr = rx_csum_verify(frame, len);
	if (pr < -1 || pr > 1)
		FAIL("rx_csum_verify returned %d", pr);
	free(head);
	free(frame);
	return 0;
}
