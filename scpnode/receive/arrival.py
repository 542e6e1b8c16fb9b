"""What a data set file learns while its bytes arrive: their SHA-256 and the header.

The scanner sends nothing more until our C-STORE response, so whatever the handler does after
the last fragment is on every instance's critical path. Reading the header back from the file
(~1 ms per CT slice while receiving) and waiting for its hash (0.4 ms of SHA-256, on a thread
that also waited for the GIL behind the header walk) were most of the handler's 1.9 ms
(docs/performance.md). Neither needs the whole data set: the hash can follow the writes, and
the header lies in the first fragment, which arrives while the scanner is still sending the
pixels.

An `Arrival` is fed every byte written to one of our ready files (ready_files.py), on the DUL
thread: it hashes them, and once it holds the first `PREFIX` bytes (or the handler says the
data set is complete) it reads the header from them, as `read_header` would read it from the
file (`headers.header_from_prefix`). The handler uses both when it has them and reads the file
otherwise: a header the first bytes do not settle, and every refusal, keep the old path and
its error texts.
"""

from __future__ import annotations

import hashlib

from scpnode.header_walk import FIRST_READ
from scpnode.headers import InstanceHeader, header_from_prefix

PREFIX = FIRST_READ  # what `walk_header` reads first: the same bytes give the same answer


class Arrival:
    """The hash and header of one data set file, learnt from the bytes written to it."""

    __slots__ = ("_header", "_inode", "_looked", "_prefix", "_sha256", "_size")

    def __init__(self, inode: int) -> None:
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._prefix = bytearray()
        self._looked = False
        self._header: InstanceHeader | None = None
        self._inode = inode

    def feed(self, data: bytes) -> None:
        """Bytes just written to the file, in order (the DUL thread's `write`)."""
        self._sha256.update(data)  # releases the GIL for data over 2 KiB
        self._size += len(data)
        if not self._looked:
            self._prefix += data[: PREFIX - len(self._prefix)]
            if len(self._prefix) >= PREFIX:
                self._look(whole=False)

    def complete(self) -> tuple[tuple[str, int], InstanceHeader | None]:
        """The file's (SHA-256, size), and its header or None (read the file): call once the
        last fragment has been written, from the thread that will use them."""
        if not self._looked:
            self._look(whole=True)
        return (self._sha256.hexdigest(), self._size), self._header

    def _look(self, *, whole: bool) -> None:
        self._looked = True
        prefix, self._prefix = bytes(self._prefix), bytearray()
        self._header = header_from_prefix(prefix, whole=whole, inode=self._inode)
