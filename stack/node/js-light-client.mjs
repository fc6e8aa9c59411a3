#!/usr/bin/env node
// js-light-client.mjs — matrix-js-sdk 43.0.0 as a "light client" that got its device from matrix-linkd's
// delegation (Manager.StartDelegation → Flow.TakeSession): it starts from the session document and
// never signs in by itself.
//
//   node js-light-client.mjs --session FILE --dir DIR [--room ROOM_ID] [--expect TEXT]...
//                            [--refresh-once] [--messages-timeout SECONDS] [--timeout SECONDS] [--verbose]
//
// --session FILE: the JSON object TakeSession returned (homeserver, user_id, device_id, issuer, client_id,
// access_token, refresh_token, expires_in, and `secrets` when the delegation shared them).
//
// What it does:
//   1. (--refresh-once) refreshes the tokens once at the OAuth server's token endpoint, as a client does
//      when its access token expires: the refresh token is rotated, so the daemon's copy is stale;
//   2. creates a MatrixClient with the session's tokens (the SDK refreshes them itself afterwards),
//      initRustCrypto (in memory) and starts syncing, which uploads the device's keys;
//   3. with `secrets`: importSecretsBundle, signs its own device with the imported self-signing key
//      (as Element Web does), enables key backup;
//      without: waits until /keys/query shows its device, then until the device is signed by its
//      owner (the daemon signs it with the account's self-signing key);
//   4. writes `ready` (a JSON status line) once its device is cross-signed;
//   5. with --room: waits for the test to write `sent` (the test sends messages after `ready`), then reads
//      the room's last messages until every --expect body was decrypted or --messages-timeout passed,
//      restoring room keys from the key backup when it holds the backup key;
//   6. writes result.json (always, exactly once) and exits.
//
// Exchange only through files in DIR (written atomically). Logs go to stderr, prefixed
// "[js-light]". Tokens and keys are never printed: result.json carries no secret either.

import fs from "node:fs";
import { T0, elapsed, fetchJson, fileExchange, setupLogging, sleep, waitForPrepared } from "./peer-common.mjs";

const log = setupLogging("js-light");

// ---------------------------------------------------------------------------------------------------------------
// Arguments
function usage(msg) {
    process.stderr.write(
        `[js-light] ${msg}\nusage: node js-light-client.mjs --session FILE --dir DIR [--room ROOM_ID] ` +
            `[--expect TEXT]... [--refresh-once] [--messages-timeout SECONDS] [--timeout SECONDS] [--verbose]\n`,
    );
    process.exit(2);
}
const args = { expect: [], refreshOnce: false, timeout: 120, messagesTimeout: 30 };
{
    const argv = process.argv.slice(2);
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const val = () => {
            if (i + 1 >= argv.length) usage(`missing value for ${a}`);
            return argv[++i];
        };
        switch (a) {
            case "--session": args.session = val(); break;
            case "--dir": args.dir = val(); break;
            case "--room": args.room = val(); break;
            case "--expect": args.expect.push(val()); break;
            case "--refresh-once": args.refreshOnce = true; break;
            case "--timeout": args.timeout = Number(val()); break;
            case "--messages-timeout": args.messagesTimeout = Number(val()); break;
            case "--verbose": break;
            default: usage(`unknown argument ${a}`);
        }
    }
    if (!args.session) usage("--session is required");
    if (!args.dir) usage("--dir is required");
    if (!(args.timeout > 0)) usage("--timeout must be a positive number");
    if (!(args.messagesTimeout > 0)) usage("--messages-timeout must be a positive number");
    fs.mkdirSync(args.dir, { recursive: true });
}
const { writeAtomic, waitForFile } = fileExchange(args.dir);

// ---------------------------------------------------------------------------------------------------------------
// Outcome
const state = { client: undefined, extra: {} };
let finished = false;
async function finish(result, code) {
    if (finished) return;
    finished = true;
    const out = { ...result, ...state.extra, elapsed_s: Number(((Date.now() - T0) / 1000).toFixed(1)) };
    try {
        writeAtomic("result.json", JSON.stringify(out, null, 1) + "\n");
    } catch (e) {
        log(`could not write result.json: ${e}`);
    }
    log(`result: ok=${out.ok} error=${out.error ?? "-"} after ${elapsed()}`);
    try {
        state.client?.stopClient();
    } catch {}
    process.exit(code);
}
const fail = (error) => finish({ ok: false, error: String(error) }, 1);

process.on("SIGTERM", () => fail("terminated by SIGTERM"));
process.on("SIGINT", () => fail("interrupted by SIGINT"));
setTimeout(() => {
    log(`global timeout of ${args.timeout}s reached`);
    fail(`timeout after ${args.timeout}s`);
}, args.timeout * 1000);
process.on("unhandledRejection", (e) => log(`unhandled rejection: ${e?.stack || e}`));

const sdk = await import("matrix-js-sdk");
const { createClient, Direction } = sdk;

// ---------------------------------------------------------------------------------------------------------------
function readSession() {
    const s = JSON.parse(fs.readFileSync(args.session, "utf8"));
    for (const k of ["homeserver", "user_id", "device_id", "access_token"]) {
        if (typeof s[k] !== "string" || !s[k]) throw new Error(`session document: no ${k}`);
    }
    if (!s.homeserver.endsWith("/")) s.homeserver += "/";
    return s;
}

// A refresh at the token endpoint the homeserver's auth metadata names (RFC 6749 §6).
async function refreshOnce(s) {
    if (!s.refresh_token || !s.client_id) throw new Error("--refresh-once: the session has no refresh token or client_id");
    const { res: mr, body: meta } = await fetchJson(new URL("_matrix/client/v1/auth_metadata", s.homeserver));
    if (!mr.ok || !meta?.token_endpoint) throw new Error(`auth_metadata unusable (${mr.status})`);
    const { res, body } = await fetchJson(meta.token_endpoint, {
        method: "POST",
        body: new URLSearchParams({ grant_type: "refresh_token", client_id: s.client_id, refresh_token: s.refresh_token }),
    });
    if (!res.ok || !body?.access_token) throw new Error(`refresh failed (${res.status} ${body?.error ?? ""})`);
    log(`tokens refreshed once at ${elapsed()} (refresh token rotated: ${!!body.refresh_token && body.refresh_token !== s.refresh_token})`);
    state.extra.refreshed = true;
    state.extra.refresh_token_rotated = !!body.refresh_token && body.refresh_token !== s.refresh_token;
    return { ...s, access_token: body.access_token, refresh_token: body.refresh_token ?? s.refresh_token };
}

async function ownStatus(client) {
    const crypto = client.getCrypto();
    const st = await crypto.getDeviceVerificationStatus(client.getUserId(), client.getDeviceId());
    return {
        signed_by_owner: !!st?.signedByOwner,
        cross_signing_verified: !!st?.crossSigningVerified,
        cross_signing_ready: await crypto.isCrossSigningReady(),
        backup_key_cached: !!(await crypto.getSessionBackupPrivateKey()),
        backup_version: await crypto.getActiveSessionBackupVersion(),
    };
}

// The server's view: does /keys/query list our device, and does it carry a signature other than the
// device's own (a cross-signing signature by the self-signing key)?
async function serverViewOfOwnDevice(client) {
    const userId = client.getUserId();
    const deviceId = client.getDeviceId();
    const r = await client.downloadKeysForUsers([userId]);
    const keys = r?.device_keys?.[userId]?.[deviceId];
    const sigs = Object.keys(keys?.signatures?.[userId] ?? {});
    return { listed: !!keys, cross_signed: sigs.some((k) => k !== `ed25519:${deviceId}`) };
}

// Reads the room's last messages through /messages and decrypts each (fresh events each time, so keys that
// arrived since, by to-device or from the backup, are used).
async function readRoom(client, roomId) {
    const res = await client.createMessagesRequest(roomId, null, 50, Direction.Backward);
    const mapper = client.getEventMapper({ decrypt: false });
    const out = [];
    for (const raw of res.chunk ?? []) {
        const ev = mapper(raw);
        if (ev.isEncrypted()) {
            try {
                await client.decryptEventIfNeeded(ev);
            } catch {}
        }
        if (ev.getType() !== "m.room.message" && ev.getType() !== "m.room.encrypted") continue;
        out.push({
            encrypted: ev.isEncrypted(),
            utd: ev.isDecryptionFailure() || ev.getType() === "m.room.encrypted",
            body: ev.isDecryptionFailure() ? undefined : ev.getContent()?.body,
        });
    }
    return out;
}

// ---------------------------------------------------------------------------------------------------------------
async function run() {
    let s = readSession();
    const withSecrets = !!s.secrets;
    log(`session for ${s.user_id} device ${s.device_id} on ${s.homeserver} (secrets: ${withSecrets}, refresh token: ${!!s.refresh_token})`);
    state.extra.user_id = s.user_id;
    state.extra.device_id = s.device_id;
    state.extra.with_secrets = withSecrets;
    if (args.refreshOnce) s = await refreshOnce(s);

    const client = createClient({
        baseUrl: s.homeserver,
        accessToken: s.access_token,
        refreshToken: s.refresh_token ?? undefined,
        oauthClientId: s.refresh_token ? s.client_id : undefined,
        onTokenRefresh: () => log("the SDK refreshed the tokens"),
        userId: s.user_id,
        deviceId: s.device_id,
    });
    state.client = client;
    const who = await client.whoami();
    if (who.user_id !== s.user_id || who.device_id !== s.device_id) {
        throw new Error(`whoami names ${who.user_id}/${who.device_id}, not the session's ${s.user_id}/${s.device_id}`);
    }
    state.extra.whoami_device_id = who.device_id;
    await client.initRustCrypto({ useIndexedDB: false });
    const prepared = waitForPrepared(client);
    await client.startClient({ initialSyncLimit: 5 });
    await prepared;
    log(`syncing at ${elapsed()}`);
    const crypto = client.getCrypto();

    if (withSecrets) {
        await crypto.importSecretsBundle(s.secrets);
        log("secrets bundle imported");
        await crypto.crossSignDevice(s.device_id);
        log("own device cross-signed with the imported self-signing key");
        try {
            const check = await crypto.checkKeyBackupAndEnable();
            log(`key backup: ${check?.backupInfo?.version ? `version ${check.backupInfo.version}` : "none"} trusted=${!!check?.trustInfo?.trusted}`);
        } catch (e) {
            log(`checkKeyBackupAndEnable: ${e.message}`);
        }
    }

    // Our device's keys on the server (uploaded by the crypto layer while syncing).
    const deadline = Date.now() + args.timeout * 1000;
    let server = await serverViewOfOwnDevice(client);
    while (!server.listed && Date.now() < deadline) {
        await sleep(300);
        server = await serverViewOfOwnDevice(client);
    }
    if (!server.listed) throw new Error("our device keys never appeared in /keys/query");
    log(`device keys uploaded at ${elapsed()}`);
    state.extra.keys_uploaded = true;

    // Cross-signed: with secrets we signed it ourselves and trust our identity; without, the daemon signs
    // it and we only see the owner's signature (we cannot verify our own identity without its key).
    const done = (st) => (withSecrets ? st.cross_signing_verified : st.signed_by_owner);
    let st = await ownStatus(client);
    while (!done(st) && Date.now() < deadline) {
        await sleep(300);
        if (!withSecrets) server = await serverViewOfOwnDevice(client);
        st = await ownStatus(client);
    }
    state.extra.server_sees_cross_signed = (await serverViewOfOwnDevice(client)).cross_signed;
    Object.assign(state.extra, st);
    if (!done(st)) throw new Error(`our device was not cross-signed in time: ${JSON.stringify(st)}`);
    log(`own device cross-signed at ${elapsed()}: ${JSON.stringify(st)}`);
    writeAtomic("ready", JSON.stringify({ device_id: s.device_id, ...st }) + "\n");

    if (args.room) {
        await waitForFile("sent", deadline);
        log(`reading ${args.room} for ${args.expect.length} expected message(s)`);
        const until = Date.now() + args.messagesTimeout * 1000;
        let restored = false;
        let seen = [];
        const decrypted = () => Object.fromEntries(args.expect.map((t) => [t, seen.some((m) => m.body === t)]));
        for (;;) {
            seen = await readRoom(client, args.room);
            if (args.expect.every((t) => seen.some((m) => m.body === t))) break;
            if (Date.now() > until) break;
            if (withSecrets && !restored && seen.some((m) => m.utd)) {
                // Element restores from the backup on demand; do it once for everything.
                try {
                    const r = await crypto.restoreKeyBackup();
                    log(`restored ${r?.imported ?? 0}/${r?.total ?? 0} keys from the backup`);
                    restored = true;
                } catch (e) {
                    log(`restoreKeyBackup: ${e.message}`);
                }
            }
            await sleep(500);
        }
        state.extra.decrypted = decrypted();
        state.extra.undecryptable = seen.filter((m) => m.utd).length;
        state.extra.messages_read = seen.length;
        log(`decrypted: ${JSON.stringify(state.extra.decrypted)}; ${state.extra.undecryptable} undecryptable of ${seen.length}`);
    }
    Object.assign(state.extra, await ownStatus(client));
    await finish({ ok: true }, 0);
}

try {
    await run();
} catch (e) {
    log(`failed: ${e?.stack || e}`);
    await fail(e?.message ?? String(e));
}
