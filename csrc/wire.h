/*
 * wire.h: small inline helpers shared by the C core's modules (not part of
 * the cffi interface: no CDEF markers here).
 *
 * Every access to frame bytes goes through memcpy, so unaligned fields are
 * fine on every target; the callers have bounds-checked the offsets.
 */
#ifndef VIONETD_WIRE_H
#define VIONETD_WIRE_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vionetd's C core assumes a little-endian host (x86_64, aarch64)"
#endif

enum {
	ETH_HLEN_ = 14,
	ETH_P_IPV4_ = 0x0800,
	ETH_P_IPV6_ = 0x86dd,
	ETH_P_8021Q_ = 0x8100,
	IPPROTO_TCP_ = 6,
	IPPROTO_UDP_ = 17,
	TCP_F_FIN = 0x01,
	TCP_F_PSH = 0x08,
	TCP_F_CWR = 0x80,
	TCP_CSUM_OFF = 16,
	UDP_CSUM_OFF = 6
};

static inline uint16_t rd16be(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t rd32be(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void wr16be(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void wr32be(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* A 16-bit field as stored in memory, read in host order: the unit of the
 * checksum arithmetic (see core.h). */
static inline uint16_t rd16mem(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return v;
}

static inline void wr16mem(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, 2);
}

/* A host-order number as the memory-order word a checksum sees. */
static inline uint16_t net16(uint16_t v)
{
	return __builtin_bswap16(v);
}

/* One's complement addition on 64 bits (end-around carry). */
static inline uint64_t add64(uint64_t a, uint64_t b)
{
	uint64_t s = a + b;

	return s + (s < a);
}

/* Fold a partial sum to 16 bits without complementing it. */
static inline uint16_t fold16(uint64_t sum)
{
	uint64_t t = (sum & 0xffffffffu) + (sum >> 32);

	t = (t & 0xffffffffu) + (t >> 32);
	t = (t & 0xffff) + (t >> 16);
	t = (t & 0xffff) + (t >> 16);
	return (uint16_t)t;
}

#endif
