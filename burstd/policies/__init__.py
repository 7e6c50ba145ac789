"""Placement policies for the controller: which worker gets the next queued job.

`burstd.policies.routers` holds the routers (``roundrobin``, ``power2``, ``biased``) behind one
small interface, `Router`, plus `make_router` to build one by its configured name. Everything here
is plain synchronous stdlib Python: no I/O, no clock, no trio or purerpc, so the job table and the
tests can drive it directly.
"""
