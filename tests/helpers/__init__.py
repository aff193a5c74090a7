"""Shared test code, and no tests: real servers on free ports, the test upstreams, the SDK
clients, the Prometheus parser, SSE encoding, and readers of the real data in ../shared/data.
Test modules import from here, never from each other."""
