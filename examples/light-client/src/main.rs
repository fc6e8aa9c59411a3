//! A light client that gets a Matrix device of its own from matrix-linkd and sends one end-to-end
//! encrypted message — no password, no QR code, no OAuth code of its own.
//!
//! ```sh
//! cargo run -p matrix-linkd-example-light-client -- --room '!abc:example.org' --text 'Hello'
//! ```
//!
//! The daemon (signed in to your account) shows a notification naming this program; approve it
//! and confirm on the consent page. `--share-secrets` asks for the cross-signing and backup keys too
//! (the client then signs its own device); without it the daemon signs the device for us.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::Parser;
use matrix_linkd_client::{DelegateOptions, Linkd};
use matrix_sdk::{
    RoomState,
    config::SyncSettings,
    encryption::VerificationState,
    ruma::{OwnedRoomId, events::room::message::RoomMessageEventContent},
};

/// Send an end-to-end encrypted message from a new device that matrix-linkd delegates to us.
#[derive(Parser)]
struct Args {
    /// A joined, encrypted room of the account, e.g. `!abc:example.org`.
    #[arg(long, value_name = "ROOM_ID")]
    room: String,
    /// The message.
    #[arg(long, default_value = "Hello from a delegated device")]
    text: String,
    /// Receive the cross-signing and backup keys and sign our own device.
    #[arg(long)]
    share_secrets: bool,
    /// Approve from here (opens the consent page) instead of from the daemon's notification.
    #[arg(long)]
    approve: bool,
    /// Directory for the encrypted-state store (default: a temporary one, gone at exit).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let room_id =
        OwnedRoomId::try_from(args.room.as_str()).context("--room takes a room ID like !abc:example.org")?;

    // 1. Ask the daemon for a device. `delegate` starts the flow, waits while the user consents
    //    and returns the session the daemon hands over through a file descriptor. Its `Debug`
    //    output never shows the tokens.
    let linkd = Linkd::connect().await.context("cannot reach the session bus")?;
    let options = DelegateOptions {
        client_name: "matrix-linkd light client example".into(),
        share_secrets: args.share_secrets,
        approve: args.approve,
        ..Default::default()
    };
    eprintln!("Waiting for your consent: approve the notification of matrix-linkd…");
    let session = linkd.delegate(options).await.context("the daemon did not delegate a device")?;
    let device_id = session.device_id.clone();
    eprintln!("Got device {device_id} of {}", session.user_id);

    // 2. A matrix-sdk client on a store of its own. `into_client` restores the OAuth session and
    //    establishes trust: with the secrets it imports them (our device is cross-signed at once);
    //    without, it runs the first sync, which uploads our device keys for the daemon to sign.
    //    A real client keeps the store and saves `client.oauth().full_session()` (and again on each
    //    `client.subscribe_to_session_changes()`), e.g. in the Secret Service, to start again later.
    let temp_store;
    let store = match args.store {
        Some(dir) => dir,
        None => {
            temp_store = tempfile::tempdir()?;
            temp_store.path().to_owned()
        }
    };
    let client = session.into_client(&store, None).await?;

    // 3. Sync until the room is known and our device is cross-signed (the daemon's signature
    //    arrives with the keys of our own user on a following sync), for at most a minute.
    //    Sending from an unverified device works too; other members would see a warning.
    let settings = SyncSettings::default().timeout(Duration::from_secs(5));
    let verification = client.encryption().verification_state();
    let mut room = None;
    for _ in 0..12 {
        client.sync_once(settings.clone()).await.context("sync failed")?;
        room = client.get_room(&room_id);
        if room.is_some() && verification.get() == VerificationState::Verified {
            break;
        }
    }
    let Some(room) = room else { bail!("{room_id} is not a room of this account") };
    if room.state() != RoomState::Joined {
        bail!("the account has not joined {room_id}");
    }
    if verification.get() != VerificationState::Verified {
        eprintln!("Warning: our device is not cross-signed yet; sending anyway.");
    }

    // 4. Send. This example only sends end-to-end encrypted messages: matrix-sdk encrypts for
    //    every device of the room's members (it fetches their keys and shares a room key first).
    if !room.latest_encryption_state().await?.is_encrypted() {
        bail!("{room_id} is not encrypted; this example sends only end-to-end encrypted messages");
    }
    let sent = room.send(RoomMessageEventContent::text_plain(args.text)).await?;
    println!("{}", sent.response.event_id);

    // The device stays on the account. With a temporary store nothing can use it again: end it.
    eprintln!("End this device's session with: matrix-link revoke {device_id}");
    Ok(())
}
