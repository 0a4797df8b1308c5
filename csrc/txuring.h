/*
 * txuring.h: a TX worker's io_uring, used only to write the frames of a batch
 * to the tap in one system call (txpath.c). See txuring.c.
 */
#ifndef VIONETD_TXURING_H
#define VIONETD_TXURING_H

#include <stdint.h>
#include <sys/uio.h>

/* CDEF BEGIN */
struct txu;

enum {
	TXU_ENTRIES = 64,     /* writes per submission: DP_BATCH */
	TXU_OP_WRITEV = 2     /* IORING_OP_WRITEV, the only operation allowed */
};

/* A restricted ring, or NULL with errno set where io_uring is unavailable,
 * disabled (kernel.io_uring_disabled) or refused. Opened before the worker
 * confines itself: after that only io_uring_enter() is allowed. */
struct txu *txu_open(void);
int txu_fd(const struct txu *u);
void txu_close(struct txu *u);
/* Tests: submit one request of this opcode with no file and return what it
 * completed with (-EACCES for anything but WRITEV). */
int txu_try_opcode(struct txu *u, int opcode);
/* CDEF END */

/* Queue writev(fd, v, n) tagged tag; 0, or -1 when TXU_ENTRIES are queued. */
int txu_queue_writev(struct txu *u, int fd, const struct iovec *v, unsigned n,
		     unsigned tag);
/* Submit what is queued and wait for all of it; res[tag] = each result
 * (bytes or -errno). The count, or -errno when io_uring itself failed. */
int txu_submit(struct txu *u, int32_t *res);

#endif
