/*
 * txuring.c: the TX worker's io_uring.
 *
 * Why: a tap takes one frame per write(), and on the host we measured a
 * system call costs about 315 ns (a writev() of 12 bytes to /dev/null),
 * more under seccomp. With a batch of frames per io_uring_enter() instead
 * of a writev() each, bench/backend.py's tx_64k went from 0.89 to 1.03 of
 * the one-write-per-frame limit on average and tx_1514 from 0.97 to 1.28
 * (its docstring has the runs).
 *
 * Safety: io_uring requests do not pass through seccomp, so the ring is
 * restricted before anyone can use it (IORING_SETUP_R_DISABLED, then
 * IORING_REGISTER_RESTRICTIONS, Linux 5.10): WRITEV is the only operation,
 * no SQE flags, no register operation. The worker's seccomp list allows
 * io_uring_enter() but neither io_uring_setup() nor io_uring_register(), so
 * it can neither make another ring nor change this one. A writev() request
 * can do what the writev() system call the list allows can do, nothing more.
 *
 * Every request completes inline: each write is RWF_NOWAIT, so a full tap
 * completes it with -EAGAIN. (Without it io_uring would not honour the
 * tap's O_NONBLOCK but wait for room, and txu_submit(), which waits for
 * every completion so that nothing is in flight when it returns, would
 * wait with it.)
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <liburing.h>

#include "txuring.h"

_Static_assert((int)TXU_OP_WRITEV == (int)IORING_OP_WRITEV, "IORING_OP_WRITEV");

struct txu {
	struct io_uring ring;
	unsigned queued;
};

/*
 * io_uring_register() itself: Debian 12's liburing 2.3 declares
 * io_uring_register_restrictions() and io_uring_enable_rings() but its
 * shared library does not export them.
 */
static int ring_register(struct io_uring *ring, unsigned op, void *arg, unsigned n)
{
	return syscall(__NR_io_uring_register, ring->ring_fd, op, arg, n) < 0 ? -errno : 0;
}

static int restrict_to_writev(struct io_uring *ring)
{
	struct io_uring_restriction res[2];

	memset(res, 0, sizeof(res));
	res[0].opcode = IORING_RESTRICTION_SQE_OP;
	res[0].sqe_op = IORING_OP_WRITEV;
	res[1].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
	res[1].sqe_flags = 0;
	return ring_register(ring, IORING_REGISTER_RESTRICTIONS, res, 2);
}

struct txu *txu_open(void)
{
	struct txu *u = calloc(1, sizeof(*u));
	int r;

	if (!u)
		return NULL;
	r = io_uring_queue_init(TXU_ENTRIES, &u->ring,
				IORING_SETUP_R_DISABLED | IORING_SETUP_SUBMIT_ALL);
	if (r < 0) {
		free(u);
		errno = -r;
		return NULL;
	}
	if ((r = restrict_to_writev(&u->ring)) < 0 ||
	    (r = ring_register(&u->ring, IORING_REGISTER_ENABLE_RINGS, NULL, 0)) < 0) {
		io_uring_queue_exit(&u->ring);
		free(u);
		errno = -r;
		return NULL;
	}
	return u;
}

int txu_fd(const struct txu *u)
{
	return u->ring.ring_fd;
}

void txu_close(struct txu *u)
{
	if (!u)
		return;
	io_uring_queue_exit(&u->ring);
	free(u);
}

int txu_queue_writev(struct txu *u, int fd, const struct iovec *v, unsigned n,
		     unsigned tag)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

	if (!sqe)
		return -1;
	io_uring_prep_writev(sqe, fd, v, n, 0);
	sqe->rw_flags = RWF_NOWAIT;     /* a full tap: -EAGAIN, not a wait */
	io_uring_sqe_set_data64(sqe, tag);
	u->queued++;
	return 0;
}

int txu_submit(struct txu *u, int32_t *res)
{
	struct io_uring_cqe *cqe;
	unsigned want = u->queued, got = 0;
	int sent, r;

	if (!want)
		return 0;
	do
		sent = io_uring_submit_and_wait(&u->ring, want);
	while (sent == -EINTR);
	if (sent < 0)
		return sent;
	u->queued = 0;
	while (got < (unsigned)sent) {
		if ((r = io_uring_wait_cqe(&u->ring, &cqe)) == -EINTR)
			continue;
		if (r < 0)
			return r;
		res[cqe->user_data] = cqe->res;
		io_uring_cqe_seen(&u->ring, cqe);
		got++;
	}
	/* SUBMIT_ALL: the kernel takes every SQE, failing ones with a CQE */
	return got == want ? (int)got : -EIO;
}

int txu_try_opcode(struct txu *u, int opcode)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	struct io_uring_cqe *cqe;
	int r;

	if (!sqe)
		return -EBUSY;
	io_uring_prep_rw(opcode, sqe, -1, NULL, 0, 0);
	if ((r = io_uring_submit_and_wait(&u->ring, 1)) < 0)
		return r;
	if ((r = io_uring_wait_cqe(&u->ring, &cqe)) < 0)
		return r;
	r = cqe->res;
	io_uring_cqe_seen(&u->ring, cqe);
	return r;
}
