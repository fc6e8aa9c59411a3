//! The daemon's connection to the session bus, read through a filter that keeps an over-size
//! message out of memory.
//!
//! zbus reads a whole message (up to the D-Bus limit of 128 MiB) into one buffer before any handler
//! runs, so one call from any program on the bus could make the daemon hold that much, or many
//! times it while it is turned into values. Nothing the daemon is sent comes near [`MAX_BODY`]: a
//! QR code is at most ~3 KB, a call's options a few KB, and the replies to the daemon's own calls
//! (the bus driver's, the portal's, the notification server's) less. So the daemon connects to the
//! bus itself and hands zbus a socket whose read half ([`BoundedRead`]) passes the stream through a
//! [`Filter`]: a message whose body is longer than [`MAX_BODY`] reaches zbus with its header and an
//! empty body (its body length rewritten to 0), while the body is read off the socket in small
//! pieces and dropped. zbus then reads a call whose body does not match its signature and answers
//! the documented `org.freedesktop.DBus.Error.InvalidArgs`; the daemon's memory grows by a few
//! KiB, whatever the size. A message whose header alone passes [`MAX_FIELDS`] (no header of a
//! message to the daemon is that long) is dropped whole.
//!
//! The filter starts in the authentication phase (text lines, passed through) and reads messages
//! from the first byte that starts one: the bus sends nothing but lines until the daemon has sent
//! `BEGIN` and its `Hello`.

use std::{collections::VecDeque, io, os::fd::OwnedFd};

use tracing::warn;
use zbus::{
    address::transport::{Transport, UnixSocket},
    conn::socket::{BoxedSplit, ReadHalf, Split},
    connection,
    fdo::ConnectionCredentials,
};

/// The longest message body the daemon takes into memory.
pub const MAX_BODY: u32 = 1 << 20;
/// The longest header field array the daemon takes into memory.
pub const MAX_FIELDS: u32 = 64 << 10;
/// How much is read off the socket at a time while a body is dropped.
const CHUNK: usize = 64 << 10;
/// The fixed part of a message header: endianness, type, flags, version, body length, serial,
/// and the length of the header field array.
const PREFIX: usize = 16;
/// The longest line of the authentication phase kept while waiting for its end.
const MAX_LINE: usize = 16 << 10;

/// A connection builder for the session bus whose socket reads through [`Filter`]. Falls back to
/// zbus's own connection (unfiltered, with a warning) for a bus address that is not a Unix
/// socket, which a session bus practically always is.
pub async fn session_builder() -> zbus::Result<connection::Builder<'static>> {
    let stream = match unix_stream().await {
        Ok(stream) => stream,
        Err(why) => {
            warn!("{why}: messages on the session bus are read without a size bound");
            return connection::Builder::session();
        }
    };
    let (read, write) = stream.into_split();
    let split: BoxedSplit = Split::new(Box::new(BoundedRead::new(read)), Box::new(write));
    Ok(connection::Builder::socket(split))
}

/// A stream to the session bus's Unix socket, or why there is none (then zbus connects as it
/// would: another transport, or an address list it reads otherwise).
async fn unix_stream() -> Result<tokio::net::UnixStream, String> {
    let address =
        zbus::Address::session().map_err(|e| format!("cannot read the session bus address ({e})"))?;
    let connected = match address.transport() {
        Transport::Unix(unix) => match unix.path() {
            UnixSocket::File(path) => tokio::net::UnixStream::connect(path).await,
            UnixSocket::Abstract(name) => connect_abstract(name),
            _ => return Err(format!("the session bus address {address} is not one to connect to")),
        },
        _ => return Err(format!("the session bus ({address}) is not on a Unix socket")),
    };
    connected.map_err(|e| format!("cannot connect to the session bus at {address} ({e})"))
}

fn connect_abstract(name: &std::ffi::OsStr) -> io::Result<tokio::net::UnixStream> {
    use std::os::{linux::net::SocketAddrExt as _, unix::ffi::OsStrExt as _};
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

/// A read half whose stream passes through a [`Filter`].
#[derive(Debug)]
pub struct BoundedRead<R> {
    inner: R,
    filter: Filter,
    /// Filtered bytes not yet handed to zbus.
    out: VecDeque<u8>,
    fds: Vec<OwnedFd>,
    scratch: Vec<u8>,
    eof: bool,
}

impl<R> BoundedRead<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            filter: Filter::default(),
            out: VecDeque::new(),
            fds: Vec::new(),
            scratch: vec![0; CHUNK],
            eof: false,
        }
    }
}

#[async_trait::async_trait]
impl<R: ReadHalf> ReadHalf for BoundedRead<R> {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        while self.out.is_empty() && !self.eof {
            let (n, fds) = self.inner.recvmsg(&mut self.scratch).await?;
            self.fds.extend(fds);
            if n == 0 {
                self.eof = true;
            } else {
                for event in self.filter.feed(&self.scratch[..n], &mut self.out) {
                    warn!("{event}");
                }
            }
        }
        let n = buf.len().min(self.out.len());
        for (slot, byte) in buf.iter_mut().zip(self.out.drain(..n)) {
            *slot = byte;
        }
        Ok((n, std::mem::take(&mut self.fds)))
    }

    fn can_pass_unix_fd(&self) -> bool {
        self.inner.can_pass_unix_fd()
    }

    async fn peer_credentials(&mut self) -> io::Result<ConnectionCredentials> {
        self.inner.peer_credentials().await
    }

    fn auth_mechanism(&self) -> zbus::AuthMechanism {
        self.inner.auth_mechanism()
    }
}

/// Where the filter is in the stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Text lines of the authentication phase.
    #[default]
    Auth,
    /// Gathering a message's fixed header part.
    Prefix,
    /// Passing the header fields and their padding (this many bytes left).
    Fields(u64),
    /// Passing a body (this many bytes left).
    Body(u64),
    /// Dropping this many bytes: an over-size body, or a whole over-size message.
    Drop(u64),
    /// Not a D-Bus stream any more (a bad endianness byte): passed as it is, so zbus ends the
    /// connection as it would have.
    Raw,
}

/// What the filter did to a message, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error(
        "a message on the bus with a {0}-byte body (more than the daemon reads) was passed on without it"
    )]
    Body(u32),
    #[error("a message on the bus with a {0}-byte header (more than the daemon reads) was dropped")]
    Message(u32),
}

/// The stream transformation (see the module's documentation), on bytes in whatever pieces they
/// come.
#[derive(Debug, Default)]
pub struct Filter {
    phase: Phase,
    /// What follows the current message's header fields: its body passed, or dropped.
    pending_body: Phase,
    /// The header fields of a message whose body is dropped, gathered to blank their signature.
    gathered: Option<Gathered>,
    /// A partial line or message prefix.
    held: Vec<u8>,
}

/// The header fields of a message whose body is dropped.
#[derive(Debug)]
struct Gathered {
    /// The field array and its padding.
    fields: Vec<u8>,
    /// The array's length.
    len: usize,
    little_endian: bool,
}

impl Gathered {
    /// The fields with their signature written over (see [`blank_signature`]).
    fn blanked(mut self) -> Vec<u8> {
        blank_signature(&mut self.fields, self.len, self.little_endian);
        self.fields
    }
}

/// Whether bytes at the start of a line are a message (the endianness byte of one) rather than
/// one of the bus's authentication replies (`OK`, `REJECTED`, `DATA`, `ERROR`, `AGREE_UNIX_FD`).
fn starts_message(input: &[u8]) -> bool {
    matches!(input.first(), Some(b'l' | b'B'))
}

impl Filter {
    /// Feeds `input`, appending what zbus is to read to `out`; returns what was dropped.
    pub fn feed(&mut self, mut input: &[u8], out: &mut VecDeque<u8>) -> Vec<Dropped> {
        let mut dropped = Vec::new();
        while !input.is_empty() {
            match self.phase {
                Phase::Auth => {
                    if self.held.is_empty() && starts_message(input) {
                        self.phase = Phase::Prefix;
                        continue;
                    }
                    match input.iter().position(|&b| b == b'\n') {
                        Some(end) => {
                            out.extend(self.held.drain(..));
                            out.extend(&input[..=end]);
                            input = &input[end + 1..];
                        }
                        None if self.held.len() + input.len() > MAX_LINE => {
                            // Not a line the bus would send: let zbus's handshake refuse it.
                            out.extend(self.held.drain(..));
                            out.extend(input);
                            self.phase = Phase::Raw;
                            input = &[];
                        }
                        None => {
                            self.held.extend_from_slice(input);
                            input = &[];
                        }
                    }
                }
                Phase::Prefix => {
                    let take = (PREFIX - self.held.len()).min(input.len());
                    self.held.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.held.len() == PREFIX
                        && let Some(d) = self.message(out)
                    {
                        dropped.push(d);
                    }
                }
                Phase::Fields(left) | Phase::Body(left) | Phase::Drop(left) => {
                    let take = left.min(input.len() as u64);
                    let (now, rest) = input.split_at(take as usize);
                    input = rest;
                    let left = left - take;
                    self.phase = match self.phase {
                        Phase::Fields(_) => {
                            match &mut self.gathered {
                                Some(gathered) => gathered.fields.extend_from_slice(now),
                                None => out.extend(now),
                            }
                            if left > 0 {
                                Phase::Fields(left)
                            } else {
                                if let Some(gathered) = self.gathered.take() {
                                    out.extend(gathered.blanked());
                                }
                                self.body_phase()
                            }
                        }
                        Phase::Body(_) if left > 0 => {
                            out.extend(now);
                            Phase::Body(left)
                        }
                        Phase::Body(_) => {
                            out.extend(now);
                            Phase::Prefix
                        }
                        _ if left > 0 => Phase::Drop(left),
                        _ => Phase::Prefix,
                    };
                }
                Phase::Raw => {
                    out.extend(input);
                    input = &[];
                }
            }
        }
        dropped
    }

    fn body_phase(&self) -> Phase {
        match self.pending_body {
            Phase::Body(0) | Phase::Drop(0) => Phase::Prefix,
            other => other,
        }
    }

    /// A message's prefix is complete in `held`: passes it on (its body length rewritten if the
    /// body is to be dropped) and sets the next phase.
    fn message(&mut self, out: &mut VecDeque<u8>) -> Option<Dropped> {
        let mut prefix = std::mem::take(&mut self.held);
        let read = |b: &[u8]| -> Option<u32> {
            let bytes: [u8; 4] = b.try_into().ok()?;
            match prefix[0] {
                b'l' => Some(u32::from_le_bytes(bytes)),
                b'B' => Some(u32::from_be_bytes(bytes)),
                _ => None,
            }
        };
        let (Some(body), Some(fields)) = (read(&prefix[4..8]), read(&prefix[12..16])) else {
            out.extend(prefix);
            self.phase = Phase::Raw;
            return None;
        };
        // The header is padded to a multiple of 8 before the body.
        let fields_padded = u64::from(fields).next_multiple_of(8);
        if fields > MAX_FIELDS {
            self.phase = Phase::Drop(fields_padded + u64::from(body));
            return Some(Dropped::Message(fields));
        }
        let dropped = (body > MAX_BODY).then(|| {
            let zero = if prefix[0] == b'l' { 0u32.to_le_bytes() } else { 0u32.to_be_bytes() };
            prefix[4..8].copy_from_slice(&zero);
            Dropped::Body(body)
        });
        if dropped.is_some() && fields_padded > 0 {
            self.gathered = Some(Gathered {
                fields: Vec::with_capacity(fields_padded as usize),
                len: fields as usize,
                little_endian: prefix[0] == b'l',
            });
        }
        out.extend(prefix);
        self.pending_body = match dropped {
            Some(_) => Phase::Drop(u64::from(body)),
            None => Phase::Body(u64::from(body)),
        };
        self.phase = Phase::Fields(fields_padded);
        if fields_padded == 0 {
            self.phase = self.body_phase();
        }
        dropped
    }
}

/// Writes `y` over every character of the `SIGNATURE` header field (code 8) in `fields` (the
/// header field array of `len` bytes, from offset 16 of the message), so that a call whose body
/// was dropped reads as a call with a signature no method takes: the daemon's argument readers
/// answer that with the documented `InvalidArgs`, where an empty body under the method's own
/// signature would be zbus's generic error. Leaves the fields as they are when they hold a value
/// of a type no header field has (then zbus answers what it answers).
fn blank_signature(fields: &mut [u8], len: usize, little: bool) -> Option<()> {
    const SIGNATURE: u8 = 8;
    let u32_at = |b: &[u8], at: usize| -> Option<usize> {
        let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        let v = if little { u32::from_le_bytes(bytes) } else { u32::from_be_bytes(bytes) };
        usize::try_from(v).ok()
    };
    // Each field is a structure (8-aligned; the array starts at offset 16) of a code and a variant.
    let mut at = 0;
    while at < len {
        let code = *fields.get(at)?;
        let sig_len = usize::from(*fields.get(at + 1)?);
        let sig = fields.get(at + 2..at + 2 + sig_len)?.to_vec();
        at += 2 + sig_len + 1;
        match &sig[..] {
            b"g" => {
                let n = usize::from(*fields.get(at)?);
                if code == SIGNATURE {
                    fields.get_mut(at + 1..at + 1 + n)?.fill(b'y');
                    return Some(());
                }
                at += 1 + n + 1;
            }
            b"s" | b"o" => {
                at = at.next_multiple_of(4);
                at += 4 + u32_at(fields, at)? + 1;
            }
            b"u" => at = at.next_multiple_of(4) + 4,
            _ => return None,
        }
        at = at.next_multiple_of(8);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body_len: usize) -> Vec<u8> {
        let msg = zbus::Message::method_call("/io/github/matrix_linkd/Linkd1", "StartLogin")
            .unwrap()
            .build(&(vec![0x4du8; body_len],))
            .unwrap();
        msg.data().to_vec()
    }

    /// The stream through the filter in pieces of `piece` bytes.
    fn through(stream: &[u8], piece: usize) -> (Vec<u8>, Vec<Dropped>) {
        let mut filter = Filter::default();
        let mut out = VecDeque::new();
        let mut dropped = Vec::new();
        for chunk in stream.chunks(piece) {
            dropped.extend(filter.feed(chunk, &mut out));
        }
        (out.into(), dropped)
    }

    const AUTH: &[u8] = b"OK 6f6b6b6b6b6b6b6b6b6b6b6b6b6b6b\r\nAGREE_UNIX_FD\r\n";

    #[test]
    fn what_fits_passes_unchanged_in_any_pieces() {
        let stream = [AUTH, &call(0), &call(3), &call(4096), &call(MAX_BODY as usize - 64)].concat();
        for piece in [1, 2, 7, 16, 17, 4096, stream.len()] {
            let (out, dropped) = through(&stream, piece);
            assert!(dropped.is_empty(), "pieces of {piece}");
            assert!(out == stream, "pieces of {piece}: the stream changed");
        }
    }

    #[test]
    fn an_oversize_body_is_dropped_and_its_length_zeroed() {
        let small = call(10);
        let big = call(3 * MAX_BODY as usize);
        let stream = [AUTH, &small, &big, &small].concat();
        for piece in [1, 5, 16, 4096, 65536] {
            let (out, dropped) = through(&stream, piece);
            let body_len = u32::from_le_bytes(big[4..8].try_into().unwrap());
            assert_eq!(dropped, vec![Dropped::Body(body_len)]);
            let fields = u32::from_le_bytes(big[12..16].try_into().unwrap()) as usize;
            let header_len = (PREFIX + fields).next_multiple_of(8);
            let mut header = big[..header_len].to_vec();
            header[4..8].copy_from_slice(&[0; 4]);
            // The signature `ay` written over: `yy`.
            let sig = header.windows(4).position(|w| w == b"\x02ay\0").expect("the signature field");
            header[sig + 1..sig + 3].copy_from_slice(b"yy");
            assert!(out == [AUTH, &small, &header, &small].concat(), "pieces of {piece}");
        }
    }

    #[test]
    fn big_endian_messages_are_read_too() {
        let mut big = call(2 * MAX_BODY as usize);
        // The same message as a big-endian sender writes its prefix (the filter reads no more).
        big[0] = b'B';
        for range in [4..8, 12..16] {
            let v = u32::from_le_bytes(big[range.clone()].try_into().unwrap());
            big[range].copy_from_slice(&v.to_be_bytes());
        }
        let (out, dropped) = through(&[AUTH, &big].concat(), 4096);
        assert_eq!(dropped.len(), 1);
        assert_eq!(&out[AUTH.len() + 4..AUTH.len() + 8], &[0; 4]);
    }

    #[test]
    fn an_oversize_header_drops_the_message() {
        let mut huge = vec![b'l', 1, 0, 1];
        huge.extend(8u32.to_le_bytes());
        huge.extend(1u32.to_le_bytes());
        huge.extend((MAX_FIELDS + 1).to_le_bytes());
        huge.extend(vec![0; (MAX_FIELDS + 1).next_multiple_of(8) as usize + 8]);
        let small = call(1);
        let (out, dropped) = through(&[AUTH, &huge, &small].concat(), 1000);
        assert_eq!(dropped, vec![Dropped::Message(MAX_FIELDS + 1)]);
        assert!(out == [AUTH, &small].concat());
    }

    #[test]
    fn a_stream_that_is_not_dbus_is_passed_as_it_is() {
        let (out, _) = through(&[AUTH, b"Xnot a line the bus sends", &[b'a'; MAX_LINE]].concat(), 100);
        assert!(out.starts_with(AUTH));
        assert_eq!(out.len(), AUTH.len() + 25 + MAX_LINE);
    }
}
