"""Ports handed to child processes: never from the kernel's ephemeral range, which outgoing
connections draw from between our check and the child's bind."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tideserve import procs, serving


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    ports = [procs.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(procs._FIXED_PORTS_FROM <= port < procs._ephemeral_ports_start() for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder:
        port = procs.free_port()
        holder.bind(("127.0.0.1", port))
        holder.listen()
        # The walk would come round to `port` only after every other port: start it there.
        monkeypatch.setattr(procs, "_candidate_ports", iter([port, port + 1]))
        assert procs.free_port() == port + 1


def test_a_server_on_a_taken_port_exits_naming_the_address() -> None:
    async def bind(address: str) -> None:
        serving.bind(serving.new_server(), address)  # a grpc.aio server needs a running loop

    with socket.socket() as taken:
        # Bound without SO_REUSEPORT, as an outgoing connection's socket is.
        taken.bind(("127.0.0.1", procs.free_port()))
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(SystemExit, match=f"cannot listen on {address}"):
            asyncio.run(bind(address))
