"""Switch connections as the control core sees them: each os-ken datapath gets a number
(``conn``), its events become the core's typed inputs, and the core's requests become
os-ken messages written to it. Used from the controller's loop thread only."""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from os_ken.controller import ofp_event
from os_ken.ofproto import ofproto_v1_3

from controller.core import events as ev
from controller.core.control import Core
from controller.core.switchsync import ReadBack
from controller.ofp import ofmsg

LOG = logging.getLogger("nfsteer.controller")
OFP = ofproto_v1_3
SENT_HISTORY = 8192  # recent messages per switch, to name the cause of an error reply
SEND_CHUNK = 64 * 1024  # bytes of OpenFlow messages handed to a connection at once
# duration_*: the port's age on the switch when it read the counters, a clock for rates.
PORT_STATS_KEYS = (
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "duration_sec", "duration_nsec"
)  # fmt: skip
# (part, its parser in controller.ofp.ofmsg), looked up when used
READ_BACK_PARTS: dict[type, tuple[str, str]] = {
    ofp_event.EventOFPPortDescStatsReply: ("ports", "parse_port_desc"),
    ofp_event.EventOFPFlowStatsReply: ("flows", "parse_flow_stats"),
    ofp_event.EventOFPGroupDescStatsReply: ("groups", "parse_group_desc"),
}


class Links:
    def __init__(self, core: Core):
        self.core = core
        self.datapaths: dict[int, Any] = {}  # conn -> os-ken datapath
        self._conns: dict[int, int] = {}  # id(datapath) -> conn
        self._numbers = itertools.count(1)
        self._sent: dict[int, OrderedDict[int, Any]] = {}  # conn -> xid -> message

    def conn_of(self, dp: Any) -> int | None:
        return self._conns.get(id(dp))

    def by_name(self) -> dict[str, Any]:
        """Connected switches' datapaths by switch name."""
        return {
            name: self.datapaths[conn]
            for name, conn in self.core.connections().items()
            if conn in self.datapaths
        }

    # -- events in ----------------------------------------------------------------------------

    def translate(self, event: Any) -> ev.Input | None:
        """The core's input for an os-ken event, or None when it means nothing to the core."""
        if isinstance(event, ofp_event.EventOFPStateChange):
            return self._gone(event.datapath)
        msg = event.msg
        if isinstance(event, ofp_event.EventOFPSwitchFeatures):
            return self._connected(msg)
        conn = self.conn_of(msg.datapath)
        if conn is None:
            return None
        if isinstance(event, ofp_event.EventOFPFlowStatsReply) and (
            self.core.expects_slot_counters(conn, msg.xid)
        ):
            entries = tuple(ofmsg.parse_slot_counters(msg.body))
            return ev.SlotCounters(conn, msg.xid, entries, _more(msg))
        part = READ_BACK_PARTS.get(type(event))
        if part is not None:
            if not self.core.reading_back(conn):
                return None
            data = ReadBack()
            parse: Callable[[Any, ReadBack], None] = getattr(ofmsg, part[1])
            parse(msg.body, data)
            return ev.ReadBackPart(conn, part[0], data, _more(msg))
        return self._message(conn, event, msg)

    def _message(self, conn: int, event: Any, msg: Any) -> ev.Input | None:
        if isinstance(event, ofp_event.EventOFPPortStatus):
            port = msg.desc
            if port.port_no > OFP.OFPP_MAX:
                return None
            up = msg.reason != OFP.OFPPR_DELETE and ofmsg.port_is_up(port)
            return ev.PortStatus(conn, port.port_no, up)
        if isinstance(event, ofp_event.EventOFPPortStatsReply):
            stats = {
                st.port_no: {k: int(getattr(st, k)) for k in PORT_STATS_KEYS}
                for st in msg.body
                if st.port_no <= OFP.OFPP_MAX
            }
            return ev.PortStats(conn, stats)
        if isinstance(event, ofp_event.EventOFPBarrierReply):
            return ev.BarrierReply(conn, msg.xid)
        if isinstance(event, ofp_event.EventOFPErrorMsg):
            self._log_error(conn, msg)
            fenced = ofmsg.fencing_error(msg.type, msg.code)
            return ev.ErrorReply(conn, msg.xid, msg.type, msg.code, fenced)
        if isinstance(event, ofp_event.EventOFPRoleReply):
            return ev.RoleReply(conn, msg.role, msg.generation_id)
        if isinstance(event, ofp_event.EventOFPExperimenter):
            role = ofmsg.parse_role_status(msg)
            return None if role is None else ev.RoleStatus(conn, *role)
        return None

    def _connected(self, msg: Any) -> ev.SwitchConnected:
        dp = msg.datapath
        conn = self._conns.get(id(dp))
        if conn is None:
            conn = next(self._numbers)
            self._conns[id(dp)] = conn
            self.datapaths[conn] = dp
            self._sent[conn] = OrderedDict()
        live = frozenset(c for c, d in self.datapaths.items() if getattr(d, "is_active", True))
        # msg.datapath_id, not dp.id: os-ken's handler that sets dp.id runs in another
        # thread and may not have run yet.
        return ev.SwitchConnected(conn, msg.datapath_id, _address(dp.address), live)

    def _gone(self, dp: Any) -> ev.SwitchGone | None:
        conn = self._conns.pop(id(dp), None)
        if conn is None:
            return None
        self.datapaths.pop(conn, None)
        self._sent.pop(conn, None)
        return ev.SwitchGone(conn)

    def _log_error(self, conn: int, msg: Any) -> None:
        cause = self._sent.get(conn, {}).get(msg.xid)
        LOG.error(
            "switch %s: error type=%d code=%d for xid %d: %s",
            self.core.switch_of(conn) or getattr(msg.datapath, "id", "?"),
            msg.type,
            msg.code,
            msg.xid,
            ofmsg.describe(cause) if cause is not None else "message no longer known",
        )

    # -- messages out -------------------------------------------------------------------------

    def send(self, out: ev.Send) -> None:
        """Write the core's requests to the connection, in chunks of several messages: one
        queue hand-off and one write per chunk instead of per message, which is most of the
        cost of a change that moves many slots."""
        dp = self.datapaths.get(out.conn)
        if dp is None:
            return  # gone: the core learns it from the connection's end
        msgs = []
        for xid, request in out.messages:
            for msg in ofmsg.request_messages(dp, request):
                msg.set_xid(xid)
                msgs.append(msg)
        self.write(out.conn, msgs)

    def send_raw(self, conn: int, msgs: list[Any]) -> list[int]:
        """Send messages built outside the core (diagnostics), numbered by os-ken."""
        dp = self.datapaths[conn]
        for msg in msgs:
            dp.set_xid(msg)
        self.write(conn, msgs)
        return [msg.xid for msg in msgs]

    def write(self, conn: int, msgs: list[Any]) -> None:
        dp = self.datapaths[conn]
        sent = self._sent[conn]
        chunk = bytearray()
        for msg in msgs:
            msg.serialize()
            sent[msg.xid] = msg
            chunk += msg.buf
            if len(chunk) >= SEND_CHUNK:
                dp.send(bytes(chunk))
                chunk.clear()
        if chunk:
            dp.send(bytes(chunk))
        while len(sent) > SENT_HISTORY:
            sent.popitem(last=False)

    def drop(self, conn: int) -> None:
        """Close a connection; the switch reconnects and is read back."""
        sock = getattr(self.datapaths.get(conn), "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _more(msg: Any) -> bool:
    return bool(msg.flags & OFP.OFPMPF_REPLY_MORE)


def _address(addr: Any) -> str:
    return str(addr)
