"""`shoal lab`: several Shoal hosts on one machine, each a network namespace on a private switch.

Layout (docs in `names.py`): a switch namespace `shoal-lab-LAB-sw` holding bridge `br0`; per host
`nodeI` a network namespace `shoal-lab-LAB-nodeI` whose `eth0` is wired to the switch, a
persistent UTS namespace (hostname `nodeI`), and a `shoald` started in both namespaces but in the
root mount namespace. The lab speaks to its daemons only over HTTP (`client.py`) and builds hosts
with `shoal.hostnet`; it imports no server code. Entry points: `up.py` (`up`), `ops.py` (`stop`,
`start`, `link`, `exec_argv`, `status`), `down.py` (`down`, `down_all`).
"""
