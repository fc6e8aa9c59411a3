//! The own engine's rendezvous clients and secure channels against real Synapse: both rendezvous
//! APIs (2024 ETag, latest sequence_token), a full channel handshake and messages both ways over
//! each, and the server's error answers as named errors.

use anyhow::Result;
use matrix_linkd::protocol::{
    rendezvous::{RendezvousError, Session2024, SessionLatest, http_client},
    wire::{
        aad::aad,
        channel::{Generation, Generator, Initiated},
    },
};
use matrix_linkd_tests::stack::Stack;

/// Polls until the other side's write shows up.
async fn next_2024(s: &mut Session2024) -> Result<String> {
    for _ in 0..100 {
        if let Some(p) = s.poll().await? {
            return Ok(p);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("nothing arrived")
}

async fn next_latest(s: &mut SessionLatest) -> Result<(String, String)> {
    for _ in 0..100 {
        if let Some(p) = s.poll().await? {
            return Ok(p);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::bail!("nothing arrived")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_2024_on_synapse() -> Result<()> {
    let stack = Stack::main()?;
    let http = http_client();
    // G creates and shows the session URL; S joins from the "QR code".
    let mut g = Session2024::create(&http, &stack.synapse, matrix_linkd::net::Reach::ANYWHERE).await?;
    let mut s = Session2024::join(&http, g.url().clone());
    assert_eq!(s.poll().await?, None, "a fresh session is empty");

    let generator = Generator::new(Generation::V2024);
    let (pending, initiate) = Initiated::start(Generation::V2024, &generator.public_key(), &[])?;
    s.send(&initiate).await?;
    let received = next_2024(&mut g).await?;
    let (mut g_channel, ok) = generator.accept(&received, &[], &[])?;
    g.send(&ok).await?;
    let mut s_channel = pending.confirm(&next_2024(&mut s).await?, &[])?;
    assert_eq!(g_channel.check_code(), s_channel.check_code());

    s.send(&s_channel.seal(br#"{"type":"m.login.protocol"}"#, &[])).await?;
    assert_eq!(g_channel.open(&next_2024(&mut g).await?, &[])?, br#"{"type":"m.login.protocol"}"#);
    g.send(&g_channel.seal(br#"{"type":"m.login.protocol_accepted"}"#, &[])).await?;
    assert_eq!(s_channel.open(&next_2024(&mut s).await?, &[])?, br#"{"type":"m.login.protocol_accepted"}"#);

    // A writer with a stale ETag is refused: 412 M_CONCURRENT_WRITE.
    let mut stale = s.clone();
    s.send("from s").await?;
    assert_eq!(stale.send("stale").await, Err(RendezvousError::Conflict));
    // After DELETE the session is gone (404 M_NOT_FOUND) long before the end Synapse announced:
    // lost, or ended by the other device, not run out.
    g.delete().await;
    assert_eq!(s.poll().await, Err(RendezvousError::Lost));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_latest_on_synapse() -> Result<()> {
    let stack = Stack::main()?;
    let http = http_client();
    let base = &stack.synapse;
    assert!(SessionLatest::discover(&http, base, None).await?, "msc4388_mode: open allows creation");
    let mut g = SessionLatest::create(&http, base, None).await?;
    assert!(g.expires_in().as_secs() >= 100, "Synapse keeps sessions 120 s");
    let mut s = SessionLatest::join(&http, base, g.id()).await?;
    assert_eq!(s.token(), g.token());
    let id = g.id().to_owned();

    // Handshake with AADs bound to each write's precondition token.
    let generator = Generator::new(Generation::Latest);
    let t1 = s.token().to_owned();
    let (pending, initiate) =
        Initiated::start(Generation::Latest, &generator.public_key(), &aad(base, &id, &t1))?;
    s.send(&initiate).await?;
    let t2 = s.token().to_owned();
    let (received, aad_token) = next_latest(&mut g).await?;
    assert_eq!(aad_token, t1);
    let (mut g_channel, ok) =
        generator.accept(&received, &[aad(base, &id, &t1)], &[aad(base, &id, g.token())])?;
    assert_eq!(g.token(), t2);
    g.send(&ok).await?;
    let (ok_received, ok_token) = next_latest(&mut s).await?;
    assert_eq!(ok_token, t2);
    let mut s_channel = pending.confirm(&ok_received, &[aad(base, &id, &t2)])?;
    let code = s_channel.check_code();
    assert_eq!(g_channel.check_code(), code);
    assert!((10..=99).contains(&code));

    for (i, text) in [r#"{"type":"m.login.protocol"}"#, r#"{"type":"m.login.success"}"#].iter().enumerate() {
        let precondition = s.token().to_owned();
        s.send(&s_channel.seal(text.as_bytes(), &aad(base, &id, &precondition))).await?;
        let (data, token) = next_latest(&mut g).await?;
        assert_eq!(token, precondition);
        assert_eq!(g_channel.open(&data, &aad(base, &id, &token))?, text.as_bytes(), "message {i}");
        let precondition = g.token().to_owned();
        g.send(&g_channel.seal(b"{\"type\":\"m.login.protocol_accepted\"}", &aad(base, &id, &precondition)))
            .await?;
        let (data, token) = next_latest(&mut s).await?;
        assert_eq!(
            s_channel.open(&data, &aad(base, &id, &token))?,
            b"{\"type\":\"m.login.protocol_accepted\"}"
        );
    }

    // A stale token with different data: 409 (IO_ELEMENT_MSC4388_CONCURRENT_WRITE).
    let mut stale = s.clone();
    s.send("fresh").await?;
    assert_eq!(stale.send("different").await, Err(RendezvousError::Conflict));
    // The identical payload with the immediately previous token is an idempotent retry.
    let mut retry = stale.clone();
    retry.send("fresh").await?;
    assert_eq!(retry.token(), s.token());
    // DELETE ends it.
    g.delete().await;
    assert_eq!(s.poll().await, Err(RendezvousError::Expired));
    assert_eq!(
        SessionLatest::join(&http, base, "no-such-session").await.err(),
        Some(RendezvousError::Expired)
    );
    Ok(())
}
