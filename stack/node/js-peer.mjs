#!/usr/bin/env node
// js-peer.mjs — matrix-js-sdk 43.0.0 as an independent interop peer for MSC4108 (2024 generation)
// "sign in with QR code", in both roles and both QR directions.
//
//   node js-peer.mjs --role existing|new --mode scan|generate --dir DIR
//                    --homeserver http://127.0.0.1:18008/ --login LOCALPART
//                    [--deny] [--approve-self] [--timeout SECONDS] [--verbose]
//
// Exchange with the other side happens only through files in DIR (written atomically: temp name + rename;
// input files polled every 100 ms):
//   written: ready (existing role: user id, after sign-in + cross-signing + backup set up)
//            qr.hex (generate mode: hex of the QR bytes)
//            checkcode (two digits, as soon as the secure channel is up; both modes)
//            verification_uri (existing role: URI to approve, verification_uri_complete if present)
//            user_code (new role: the device grant's user_code)
//            result.json (always, at the end)
//   read:    qr.hex (scan mode)
//            checkcode_input (optional, generate mode: js-sdk does not check codes; compared and reported only)
//
// Node 22 (stack/node/node_modules/.bin/node). Logs go to stderr prefixed "[js-peer]". Tokens are never printed.

import fs from "node:fs";
import path from "node:path";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { T0, elapsed, fetchJson, fileExchange, setupLogging, sleep, waitForPrepared } from "./peer-common.mjs";

// ---------------------------------------------------------------------------------------------------------------
// Logging: everything to stderr, console.* too (peer-common.mjs); set up before the SDK is imported.
const log = setupLogging("js-peer");

// ---------------------------------------------------------------------------------------------------------------
// Arguments
function usage(msg) {
    process.stderr.write(
        `[js-peer] ${msg}\nusage: node js-peer.mjs --role existing|new --mode scan|generate --dir DIR ` +
            `--homeserver URL --login LOCALPART [--deny] [--approve-self] [--timeout SECONDS] [--verbose]\n`,
    );
    process.exit(2);
}
const args = { deny: false, approveSelf: false, timeout: 120, verbose: false };
{
    const argv = process.argv.slice(2);
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const val = () => {
            if (i + 1 >= argv.length) usage(`missing value for ${a}`);
            return argv[++i];
        };
        switch (a) {
            case "--role": args.role = val(); break;
            case "--mode": args.mode = val(); break;
            case "--dir": args.dir = val(); break;
            case "--homeserver": args.homeserver = val(); break;
            case "--login": args.login = val(); break;
            case "--timeout": args.timeout = Number(val()); break;
            case "--deny": args.deny = true; break;
            case "--approve-self": args.approveSelf = true; break;
            case "--verbose": args.verbose = true; break;
            default: usage(`unknown argument ${a}`);
        }
    }
    if (!["existing", "new"].includes(args.role)) usage("--role must be existing or new");
    if (!["scan", "generate"].includes(args.mode)) usage("--mode must be scan or generate");
    if (!args.dir) usage("--dir is required");
    if (!args.homeserver) usage("--homeserver is required");
    if (!args.login) usage("--login is required");
    if (!(args.timeout > 0)) usage("--timeout must be a positive number");
    if (!args.homeserver.endsWith("/")) args.homeserver += "/";
    fs.mkdirSync(args.dir, { recursive: true });
}

const APPROVE_SH = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "approve.sh");

// ---------------------------------------------------------------------------------------------------------------
// Files in DIR
const { writeAtomic, readIfExists, waitForFile } = fileExchange(args.dir);

// ---------------------------------------------------------------------------------------------------------------
// Outcome: result.json is written exactly once, then the process exits.
const state = {
    flow: undefined, // MSC4108SignInWithQR
    client: undefined, // MatrixClient (signed in)
    received: [], // payload types received over the secure channel
    sent: [], // payload types sent over the secure channel
    peerFailureReason: undefined, // reason of an m.login.failure the peer sent
    peerDeclined: false, // the peer sent m.login.declined
    failureCallbacks: [], // reasons reported to the js-sdk onFailure callback
    checkCode: undefined,
    extra: {}, // additional result fields
};
let finished = false;
async function finish(result, code) {
    if (finished) return;
    finished = true;
    const out = {
        ...result,
        ...state.extra,
        check_code: state.checkCode ?? null,
        messages_received: state.received,
        messages_sent: state.sent,
        elapsed_s: Number(((Date.now() - T0) / 1000).toFixed(1)),
    };
    try {
        writeAtomic("result.json", JSON.stringify(out, null, 1) + "\n");
    } catch (e) {
        log(`could not write result.json: ${e}`);
    }
    log(`result: ${JSON.stringify({ ok: out.ok, error: out.error, reason: out.reason })} after ${elapsed()}`);
    try {
        state.client?.stopClient();
    } catch {}
    process.exit(code);
}
async function fail(error, reason, extra = {}) {
    const r = {
        ok: false,
        error: String(error),
        reason: reason ?? state.peerFailureReason ?? (state.peerDeclined ? "declined" : null),
        peer_reported: state.peerFailureReason !== undefined || state.peerDeclined,
        ...extra,
    };
    await finish(r, 1);
}
// Best-effort cancel of the rendezvous (as Element does when the user closes the dialog): DELETEs the session.
async function cancelFlow() {
    if (!state.flow) return;
    try {
        await Promise.race([state.flow.cancel("user_cancelled"), sleep(2000)]);
    } catch {}
}

process.on("SIGTERM", async () => {
    log("SIGTERM");
    await cancelFlow();
    await fail("terminated by SIGTERM", "terminated");
});
process.on("SIGINT", async () => {
    log("SIGINT");
    await cancelFlow();
    await fail("interrupted by SIGINT", "terminated");
});
setTimeout(async () => {
    log(`global timeout of ${args.timeout}s reached`);
    await cancelFlow();
    await fail(`timeout after ${args.timeout}s`, "timeout");
}, args.timeout * 1000); // referenced on purpose: the process never exits without a result.json
process.on("unhandledRejection", (e) => {
    log(`unhandled rejection: ${e?.stack || e}`);
});

// ---------------------------------------------------------------------------------------------------------------
// SDK imports (after console redirection)
const sdk = await import("matrix-js-sdk");
const rz = await import("matrix-js-sdk/lib/rendezvous/index.js");
const RustSdkCryptoJs = await import("@matrix-org/matrix-sdk-crypto-wasm");

const { createClient, OAuth2, OAuthGrantType } = sdk;
const {
    MSC4108SignInWithQR,
    MSC4108SecureChannel,
    MSC4108RendezvousSession,
    RendezvousError,
    MSC4108FailureReason,
    ClientRendezvousFailureReason,
    linkNewDeviceByGeneratingQR,
    signInByGeneratingQR,
} = rz;

// Observe the secure channel: record payload types (never contents, which include secrets) and failure reasons.
{
    const origSend = MSC4108SecureChannel.prototype.secureSend;
    MSC4108SecureChannel.prototype.secureSend = async function (payload) {
        state.sent.push(payload.type);
        let desc = payload.type;
        if (payload.type === "m.login.protocols") {
            desc += ` homeserver=${JSON.stringify(payload.homeserver)}`;
            state.extra.sent_protocols_homeserver = payload.homeserver ?? null;
        }
        if (payload.type === "m.login.failure") desc += ` reason=${payload.reason}`;
        if (payload.type === "m.login.protocol") desc += ` device_id=${payload.device_id}`;
        log(`=> ${desc}`);
        return origSend.call(this, payload);
    };
    const origRecv = MSC4108SecureChannel.prototype.secureReceive;
    MSC4108SecureChannel.prototype.secureReceive = async function () {
        const p = await origRecv.call(this);
        if (!p) {
            log("<= (nothing: rendezvous gone or cancelled)");
            return p;
        }
        state.received.push(p.type);
        let desc = String(p.type);
        if (p.type === "m.login.protocols") {
            desc += ` homeserver=${JSON.stringify(p.homeserver)} protocols=${JSON.stringify(p.protocols)}`;
            state.extra.peer_protocols_homeserver = p.homeserver ?? null;
        }
        if (p.type === "m.login.protocol") {
            desc += ` protocol=${p.protocol} device_id=${p.device_id}`;
            state.extra.new_device_id = p.device_id ?? null;
        }
        if (p.type === "m.login.failure") {
            desc += ` reason=${p.reason}`;
            state.peerFailureReason = p.reason ?? "unknown";
        }
        if (p.type === "m.login.declined") state.peerDeclined = true;
        if (p.type === "m.login.secrets") {
            desc += ` (cross_signing=${!!p.cross_signing} backup=${!!p.backup})`;
        }
        log(`<= ${desc}`);
        return p;
    };
}
const onFailure = (reason) => {
    state.failureCallbacks.push(reason);
    log(`js-sdk onFailure: ${reason}`);
};

// ---------------------------------------------------------------------------------------------------------------
// Helpers
const hexToBytes = (hex) => {
    const h = hex.replace(/\s+/g, "");
    if (!/^([0-9a-fA-F]{2})+$/.test(h)) throw new Error("qr.hex does not contain hex bytes");
    return Uint8Array.from(h.match(/../g).map((b) => parseInt(b, 16)));
};
const bytesToHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const randomId = (prefix) => prefix + Math.random().toString(36).slice(2, 8).toUpperCase();

// Run approve.sh ISSUER USER_CODE LOGIN [deny]; its output goes to stderr.
function runApprove(issuer, userCode, login, deny) {
    return new Promise((resolve, reject) => {
        const a = [APPROVE_SH, issuer, userCode, login];
        if (deny) a.push("deny");
        log(`running approve.sh ${issuer} ${userCode} ${login}${deny ? " deny" : ""}`);
        const p = spawn("bash", a, { stdio: ["ignore", "pipe", "pipe"] });
        p.stdout.on("data", (d) => log(`approve.sh: ${String(d).trim()}`));
        p.stderr.on("data", (d) => log(`approve.sh(err): ${String(d).trim()}`));
        p.on("error", reject);
        p.on("exit", (c) => (c === 0 ? resolve() : reject(new Error(`approve.sh exited with ${c}`))));
    });
}
function userCodeFromUri(uri) {
    try {
        return new URL(uri).searchParams.get("user_code") ?? undefined;
    } catch {
        return undefined;
    }
}

// The m.login.protocols / QR "homeserver" slot holds a server name (js-sdk) or a base URL (matrix-sdk).
async function resolveHomeserver(nameOrUrl) {
    if (!nameOrUrl) {
        log(`no homeserver given by the peer; using --homeserver ${args.homeserver}`);
        return args.homeserver;
    }
    if (/^https?:\/\//i.test(nameOrUrl)) {
        const u = new URL(nameOrUrl).toString();
        return u.endsWith("/") ? u : u + "/";
    }
    const tries = ["https", "http"].map(async (scheme) => {
        const { res, body } = await fetchJson(`${scheme}://${nameOrUrl}/.well-known/matrix/client`, { timeoutMs: 3000 });
        const base = body?.["m.homeserver"]?.base_url;
        if (!res.ok || typeof base !== "string") throw new Error(`no well-known over ${scheme}`);
        return base.endsWith("/") ? base : base + "/";
    });
    try {
        const base = await Promise.any(tries);
        log(`resolved server name ${nameOrUrl} through .well-known to ${base}`);
        return base;
    } catch {
        log(`could not resolve server name ${nameOrUrl} through .well-known; using --homeserver ${args.homeserver}`);
        return args.homeserver;
    }
}

async function ownStatus(client) {
    const crypto = client.getCrypto();
    const userId = client.getUserId();
    const deviceId = client.getDeviceId();
    const csReady = await crypto.isCrossSigningReady();
    const st = await crypto.getDeviceVerificationStatus(userId, deviceId);
    const backupKey = await crypto.getSessionBackupPrivateKey();
    return {
        cross_signing_ready: csReady,
        device_verified: !!st?.crossSigningVerified,
        backup_key_cached: !!backupKey,
    };
}

// Write DIR/checkcode as soon as the channel is established (checked every 100 ms).
function startCheckCodeWatcher(flow) {
    const t = setInterval(() => {
        const c = flow.checkCode;
        if (c !== undefined && state.checkCode === undefined) {
            state.checkCode = c;
            writeAtomic("checkcode", c + "\n");
            log(`check code ${c} (written to checkcode) at ${elapsed()}`);
            clearInterval(t);
        }
    }, 100);
    return t;
}

// js-sdk never checks the code typed on the generating device. If the test wrote checkcode_input anyway, compare
// and report it (non-fatal, to keep js-sdk's behaviour).
function noteCheckCodeInput() {
    if (args.mode !== "generate") return;
    const input = readIfExists("checkcode_input");
    if (input === undefined) {
        state.extra.checkcode_input_match = null;
        return;
    }
    const match = input.trim() === state.checkCode;
    state.extra.checkcode_input_match = match;
    log(`checkcode_input ${input.trim()} ${match ? "matches" : "DOES NOT match"} ${state.checkCode} (js-sdk ignores it)`);
}

// ---------------------------------------------------------------------------------------------------------------
// Existing device: sign in through the device grant (plain HTTP), set up cross-signing + secret storage + backup.
async function signInExisting() {
    const hs = args.homeserver;
    const { res: mr, body: meta } = await fetchJson(new URL("_matrix/client/v1/auth_metadata", hs));
    if (!mr.ok || !meta?.device_authorization_endpoint) throw new Error(`auth_metadata unusable (${mr.status})`);
    const { res: rr, body: reg } = await fetchJson(meta.registration_endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
            client_name: "js-peer existing device",
            client_uri: "https://example.org/",
            application_type: "native",
            grant_types: [OAuthGrantType.DeviceAuthorization, "refresh_token"],
            response_types: [],
            token_endpoint_auth_method: "none",
        }),
    });
    if (!rr.ok || !reg?.client_id) throw new Error(`client registration failed (${rr.status} ${reg?.error ?? ""})`);
    const clientId = reg.client_id;
    const deviceId = randomId("JSEXIST");
    const { res: dr, body: da } = await fetchJson(meta.device_authorization_endpoint, {
        method: "POST",
        body: new URLSearchParams({
            client_id: clientId,
            scope: `urn:matrix:client:api:* urn:matrix:client:device:${deviceId}`,
        }),
    });
    if (!dr.ok || !da?.device_code) throw new Error(`device authorization failed (${dr.status} ${da?.error ?? ""})`);
    await runApprove(meta.issuer, da.user_code, args.login, false);
    // Poll exactly once after approval: a second request after success is a replay that revokes the grant.
    const { res: tr, body: tok } = await fetchJson(meta.token_endpoint, {
        method: "POST",
        body: new URLSearchParams({
            grant_type: OAuthGrantType.DeviceAuthorization,
            client_id: clientId,
            device_code: da.device_code,
        }),
    });
    if (!tr.ok || !tok?.access_token) throw new Error(`token request failed (${tr.status} ${tok?.error ?? ""})`);
    const { res: wr, body: who } = await fetchJson(new URL("_matrix/client/v3/account/whoami", hs), {
        headers: { Authorization: `Bearer ${tok.access_token}` },
    });
    if (!wr.ok || !who?.user_id) throw new Error(`whoami failed (${wr.status})`);
    log(`signed in as ${who.user_id} device ${who.device_id} at ${elapsed()}`);

    let ssKey; // GeneratedSecretStorageKey
    const client = createClient({
        baseUrl: hs,
        accessToken: tok.access_token,
        userId: who.user_id,
        deviceId: who.device_id,
        cryptoCallbacks: {
            getSecretStorageKey: async ({ keys }) => {
                const keyId = Object.keys(keys)[0];
                return ssKey ? [keyId, ssKey.privateKey] : null;
            },
        },
    });
    state.client = client;
    await client.initRustCrypto({ useIndexedDB: false });
    const prepared = waitForPrepared(client);
    await client.startClient({ initialSyncLimit: 1 });
    await prepared;
    const crypto = client.getCrypto();
    await crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: async (mk) => mk(null) });
    await crypto.bootstrapSecretStorage({
        createSecretStorageKey: async () => {
            ssKey = await crypto.createRecoveryKeyFromPassphrase();
            return ssKey;
        },
        setupNewSecretStorage: true,
        setupNewKeyBackup: true,
    });
    const st = await ownStatus(client);
    log(`existing device set up: ${JSON.stringify(st)} at ${elapsed()}`);
    if (!st.cross_signing_ready || !st.backup_key_cached) throw new Error("cross-signing/backup setup incomplete");
    state.extra.issuer = meta.issuer;
    return client;
}

async function runExisting() {
    const client = await signInExisting();
    writeAtomic("ready", client.getUserId() + "\n");
    log("wrote ready");

    let flow;
    if (args.mode === "scan") {
        const hex = await waitForFile("qr.hex");
        const qr = RustSdkCryptoJs.QrCodeData.fromBytes(hexToBytes(hex));
        log(`scanned QR: intent=${qr.mode === RustSdkCryptoJs.QrCodeIntent.Login ? "login" : "reciprocate"} ` +
            `rendezvous=${qr.rendezvousUrl} server_name=${qr.serverName ?? "-"}`);
        state.extra.qr_server_name = qr.serverName ?? null;
        if (qr.mode !== RustSdkCryptoJs.QrCodeIntent.Login) {
            throw new RendezvousError("QR code is from a signed-in device", ClientRendezvousFailureReason.OtherDeviceAlreadySignedIn);
        }
        if (!qr.rendezvousUrl) throw new RendezvousError("QR code has no rendezvous URL", ClientRendezvousFailureReason.InvalidCode);
        const session = new MSC4108RendezvousSession({ url: qr.rendezvousUrl, onFailure });
        const channel = new MSC4108SecureChannel(session, qr.publicKey, onFailure);
        flow = new MSC4108SignInWithQR(channel, true, client, onFailure);
    } else {
        const ac = new AbortController();
        flow = await linkNewDeviceByGeneratingQR(client, onFailure, ac.signal);
        writeAtomic("qr.hex", bytesToHex(flow.code) + "\n");
        log(`wrote qr.hex (${flow.code.length} bytes) at ${elapsed()}`);
    }
    state.flow = flow;
    startCheckCodeWatcher(flow);

    await flow.negotiateProtocols();
    log(`protocols negotiated at ${elapsed()}`);
    const { verificationUri } = await flow.deviceAuthorizationGrant();
    log(`verification URI received at ${elapsed()}: ${verificationUri}`);
    state.extra.verification_uri = verificationUri ?? null;
    noteCheckCodeInput();

    if (args.deny) {
        // The user declines on the existing device: js-sdk sends m.login.failure user_cancelled.
        log("declining (--deny)");
        await flow.declineLoginOnExistingDevice();
        // Leave the session for the peer to read the failure (no DELETE, which could race its read).
        await sleep(2500);
        await fail("login declined on the existing device (--deny)", MSC4108FailureReason.UserCancelled, {
            denied: true,
            peer_reported: false,
        });
        return;
    }

    if (!verificationUri) throw new Error("no verification URI from the new device");
    writeAtomic("verification_uri", verificationUri + "\n");
    log("wrote verification_uri");
    let approval;
    if (args.approveSelf) {
        const uc = userCodeFromUri(verificationUri);
        if (!uc) throw new Error("--approve-self: no user_code in the verification URI");
        approval = runApprove(state.extra.issuer, uc, args.login, false).catch((e) => {
            log(`approve.sh failed: ${e.message}`);
        });
    }

    const { secrets } = await flow.shareSecrets();
    log(`secrets shared at ${elapsed()} (cross_signing=${!!secrets?.cross_signing} backup=${!!secrets?.backup})`);
    await approval;
    const st = await ownStatus(client);
    await finish(
        {
            ok: true,
            user_id: client.getUserId(),
            device_id: client.getDeviceId(),
            ...st,
            shared_cross_signing: !!secrets?.cross_signing,
            shared_backup: !!secrets?.backup,
        },
        0,
    );
}

// ---------------------------------------------------------------------------------------------------------------
// New device
async function runNew() {
    await RustSdkCryptoJs.initAsync();
    let flow;
    let homeserver;
    if (args.mode === "scan") {
        const hex = await waitForFile("qr.hex");
        const qr = RustSdkCryptoJs.QrCodeData.fromBytes(hexToBytes(hex));
        log(`scanned QR: intent=${qr.mode === RustSdkCryptoJs.QrCodeIntent.Login ? "login" : "reciprocate"} ` +
            `rendezvous=${qr.rendezvousUrl} server_name=${qr.serverName ?? "-"}`);
        state.extra.qr_server_name = qr.serverName ?? null;
        if (qr.mode !== RustSdkCryptoJs.QrCodeIntent.Reciprocate) {
            throw new RendezvousError("QR code is from a device that is not signed in", ClientRendezvousFailureReason.OtherDeviceNotSignedIn);
        }
        if (!qr.rendezvousUrl) throw new RendezvousError("QR code has no rendezvous URL", ClientRendezvousFailureReason.InvalidCode);
        const session = new MSC4108RendezvousSession({ url: qr.rendezvousUrl, onFailure });
        const channel = new MSC4108SecureChannel(session, qr.publicKey, onFailure);
        flow = new MSC4108SignInWithQR(channel, true, undefined, onFailure);
        state.flow = flow;
        startCheckCodeWatcher(flow);
        await flow.negotiateProtocols();
        homeserver = await resolveHomeserver(qr.serverName);
    } else {
        // temporary client: only used to create the rendezvous session on --homeserver
        const tempClient = createClient({ baseUrl: args.homeserver });
        const ac = new AbortController();
        flow = await signInByGeneratingQR(tempClient, onFailure, ac.signal);
        state.flow = flow;
        writeAtomic("qr.hex", bytesToHex(flow.code) + "\n");
        log(`wrote qr.hex (${flow.code.length} bytes) at ${elapsed()}`);
        startCheckCodeWatcher(flow);
        const { serverName } = await flow.negotiateProtocols();
        homeserver = await resolveHomeserver(serverName);
        noteCheckCodeInput();
    }
    log(`protocols negotiated at ${elapsed()}; homeserver ${homeserver}`);
    state.extra.resolved_homeserver = homeserver;
    if (homeserver !== args.homeserver) log(`note: resolved homeserver differs from --homeserver ${args.homeserver}`);

    const tempClient = createClient({ baseUrl: homeserver });
    const metadata = await tempClient.getAuthMetadata();
    const clientId = await OAuth2.registerClient(metadata, {
        client_name: "js-peer new device",
        client_uri: "https://example.org/",
        application_type: "native",
        grant_types: [OAuthGrantType.DeviceAuthorization, OAuthGrantType.RefreshToken],
        response_types: [],
    });
    const deviceId = randomId("JSNEW");
    log(`registered OAuth client; device id ${deviceId}`);
    const { verificationUri, userCode } = await flow.deviceAuthorizationGrant({ metadata, clientId, deviceId });
    writeAtomic("user_code", userCode + "\n");
    log(`wrote user_code ${userCode} (verification URI ${verificationUri}) at ${elapsed()}`);
    if (args.approveSelf) {
        // Approve (or deny with --deny) right away; the token endpoint is only polled after protocol_accepted.
        runApprove(metadata.issuer, userCode, args.login, args.deny).catch((e) => log(`approve.sh failed: ${e.message}`));
    } else if (args.deny) {
        log("--deny: expecting the test to deny on the OAuth page");
    }

    const tokens = await flow.completeLoginOnNewDevice({ clientId });
    if (!tokens?.access_token) throw new Error("no access token from the device grant");
    log(`device grant completed at ${elapsed()}`);
    // The device only exists on the homeserver after the token is first used (introspection creates it);
    // the js existing device polls for it for 10 s after m.login.success, so use the token now.
    const { res: wr, body: who } = await fetchJson(new URL("_matrix/client/v3/account/whoami", homeserver), {
        headers: { Authorization: `Bearer ${tokens.access_token}` },
    });
    if (!wr.ok || !who?.user_id) throw new Error(`whoami failed (${wr.status})`);
    log(`signed in as ${who.user_id} device ${who.device_id}`);
    if (who.device_id !== deviceId) log(`warning: device id ${who.device_id} differs from requested ${deviceId}`);
    const expectedLocal = `@${args.login}:`;
    if (!who.user_id.startsWith(expectedLocal)) log(`warning: signed in as ${who.user_id}, not ${args.login}`);

    const { secrets } = await flow.shareSecrets();
    log(`secrets received at ${elapsed()} (cross_signing=${!!secrets?.cross_signing} backup=${!!secrets?.backup})`);
    // We are done with the rendezvous: close it (DELETE), as the last reader.
    flow.close().catch(() => {});

    const client = createClient({
        baseUrl: homeserver,
        accessToken: tokens.access_token,
        refreshToken: tokens.refresh_token,
        userId: who.user_id,
        deviceId: who.device_id,
    });
    state.client = client;
    await client.initRustCrypto({ useIndexedDB: false });
    const prepared = waitForPrepared(client);
    await client.startClient({ initialSyncLimit: 1 });
    await prepared;
    const crypto = client.getCrypto();
    await crypto.importSecretsBundle(secrets);
    log("secrets bundle imported");
    // Like Element Web: sign our own device with the imported self-signing key.
    await crypto.crossSignDevice(who.device_id);
    log("own device cross-signed");
    try {
        await crypto.checkKeyBackupAndEnable();
    } catch (e) {
        log(`checkKeyBackupAndEnable: ${e.message}`);
    }
    // The local device record picks up the signature once keys are re-queried; poll for a few seconds.
    let st = await ownStatus(client);
    for (let i = 0; i < 50 && !(st.cross_signing_ready && st.device_verified); i++) {
        await sleep(200);
        st = await ownStatus(client);
    }
    log(`new device status: ${JSON.stringify(st)} at ${elapsed()}`);
    await finish({ ok: true, user_id: who.user_id, device_id: who.device_id, ...st }, 0);
}

// ---------------------------------------------------------------------------------------------------------------
log(`role=${args.role} mode=${args.mode} dir=${args.dir} homeserver=${args.homeserver} login=${args.login}` +
    `${args.deny ? " deny" : ""}${args.approveSelf ? " approve-self" : ""} timeout=${args.timeout}s`);
try {
    if (args.role === "existing") await runExisting();
    else await runNew();
} catch (e) {
    log(`failed: ${e?.stack || e}`);
    const reason =
        state.peerFailureReason ?? (state.peerDeclined ? "declined" : e instanceof RendezvousError ? e.code : null);
    let msg = e?.message ?? String(e);
    if (state.peerFailureReason !== undefined) msg += ` (peer sent m.login.failure reason=${state.peerFailureReason})`;
    else if (state.peerDeclined) msg += " (peer sent m.login.declined)";
    const extra = {};
    if (e instanceof RendezvousError && msg.startsWith("Rejection from device authorization endpoint")) {
        // js-sdk maps access_denied -> user_cancelled, expired_token -> authorization_expired
        extra.oauth_error = { user_cancelled: "access_denied", authorization_expired: "expired_token" }[e.code] ?? null;
        extra.denied = e.code === "user_cancelled";
    }
    await fail(msg, reason, extra);
}
