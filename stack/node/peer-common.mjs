// peer-common.mjs — what the matrix-js-sdk test peers (js-peer.mjs, js-light-client.mjs) share: logging to stderr
// under the peer's prefix (console.* too, filtered without --verbose), the Promise.withResolvers polyfill, timing,
// the files exchanged in DIR (written atomically: temp name + rename; input files polled every 100 ms), a JSON fetch
// and the wait for the first sync.
//
// matrix-js-sdk is not imported here: each peer imports it dynamically after setupLogging, so that the SDK's
// loglevel picks up the patched console.

import fs from "node:fs";
import path from "node:path";

// ---------------------------------------------------------------------------------------------------------------
// Logging: everything to stderr (the SDK logs through console.* via loglevel).
let log = () => {}; // the logger setupLogging made; the helpers below log through it

// Returns log(...parts), writing `[NAME] parts` to stderr, and sends console.* there as `[NAME][sdk] ...`.
export function setupLogging(name) {
    log = (...a) => process.stderr.write(`[${name}] ${a.join(" ")}\n`);
    // Without --verbose only the SDK's warnings and errors are shown (js-sdk pins every logger to DEBUG, so filter
    // here), minus the noise about Synapse not implementing MSC4143 RTC transports.
    const VERBOSE = process.argv.includes("--verbose");
    for (const m of ["log", "info", "debug", "warn", "error", "trace"]) {
        console[m] = (...a) => {
            if (!VERBOSE && !["warn", "error"].includes(m)) return;
            if (!VERBOSE && a.some((x) => typeof x === "string" && /RTCTransports|Adding default global/.test(x))) return;
            process.stderr.write(
                `[${name}][sdk] ${a.map((x) => (x instanceof Error ? x.stack || String(x) : typeof x === "string" ? x : safeJson(x))).join(" ")}\n`,
            );
        };
    }
    return log;
}

function safeJson(x) {
    try {
        return JSON.stringify(x);
    } catch {
        return String(x);
    }
}

// Minimal polyfill (Node 22 has it; harmless otherwise).
Promise.withResolvers ??= () => {
    let resolve, reject;
    const promise = new Promise((res, rej) => {
        resolve = res;
        reject = rej;
    });
    return { promise, resolve, reject };
};

// ---------------------------------------------------------------------------------------------------------------
// Timing
export const T0 = Date.now();
export const elapsed = () => ((Date.now() - T0) / 1000).toFixed(1) + "s";
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------------------
// Files in DIR
export function fileExchange(dir) {
    function writeAtomic(name, content) {
        const final = path.join(dir, name);
        const tmp = path.join(dir, `.${name}.tmp.${process.pid}`);
        fs.writeFileSync(tmp, content);
        fs.renameSync(tmp, final);
    }
    function readIfExists(name) {
        try {
            return fs.readFileSync(path.join(dir, name), "utf8");
        } catch (e) {
            if (e.code === "ENOENT") return undefined;
            throw e;
        }
    }
    // Resolves to the trimmed content once the file exists and is not blank; throws once `deadline` (ms since the
    // epoch) has passed.
    async function waitForFile(name, deadline = Infinity) {
        log(`waiting for ${name}`);
        for (;;) {
            const c = readIfExists(name);
            if (c !== undefined && c.trim() !== "") return c.trim();
            if (Date.now() > deadline) throw new Error(`${name} was not written in time`);
            await sleep(100);
        }
    }
    return { writeAtomic, readIfExists, waitForFile };
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP and sync
export async function fetchJson(url, opts = {}) {
    const res = await fetch(url, { ...opts, signal: AbortSignal.timeout(opts.timeoutMs ?? 15000) });
    let body;
    try {
        body = await res.json();
    } catch {
        body = undefined;
    }
    return { res, body };
}

// Resolves once the client's first sync is through. "sync" is ClientEvent.Sync (the SDK is not imported here).
export function waitForPrepared(client) {
    return new Promise((resolve) => {
        const onSync = (st) => {
            if (st === "PREPARED" || st === "SYNCING") {
                client.off("sync", onSync);
                resolve();
            } else if (st === "ERROR") {
                // the SDK retries; only log
                log("sync state ERROR (retrying)");
            }
        };
        client.on("sync", onSync);
    });
}
