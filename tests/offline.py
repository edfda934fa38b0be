"""A fixture for tests that must not touch the network: every name lookup and connection
attempt is recorded and refused (in any thread: downloads run in a worker thread)."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse_connect(self, address, *args):
        attempts.append(address)
        raise OSError("network unreachable (test)")

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror("name lookup refused (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connect)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    return attempts
