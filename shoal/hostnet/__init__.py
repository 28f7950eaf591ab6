"""Server-free host plumbing: network namespaces, veth links, bridges, addresses, UTS namespaces.

Synchronous wrappers around iproute2, util-linux (`unshare`, `nsenter`, `umount`) and /proc, used by
`shoal.lab` (and usable by any tool that builds hosts on one machine). Nothing here talks to a
daemon. Every function names the namespace it acts in; none touches the root namespace's
addresses or routes.
"""
