"""JetStream API requests over a `Client`: streams, consumers, and the last message of a
subject.  Each function is one request with a JSON reply (`auditpy.proto.jetstream`)."""

from __future__ import annotations

import base64
import contextlib
import json

from auditpy.nats.client import Client
from auditpy.proto import jetstream as js
from auditpy.proto.jetstream import JetStreamError
from auditpy.proto.nats import Msg, decode_headers
from auditpy.system import evloop


async def api(
    client: Client, subject: str, body: dict[str, object] | None = None, timeout: float = 5.0
) -> dict[str, object]:
    payload = b"" if body is None else json.dumps(body).encode()
    msg = await client.request(f"{js.API_PREFIX}.{subject}", payload, timeout)
    return js.api_reply(msg.payload)


async def stream_info(client: Client, name: str, timeout: float = 5.0) -> dict[str, object]:
    return await api(client, f"STREAM.INFO.{name}", None, timeout)


async def ensure_stream(
    client: Client, config: dict[str, object], timeout: float = 10.0
) -> dict[str, object]:
    """Create the stream, or leave an existing one of that name as it is."""
    name = str(config["name"])
    try:
        return await api(client, f"STREAM.CREATE.{name}", config, timeout)
    except JetStreamError as exc:
        if exc.err_code != js.ERR_STREAM_NAME_IN_USE:
            raise
    return await stream_info(client, name, timeout)


async def delete_stream(client: Client, name: str, timeout: float = 10.0) -> None:
    await api(client, f"STREAM.DELETE.{name}", None, timeout)


async def consumer_info(
    client: Client, stream: str, consumer: str, timeout: float = 5.0
) -> dict[str, object]:
    return await api(client, f"CONSUMER.INFO.{stream}.{consumer}", None, timeout)


async def ensure_consumer(
    client: Client, stream: str, config: dict[str, object], timeout: float = 10.0
) -> dict[str, object]:
    """The durable consumer `config` names: its info if it exists (its settings are left
    alone, another collector may rely on them), created otherwise."""
    name = str(config["durable_name"])
    try:
        return await consumer_info(client, stream, name, timeout)
    except JetStreamError as exc:
        if exc.err_code != js.ERR_CONSUMER_NOT_FOUND:
            raise
    request: dict[str, object] = {"stream_name": stream, "config": config}
    return await api(client, f"CONSUMER.DURABLE.CREATE.{stream}.{name}", request, timeout)


async def last_msg_id(
    client: Client, stream: str, subject: str, timeout: float = 5.0
) -> str | None:
    """The ``Nats-Msg-Id`` of the newest message on `subject` in `stream` (None if the
    subject has no message, or that message has no ID)."""
    request: dict[str, object] = {"last_by_subj": subject}
    try:
        reply = await api(client, f"STREAM.MSG.GET.{stream}", request, timeout)
    except JetStreamError as exc:
        if exc.err_code == js.ERR_NO_MESSAGE_FOUND or exc.code == 404:
            return None
        raise
    message = reply.get("message")
    if not isinstance(message, dict):
        return None
    hdrs = message.get("hdrs")
    if not isinstance(hdrs, str):
        return None
    try:
        block = base64.b64decode(hdrs)
    except ValueError:
        return None
    return decode_headers(block).get(js.MSG_ID)


async def fetch(
    client: Client, stream: str, consumer: str, batch: int, expires: float = 1.0
) -> list[Msg]:
    """One pull request: up to `batch` messages, fewer if the consumer has no more before
    `expires` seconds (for tools and tests; the collector keeps requests outstanding)."""
    loop = evloop.running_loop()
    inbox = client.new_inbox()
    messages: list[Msg] = []
    done: evloop.Future[None] = loop.create_future()

    def got(msg: Msg) -> None:
        if msg.headers is not None and not msg.payload and msg.reply is None:
            status = decode_headers(msg.headers).status
            if status is not None and status != js.STATUS_IDLE_HEARTBEAT and not done.done():
                done.set_result(None)
            return
        messages.append(msg)
        if len(messages) >= batch and not done.done():
            done.set_result(None)

    sid = client.subscribe(inbox, got)
    try:
        request = {"batch": batch, "expires": int(expires * 1e9)}
        client.publish(f"{js.API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                       json.dumps(request).encode(), inbox)
        with contextlib.suppress(TimeoutError):
            await evloop.wait_for(done, expires + 5.0)
    finally:
        client.unsubscribe(sid)
    return messages
