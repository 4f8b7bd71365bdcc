"""The os-ken internals the OpenFlow connection (controller/ofp/connection.py) and listener
build on, with the shapes they are used in: an os-ken upgrade that changes them fails here,
not in a running controller. pyproject.toml pins os-ken to the 4.2 series for this reason."""

from __future__ import annotations

import inspect
import queue
import threading
from importlib.metadata import version

from os_ken.base import app_manager
from os_ken.controller import controller as ofc
from os_ken.controller import ofp_handler
from os_ken.controller.handler import HANDSHAKE_DISPATCHER
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from controller.ofp.connection import Connection
from controller.ofp.listener import Listener


class FakeSocket:
    def setsockopt(self, *args):
        pass

    def settimeout(self, *args):
        pass


def test_the_pinned_series_is_installed():
    major, minor, *_ = version("os-ken").split(".")
    assert (int(major), int(minor)) == (4, 2)


def test_datapath_internals_the_connection_uses():
    dp = ofc.Datapath(FakeSocket(), ("127.0.0.1", 1))
    assert dp.state == HANDSHAKE_DISPATCHER
    assert isinstance(dp.send_q, queue.Queue)
    assert isinstance(dp._send_q_sem, threading.BoundedSemaphore | threading.Semaphore)
    assert callable(dp._send_loop) and callable(dp.set_state) and callable(dp.close)
    dp.set_version(ofproto_v1_3.OFP_VERSION)  # as the hello exchange does
    assert dp.ofproto is ofproto_v1_3 and dp.ofproto_parser is ofproto_v1_3_parser
    assert "ofp_brick" in vars(dp) and "is_active" in vars(dp)
    assert list(inspect.signature(ofc.Datapath.__init__).parameters) == [
        "self", "socket", "address",
    ]  # fmt: skip
    assert issubclass(Connection, ofc.Datapath)


def test_the_handler_the_listener_replaces():
    assert issubclass(Listener, ofp_handler.OFPHandler)
    assert callable(app_manager.OSKenApp.start)
    assert hasattr(ofproto_v1_3_parser, "msg_parser")  # what a connection parses with
