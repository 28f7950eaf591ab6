"""Task address allocation for the manager's allocator (shoal/manager/allocator.py).

`tasks.TaskAddresses` remembers which task holds which address per network (rebuilt from the
store at start: the store is the truth) and `tasks.attach` gives a task its NetworksAttachments.
Subnets, VNIs, VIPs and published ports are allocated by the API server in its transactions with
the pure functions of shoal/api/ipam.py.
"""
