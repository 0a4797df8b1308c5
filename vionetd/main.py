"""Run by the parent (vionetd(8)): the command line, before the daemon starts.

    vionetd [-dnv] [-f file] [-p pidfile]

-d stays in the foreground and logs to stderr; without it vionetd detaches and
logs to syslog. -n only checks the configuration file and exits 0 or 1.
"""
import argparse
import os
import sys

from vionetd import config
from vionetd.log import setup as log_setup

DEFAULT_CONFIG = "/etc/vionetd.conf"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="vionetd", description="vhost-user virtio-net device daemon")
    p.add_argument("-d", action="store_true", help="do not detach; log to stderr")
    p.add_argument("-f", metavar="file", default=DEFAULT_CONFIG, help="configuration file")
    p.add_argument("-n", action="store_true", help="check the configuration and exit")
    p.add_argument("-v", action="store_true", help="verbose logging")
    p.add_argument("-p", metavar="pidfile", help="write the parent's pid to this file")
    return p.parse_args(argv)


def detach():
    """Become a daemon: new session, no controlling terminal, std fds on /dev/null."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.f = os.path.abspath(args.f)       # detaching changes to /
    if args.p:
        args.p = os.path.abspath(args.p)
    try:
        conf = config.load(args.f)
    except config.ConfigError as e:
        print("vionetd: %s" % e, file=sys.stderr)
        return 1
    except OSError as e:
        print("vionetd: %s: %s" % (args.f, e.strerror), file=sys.stderr)
        return 1
    if args.n:
        print("configuration OK")
        return 0
    if os.geteuid() != 0:
        print("vionetd: need root privileges", file=sys.stderr)
        return 1
    if not args.d:
        detach()
    log_setup(foreground=args.d, verbose=args.v)
    from vionetd.parent import Parent
    parent = Parent(args.f, conf, pidfile=args.p)
    return parent.run()


if __name__ == "__main__":
    sys.exit(main())
