"""Run by the parent (root): a locked interface's kernel backstop, an nftables filter on its tap.

A locked interface (`locked lladdr`) is enforced by its tx worker
(txpath.c drops a frame from another source MAC and counts it). A worker
that a guest compromised could write to the tap directly, so the kernel
checks too: lock() adds the table `netdev vionetd-TAP` whose chain, on the
ingress hook of the tap (where what the guest sends enters the host), drops
every frame whose Ethernet source is not the locked MAC. unlock() deletes
the table when the interface stops (the kernel drops the hook with the
device, not the table). The interface's start fails if the filter cannot
be added: a locked interface never runs without it.

Through libnftables (Debian's libnftables1, the library of the nft
command), in the parent's own process: a table takes about 1 ms, against
about 20 ms for running nft. Tap names keep to [A-Za-z0-9_.-]
(config/values.py), which nft takes unquoted in a table's name.
"""
import ctypes
import ctypes.util

from vionetd.log import log

PRIORITY = -500         # before any other ingress chain of the host's

_ctx = None


class NftError(OSError):
    pass


def _context():
    """The parent's one libnftables context, made at the first use."""
    global _ctx
    if _ctx is None:
        lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("nftables: no context")
        lib.nft_ctx_buffer_error(ctx)      # errors into a buffer, not onto stderr
        lib.nft_ctx_buffer_output(ctx)
        _ctx = (lib, ctx)
    return _ctx


def run(commands):
    """Run nft commands (one batch: all or nothing); NftError says why not."""
    try:
        lib, ctx = _context()
    except OSError as e:
        raise NftError("nftables: %s" % e)
    if lib.nft_run_cmd_from_buffer(ctx, commands.encode()) != 0:
        why = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        raise NftError("nftables: %s" % (why.strip().splitlines() or ["failed"])[0])


def table(tap_name):
    return "vionetd-%s" % tap_name


def lock(tap_name, mac):
    """Drop what enters from tap_name with an Ethernet source other than mac
    (6 bytes). Replaces a table of that name left by an earlier run."""
    t = table(tap_name)
    run("table netdev %s\ndelete table netdev %s\n"
        "table netdev %s {\n chain ingress {\n"
        "  type filter hook ingress device \"%s\" priority %d; policy accept;\n"
        "  ether saddr != %s drop\n }\n}\n"
        % (t, t, t, tap_name, PRIORITY, mac.hex(":")))


def unlock(tap_name):
    """Delete tap_name's filter, if there is one."""
    t = table(tap_name)
    run("table netdev %s\ndelete table netdev %s\n" % (t, t))


def release(port):
    """port (iface.Interface) stops: its filter goes, a failure is logged."""
    if port.filtered:
        try:
            unlock(port.filtered)
        except NftError as e:
            log.warning("%s: %s", port.key, e)
        port.filtered = None
