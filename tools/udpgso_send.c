/*
 * udpgso_send: send UDP with UDP_SEGMENT (USO from the sender's side) and
 * count what arrives at the other end.  Built static; runs in the test
 * guest (sender) and on the host inside a test's network namespace
 * (receiver).
 *
 *   udpgso_send send ADDR PORT [-s segsize] [-w writesize] [-b bytes] [-t secs]
 *   udpgso_send recv PORT [-t secs] [-n datagrams] [-i idle_secs] [-r rcvbuf]
 *
 * -r sets the receive buffer (SO_RCVBUFFORCE as root, else SO_RCVBUF): a
 * GSO burst arrives faster than a reader under load drains it.
 * The receiver stops after secs, after n datagrams, after idle_secs without
 * one (once the first came), or on SIGTERM/SIGINT, and then prints counts.
 *
 * Every datagram (every segment of a large write) carries its own sequence
 * number: a 4-byte big-endian counter, then payload byte k equal to
 * (seq + k) & 0xff.  The receiver checks each datagram against that pattern
 * on its own, so it needs to know nothing of the sender's write size.
 *
 * Output is key=value lines on stdout, for the test plans to pass on.
 * Exit status: 0 ok, 1 usage, 2 setup failure (socket, UDP_SEGMENT refused),
 * 3 send failure, 4 receiver saw bad datagrams or nothing at all.
 *
 * Numbers: SOL_UDP 17, UDP_SEGMENT 103 (Linux include/uapi/linux/udp.h);
 * a GSO write may hold at most UDP_MAX_SEGMENTS (64) segments and must fit
 * an IP datagram (65535 - IP header - 8).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define MAX_SEGS 64
#define MAX_WRITE 65000		/* below 65535 - 40 (IPv6) - 8 with room */
#define MIN_SEG 8		/* sequence number plus a little payload */

/* Set by SIGTERM/SIGINT: the receiver stops and still prints its counts. */
static volatile sig_atomic_t stop;

static void
on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
usage(void)
{
	fprintf(stderr, "usage: udpgso_send send ADDR PORT [-s segsize] "
	    "[-w writesize] [-b bytes] [-t secs]\n"
	    "       udpgso_send recv PORT [-t secs] [-n datagrams] "
	    "[-i idle_secs] [-r rcvbuf]\n");
	return 1;
}

/* A positive integer argument, or -1 if it is not one. */
static long
num(const char *s)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *s == '\0' || *end != '\0' || v <= 0)
		return -1;
	return v;
}

/* Fill one segment: sequence number, then the pattern that follows from it. */
static void
fill_seg(unsigned char *p, size_t len, uint32_t seq)
{
	size_t k;

	p[0] = seq >> 24;
	p[1] = seq >> 16;
	p[2] = seq >> 8;
	p[3] = seq;
	for (k = 4; k < len; k++)
		p[k] = (unsigned char)(seq + k);
}

/* 1 if a received datagram matches the pattern for its own sequence. */
static int
check_seg(const unsigned char *p, size_t len, uint32_t *seqp)
{
	uint32_t seq;
	size_t k;

	if (len < 4)
		return 0;
	seq = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3];
	for (k = 4; k < len; k++)
		if (p[k] != (unsigned char)(seq + k))
			return 0;
	*seqp = seq;
	return 1;
}

/* Parse ADDR (IPv4 or IPv6 literal) and PORT into ss; returns its length. */
static socklen_t
parse_addr(const char *addr, long port, struct sockaddr_storage *ss)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		return sizeof(*sin);
	}
	if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		return sizeof(*sin6);
	}
	return 0;
}

static int
do_send(int argc, char **argv)
{
	static unsigned char buf[MAX_WRITE];
	struct sockaddr_storage ss;
	socklen_t sslen;
	long port, seg = 1400, wsize = 0, bytes = 0, secs = 0;
	long long sent = 0, writes = 0, refused = 0;
	uint32_t seq = 0;
	double t0, deadline;
	int fd, opt, segopt;

	if (argc < 4)
		return usage();
	port = num(argv[3]);
	if (port < 0 || port > 65535)
		return usage();
	optind = 4;
	while ((opt = getopt(argc, argv, "s:w:b:t:")) != -1) {
		long v = optarg ? num(optarg) : -1;

		if (v < 0)
			return usage();
		switch (opt) {
		case 's': seg = v; break;
		case 'w': wsize = v; break;
		case 'b': bytes = v; break;
		case 't': secs = v; break;
		default: return usage();
		}
	}
	if (bytes == 0 && secs == 0)
		bytes = 1 << 20;
	if (seg < MIN_SEG || seg > MAX_WRITE)
		return usage();
	if (wsize == 0)
		wsize = seg * (MAX_WRITE / seg < 40 ? MAX_WRITE / seg : 40);
	if (wsize > MAX_WRITE || wsize > seg * MAX_SEGS || wsize < seg)
		return usage();
	sslen = parse_addr(argv[2], port, &ss);
	if (sslen == 0)
		return usage();

	fd = socket(ss.ss_family, SOCK_DGRAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&ss, sslen) < 0) {
		perror("udpgso_send: socket/connect");
		return 2;
	}
	segopt = seg;
	if (setsockopt(fd, SOL_UDP, UDP_SEGMENT, &segopt, sizeof(segopt)) < 0) {
		printf("gso=0\nerror=%s\n", strerror(errno));
		return 2;
	}
	t0 = now();
	deadline = secs ? t0 + secs : 0;
	while ((bytes == 0 || sent < bytes) && (!deadline || now() < deadline)) {
		long len = wsize, off;
		ssize_t n;

		if (bytes && bytes - sent < len)
			len = bytes - sent;
		for (off = 0; off < len; off += seg)
			fill_seg(buf + off, len - off < seg ? len - off : seg,
			    seq + off / seg);
		n = send(fd, buf, len, 0);
		if (n < 0) {
			/* An ICMP error from an earlier datagram, or a full
			 * queue: not fatal, try again a bounded number of times. */
			if ((errno == ECONNREFUSED || errno == ENOBUFS ||
			    errno == EAGAIN) && refused++ < 100000) {
				if (errno != ECONNREFUSED)
					usleep(100);
				continue;
			}
			printf("error=%s\n", strerror(errno));
			return 3;
		}
		seq += (len + seg - 1) / seg;
		sent += n;
		writes++;
	}
	printf("gso=1\nseg_size=%ld\nwrite_size=%ld\nsent_bytes=%lld\n"
	    "sent_writes=%lld\nsent_datagrams=%u\nsend_retries=%lld\n"
	    "seconds=%.3f\n", seg, wsize, sent, writes, seq, refused,
	    now() - t0);
	close(fd);
	return 0;
}

static int
do_recv(int argc, char **argv)
{
	static unsigned char buf[65536];
	struct sockaddr_in6 sin6;
	long port, secs = 30, count = 0, idle = 3, rcvbuf = 0;
	long long dgrams = 0, bytes = 0, bad = 0;
	uint32_t seq, maxseq = 0;
	double t0, last = 0;
	int fd, opt, off = 0;

	if (argc < 3)
		return usage();
	port = num(argv[2]);
	if (port < 0 || port > 65535)
		return usage();
	optind = 3;
	while ((opt = getopt(argc, argv, "t:n:i:r:")) != -1) {
		long v = optarg ? num(optarg) : -1;

		if (v < 0)
			return usage();
		switch (opt) {
		case 't': secs = v; break;
		case 'n': count = v; break;
		case 'i': idle = v; break;
		case 'r': rcvbuf = v; break;
		default: return usage();
		}
	}
	fd = socket(AF_INET6, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("udpgso_send: socket");
		return 2;
	}
	if (rcvbuf > 0 && rcvbuf <= 1 << 30) {
		int b = rcvbuf;

		if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &b,
		    sizeof(b)) < 0)
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &b, sizeof(b));
	}
	/* One socket for IPv4 and IPv6 senders alike. */
	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	sin6.sin6_port = htons(port);
	sin6.sin6_addr = in6addr_any;
	if (bind(fd, (struct sockaddr *)&sin6, sizeof(sin6)) < 0) {
		perror("udpgso_send: bind");
		return 2;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	printf("listening=%ld\n", port);
	fflush(stdout);
	t0 = now();
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		double t = now();
		ssize_t n;

		if (stop || t - t0 >= secs || (count && dgrams >= count) ||
		    (last && t - last >= idle))
			break;
		if (poll(&pfd, 1, 100) <= 0)
			continue;
		n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0)
			continue;
		last = now();
		dgrams++;
		bytes += n;
		if (!check_seg(buf, n, &seq))
			bad++;
		else if (seq + 1 > maxseq)
			maxseq = seq + 1;
	}
	printf("datagrams=%lld\nbytes=%lld\nbad=%lld\nhighest_seq=%u\n",
	    dgrams, bytes, bad, maxseq);
	close(fd);
	return (dgrams == 0 || bad) ? 4 : 0;
}

int
main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "send") == 0)
		return do_send(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "recv") == 0)
		return do_recv(argc, argv);
	return usage();
}
