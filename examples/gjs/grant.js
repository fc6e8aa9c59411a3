#!/usr/bin/env -S gjs -m
// Sign a new device in to your Matrix account through matrix-linkd, the way a GNOME Shell
// extension (or any GJS program) would: the daemon shows the QR code, the new device scans it.
//
//     gjs -m examples/gjs/grant.js                 # asks for the check code and your consent
//     gjs -m examples/gjs/grant.js --yes --qr-png /tmp/qr.png
//
// Options:
//   --yes          approve without asking (a shell extension shows its own dialog instead)
//   --no-notify    no daemon notification and no browser for this flow (tests)
//   --qr-png FILE  also write the QR code as PNG to FILE (what an applet would put in an St.Icon)
// Environment:
//   LINKD_CHECK_CODE_FILE  read the two-digit check code from this file (waits until it exists)
//                          instead of asking on the terminal
//   LINKD_INTERFACES_DIR   where io.github.matrix_linkd.Linkd1.{Manager,Flow}.xml are (default:
//                          ../../dbus beside this script, then /usr/share/dbus-1/interfaces and
//                          /usr/local/share/dbus-1/interfaces)
//
// The pattern, as for xdg-desktop-portal requests: build the proxies from the installed interface
// XML, create the flow's proxy (which subscribes to its signals) at the path the flow will have
// *before* StartGrant, so no State change and no Response is missed; then follow `State`
// through PropertiesChanged, and end on the unicast `Response`.

import Gio from 'gi://Gio';
import GLib from 'gi://GLib';
import System from 'system';

const BUS_NAME = 'io.github.matrix_linkd.Linkd1';
const MANAGER_PATH = '/io/github/matrix_linkd/Linkd1';
const MANAGER_IFACE = 'io.github.matrix_linkd.Linkd1.Manager';
const FLOW_IFACE = 'io.github.matrix_linkd.Linkd1.Flow';

const State = {
    QR_READY: 2,
    WAITING_FOR_CHECK_CODE: 3,
    SHOWING_CHECK_CODE: 4,
    WAITING_FOR_APPROVAL: 5,
    WAITING_FOR_TOKEN: 6,
    SYNCING_SECRETS: 7,
};

const args = ARGV.slice();
const yes = args.includes('--yes');
const noNotify = args.includes('--no-notify');
const qrPngIndex = args.indexOf('--qr-png');
const qrPng = qrPngIndex >= 0 ? args[qrPngIndex + 1] : null;

// UTF-8 whatever the locale (print() converts to the locale's charset: the QR code's blocks).
const stdout = new Gio.UnixOutputStream({fd: 1, close_fd: false});
function say(line) {
    stdout.write_all(new TextEncoder().encode(`${line}\n`), null);
}

function interfaceInfo(name) {
    const here = GLib.path_get_dirname(GLib.filename_from_uri(import.meta.url)[0]);
    const dirs = [
        GLib.getenv('LINKD_INTERFACES_DIR'),
        GLib.build_filenamev([here, '..', '..', 'dbus']),
        '/usr/share/dbus-1/interfaces',
        '/usr/local/share/dbus-1/interfaces',
    ].filter(d => d);
    for (const dir of dirs) {
        const path = GLib.build_filenamev([dir, `${name}.xml`]);
        if (!GLib.file_test(path, GLib.FileTest.EXISTS))
            continue;
        const [, bytes] = GLib.file_get_contents(path);
        const node = Gio.DBusNodeInfo.new_for_xml(new TextDecoder().decode(bytes));
        return node.lookup_interface(name);
    }
    throw new Error(`${name}.xml not found in ${dirs.join(', ')}`);
}

function readLine(prompt) {
    say(prompt);
    const stdin = new Gio.DataInputStream({base_stream: new Gio.UnixInputStream({fd: 0})});
    const [line] = stdin.read_line_utf8(null);
    return (line ?? '').trim();
}

const loop = new GLib.MainLoop(null, false);
let exitCode = 1;

function finish(code) {
    exitCode = code;
    loop.quit();
}

function main() {
    const bus = Gio.bus_get_sync(Gio.BusType.SESSION, null);
    const manager = Gio.DBusProxy.new_sync(bus, Gio.DBusProxyFlags.NONE, interfaceInfo(MANAGER_IFACE),
        BUS_NAME, MANAGER_PATH, MANAGER_IFACE, null);

    // The flow's path is predictable from our unique name and the token we choose.
    const token = `gjs_${GLib.random_int_range(0, 1 << 30)}`;
    const sender = bus.get_unique_name().slice(1).replace(/\./g, '_');
    const flowPath = `${MANAGER_PATH}/flow/${sender}/${token}`;
    // Created (and so subscribed) before the flow exists: its first property read fails silently.
    const flow = Gio.DBusProxy.new_sync(bus, Gio.DBusProxyFlags.NONE, interfaceInfo(FLOW_IFACE),
        BUS_NAME, flowPath, FLOW_IFACE, null);
    const call = (member, params = null) =>
        flow.call_sync(member, params, Gio.DBusCallFlags.NONE, -1, null);
    const property = name => bus.call_sync(BUS_NAME, flowPath, 'org.freedesktop.DBus.Properties', 'Get',
        new GLib.Variant('(ss)', [FLOW_IFACE, name]), null, Gio.DBusCallFlags.NONE, -1, null)
        .deepUnpack()[0].deepUnpack();

    let lastState = -1;
    let lastSerial = 0;
    const showQr = () => {
        const art = call('GetQrCode', new GLib.Variant('(s)', ['utf8'])).deepUnpack()[0];
        say('Scan this QR code with the new device:');
        say(new TextDecoder().decode(art));
        if (qrPng) {
            const png = call('GetQrCode', new GLib.Variant('(s)', ['png'])).deepUnpack()[0];
            GLib.file_set_contents(qrPng, png);
            say(`QR code written to ${qrPng}`);
        }
    };
    const askCode = () => {
        const file = GLib.getenv('LINKD_CHECK_CODE_FILE');
        const send = text => {
            const code = parseInt(text, 10);
            if (!/^\d{1,2}$/.test(text) || code > 99) {
                say(`"${text}" is not a two-digit code; cancelling.`);
                call('Cancel');
                return;
            }
            call('CheckCode', new GLib.Variant('(y)', [code]));
        };
        say('Enter the two-digit code shown on the new device:');
        if (!file) {
            send(readLine('code: '));
            return;
        }
        GLib.timeout_add(GLib.PRIORITY_DEFAULT, 100, () => {
            if (!GLib.file_test(file, GLib.FileTest.EXISTS))
                return GLib.SOURCE_CONTINUE;
            const [, bytes] = GLib.file_get_contents(file);
            const text = new TextDecoder().decode(bytes).trim();
            if (text === '')
                return GLib.SOURCE_CONTINUE;
            send(text);
            return GLib.SOURCE_REMOVE;
        });
    };
    // States only move forward in a flow (a replaced QR code keeps QrReady): one action each.
    const onState = state => {
        if (state <= lastState)
            return;
        lastState = state;
        try {
            switch (state) {
            case State.QR_READY:
                lastSerial = property('QrCodeSerial');
                showQr();
                break;
            case State.WAITING_FOR_CHECK_CODE:
                askCode();
                break;
            case State.WAITING_FOR_APPROVAL: {
                const uri = property('VerificationUri');
                say(`A new device asks to sign in. Consent page: ${uri}`);
                const ok = yes || readLine('Approve this new device? [y/N]').toLowerCase() === 'y';
                call(ok ? 'Approve' : 'Cancel');
                break;
            }
            case State.WAITING_FOR_TOKEN:
                say('Waiting for the new device to sign in…');
                break;
            case State.SYNCING_SECRETS:
                say('Sharing encryption secrets…');
                break;
            }
        } catch (e) {
            say(`error: ${e.message}`);
        }
    };

    flow.connect('g-properties-changed', (_proxy, changed) => {
        const values = changed.deepUnpack();
        if ('State' in values)
            onState(values.State.deepUnpack());
        if ('QrCodeSerial' in values) {
            const serial = values.QrCodeSerial.deepUnpack();
            if (serial > lastSerial && lastState === State.QR_READY) {
                lastSerial = serial;
                say('The QR code expired before it was scanned.');
                showQr();
            }
        }
    });
    flow.connect('g-signal', (_proxy, _sender, signal, params) => {
        if (signal !== 'Response')
            return;
        const [response, results] = params.deepUnpack();
        const get = key => results[key]?.deepUnpack() ?? '';
        if (response === 0) {
            say(`Done: ${get('user_id')} signed in as device ${get('device_id')}.`);
            finish(0);
        } else if (response === 1) {
            say('Cancelled.');
            finish(1);
        } else {
            say(`Failed: ${get('message')} (${get('error')})`);
            finish(2);
        }
    });

    const options = {handle_token: new GLib.Variant('s', token)};
    if (noNotify) {
        options.notify = new GLib.Variant('b', false);
        options.open_uri = new GLib.Variant('b', false);
    }
    const [path] = manager.call_sync('StartGrant', new GLib.Variant('(a{sv})', [options]),
        Gio.DBusCallFlags.NONE, -1, null).deepUnpack();
    if (path !== flowPath)
        throw new Error(`the daemon chose ${path}, not ${flowPath}`);
    // Every change was announced to us (we subscribed first), but the announcements wait for the
    // main loop: act on the state the flow is in now, and onState skips the older ones.
    onState(property('State'));
}

GLib.idle_add(GLib.PRIORITY_DEFAULT, () => {
    try {
        main();
    } catch (e) {
        printerr(`grant.js: ${e.message}`);
        finish(2);
    }
    return GLib.SOURCE_REMOVE;
});
loop.run();
System.exit(exitCode);
