"""Build `udpecho:test`, a UDP server image for the tests of UDP published ports, from the host's
Debian perl (perl-base, always installed) and busybox-static.

`.venv/bin/python tools/build_udpecho_image.py build/images/udpecho.tar` (part of `make images`).
Busybox here has no UDP server (no `nc -u`, no `udpsvd`), so the server is a short Perl program
using only Perl's built-in socket calls (no module, so no Perl library is copied): it listens on
UDP port $PORT (default 5000) and answers each datagram with "<hostname> <client address>\\n", the
client address being what the task sees as the sender. One layer (same format as
tools/build_busybox_image.py's): busybox and its applets in /bin, /usr/bin/perl with every library
`ldd` lists for it, and /udpecho.pl. Cmd: `perl /udpecho.pl`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_busybox_image as bb
import build_nginx_image as ng

NAME = "docker.io/library/udpecho:test"
REPO_TAG = "udpecho:test"
CMD = ["perl", "/udpecho.pl"]
# sockaddr_in by hand (family in host order, port in network order): no Socket module needed.
SERVER = r"""
my $port = $ENV{PORT} || 5000;
socket(my $s, 2, 2, 17) or die "socket: $!\n";
bind($s, pack("S n N x8", 2, $port, 0)) or die "bind: $!\n";
open(my $h, "<", "/proc/sys/kernel/hostname") or die "hostname: $!\n";
chomp(my $host = <$h>);
print STDOUT "listening on udp $port\n";
while (1) {
    my $peer = recv($s, my $buf, 65535, 0);
    next unless defined $peer;
    my (undef, $cport, $addr) = unpack("S n a4", $peer);
    send($s, "$host " . join(".", unpack("C4", $addr)) . "\n", 0, $peer);
}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the archive (e.g. build/images/udpecho.tar)")
    parser.add_argument("--busybox", type=Path, default=Path("/bin/busybox"), help="a static busybox")
    parser.add_argument("--perl", type=Path, default=Path("/usr/bin/perl"))
    args = parser.parse_args(argv)
    for tool, package in ((args.busybox, "busybox-static"), (args.perl, "perl-base")):
        if not os.access(tool, os.X_OK):
            print(f"{tool} is missing or not executable (install {package})", file=sys.stderr)
            return 1
    layer = ng.layer_with(args.busybox, args.perl, "usr/bin/perl", {"usr": 0o755, "usr/bin": 0o755},
                          {"udpecho.pl": SERVER.encode()})
    bb.write_atomic(args.out, ng.archive(layer, name=NAME, repo_tag=REPO_TAG, cmd=CMD, exposed="5000/udp",
                                         created_by="tools/build_udpecho_image.py"))
    print(f"wrote {args.out} ({REPO_TAG}, {args.out.stat().st_size >> 10} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
