/*
 * sysdecl.h: system types that cffi must know the layout of, for Python code
 * and tests that build them (struct iovec for csum_iov(), gso_segment()...).
 *
 * The C compiler never sees the declarations (they come from <sys/uio.h>);
 * only csrc/build.py's cdef does, which reads between the markers whatever
 * the preprocessor would do.  Declare each system type once, here.
 */
#ifndef VIONETD_SYSDECL_H
#define VIONETD_SYSDECL_H
#ifdef VIONETD_CFFI_CDEF_ONLY	/* never defined */

/* CDEF BEGIN */
struct iovec {
	void *iov_base;
	size_t iov_len;
};
/* CDEF END */

#endif
#endif
