/*
 * sigsys.h: report a seccomp violation before dying.
 *
 * The worker's seccomp filter traps (SECCOMP_RET_TRAP) every call it does not
 * allow. The SIGSYS handler sends the parent one FromWorker message,
 * {forbidden_syscall: N} (proto/vionetd.proto, field 5), encoded by hand
 * here because nothing else may run in a signal handler, then dies by SIGSYS
 * with the default action, so the parent sees both the number and the death.
 */
#ifndef VIONETD_SIGSYS_H
#define VIONETD_SIGSYS_H

/* CDEF BEGIN */
int sigsys_install(int report_fd);
/* CDEF END */

#endif
