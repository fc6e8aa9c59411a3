#!/usr/bin/env python3
"""Sign a new device in to your Matrix account through matrix-linkd: the daemon shows the QR code,
the new device scans it. What a Python applet (a tray icon, a panel plugin) would do.

    python3 examples/python/grant.py                       # asks for the check code and consent
    python3 examples/python/grant.py --yes --qr-png qr.png

Options: --yes (approve without asking; an applet shows its own dialog), --no-notify (no daemon
notification and no browser for this flow), --qr-png FILE (also write the QR code as PNG).
Environment: LINKD_CHECK_CODE_FILE (read the two-digit check code from this file, waiting until it
exists, instead of asking on the terminal), LINKD_INTERFACES_DIR (where
io.github.matrix_linkd.Linkd1.{Manager,Flow}.xml are; default ../../dbus beside this script, then
/usr/share/dbus-1/interfaces and /usr/local/share/dbus-1/interfaces).

Needs PyGObject (Debian: python3-gi, gir1.2-glib-2.0), nothing from PyPI.

The pattern, as for xdg-desktop-portal requests: build the proxies from the installed interface
XML, create the flow's proxy (which subscribes to its signals) at the path the flow will have
*before* StartGrant, so that no State change and no Response is missed; follow `State` through
PropertiesChanged, and end on the unicast `Response`.
"""

import argparse
import os
import random
import re
import sys

from gi.repository import Gio, GLib

BUS_NAME = "io.github.matrix_linkd.Linkd1"
MANAGER_PATH = "/io/github/matrix_linkd/Linkd1"
MANAGER_IFACE = "io.github.matrix_linkd.Linkd1.Manager"
FLOW_IFACE = "io.github.matrix_linkd.Linkd1.Flow"

QR_READY = 2
WAITING_FOR_CHECK_CODE = 3
WAITING_FOR_APPROVAL = 5
WAITING_FOR_TOKEN = 6
SYNCING_SECRETS = 7


def say(line):
    print(line, flush=True)


def interface_info(name):
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = [
        os.environ.get("LINKD_INTERFACES_DIR"),
        os.path.join(here, "..", "..", "dbus"),
        "/usr/share/dbus-1/interfaces",
        "/usr/local/share/dbus-1/interfaces",
    ]
    for d in filter(None, dirs):
        path = os.path.join(d, f"{name}.xml")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return Gio.DBusNodeInfo.new_for_xml(f.read()).lookup_interface(name)
    sys.exit(f"grant.py: {name}.xml not found in {', '.join(filter(None, dirs))}")


class Grant:
    def __init__(self, args):
        self.args = args
        self.loop = GLib.MainLoop()
        self.exit_code = 1
        self.last_state = -1
        self.last_serial = 0
        self.bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
        self.manager = Gio.DBusProxy.new_sync(
            self.bus, Gio.DBusProxyFlags.NONE, interface_info(MANAGER_IFACE),
            BUS_NAME, MANAGER_PATH, MANAGER_IFACE, None,
        )
        # The flow's path is predictable from our unique name and the token we choose.
        self.token = f"py_{random.getrandbits(30)}"
        sender = self.bus.get_unique_name()[1:].replace(".", "_")
        self.path = f"{MANAGER_PATH}/flow/{sender}/{self.token}"
        # Created (and so subscribed) before the flow exists: its first property read fails
        # silently.
        self.flow = Gio.DBusProxy.new_sync(
            self.bus, Gio.DBusProxyFlags.NONE, interface_info(FLOW_IFACE),
            BUS_NAME, self.path, FLOW_IFACE, None,
        )
        self.flow.connect("g-properties-changed", self.on_properties_changed)
        self.flow.connect("g-signal", self.on_signal)

    def call(self, member, params=None):
        return self.flow.call_sync(member, params, Gio.DBusCallFlags.NONE, -1, None)

    def prop(self, name):
        reply = self.bus.call_sync(
            BUS_NAME, self.path, "org.freedesktop.DBus.Properties", "Get",
            GLib.Variant("(ss)", (FLOW_IFACE, name)), None, Gio.DBusCallFlags.NONE, -1, None,
        )
        return reply.unpack()[0]

    def start(self):
        options = {"handle_token": GLib.Variant("s", self.token)}
        if self.args.no_notify:
            options["notify"] = GLib.Variant("b", False)
            options["open_uri"] = GLib.Variant("b", False)
        (path,) = self.manager.call_sync(
            "StartGrant", GLib.Variant("(a{sv})", (options,)), Gio.DBusCallFlags.NONE, -1, None
        ).unpack()
        if path != self.path:
            raise RuntimeError(f"the daemon chose {path}, not {self.path}")
        # Every change was announced to us (we subscribed first), but the announcements wait for
        # the main loop: act on the state the flow is in now; on_state skips the older ones.
        self.on_state(self.prop("State"))

    def run(self):
        def start():
            try:
                self.start()
            except GLib.Error as e:
                self.fail(e.message)
            except RuntimeError as e:
                self.fail(str(e))
            return GLib.SOURCE_REMOVE

        GLib.idle_add(start)
        self.loop.run()
        return self.exit_code

    def fail(self, message):
        print(f"grant.py: {message}", file=sys.stderr)
        self.exit_code = 2
        self.loop.quit()

    def show_qr(self):
        (art,) = self.call("GetQrCode", GLib.Variant("(s)", ("utf8",))).unpack()
        say("Scan this QR code with the new device:")
        say(bytes(art).decode())
        if self.args.qr_png:
            (png,) = self.call("GetQrCode", GLib.Variant("(s)", ("png",))).unpack()
            with open(self.args.qr_png, "wb") as f:
                f.write(bytes(png))
            say(f"QR code written to {self.args.qr_png}")

    def send_code(self, text):
        if not re.fullmatch(r"\d{1,2}", text):
            say(f'"{text}" is not a two-digit code; cancelling.')
            self.call("Cancel")
            return
        self.call("CheckCode", GLib.Variant("(y)", (int(text),)))

    def ask_code(self):
        say("Enter the two-digit code shown on the new device:")
        path = os.environ.get("LINKD_CHECK_CODE_FILE")
        if not path:
            self.send_code(input("code: ").strip())
            return

        def poll():
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read().strip()
            except FileNotFoundError:
                return GLib.SOURCE_CONTINUE
            if not text:
                return GLib.SOURCE_CONTINUE
            self.guard(self.send_code, text)
            return GLib.SOURCE_REMOVE

        GLib.timeout_add(100, poll)

    def guard(self, f, *args):
        try:
            f(*args)
        except GLib.Error as e:
            say(f"error: {e.message}")

    def on_state(self, state):
        # States only move forward in a flow (a replaced QR code keeps QrReady): one action each.
        if state <= self.last_state:
            return
        self.last_state = state
        if state == QR_READY:
            self.last_serial = self.prop("QrCodeSerial")
            self.guard(self.show_qr)
        elif state == WAITING_FOR_CHECK_CODE:
            self.guard(self.ask_code)
        elif state == WAITING_FOR_APPROVAL:
            say(f"A new device asks to sign in. Consent page: {self.prop('VerificationUri')}")
            ok = self.args.yes or input("Approve this new device? [y/N] ").strip().lower() == "y"
            self.guard(self.call, "Approve" if ok else "Cancel")
        elif state == WAITING_FOR_TOKEN:
            say("Waiting for the new device to sign in…")
        elif state == SYNCING_SECRETS:
            say("Sharing encryption secrets…")

    def on_properties_changed(self, _proxy, changed, _invalidated):
        values = changed.unpack()
        if "State" in values:
            self.on_state(values["State"])
        serial = values.get("QrCodeSerial")
        if serial is not None and serial > self.last_serial and self.last_state == QR_READY:
            self.last_serial = serial
            say("The QR code expired before it was scanned.")
            self.guard(self.show_qr)

    def on_signal(self, _proxy, _sender, signal, params):
        if signal != "Response":
            return
        response, results = params.unpack()
        if response == 0:
            say(f"Done: {results.get('user_id', '')} signed in as device {results.get('device_id', '')}.")
            self.exit_code = 0
        elif response == 1:
            say("Cancelled.")
            self.exit_code = 1
        else:
            say(f"Failed: {results.get('message', '')} ({results.get('error', '')})")
            self.exit_code = 2
        self.loop.quit()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--yes", action="store_true", help="approve without asking")
    parser.add_argument("--no-notify", action="store_true", help="no notification, no browser")
    parser.add_argument("--qr-png", metavar="FILE", help="also write the QR code as PNG to FILE")
    return Grant(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
