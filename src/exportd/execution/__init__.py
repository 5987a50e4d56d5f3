"""Running tasks: the worker pool and its janitor, partition attempts under leases, the
coordinator (plan, header merge, assembly, manifest, cleanup) and heartbeats."""
