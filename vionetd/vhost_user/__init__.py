"""Run by a session (the unprivileged process that speaks vhost-user with one
VM interface's VMM): vhost-user, device side (QEMU docs/interop/vhost-user.rst).

A Connection reads one message at a time from a connected SOCK_STREAM unix
socket, checks it completely (size, indices, flags, file descriptors, order
where it matters), tracks the state of the interface's rings (1 to 16 queue
pairs; ring 2i is pair i's RX ring, 2i+1 its TX ring), calls a Backend and
answers. It knows nothing of workers, taps or guest memory contents: the
integrator's Backend does, and a Backend method may wait for an answer
(backend.py) without a loop of its own.

  wire.py        request numbers, header, layouts, limits; bodies that check themselves
  checks.py      pure checks: memory regions, alignment, fd kinds, translation
  backend.py     Backend, its fd ownership and waiting contract; the errors
  framing.py     one message at a time off the socket; replies onto it
  rings.py       the ring table; readiness and its reported edges
  requests.py    the request table and its handlers
  connection.py  Connection: read, look up, call, reply or ack, report

Requests (number, name, what we do)
   1 GET_FEATURES           reply features.vmm_may_ack(backend.get_features())
                            (the offer, PROTOCOL_FEATURES and LOG_ALL)
   2 SET_FEATURES           inside that, with VERSION_1 (legacy devices
                            refused); while a ring runs only LOG_ALL may
                            change (migration starts or ends)
   3 SET_OWNER              required before memory and ring messages
   4 RESET_OWNER            deprecated; treated as a device reset
   5 SET_MEM_TABLE          1..8 regions, size > 0, no wrap, no overlap in
                            guest or user space, exactly one fd per region,
                            each a regular file covering its region from a
                            page-aligned offset (fdkind.py); running rings
                            must stay inside it
   6 SET_LOG_BASE           needs LOG_SHMFD: {u64 size, u64 offset}, one fd
                            of a file that covers it, size <= LOG_MAX; an
                            empty reply (QEMU waits for one)
   7 SET_LOG_FD             one eventfd, signalled when pages get marked
   8 SET_VRING_NUM          power of 2 in 1..32768; ring stopped
   9 SET_VRING_ADDR         desc/avail/used aligned 16/2/4; flag bit 0 logs
                            the used ring at log_guest_addr; on a running
                            ring only the log flag and address may change
  10 SET_VRING_BASE         < 65536 (split ring); ring stopped
  11 GET_VRING_BASE         stops the ring (reported first); reply {index,
                            backend.get_vring_base()}
  12 SET_VRING_KICK         exactly one eventfd (polling mode, bit 8, is
                            refused); starts the ring
  13 SET_VRING_CALL         one eventfd, or none with bit 8 (no notification)
  14 SET_VRING_ERR          one eventfd, or none with bit 8
  15 GET_PROTOCOL_FEATURES  reply MQ | LOG_SHMFD | RARP | REPLY_ACK | NET_MTU
  16 SET_PROTOCOL_FEATURES  must be a subset of that
  17 GET_QUEUE_NUM          reply the interface's queue pairs
  18 SET_VRING_ENABLE       num 0 or 1
  19 SEND_RARP              the guest's MAC (first 6 bytes of the u64):
                            backend.send_rarp() announces it; ignored (or
                            failed with REPLY_ACK) unless RARP was acked
  20 NET_SET_MTU            u64 in 68..65535, only with NET_MTU acked;
                            backend.set_mtu() accepts or refuses
  21 SET_BACKEND_REQ_FD     refused softly
  22 IOTLB_MSG              refused, always fatal
  23 SET_VRING_ENDIAN       refused softly
  24 GET_CONFIG             refused, always fatal
  25 SET_CONFIG             refused softly
  26 CREATE_CRYPTO_SESSION  refused, always fatal
  27 CLOSE_CRYPTO_SESSION   refused softly
  28 POSTCOPY_ADVISE        refused, always fatal
  29 POSTCOPY_LISTEN        refused softly
  30 POSTCOPY_END           refused, always fatal
  31 GET_INFLIGHT_FD        refused, always fatal
  32 SET_INFLIGHT_FD        refused softly
  33 GPU_SET_SOCKET         refused softly
  34 RESET_DEVICE           device reset (harmless, so accepted unoffered)
  35 VRING_KICK             refused softly
  36 GET_MAX_MEM_SLOTS      refused, always fatal
  37 ADD_MEM_REG            refused unless a failure reply is possible
                            (memory hotplug without CONFIGURE_MEM_SLOTS)
  38 REM_MEM_REG            refused unless a failure reply is possible
  39 SET_STATUS             refused softly
  40 GET_STATUS             refused, always fatal
  41 GET_SHARED_OBJECT      refused, always fatal
  42 SET_DEVICE_STATE_FD    refused, always fatal
  43 CHECK_DEVICE_STATE     refused, always fatal
  Any other number is refused softly.
"Refused softly": a failure reply if need_reply with REPLY_ACK, else logged
and ignored; any fd closed. "Unless a failure reply is possible": the same
with a failure reply, else fatal (ignoring it would leave the frontend
believing something false). "Always fatal": the frontend waits for a reply
payload that we cannot give; none of them is legal without a feature we
never offer. A Backend's refusal (BackendError) gets a failure reply where
one can be sent (need_reply with REPLY_ACK, and a request answered by an
ack alone), else it is fatal.

Invariants
  - Any protocol violation raises ProtocolError; the caller logs it and
    closes the connection (close()). Nothing we received is trusted.
  - Every fd received is either handed to the Backend or closed here;
    never leaked (backend.py says when it is the Backend's).
  - For each message, in this order: its handler runs (calling the
    Backend), its reply or ack is sent, then every change of ring
    readiness is reported once through Backend.ring_ready_changed();
    Connection.running(i) is what was last reported. Whether a running
    ring moves frames is Connection.ring_enabled(i) ("Ring states" in
    vhost-user.rst).
  - handle_readable() never blocks (framing.py). A message whose Backend
    method waits suspends the Connection (`waiting`) until its Reply is
    set; then the message finishes and the constructor's resumed(error)
    is called (connection.py).
"""
from vionetd.vhost_user.backend import (Backend, BackendError, ProtocolError,
                                        call, call_nowait)
from vionetd.vhost_user.connection import MAX_BATCH, Connection
from vionetd.vhost_user.rings import RingState
from vionetd.vhost_user import wire
from vionetd.vhost_user.wire import *  # noqa: F401,F403  numbers, layouts, limits, bodies

__all__ = ["Backend", "BackendError", "Connection", "MAX_BATCH", "ProtocolError",
           "RingState", "call", "call_nowait"] + wire.__all__
