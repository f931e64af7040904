"""nats-server clusters for tests and benchmarks: loopback ports chosen here, a store dir per
node under the caller's temporary directory, every process killed at the end (even when
the test fails; `cluster()` is a context manager and the fixtures use it)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def available() -> bool:
    return os.access(NATS_SERVER, os.X_OK)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (bound together, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(predicate, timeout: float, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Node:
    def __init__(self, root: Path, name: str, port: int, cluster_port: int, http_port: int,
                 routes: list[int], extra: str) -> None:
        self.root = root
        self.name = name
        self.port = port
        self.cluster_port = cluster_port
        self.http_port = http_port
        self.routes = routes
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = root / f"{name}.conf"
        self.store = root / f"{name}-store"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
        cluster = (
            f"cluster {{\n  name: auditpy\n  listen: 127.0.0.1:{self.cluster_port}\n"
            f"  routes: [{routes}]\n}}\n" if self.routes else ""
        )
        self.conf.write_text(
            f"server_name: {self.name}\nlisten: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f"jetstream {{\n  store_dir: \"{self.store}\"\n  max_memory_store: 64MB\n"
            f"  max_file_store: 4GB\n}}\n{cluster}{self.extra}"
        )

    def start(self) -> None:
        self.write_config()
        with open(self.root / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [NATS_SERVER, "-c", str(self.conf)], stdout=log, stderr=log,
                start_new_session=True,
            )

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/healthz", timeout=1
            ) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def routes_up(self) -> int:
        """Routes to other members up (-1 if the monitor does not answer)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/routez", timeout=1
            ) as reply:
                return int(json.loads(reply.read()).get("num_routes", 0))
        except (OSError, ValueError):
            return -1

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        path = self.root / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Cluster:
    """`size` nats-server processes with JetStream (a route mesh when size > 1)."""

    def __init__(self, root: Path, size: int = 3, extra: str = "") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        ports = free_ports(3 * size)
        cluster_ports = ports[size : 2 * size] if size > 1 else []
        self.nodes = [
            Node(root, f"n{i + 1}", ports[i], ports[size + i], ports[2 * size + i],
                 cluster_ports, extra)
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        # healthy, and every member routed to every other, so that the INFO a client gets
        # announces the whole cluster
        members = len(self.nodes) - 1
        if not wait_until(lambda: all(n.healthy() and n.routes_up() >= members
                                      for n in self.nodes), timeout, 0.1):
            logs = "\n".join(f"--- {n.name}\n{n.log()[-2000:]}" for n in self.nodes)
            raise RuntimeError(f"nats-server cluster did not become healthy:\n{logs}")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def wait_healthy(self, timeout: float = 30.0) -> bool:
        return bool(wait_until(
            lambda: all(n.healthy() for n in self.nodes if n.proc is not None), timeout, 0.1
        ))


@contextlib.contextmanager
def cluster(root: Path, size: int = 3, extra: str = "") -> Iterator[Cluster]:
    c = Cluster(root, size, extra)
    try:
        c.start()
        yield c
    finally:
        c.stop()


# -- talking to the cluster from tests (through auditpy's own client) -------------------------


def _client(urls: list[str]):  # type: ignore[no-untyped-def]
    from auditpy.nats.client import Client, NatsOptions
    from auditpy.proto.nats import parse_server_url

    return Client(NatsOptions(tuple(parse_server_url(u) for u in urls), name="pytest"))


def run(coro_fn, urls: list[str], timeout: float = 60.0):  # type: ignore[no-untyped-def]
    """Run `coro_fn(client)` with a connected client, on a loop of its own."""
    from auditpy.system import evloop

    async def main():  # type: ignore[no-untyped-def]
        client = _client(urls)
        await client.connect()
        try:
            return await evloop.wait_for(coro_fn(client), timeout)
        finally:
            client.close()

    return evloop.run(main())


def create_stream(urls: list[str], name: str = "AUDIT", subjects: tuple[str, ...] = ("audit.>",),
                  replicas: int = 3, duplicate_window_s: float = 120.0) -> None:
    from auditpy.nats import jetstream as jsapi
    from auditpy.proto import jetstream as js

    config = js.stream_config(name, list(subjects), replicas=replicas,
                              duplicate_window_s=duplicate_window_s)
    run(lambda c: jsapi.ensure_stream(c, config), urls)


def stream_messages(urls: list[str], name: str = "AUDIT") -> list[tuple[int, str, str, bytes]]:
    """Every message of the stream in stream order: (stream seq, subject, Nats-Msg-Id,
    payload), read through a throw-away durable consumer with no acks."""
    from auditpy.nats import jetstream as jsapi
    from auditpy.nats.client import new_token
    from auditpy.proto import jetstream as js
    from auditpy.proto.nats import decode_headers
    from auditpy.system import evloop

    async def read(client):  # type: ignore[no-untyped-def]
        durable = "reader" + new_token(8)
        config = {"durable_name": durable, "ack_policy": "none", "deliver_policy": "all",
                  "replay_policy": "instant", "max_waiting": 16}
        deadline = time.monotonic() + 90
        while True:  # after a node was killed, the cluster may still be electing leaders
            try:
                await jsapi.api(client, f"CONSUMER.DURABLE.CREATE.{name}.{durable}",
                                {"stream_name": name, "config": config}, 10)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await evloop.sleep(0.5)
        out = []
        try:
            while True:
                batch = await jsapi.fetch(client, name, durable, 256, 1.0)
                if not batch:
                    break
                for msg in batch:
                    seq = js.parse_ack_subject(msg.reply or b"").stream_seq
                    msg_id = decode_headers(msg.headers).get(js.MSG_ID) if msg.headers else None
                    out.append((seq, msg.subject.decode(), msg_id or "", msg.payload))
        finally:
            await jsapi.api(client, f"CONSUMER.DELETE.{name}.{durable}", None, 10)
        return out

    return run(read, urls, 300)  # type: ignore[no-any-return]


# -- certificates ------------------------------------------------------------------------------


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (both
    signed by the CA), and a second CA that signed neither."""
    def ca(name: str) -> tuple[Path, Path]:
        key, cert = directory / f"{name}.key", directory / f"{name}.pem"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}")
        return key, cert

    def leaf(authority: tuple[Path, Path], name: str, san: str) -> tuple[Path, Path]:
        key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext = directory / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", csr, "-CA", authority[1], "-CAkey", authority[0],
                 "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
        os.chmod(key, 0o600)
        return key, cert

    directory.mkdir(parents=True, exist_ok=True)
    main = ca("test-ca")
    other = ca("other-ca")
    server = leaf(main, "server", "IP:127.0.0.1,DNS:localhost")
    client = leaf(main, "client", "DNS:client")
    return {"ca": main[1], "other_ca": other[1], "server_key": server[0],
            "server_cert": server[1], "client_key": client[0], "client_cert": client[1]}


def publish(urls: list[str], lines: list[bytes], subject_of=None) -> None:  # type: ignore[no-untyped-def]
    """Store `lines` in the stream (node subjects, record IDs), 500 in flight at a time."""
    from auditpy.proto import jetstream as js
    from auditpy.system import evloop

    def subject(line: bytes) -> str:
        node = js.line_node(line) or b"none"
        return f"audit.{js.subject_token(node.decode())}"

    pick = subject_of or subject

    async def send(client):  # type: ignore[no-untyped-def]
        loop = evloop.running_loop()
        for start in range(0, len(lines), 500):
            futures = []
            for line in lines[start:start + 500]:
                future = loop.create_future()
                reply = client.request_subject(future)
                msg_id = js.record_msg_id(line, js.line_node(line) or b"none", b"test")
                client.publish(pick(line), line, reply, [(js.MSG_ID, msg_id)])
                futures.append(future)
            for future in futures:
                msg = await evloop.wait_for(future, 30)
                js.parse_pub_ack(msg.payload)

    run(send, urls, 600)
