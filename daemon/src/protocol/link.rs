//! One flow's transport: the rendezvous session of either generation, the secure channel on top of
//! it, and the polling that waits for the other device.
//!
//! Polling adapts to who acts next. While a machine reply is due (the other device only has to
//! read, compute and write) we look again after 50 ms and back off over the second in which a
//! peer that looks once a second sees our write; while a person acts (scanning, typing a code,
//! consenting in a browser) we look after half a second, then once a second; while only our own
//! user decides, every few seconds. Every 2024 read is conditional (`If-None-Match`), and no wait
//! runs past the session's end: the server's `Expires` (2024) or `expires_in_ms` (latest).

use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;
use url::Url;

use super::{
    rendezvous::{RendezvousError, Session2024, SessionLatest},
    wire::{
        aad::{aad, aad_raw},
        channel::{Channel, ChannelError, Generation},
        messages::LoginMessage,
        qr::LoginQr,
    },
};
use crate::error::LinkError;

/// Who acts before the next message can arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// The message is probably there already (we were busy with our own user): look at once.
    Now,
    /// The other device only has to see our write and compute: look soon, then back off over the
    /// second a peer looking once a second (matrix-sdk, or we waiting on a person) takes to see it.
    Machine,
    /// A person acts first: a look after half a second, then one every second, as matrix-sdk
    /// looks all the time: the other device's answer is seen within a second of the person acting.
    Human,
    /// Nothing is due from the other device (our own user decides); we only watch for it giving
    /// up, which ends the flow within a few seconds.
    Watch,
}

impl Pace {
    /// Delays before each look, in milliseconds; the last one repeats.
    fn delays(self) -> &'static [u64] {
        match self {
            Pace::Now => &[0, 50, 100, 150, 200, 250, 250, 500, 1000],
            Pace::Machine => &[50, 100, 150, 200, 250, 250, 500, 1000],
            Pace::Human => &[500, 1000],
            // Below `DELETE_AFTER` with a second to spare: a last message the other device writes
            // while we watch is read before it deletes the session.
            Pace::Watch => &[2000],
        }
    }
}

/// How a latest-generation AAD writes the base URL (docs/protocol.md §6.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseForm {
    /// `Url::as_str()`, with the `/` of a root path: what both Element SDKs bind to.
    Normalised,
    /// As their QR codes carry it, without that `/`: what the MSC text says ("the base URL from the
    /// QR code").
    AsInQr,
}

/// A rendezvous session of either generation.
pub enum Rendezvous {
    V2024(Session2024),
    Latest {
        session: SessionLatest,
        /// Normalised base URL.
        base: Url,
        expires_at: Option<Instant>,
        /// The form of the base URL the other device binds its messages to, known once its
        /// handshake message opened ([`Rendezvous::pin_aad_form`]). Until then we write the
        /// normalised form and read both.
        form: Option<BaseForm>,
    },
}

impl std::fmt::Debug for Rendezvous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rendezvous::V2024(_) => "Rendezvous::V2024(<redacted>)",
            Rendezvous::Latest { .. } => "Rendezvous::Latest(<redacted>)",
        })
    }
}

impl Rendezvous {
    pub fn latest(session: SessionLatest, base: Url) -> Self {
        let ttl = session.expires_in();
        let expires_at = (!ttl.is_zero()).then(|| super::rendezvous::deadline_in(ttl));
        Rendezvous::Latest { session, base, expires_at, form: None }
    }

    pub fn generation(&self) -> Generation {
        match self {
            Rendezvous::V2024(_) => Generation::V2024,
            Rendezvous::Latest { .. } => Generation::Latest,
        }
    }

    /// Where the session is deleted (the intent journal keeps it for a restart's clean-up).
    pub fn url(&self) -> Option<Url> {
        match self {
            Rendezvous::V2024(s) => Some(s.url().clone()),
            Rendezvous::Latest { session, .. } => session.session_url().ok(),
        }
    }

    pub fn expires_at(&self) -> Option<Instant> {
        match self {
            Rendezvous::V2024(s) => s.expires_at(),
            Rendezvous::Latest { expires_at, .. } => *expires_at,
        }
    }

    /// The AAD of our next write: bound to the token it will carry as precondition, and to the
    /// other device's form of the base URL once known (the normalised one before).
    pub fn send_aad(&self) -> Vec<u8> {
        self.send_aads().swap_remove(0)
    }

    /// Our next write's AAD in each form of the base URL still possible, in the order of
    /// [`Rendezvous::poll`]'s list: for G's LoginOk, which takes the form S's LoginInitiate used.
    pub fn send_aads(&self) -> Vec<Vec<u8>> {
        match self {
            Rendezvous::V2024(_) => vec![Vec::new()],
            Rendezvous::Latest { session, .. } => self.recv_aads(session.token()),
        }
    }

    /// AADs a received write may be bound to. Until the other device's form is known: the
    /// normalised base URL first, then the form the QR code carries (no trailing `/`), for peers
    /// that follow the MSC text literally; afterwards only the other device's form.
    fn recv_aads(&self, token: &str) -> Vec<Vec<u8>> {
        match self {
            Rendezvous::V2024(_) => vec![Vec::new()],
            Rendezvous::Latest { session, base, form, .. } => {
                let normal = || aad(base, session.id(), token);
                let stripped = || aad_raw(&LoginQr::qr_base_url(base), session.id(), token);
                match form {
                    Some(BaseForm::Normalised) => vec![normal()],
                    Some(BaseForm::AsInQr) => vec![stripped()],
                    None if stripped() == normal() => vec![normal()],
                    None => vec![normal(), stripped()],
                }
            }
        }
    }

    /// Keeps, for every later message both ways, the base-URL form of the candidate at `index`
    /// (of the lists above): the one the other device's handshake message opened with.
    pub fn pin_aad_form(&mut self, index: usize) {
        if let Rendezvous::Latest { form, .. } = self
            && form.is_none()
        {
            *form = Some(if index == 0 { BaseForm::Normalised } else { BaseForm::AsInQr });
        }
    }

    pub async fn send(&mut self, payload: &str) -> Result<(), RendezvousError> {
        match self {
            Rendezvous::V2024(s) => s.send(payload).await,
            Rendezvous::Latest { session, .. } => session.send(payload).await,
        }
    }

    /// One look: the other side's new write and the AADs it may be bound to.
    pub async fn poll(&mut self) -> Result<Option<(String, Vec<Vec<u8>>)>, RendezvousError> {
        match self {
            Rendezvous::V2024(s) => Ok(s.poll().await?.map(|data| (data, vec![Vec::new()]))),
            Rendezvous::Latest { session, .. } => match session.poll().await? {
                Some((data, token)) => {
                    let aads = self.recv_aads(&token);
                    Ok(Some((data, aads)))
                }
                None => Ok(None),
            },
        }
    }

    /// Waits for the other side's next write, looking as `pace` says, never past the session's end.
    pub async fn wait(&mut self, pace: Pace) -> Result<(String, Vec<Vec<u8>>), LinkError> {
        let delays = pace.delays();
        let mut looks = 0usize;
        loop {
            let delay = Duration::from_millis(delays[looks.min(delays.len() - 1)]);
            looks += 1;
            if let Some(end) = self.expires_at() {
                let now = Instant::now();
                if now >= end {
                    return Err(expired());
                }
                if now + delay > end {
                    // One last look just before the end rather than a request that must fail.
                    tokio::time::sleep_until(end - Duration::from_millis(50).min(end - now)).await;
                    return match self.poll().await.map_err(LinkError::from)? {
                        Some(found) => Ok(found),
                        None => Err(expired()),
                    };
                }
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(found) = self.poll().await.map_err(LinkError::from)? {
                debug!(looks, ?pace, "rendezvous read");
                return Ok(found);
            }
        }
    }

    pub async fn delete(&self) {
        match self {
            Rendezvous::V2024(s) => s.delete().await,
            Rendezvous::Latest { session, .. } => session.delete().await,
        }
    }
}

fn expired() -> LinkError {
    LinkError::Expired("the rendezvous session expired".into())
}

/// An established secure channel over its rendezvous session.
pub struct Link {
    pub rv: Rendezvous,
    pub channel: Channel,
    /// We scanned the QR code (S): the other device's user still has the check code to type.
    pub scanned: bool,
    /// The other device wrote last and we read it: the slot is ours to write.
    pub our_turn: bool,
    /// A write of the other device seen by [`Link::watch`] and not yet opened: the next
    /// [`Link::recv`] takes it.
    early: Option<(String, Vec<Vec<u8>>)>,
}

impl Link {
    /// The link keeps the form of the base URL the other device's handshake message was bound to
    /// ([`Channel::handshake_aad`]) for every later message, written or read.
    pub fn new(mut rv: Rendezvous, channel: Channel, scanned: bool, our_turn: bool) -> Self {
        rv.pin_aad_form(channel.handshake_aad());
        Self { rv, channel, scanned, our_turn, early: None }
    }

    /// While our own user is busy (typing the check code), watches the session without acting on
    /// anything: a write of the other device is kept, unopened, for the next `recv`. Resolves only
    /// when the session is gone (the other device deleted it, it expired, the server went away),
    /// so that the flow ends within seconds rather than when the user finally answers.
    pub async fn watch(&mut self) -> LinkError {
        while self.early.is_none() {
            match self.rv.wait(Pace::Watch).await {
                Ok(found) => self.early = Some(found),
                Err(e) => return e,
            }
        }
        std::future::pending().await
    }

    /// Seals and writes one message.
    pub async fn send(&mut self, msg: &LoginMessage) -> Result<(), LinkError> {
        let aad = self.rv.send_aad();
        let payload = self.channel.seal(&msg.encode(), &aad);
        self.rv.send(&payload).await.map_err(LinkError::from)?;
        self.our_turn = false;
        debug!(message = msg.kind(), "rendezvous write");
        Ok(())
    }

    /// Waits for, opens and decodes the other device's next message. Also returns the plaintext,
    /// for messages whose full form another parser reads (the secrets bundle).
    pub async fn recv(&mut self, pace: Pace) -> Result<(LoginMessage, Vec<u8>), LinkError> {
        let (payload, aads) = match self.early.take() {
            Some(early) => early,
            None => self.rv.wait(pace).await?,
        };
        let mut last = ChannelError::Decrypt;
        for aad in &aads {
            match self.channel.open(&payload, aad) {
                Ok(plain) => {
                    self.our_turn = true;
                    let msg = LoginMessage::decode(&plain).map_err(LinkError::from)?;
                    debug!(message = msg.kind(), "received");
                    return Ok((msg, plain));
                }
                // A failed open leaves the channel's counters where they were: try the next AAD
                // (after the handshake there is one, in the other device's form).
                Err(e) => last = e,
            }
        }
        Err(LinkError::from(last))
    }

    /// Best effort, for the end of a flow: writes `msg` even when it is not our turn. When the
    /// other device owes a reply, we wait a moment for it (fetched, not opened) so our write does
    /// not cross it; the message is sealed once, and a 2024 write that still races is resent as
    /// is (no AAD there). A peer that has not read our previous message cannot open this one; it
    /// stops either way.
    pub async fn tell(&mut self, msg: &LoginMessage) {
        let attempt = async {
            if !self.our_turn && self.early.is_none() {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.rv.wait(Pace::Machine)).await;
            }
            let aad = self.rv.send_aad();
            let payload = self.channel.seal(&msg.encode(), &aad);
            let mut sent = self.rv.send(&payload).await;
            if sent == Err(RendezvousError::Conflict) && self.rv.generation() == Generation::V2024 {
                let _ = self.rv.poll().await;
                sent = self.rv.send(&payload).await;
            }
            match sent {
                Ok(()) => debug!(message = ?msg, "told the other device"),
                Err(e) => debug!(error = %e, "cannot tell the other device"),
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), attempt).await.is_err() {
            debug!("telling the other device timed out");
        }
    }
}

/// Session deletes still to be done: shutdown waits for them ([`wait_pending_deletes`]).
static PENDING_DELETES: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// How long after our last write we delete the session: longer, by a second, than the longest
/// gap between two of our looks in any pace (and matrix-sdk's, 1 s), so the other device reads it.
const DELETE_AFTER: Duration = Duration::from_secs(3);

/// Deletes the session after the other device had time to read our last write.
pub fn delete_later(rv: Rendezvous) {
    PENDING_DELETES.spawn(async move {
        tokio::time::sleep(DELETE_AFTER).await;
        rv.delete().await;
    });
}

/// Waits (at most `limit`) for the deletes [`delete_later`] scheduled; `false` if some are left.
pub async fn wait_pending_deletes(limit: Duration) -> bool {
    PENDING_DELETES.close();
    let done = tokio::time::timeout(limit, PENDING_DELETES.wait()).await.is_ok();
    PENDING_DELETES.reopen();
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_is_quick_for_machines_and_gentle_for_people() {
        assert_eq!(Pace::Now.delays()[0], 0, "a reply that is probably there is read at once");
        assert!(Pace::Machine.delays()[0] <= 50);
        assert!(Pace::Human.delays()[0] >= Pace::Machine.delays()[0]);
        for pace in [Pace::Now, Pace::Machine, Pace::Human, Pace::Watch] {
            let d = pace.delays();
            assert!(d.windows(2).all(|w| w[0] <= w[1]), "{pace:?} backs off monotonically");
        }
        assert_eq!(*Pace::Machine.delays().last().unwrap(), 1000);
        // After a person acts, the answer is seen within a second, and over a person's 30 s about
        // as many looks as matrix-sdk's fixed 1 s poll.
        assert_eq!(*Pace::Human.delays().last().unwrap(), 1000);
        let (mut t, mut looks) = (0u64, 0);
        let d = Pace::Human.delays();
        while t < 30_000 {
            t += d[looks.min(d.len() - 1)];
            looks += 1;
        }
        assert!(looks <= 32, "{looks} looks in 30 s");
        // An answer that comes when a peer looking once a second sees our write (within a second)
        // is seen within 250 ms of it, with at most 6 looks: matrix-sdk takes up to a second, and
        // one look.
        let d = Pace::Machine.delays();
        let at: Vec<u64> = (0..d.len()).map(|i| d[..=i].iter().sum()).collect();
        assert!(at.windows(2).filter(|w| w[0] < 1000).all(|w| w[1] - w[0] <= 250), "{at:?}");
        assert!(at.iter().filter(|t| **t < 1000).count() <= 6, "{at:?}");
        // Watching for our own user costs a look every two seconds, and no pace leaves a gap that
        // a last message written then deleted `DELETE_AFTER` later could fall into (the stack
        // suite's cancel tests lost the reason when the watch looked every 3 s).
        assert!(Pace::Watch.delays()[0] >= 2000);
        for pace in [Pace::Now, Pace::Machine, Pace::Human, Pace::Watch] {
            let longest = Duration::from_millis(*pace.delays().iter().max().unwrap());
            assert!(longest + Duration::from_secs(1) <= DELETE_AFTER, "{pace:?}");
        }
    }

    /// Latest generation: before the handshake both forms of the base URL are read (normalised
    /// first) and the normalised one is written; the form the other device's handshake message
    /// used is then kept for every message both ways, whichever side we are.
    #[test]
    fn the_other_devices_form_of_the_base_url_is_kept() {
        use crate::protocol::wire::channel::{Generation, Generator, Initiated};
        let base = Url::parse("https://matrix-client.matrix.org").unwrap();
        let fresh = || Rendezvous::latest(SessionLatest::for_test(&base, "01J", "T1"), base.clone());
        let in_form = |form: usize, token: &str| match form {
            0 => aad(&base, "01J", token),
            _ => aad_raw("https://matrix-client.matrix.org", "01J", token),
        };
        let rv = fresh();
        assert_eq!(rv.recv_aads("T3"), vec![in_form(0, "T3"), in_form(1, "T3")]);
        assert_eq!(rv.send_aads(), vec![in_form(0, "T1"), in_form(1, "T1")]);
        assert_eq!(rv.send_aad(), in_form(0, "T1"));
        assert!(rv.expires_at().is_some());

        for form in [0, 1] {
            // We are G: S binds LoginInitiate (T1) and reads LoginOk (T2 = our token) in its form.
            let rv = fresh();
            let g = Generator::new(Generation::Latest);
            let (pending, initiate) =
                Initiated::start(Generation::Latest, &g.public_key(), &in_form(form, "T1")).unwrap();
            let (ours, ok) = g.accept(&initiate, &rv.recv_aads("T1"), &rv.send_aads()).unwrap();
            let mut theirs = pending.confirm(&ok, &[in_form(form, "T1")]).expect("LoginOk in S's form");
            let mut link = Link::new(rv, ours, false, false);
            assert_eq!(link.rv.recv_aads("T3"), vec![in_form(form, "T3")]);
            assert_eq!(link.rv.send_aad(), in_form(form, "T1"));
            let payload = theirs.seal(br#"{"type":"m.login.success"}"#, &in_form(form, "T3"));
            assert!(link.channel.open(&payload, &link.rv.recv_aads("T3")[0]).is_ok());
            let payload = link.channel.seal(b"{}", &link.rv.send_aad());
            assert!(theirs.open(&payload, &in_form(form, "T1")).is_ok());

            // We are S: LoginInitiate in the normalised form; G answers in its form (T1 here,
            // the token of our test session).
            let rv = fresh();
            let g = Generator::new(Generation::Latest);
            let (pending, initiate) =
                Initiated::start(Generation::Latest, &g.public_key(), &rv.send_aad()).unwrap();
            let (mut theirs, ok) = g.accept(&initiate, &[in_form(0, "T1")], &[in_form(form, "T1")]).unwrap();
            let ours = pending.confirm(&ok, &rv.recv_aads("T1")).unwrap();
            let mut link = Link::new(rv, ours, true, true);
            assert_eq!(link.rv.send_aad(), in_form(form, "T1"));
            let payload = link.channel.seal(b"{}", &link.rv.send_aad());
            assert!(theirs.open(&payload, &in_form(form, "T1")).is_ok());
            let payload = theirs.seal(b"{}", &in_form(form, "T4"));
            assert_eq!(link.rv.recv_aads("T4"), vec![in_form(form, "T4")]);
            assert!(link.channel.open(&payload, &link.rv.recv_aads("T4")[0]).is_ok());
        }

        // A base URL with a path has one form only.
        let base = Url::parse("https://example.org/matrix/").unwrap();
        let rv = Rendezvous::latest(SessionLatest::for_test(&base, "01J", "T1"), base);
        assert_eq!(rv.recv_aads("T3").len(), 1);
        assert_eq!(rv.send_aads().len(), 1);
    }

    #[test]
    fn rendezvous_errors_are_named() {
        assert!(matches!(LinkError::from(RendezvousError::Expired), LinkError::Expired(_)));
        assert!(matches!(LinkError::from(RendezvousError::Unavailable(404)), LinkError::Unsupported(_)));
        assert!(matches!(LinkError::from(RendezvousError::Network), LinkError::Network(_)));
        assert!(matches!(LinkError::from(RendezvousError::Conflict), LinkError::ProtocolError(_)));
    }
}
