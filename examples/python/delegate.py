#!/usr/bin/env python3
"""Get a Matrix device of your own from matrix-linkd (delegation) and save its session.

    python3 -m venv venv && venv/bin/pip install dbus-fast
    venv/bin/python delegate.py --name "My bot" session.json            # approve the notification
    venv/bin/python delegate.py --name "My bot" --approve session.json  # or approve from here

The daemon, signed in to your account, registers an OAuth client named --name, creates a new
device and asks you to consent (its notification, then the consent page). The session (homeserver,
user_id, device_id, issuer, client_id, access_token, refresh_token, expires_in and, with
--share-secrets, the cross-signing and backup keys) arrives through a file descriptor
(Flow.TakeSession) and is written to the given path with mode 0600. Only the device ID and the user
ID are printed.

Without --share-secrets the program that uses the session must upload its device keys soon (within
the daemon's `timeouts.delegation_keys`): the daemon then signs the device, or else revokes it.

Needs dbus-fast (https://pypi.org/project/dbus-fast/), which passes file descriptors.
"""

import argparse
import asyncio
import json
import os
import secrets
import stat
import sys

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

BUS_NAME = "io.github.matrix_linkd.Linkd1"
MANAGER_PATH = "/io/github/matrix_linkd/Linkd1"
MANAGER = "io.github.matrix_linkd.Linkd1.Manager"
FLOW = "io.github.matrix_linkd.Linkd1.Flow"
PROPERTIES = "org.freedesktop.DBus.Properties"

WAITING_FOR_APPROVAL = 5
SYNCING_SECRETS = 7
SESSION_SIZE_LIMIT = 1 << 20


class LinkdError(Exception):
    """A D-Bus error reply or a failed flow."""


async def call(bus, path, interface, member, signature="", body=(), destination=BUS_NAME):
    reply = await bus.call(
        Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
    )
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body else ""
        raise LinkdError(f"{text} ({reply.error_name})")
    return reply


def open_output(path):
    """The session file, opened before anything is issued: a new or an existing regular file,
    mode 0600, never a terminal or standard output. Returns (fd, whether we created it)."""
    if path == "-":
        sys.exit("delegate.py: the session is never written to standard output")
    try:
        created = True
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            created = False
            # O_NONBLOCK: opening a FIFO must not block (it is refused below).
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        info = os.fstat(fd)
    except OSError as e:
        sys.exit(f"delegate.py: {path}: {e.strerror}")
    same_as_stdout = False
    try:
        out = os.fstat(sys.stdout.fileno())
        same_as_stdout = (out.st_dev, out.st_ino) == (info.st_dev, info.st_ino)
    except (OSError, ValueError):
        pass
    if not stat.S_ISREG(info.st_mode) or os.isatty(fd) or same_as_stdout:
        os.close(fd)
        sys.exit(f"delegate.py: {path}: not a regular file of its own (never a terminal or stdout)")
    os.fchmod(fd, 0o600)
    return fd, created


def read_session(fd):
    """Reads the sealed memfd from offset 0 to its end (at most 1 MiB) and closes it."""
    try:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError:
            pass  # not seekable (a pipe): read from where it is
        chunks, size = [], 0
        while size <= SESSION_SIZE_LIMIT:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > SESSION_SIZE_LIMIT:
            raise LinkdError("the session is larger than 1 MiB")
        try:
            return json.loads(b"".join(chunks))
        except ValueError as e:  # never quote the content: it holds the tokens
            where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
            raise LinkdError(f"the session is not the expected JSON{where}") from None
    finally:
        os.close(fd)


async def delegate(args):
    bus = await MessageBus(bus_type=BusType.SESSION, negotiate_unix_fd=True).connect()

    # The flow's object path is known before it exists (the portal Request pattern): subscribe
    # to its signals first, so that no state change and no Response can be missed.
    token = "py" + secrets.token_hex(8)
    sender = bus.unique_name.lstrip(":").replace(".", "_")
    flow = f"{MANAGER_PATH}/flow/{sender}/{token}"
    events = asyncio.Queue()

    def on_message(msg):
        if msg.message_type != MessageType.SIGNAL or msg.path != flow:
            return None
        if msg.interface == PROPERTIES and msg.member == "PropertiesChanged" and msg.body[0] == FLOW:
            if "State" in msg.body[1]:
                events.put_nowait(("state", msg.body[1]["State"].value))
        elif msg.interface == FLOW and msg.member == "Response":
            events.put_nowait(("response", msg.body[0], msg.body[1]))
        return None

    bus.add_message_handler(on_message)
    rule = f"type='signal',sender='{BUS_NAME}',path='{flow}'"
    await call(bus, "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", [rule],
               destination="org.freedesktop.DBus")

    options = {
        "handle_token": Variant("s", token),
        "client_name": Variant("s", args.name),
        "share_secrets": Variant("b", args.share_secrets),
        # This script exits once the session is saved, before the program that uses it uploads
        # its device keys: a detached flow outlives our connection (an attached one would be
        # cancelled, and the session revoked, when we leave the bus).
        "detached": Variant("b", True),
    }
    if args.display_name:
        options["device_display_name"] = Variant("s", args.display_name)
    reply = await call(bus, MANAGER_PATH, MANAGER, "StartDelegation", "a{sv}", [options])
    if reply.body[0] != flow:
        raise LinkdError(f"the daemon returned an unexpected flow path {reply.body[0]}")

    ended = False
    try:
        reply = await call(bus, flow, PROPERTIES, "Get", "ss", [FLOW, "State"])
        state, seen = reply.body[0].value, set()
        while True:
            if state == WAITING_FOR_APPROVAL and state not in seen:
                if args.approve:
                    await call(bus, flow, FLOW, "Approve")  # opens the consent page
                else:
                    print("waiting for your consent: approve the notification of matrix-linkd",
                          file=sys.stderr)
            elif state == SYNCING_SECRETS:
                reply = await call(bus, flow, FLOW, "TakeSession")
                # `h` arrives as an index into the message's file descriptors.
                return read_session(reply.unix_fds[reply.body[0]])
            seen.add(state)
            event = await events.get()
            if event[0] == "state":
                state = event[1]
            else:
                _, code, results = event
                ended = True
                if code == 1:
                    raise LinkdError("the delegation was cancelled")
                error = results.get("error", Variant("s", "")).value
                message = results.get("message", Variant("s", "")).value
                raise LinkdError(f"the delegation failed: {message} ({error})")
    except BaseException:
        # Ctrl-C, a failed call or an unreadable session: end the flow, so that the daemon revokes
        # whatever it issued.
        if not ended:
            try:
                await call(bus, flow, FLOW, "Cancel")
            except Exception:
                pass
        raise
    finally:
        bus.disconnect()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="where to write the session JSON (mode 0600)")
    parser.add_argument("--name", default="Matrix client", help="the program's name, shown to the user")
    parser.add_argument("--display-name", help="display name of the new device (default: --name)")
    parser.add_argument("--share-secrets", action="store_true",
                        help="include the cross-signing and backup keys (the program signs its own device)")
    parser.add_argument("--approve", action="store_true",
                        help="approve from here (opens the consent page) instead of from the notification")
    args = parser.parse_args()

    out_fd, created = open_output(args.output)
    with os.fdopen(out_fd, "wb") as out:
        try:
            session = asyncio.run(delegate(args))
        except (LinkdError, OSError, ValueError, KeyboardInterrupt) as e:
            if created:
                os.unlink(args.output)
            sys.exit(130 if isinstance(e, KeyboardInterrupt) else f"delegate.py: {e}")
        out.truncate(0)
        out.write(json.dumps(session, indent=2).encode() + b"\n")
        out.flush()
        os.fsync(out.fileno())
    print(f"device ID: {session['device_id']}")
    print(f"user ID:   {session['user_id']}")


if __name__ == "__main__":
    main()
