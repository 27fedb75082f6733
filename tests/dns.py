"""A DNS server on loopback for tests: answers A queries for names under its domains with one
address, and says NXDOMAIN to the rest (RFC 1035 over UDP, the little a resolver asks)."""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType


class LoopbackResolver:
    """Serves until closed; ``asked`` lists every name queried, in order."""

    def __init__(self, domains: tuple[str, ...], address: str = "127.0.0.1") -> None:
        self.domains = tuple(d.lower().strip(".") for d in domains)
        self.address = socket.inet_aton(address)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.asked: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                query, client = self.sock.recvfrom(512)
            except OSError:
                return
            answer = self.answer(query)
            if answer:
                self.sock.sendto(answer, client)

    def answer(self, query: bytes) -> bytes:
        if len(query) < 12:
            return b""
        ident, _flags, questions = struct.unpack("!HHH", query[:6])
        if questions != 1:
            return b""
        labels, at = [], 12
        while at < len(query) and query[at]:
            length = query[at]
            labels.append(query[at + 1 : at + 1 + length].decode("ascii", "replace"))
            at += 1 + length
        question_end = at + 5  # the zero label, then type and class
        if question_end > len(query):
            return b""
        qtype = struct.unpack("!H", query[at + 1 : at + 3])[0]
        name = ".".join(labels).lower()
        self.asked.append(name)
        ours = any(name.endswith("." + d) for d in self.domains)
        # An answer to an A question; a known name's other types: no data; an unknown name: NXDOMAIN.
        answers = 1 if ours and qtype == 1 else 0
        flags = 0x8180 if ours else 0x8183
        header = struct.pack("!HHHHHH", ident, flags, 1, answers, 0, 0)
        record = b""
        if answers:
            record = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + self.address
        return header + query[12:question_end] + record

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LoopbackResolver:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
