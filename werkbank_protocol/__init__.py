"""The Werkbank wire protocol (v1), shared by the server and the device agent.

One module for both sides so that topics, message shapes, validation and
allow-list signing can never drift apart (see docs/protocol-v1.md and
docs/protocol.md for the documented additions).
"""

from werkbank_protocol.errors import ProtocolError
from werkbank_protocol.timefmt import format_ts, now_ts, parse_ts

PROTOCOL_VERSION = 1

__all__ = ["PROTOCOL_VERSION", "ProtocolError", "format_ts", "now_ts", "parse_ts"]
