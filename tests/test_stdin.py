"""system.stdin: a plugin's input read from the loop, whatever stdin is."""

from __future__ import annotations

import os
from pathlib import Path

from auditpy.system import evloop
from auditpy.system.stdin import StdinReader


def read_all(fd: int, chunk: int = 4) -> tuple[bool, list[bytes]]:
    async def main() -> tuple[bool, list[bytes]]:
        reader = StdinReader(evloop.running_loop(), fd, chunk)
        pollable = reader.pollable
        chunks = []
        try:
            while data := await reader.read():
                chunks.append(data)
        finally:
            reader.close()
        return pollable, chunks
    return evloop.run(main())


def test_a_pipe_is_read_as_it_becomes_readable() -> None:
    r, w = os.pipe()
    try:
        async def main() -> list[bytes]:
            loop = evloop.running_loop()
            reader = StdinReader(loop, r, 64)
            assert reader.pollable
            got = []
            loop.call_later(0.01, os.write, w, b"first")
            got.append(await reader.read())
            loop.call_soon(os.write, w, b"second")
            got.append(await reader.read())
            loop.call_soon(os.close, w)
            got.append(await reader.read())
            reader.close()
            return got
        assert evloop.run(main()) == [b"first", b"second", b""]
    finally:
        os.close(r)


def test_a_regular_file_is_read_directly_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "records"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_all(fd) == (False, [b"0123", b"4567", b"89"])
    finally:
        os.close(fd)


def test_dev_null_which_epoll_refuses_is_read_directly() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        assert read_all(fd) == (False, [])
    finally:
        os.close(fd)
