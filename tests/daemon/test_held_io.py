"""Requests read and answered with the interpreter lock held (daemon.held_io): the same
bytes, frames and CURVE User-Id as through pyzmq, and the control server answers the
same either way."""

from __future__ import annotations

import socket

import pytest
import zmq

from flyprep.daemon.bus import ControlServer, request
from flyprep.daemon.held_io import held_io


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_messages_and_the_curve_user_id_come_through(tmp_path):
    ctx = zmq.Context()
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    router = ctx.socket(zmq.ROUTER)
    router.curve_server = True
    router.curve_publickey, router.curve_secretkey = server_public, server_secret
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    router.bind(endpoint)
    client = ctx.socket(zmq.REQ)
    client.curve_serverkey = server_public
    client.curve_publickey, client.curve_secretkey = client_public, client_secret
    client.connect(endpoint)
    try:
        io = held_io(router)
        assert io is not None, "libzmq not found: the control server would fall back"
        assert io.recv_message() is None  # nothing yet, and no waiting
        client.send(b"x" * 100_000)
        assert router.poll(5000)
        frames, user = io.recv_message()
        assert frames[1:] == [b"", b"x" * 100_000] and user == client_public.decode()
        assert io.send([frames[0], b"", b"reply"])
        assert client.poll(5000) and client.recv() == b"reply"
        assert io.send([b"no such peer", b"", b"lost"])  # a gone peer: dropped, as by pyzmq
    finally:
        for sock in (router, client):
            sock.close(0)
        auth.stop()
        ctx.term()


@pytest.mark.parametrize("hold_lock", [True, False])
def test_the_control_server_answers_the_same_either_way(tmp_path, hold_lock):
    handlers = {"status": lambda p: {"n": 1}, "end_scan": lambda p: {"ended": p["scan"]}}
    with ControlServer(f"ipc://{tmp_path}/ctl", handlers, hold_lock=hold_lock,
                       mutating=("end_scan",)) as server:
        ep = server.endpoint
        assert request(ep, "status")["result"] == {"n": 1}
        assert request(ep, "end_scan", params={"scan": "s"})["result"] == {"ended": "s"}
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.connect(ep)
        try:
            dealer.send_multipart([b"", b'{"command": "status"}', b"extra"])
            assert dealer.poll(5000)
            assert b"expected one request frame, got 2" in dealer.recv_multipart()[-1]
            dealer.send(b'{"command": "status"}')  # no delimiter: taken too
            assert dealer.poll(5000) and b'"ok": true' in dealer.recv_multipart()[-1]
        finally:
            dealer.close(0)
        with ControlServer(f"tcp://127.0.0.1:{free_port()}", handlers, hold_lock=hold_lock,
                           mutating=("end_scan",)) as tcp:
            nack = request(tcp.endpoint, "end_scan", params={"scan": "s"})
            assert not nack["ok"] and "without CURVE" in nack["error"]
