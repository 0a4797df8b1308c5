/*
 * core.h: the interface of vionetd's C core, read by both the C compiler and
 * cffi (csrc/build.py takes the part between the CDEF markers as its cdef).
 *
 * That part must stay plain declarations cffi can parse: no #include, no
 * macro with an expression, no attribute. Integer constants are enums.
 *
 * Conventions for every function here:
 *  - the caller owns every buffer; nothing is allocated per frame;
 *  - lengths are checked against the buffer a pointer came with, in the
 *    function that reads it, never trusted from the frame or the header;
 *  - multi-byte fields of struct vnet_hdr are little-endian (VERSION_1), which
 *    is the host order on every machine we build for (x86_64, aarch64).
 */
#ifndef VIONETD_CORE_H
#define VIONETD_CORE_H

#include <stdint.h>
#include <stddef.h>
#include <sys/uio.h>

/* CDEF BEGIN */

/* ---- virtio_net_hdr (virtio 1.2, 5.1.6), 12 bytes ------------------------ */

struct vnet_hdr {
	uint8_t  flags;
	uint8_t  gso_type;
	uint16_t hdr_len;
	uint16_t gso_size;
	uint16_t csum_start;
	uint16_t csum_offset;
	uint16_t num_buffers;
};

enum {
	VNET_HDR_LEN = 12,
	VNET_F_NEEDS_CSUM = 1,
	VNET_F_DATA_VALID = 2,
	VNET_F_RSC_INFO = 4,
	VNET_GSO_NONE = 0,
	VNET_GSO_TCPV4 = 1,
	VNET_GSO_UDP = 3,
	VNET_GSO_TCPV6 = 4,
	VNET_GSO_UDP_L4 = 5,
	VNET_GSO_ECN = 0x80,
	/* Largest frame we take or build: one 802.1Q tag plus a 64 KiB IP packet. */
	FRAME_MAX = 65553,
	/* Headers (Ethernet to the end of L4) are parsed from at most this many
	 * leading bytes; a chain longer than that is refused. */
	HEAD_MAX = 256,
	/* Linux's UDP_MAX_SEGMENTS (include/linux/udp.h). */
	UDP_MAX_SEGMENTS = 128
};

/* ---- checksums (RFC 1071, RFC 1624): csum.c ----------------------------- */

/*
 * A partial sum is a uint64_t accumulator of the buffer's 16-bit words read in
 * host order. The one's-complement sum does not depend on byte order (RFC 1071
 * section 2.B), so csum_fold()'s complement is stored into the frame as it is,
 * with memcpy, and a sum can be started from a stored field the same way.
 * csum_iov() sums len bytes after skipping skip bytes of the scatter list; an
 * odd-length piece shifts the next ones by a byte, which it accounts for. A
 * range running past the list sums what the list holds: callers that must
 * know check the list's total first (csum_complete_iov() does).
 */
uint64_t csum_partial(const void *buf, size_t len, uint64_t sum);
uint64_t csum_iov(const struct iovec *iov, int iovcnt, size_t skip, size_t len, uint64_t sum);
uint64_t csum_copy(void *dst, const void *src, size_t len, uint64_t sum);
uint16_t csum_fold(uint64_t sum);
/* RFC 1624 eqn. 3: the new checksum after a 16-bit field changed from old to new.
 * All three values as stored in memory. */
uint16_t csum_update16(uint16_t check, uint16_t old_word, uint16_t new_word);
/* Which summing loops run: "avx2" or "generic" (VIONETD_CSUM_GENERIC=1 forces
 * the latter). */
const char *csum_impl(void);

/* ---- frame parsing: parse.c --------------------------------------------- */

struct frame_info {
	uint16_t l3_off;     /* IP header: 14, or 18 behind one 802.1Q tag */
	uint16_t l4_off;     /* TCP/UDP header after IP options or IPv6 extensions;
	                        0 if none (other protocol, or a fragment) */
	uint16_t l4_len;     /* TCP header with options, 8 for UDP, 0 if none */
	uint16_t hdrs_len;   /* l4_off + l4_len: where the payload starts; without
	                        TCP/UDP, the end of the L2/L3 headers found */
	uint16_t ethertype;  /* inner EtherType, after the tag */
	uint8_t  vlan;       /* 1 if the frame carries one 802.1Q tag */
	uint8_t  ip_version; /* 4, 6, or 0 for a frame that is not IP */
	uint8_t  l4_proto;   /* 6 TCP, 17 UDP, or whatever the IP header names */
	uint8_t  fragment;   /* IPv4 MF or offset set, or an IPv6 fragment header */
	uint32_t ip_end;     /* frame offset where the IP packet ends per its length field */
	uint8_t  parse;      /* frame_parse()'s result (enum parse_result) */
};

enum parse_result {
	PARSE_OK = 0,          /* fi filled; ip_version 0 means "not IP", which is fine */
	PARSE_SHORT = 1,       /* a header runs past the bytes given */
	PARSE_BAD_IP = 2,      /* IPv4 IHL < 5, version mismatch, lengths that do not fit */
	PARSE_BAD_L4 = 3,      /* TCP data offset < 5 */
	PARSE_TOO_DEEP = 4     /* headers end beyond HEAD_MAX or too many IPv6 extensions */
};

/* head: the first head_len bytes of a frame of frame_len bytes (head_len <= frame_len). */
int frame_parse(const uint8_t *head, size_t head_len, size_t frame_len, struct frame_info *fi);

/* ---- header validation: validate.c -------------------------------------- */

/* Why a frame from the guest is refused. 0 is "accepted". Names: vnet_reason_name(). */
enum vnet_reason {
	VR_OK = 0,
	VR_FRAME_SHORT,          /* shorter than an Ethernet header */
	VR_FRAME_LONG,           /* longer than FRAME_MAX */
	VR_FLAGS_UNKNOWN,        /* a flag other than NEEDS_CSUM/DATA_VALID */
	VR_CSUM_UNNEGOTIATED,    /* NEEDS_CSUM without VIRTIO_NET_F_CSUM */
	VR_GSO_UNKNOWN,          /* gso_type not NONE/TCPV4/TCPV6/UDP_L4 (ECN aside) */
	VR_GSO_UNNEGOTIATED,     /* HOST_TSO4/TSO6/USO/UFO not negotiated for that type */
	VR_ECN_UNNEGOTIATED,     /* ECN bit without HOST_ECN */
	VR_ECN_NOT_TCP,          /* ECN bit on UDP_L4, or with no GSO type */
	VR_GSO_NO_CSUM,          /* GSO without NEEDS_CSUM */
	VR_GSO_SIZE_ZERO,
	VR_GSO_SIZE_BY_FRAGS,    /* 0xffff, Linux's GSO_BY_FRAGS */
	VR_CSUM_START_RANGE,     /* csum_start + 2 beyond the frame or HEAD_MAX */
	VR_CSUM_OFFSET_RANGE,    /* csum_start + max(L4 min, csum_offset + 2) beyond the
	                            frame, or the checksum field beyond HEAD_MAX */
	VR_CSUM_START_LOW,       /* csum_start inside the Ethernet/IP header minimum */
	VR_HDR_LEN,              /* hdr_len larger than the frame (tun.c refuses it too) */
	VR_PARSE,                /* GSO frame whose headers do not parse */
	VR_GSO_NOT_IP,           /* GSO frame that is not IPv4/IPv6 */
	VR_GSO_PROTO,            /* gso_type does not match the frame's IP version or L4 */
	VR_GSO_FRAGMENT,         /* GSO frame that is an IP fragment */
	VR_GSO_CSUM_START,       /* GSO csum_start is not the L4 header (CVE-2024-43817) */
	VR_TCP_CSUM_OFFSET,      /* TCP GSO csum_offset != 16 */
	VR_UDP_CSUM_OFFSET,      /* UDP_L4 csum_offset != 6 */
	VR_USO_SEGMENTS,         /* more than UDP_MAX_SEGMENTS datagrams */
	VR_GSO_IP_LENGTH,        /* the IP length field disagrees with the frame: GSO
	                            needs ip_end == frame length (and, for UDP_L4, the
	                            UDP length to match); any IP packet whose IP
	                            header could be read must end within the frame,
	                            whether or not the headers after it parse */
	VR_REASON_MAX
};

const char *vnet_reason_name(int reason);

/*
 * Accept or refuse a frame the guest wrote, given the negotiated features.
 * head/head_len as for frame_parse: pass min(frame_len, HEAD_MAX) bytes. On
 * VR_OK, fi describes the frame (for a GSO frame: fully; otherwise as far as
 * it parsed), and with NEEDS_CSUM the checksum field lies within the first
 * HEAD_MAX bytes, so it can be finished in the caller's head copy. The rules
 * and where they are stricter than Linux: the comment atop validate.c.
 */
int vnet_validate(const struct vnet_hdr *h, const uint8_t *head, size_t head_len,
		  size_t frame_len, uint64_t features, struct frame_info *fi);

/* ---- software offloads: offload.c ---------------------------------------- */

/* NEEDS_CSUM on a linear frame, in place: sum from start to the end, store at
 * start + offset. -1 if the range does not fit the frame. */
int csum_complete(uint8_t *frame, size_t len, uint16_t start, uint16_t offset);

/* The same over a scatter list, without writing: *out gets the value to store
 * at start + offset (as stored in memory). -1 if out of range. */
int csum_complete_iov(const struct iovec *iov, int iovcnt, size_t frame_len,
		      uint16_t start, uint16_t offset, uint16_t *out);

/*
 * Cut a validated GSO frame into wire frames.
 * head: the validated copy of the frame's first bytes (at least fi->hdrs_len);
 *       the headers are taken from here, never from iov again.
 * iov/iovcnt/frame_len: the whole frame, headers included (they are skipped).
 * out/out_cap: where the segments go, one after the other, each a complete
 *       frame with every checksum filled in; seg_lens[i] gets segment i's length.
 * Returns the number of segments, or -1 if out, seg_lens or the source is too small.
 * The result needs max(1, ceil(payload / gso_size)) segments and
 * segments * fi->hdrs_len + payload bytes; a TCP frame with a tiny gso_size
 * can need thousands of segments: size seg_lens/max_segs for what you accept.
 */
int gso_segment(const struct vnet_hdr *h, const struct frame_info *fi,
		const uint8_t *head, const struct iovec *iov, int iovcnt,
		size_t frame_len, uint8_t *out, size_t out_cap,
		uint32_t *seg_lens, unsigned max_segs);

/* Receive side: 1 if the frame's IPv4 header and TCP/UDP checksums verify,
 * 0 if one does not, -1 if there is nothing to verify (not TCP/UDP over IP,
 * or a fragment). */
int rx_csum_verify(const uint8_t *frame, size_t len);

/* CDEF END */

#endif
