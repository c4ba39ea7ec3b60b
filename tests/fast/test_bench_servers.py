"""The harness's servers: the ports they are given."""
import socket
from pathlib import Path

import pytest

from bench.servers import RAY_WORKER_PORTS_END, free_port


def test_free_ports_are_bindable_and_never_ones_the_kernel_hands_out():
    ephemeral_from = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if ephemeral_from <= RAY_WORKER_PORTS_END:
        pytest.skip("this kernel hands out every port above Ray's worker ports")
    for _ in range(5):
        port = free_port()
        assert RAY_WORKER_PORTS_END <= port < ephemeral_from
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))
