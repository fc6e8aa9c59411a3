//! The daemon's D-Bus method arguments (`matrix-linkd-busargs`, the daemon's `dbus::args`), read
//! as zbus reads them: the input is a method call's body in the D-Bus format (little endian), and
//! `Data::deserialize_for_dynamic_signature` with the body's signature gives the method's argument
//! (`Checked<Options>` for `StartGrant`, `StartLogin` and `StartDelegation`, `Checked<String>` for
//! `RevokeDelegation` and `GetQrCode`, `Checked<u8>` for `CheckCode`).
//!
//! The first input byte picks how the body is made:
//! - below 0x80, raw: the rest is the body; the second byte picks its signature (`a{sv}` for half
//!   of them, else another method's, a near miss, or a signature taken from the input) and which
//!   method reads it;
//! - from 0x80, built: the rest is a list of decisions from which a valid `a{sv}` body is written:
//!   any number of entries, duplicate or known keys, keys and strings at and past the limits in
//!   one- to four-byte characters, values of any type (nested variants, arrays of arrays,
//!   dictionaries, structures), nesting past zvariant's depth limits, and sometimes a few bytes
//!   changed or the body cut short afterwards. A body is at most 16 KiB, past every limit; one
//!   built input in 256 may write 10 MiB (strings and byte arrays up to 9 MiB, past the 8 MiB
//!   `qr_code` that once cost the daemon 1 GiB). So valid but huge dictionaries are read, not only
//!   parse errors, whatever the `-max_len`.
//!
//! Nothing may panic. Whatever the reader keeps is within `limits`: at most `ENTRIES` options,
//! keys of at most `KEY` bytes, strings of at most `STRING`, byte arrays of at most `BYTES`; a
//! `Checked<T>` holds its argument exactly when the body's signature is `T`'s. A built body that
//! was not changed must be read (or refused, when nested past the limits), and the options read
//! must be those written: the ones within the limits kept, and the first limit passed the reason
//! the call is refused (`InvalidQrCode` for a too-long `qr_code`, else `InvalidArgs`).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};
use matrix_linkd_api::options as key;
use matrix_linkd_busargs::{ArgsError, Checked, OptionValue, Options, limits};
use zvariant::{LE, Signature, Type, serialized::Context, serialized::Data};

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((&mode, rest)) if mode < 0x80 => raw(rest),
        Some((_, rest)) => built(rest),
        None => {}
    }
});

/// What the reader kept is within the limits.
fn check_within(options: &Options) {
    assert!(options.iter().count() <= limits::ENTRIES, "more than ENTRIES options kept");
    for (key, value) in options.iter() {
        assert!(key.len() <= limits::KEY, "a key of {} bytes kept", key.len());
        match value {
            OptionValue::Str(s) => assert!(s.len() <= limits::STRING, "a string of {} bytes kept", s.len()),
            OptionValue::Bytes(b) => assert!(b.len() <= limits::BYTES, "{} bytes kept", b.len()),
            OptionValue::Bool(_) => {}
            OptionValue::Other(sig) => {
                assert!(!matches!(sig.as_str(), "s" | "b" | "ay"), "`{sig}` not read as its type");
                assert!(Signature::try_from(sig.as_str()).is_ok(), "`{sig}` is no signature");
            }
        }
    }
}

/// The body as zbus hands it to a method taking one `T`: `Checked<T>` for the body's signature.
fn read<'d, T>(body: &'d Data<'d, 'static>, signature: &str) -> Option<T>
where
    T: Type + serde::Deserialize<'d>,
{
    let (checked, _) = body.deserialize_for_dynamic_signature::<_, Checked<T>>(signature).ok()?;
    let matches = Signature::try_from(signature).is_ok_and(|s| s == *T::SIGNATURE);
    match checked.get() {
        Ok(arg) => {
            assert!(matches, "`{signature}` read as `{}`", T::SIGNATURE);
            Some(arg)
        }
        Err(e) => {
            assert!(!matches, "`{signature}` not read as `{}`: {e}", T::SIGNATURE);
            assert!(matches!(e, ArgsError::InvalidArgs(_)));
            None
        }
    }
}

/// Which method reads the body.
#[derive(Clone, Copy)]
enum Method {
    Start,
    Revoke,
    CheckCode,
}

/// Body signatures of the raw mode besides `a{sv}`, with the method that reads them: the other
/// methods' own, another method's, and near misses.
const RAW: &[(&str, Method)] = &[
    ("s", Method::Revoke),
    ("y", Method::CheckCode),
    ("a{sv}", Method::Revoke),
    ("s", Method::Start),
    ("y", Method::Start),
    ("", Method::Start),
    ("a{ss}", Method::Start),
    ("a{sy}", Method::Start),
    ("av", Method::Start),
    ("a(sv)", Method::Start),
    ("(a{sv})", Method::Start),
    ("a{sv}a{sv}", Method::Start),
    ("a{sv}s", Method::Start),
    ("sa{sv}", Method::Start),
    ("v", Method::Start),
    ("a{sa{sv}}", Method::Start),
    ("a{vv}", Method::Start),
    ("ay", Method::Start),
    ("u", Method::CheckCode),
    ("g", Method::Revoke),
    ("o", Method::Revoke),
];

fn raw(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let other = usize::from(pick.saturating_sub(0x80) % 32);
    let (signature, method, body) = match RAW.get(other) {
        _ if pick < 0x80 => ("a{sv}".to_owned(), Method::Start, rest),
        Some(&(signature, method)) => (signature.to_owned(), method, rest),
        // Any signature (valid or not) from the input, read by any method.
        None => {
            let Some((&len, rest)) = rest.split_first() else { return };
            let len = usize::from(len).min(rest.len());
            let method = [Method::Start, Method::Revoke, Method::CheckCode][usize::from(pick % 3)];
            (String::from_utf8_lossy(&rest[..len]).into_owned(), method, &rest[len..])
        }
    };
    let body = Data::new(body, Context::new_dbus(LE, 0));
    match method {
        Method::Start => {
            if let Some(options) = read::<Options>(&body, &signature) {
                check_within(&options);
                let _ = options.check();
            }
        }
        Method::Revoke => {
            read::<String>(&body, &signature);
        }
        Method::CheckCode => {
            read::<u8>(&body, &signature);
        }
    }
}

/// The largest built body, past the 8 MiB `qr_code` the limits are for; and the most values in
/// it (many small values cost the reader time, not memory: 4096 of them about 20 ms an input).
const BIG: Budget = Budget { room: 10 << 20, items: 1 << 12 };

/// The budget of the other built bodies: past every limit, and fast.
const SMALL: Budget = Budget { room: 16 << 10, items: 1 << 8 };

/// One built input in `BIG_ONE_IN` gets the big budget. Which one is decided by a hash of the
/// whole input, not by a decision in it: an input mutated from a big one is big by chance again,
/// so that big inputs stay rare however many of them the corpus keeps.
const BIG_ONE_IN: u64 = 256;

#[derive(Clone, Copy)]
struct Budget {
    room: usize,
    items: usize,
}

fn budget(data: &[u8]) -> Budget {
    // FNV-1a.
    let hash =
        data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    if hash % BIG_ONE_IN == 0 { BIG } else { SMALL }
}

/// Lengths around the limits.
const EDGES: [usize; 12] = [
    limits::ENTRIES,
    limits::ENTRIES + 1,
    limits::KEY - 1,
    limits::KEY,
    limits::KEY + 1,
    limits::STRING - 1,
    limits::STRING,
    limits::STRING + 1,
    limits::BYTES - 1,
    limits::BYTES,
    limits::BYTES + 1,
    255,
];

/// The keys the daemon reads.
const KNOWN: [&str; 10] = [
    key::QR_CODE,
    key::HANDLE_TOKEN,
    key::DETACHED,
    key::NOTIFY,
    key::OPEN_URI,
    key::PROTOCOL,
    key::HOMESERVER,
    key::DEVICE_DISPLAY_NAME,
    key::CLIENT_NAME,
    key::SHARE_SECRETS,
];

/// A D-Bus type.
#[derive(Clone, Debug)]
enum Ty {
    Basic(u8),
    Variant,
    Array(Box<Ty>),
    Dict(u8, Box<Ty>),
    Struct(Vec<Ty>),
}

const BASIC: &[u8] = b"ybnqiuxtdsog";

impl Ty {
    fn signature(&self, out: &mut String) {
        match self {
            Ty::Basic(c) => out.push(char::from(*c)),
            Ty::Variant => out.push('v'),
            Ty::Array(elem) => {
                out.push('a');
                elem.signature(out);
            }
            Ty::Dict(key, value) => {
                out.push_str("a{");
                out.push(char::from(*key));
                value.signature(out);
                out.push('}');
            }
            Ty::Struct(fields) => {
                out.push('(');
                fields.iter().for_each(|f| f.signature(out));
                out.push(')');
            }
        }
    }

    fn sig(&self) -> String {
        let mut s = String::new();
        self.signature(&mut s);
        s
    }

    fn alignment(&self) -> usize {
        match self {
            Ty::Basic(b'y' | b'g') | Ty::Variant => 1,
            Ty::Basic(b'n' | b'q') => 2,
            Ty::Basic(b'x' | b't' | b'd') | Ty::Struct(_) => 8,
            // A dictionary is an array (its entries are aligned to 8).
            Ty::Basic(_) | Ty::Array(_) | Ty::Dict(..) => 4,
        }
    }

    /// The deepest array and structure nesting in the signature.
    fn nesting(&self) -> (u32, u32) {
        match self {
            Ty::Basic(_) | Ty::Variant => (0, 0),
            Ty::Array(elem) => {
                let (a, s) = elem.nesting();
                (a + 1, s)
            }
            Ty::Dict(_, value) => {
                let (a, s) = value.nesting();
                (a + 1, s)
            }
            Ty::Struct(fields) => {
                let (a, s) = fields.iter().map(Ty::nesting).fold((0, 0), |m, n| (m.0.max(n.0), m.1.max(n.1)));
                (a, s + 1)
            }
        }
    }
}

/// Containers around a value as zvariant counts them while reading (arrays and dictionaries,
/// structures, variants).
#[derive(Clone, Copy, Default)]
struct Depth {
    array: u32,
    structure: u32,
    variant: u32,
}

impl Depth {
    fn total(self) -> u32 {
        self.array + self.structure + self.variant
    }
}

/// The deepest nesting reached in any one place: arrays, structures, all containers.
#[derive(Clone, Copy, Default)]
struct Deepest {
    array: u32,
    structure: u32,
    total: u32,
}

/// One option as written: what the reader must make of it.
enum Written {
    Str(Result<String, usize>),
    Bool(bool),
    Bytes(Result<Vec<u8>, usize>),
    Other(String),
}

/// Writes a body from the decisions in the input.
struct Gen<'a, 'u> {
    u: &'a mut Unstructured<'u>,
    out: Vec<u8>,
    /// The deepest containers reached while writing.
    deepest: Deepest,
    /// The deepest array and structure nesting of any signature written.
    sig_nesting: (u32, u32),
    /// How deep types may nest within one variant's signature.
    max_nesting: u32,
    /// How deep values may nest in all (past zvariant's limit of 64 when `deep`).
    max_total: u32,
    /// How many more values may be written.
    items: usize,
    budget: Budget,
    /// Whether to nest past the limits.
    deep: bool,
}

impl Gen<'_, '_> {
    fn pick(&mut self, max: u32) -> u32 {
        self.u.int_in_range(0..=max).unwrap_or(0)
    }

    fn room(&self) -> usize {
        self.budget.room.saturating_sub(self.out.len())
    }

    /// A length in `unit`s of bytes (a string's, a byte array's, an object path's): small, at a
    /// limit, or large, within the room left.
    fn size(&mut self, unit: usize) -> usize {
        self.size_within(unit, 9 << 20)
    }

    /// A length as `size`, at most `max`.
    fn size_within(&mut self, unit: usize, max: usize) -> usize {
        let n = match self.pick(31) {
            x @ 16..=27 => EDGES[x as usize - 16],
            28 | 29 => self.pick(1 << 16) as usize,
            30 => self.pick(1 << 20) as usize,
            31 => self.pick(9 << 20) as usize,
            _ => self.pick(8) as usize,
        };
        n.min(max).min(self.room() / unit.max(1))
    }

    /// A number of elements or entries: small, at a limit, or many, within `items`.
    fn count(&mut self) -> usize {
        let n = match self.pick(15) {
            x @ 8..=10 => [limits::ENTRIES, limits::ENTRIES + 1, 255][x as usize - 8],
            11..=13 => self.pick(4096) as usize,
            14 | 15 => self.pick(self.budget.items as u32) as usize,
            _ => self.pick(8) as usize,
        };
        n.min(self.items)
    }

    fn pad(&mut self, alignment: usize) {
        while !self.out.len().is_multiple_of(alignment) {
            self.out.push(0);
        }
    }

    fn u32(&mut self, v: u32) {
        self.pad(4);
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(0);
    }

    fn signature(&mut self, s: &str, nesting: (u32, u32)) {
        self.sig_nesting = (self.sig_nesting.0.max(nesting.0), self.sig_nesting.1.max(nesting.1));
        self.out.push(s.len() as u8);
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(0);
    }

    /// Text of exactly `len` bytes, no NUL: from the input, or one-byte characters then
    /// characters of two to four bytes (so that a limit can fall inside one).
    fn text(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        if self.pick(3) == 0 {
            let take = len.min(self.u.len()).min(256);
            let bytes = self.u.bytes(take).unwrap_or_default();
            s.extend(bytes.iter().map(|b| char::from(b'a' + b % 26)));
        }
        let wide = ["x", "é", "€", "😀"][self.pick(3) as usize];
        let left = len - s.len();
        s.push_str(&"x".repeat(left % wide.len()));
        s.push_str(&wide.repeat(left / wide.len()));
        debug_assert_eq!(s.len(), len);
        s
    }

    fn key(&mut self, written: &[(String, Written)]) -> String {
        match self.pick(7) {
            x @ 0..=3 => KNOWN[(x as usize * 3 + self.pick(2) as usize) % KNOWN.len()].to_owned(),
            4 if !written.is_empty() => {
                let i = self.pick(written.len() as u32 - 1) as usize;
                written[i].0.clone()
            }
            _ => {
                let len = self.size(1);
                self.text(len)
            }
        }
    }

    /// A type nested at most `depth` more levels, its signature at most 255 bytes.
    fn ty(&mut self, depth: u32) -> Ty {
        let ty = self.ty_within(depth);
        if ty.sig().len() > 255 { Ty::Basic(b'u') } else { ty }
    }

    fn ty_within(&mut self, depth: u32) -> Ty {
        let choice = self.pick(if depth == 0 { 11 } else { 17 });
        match choice {
            0..=11 => Ty::Basic(BASIC[choice as usize]),
            12 => Ty::Variant,
            13 | 14 => Ty::Array(Box::new(self.ty_within(depth - 1))),
            15 => {
                let key = BASIC[self.pick(BASIC.len() as u32 - 1) as usize];
                Ty::Dict(key, Box::new(self.ty_within(depth - 1)))
            }
            16 => Ty::Variant,
            _ => {
                let n = 1 + self.pick(3);
                Ty::Struct((0..n).map(|_| self.ty_within(depth - 1)).collect())
            }
        }
    }

    fn enter(&mut self, d: Depth) {
        let m = &mut self.deepest;
        m.array = m.array.max(d.array);
        m.structure = m.structure.max(d.structure);
        m.total = m.total.max(d.total());
    }

    /// A variant: its signature and its value. `d` counts this variant. An option's (`option`)
    /// is not of the types the reader reads (`s`, `b`, `ay`): `option` writes those itself.
    fn variant(&mut self, d: Depth, option: bool) -> String {
        self.enter(d);
        let mut d = d;
        // Variants in variants, past the limit when `deep`.
        let chain = if self.deep && self.pick(3) == 0 { self.pick(self.max_nesting) } else { 0 };
        if chain > 0 {
            self.signature("v", (0, 0));
            for _ in 1..chain {
                d.variant += 1;
                self.enter(d);
                self.signature("v", (0, 0));
            }
            d.variant += 1;
            self.enter(d);
        }
        // Below the depth allowed, basic types only: the values written are bounded by the input.
        let nest = if d.total() < self.max_total { self.max_nesting.min(6) } else { 0 };
        let mut ty = if nest == 0 {
            Ty::Basic(BASIC[self.pick(BASIC.len() as u32 - 1) as usize])
        } else {
            self.ty(nest)
        };
        if self.deep && self.pick(3) == 0 {
            // Arrays of arrays, up to past the limit.
            for _ in 0..self.pick(self.max_nesting) {
                ty = Ty::Array(Box::new(ty));
            }
            if ty.sig().len() > 255 {
                ty = Ty::Basic(b'u');
            }
        }
        if option && chain == 0 && matches!(ty.sig().as_str(), "s" | "b" | "ay") {
            ty = Ty::Basic(b'u');
        }
        let sig = ty.sig();
        self.signature(&sig, ty.nesting());
        self.value(&ty, d);
        if chain > 0 { "v".to_owned() } else { sig }
    }

    fn basic(&mut self, c: u8) {
        match c {
            b'y' => {
                let b = self.pick(255) as u8;
                self.out.push(b);
            }
            b'b' => {
                let b = self.pick(1);
                self.u32(b);
            }
            b'n' | b'q' => {
                self.pad(2);
                let v = self.pick(u32::from(u16::MAX)) as u16;
                self.out.extend_from_slice(&v.to_le_bytes());
            }
            b'i' | b'u' => {
                let v = self.pick(u32::MAX);
                self.u32(v);
            }
            b'x' | b't' | b'd' => {
                self.pad(8);
                let v = u64::from(self.pick(u32::MAX)) << 20;
                self.out.extend_from_slice(&v.to_le_bytes());
            }
            b's' => {
                let len = self.size(1);
                let s = self.text(len);
                self.string(&s);
            }
            b'o' => {
                let n = self.size(2);
                let path: String = (0..n).map(|_| "/a").collect();
                self.string(if path.is_empty() { "/" } else { &path });
            }
            _ => {
                let depth = self.pick(3);
                let ty = self.ty(depth);
                let sig = ty.sig();
                self.signature(&sig, ty.nesting());
            }
        }
    }

    fn value(&mut self, ty: &Ty, d: Depth) {
        self.items = self.items.saturating_sub(1);
        match ty {
            Ty::Basic(c) => self.basic(*c),
            Ty::Variant => {
                self.variant(Depth { variant: d.variant + 1, ..d }, false);
            }
            Ty::Array(elem) => {
                let d = Depth { array: d.array + 1, ..d };
                self.enter(d);
                self.array(elem.alignment(), |g| {
                    if matches!(**elem, Ty::Basic(b'y')) {
                        // Skipped byte by byte (`IgnoredAny`) where it is not an option's value.
                        let n = g.size_within(1, g.budget.items);
                        let fill = g.pick(255) as u8;
                        g.out.resize(g.out.len() + n, fill);
                        return;
                    }
                    for _ in 0..g.count() {
                        if g.room() == 0 || g.items == 0 {
                            break;
                        }
                        g.value(elem, d);
                    }
                });
            }
            Ty::Dict(key, value) => {
                let d = Depth { array: d.array + 1, ..d };
                self.enter(d);
                self.array(8, |g| {
                    for _ in 0..g.count() {
                        if g.room() == 0 || g.items == 0 {
                            break;
                        }
                        g.pad(8);
                        g.basic(*key);
                        g.value(value, d);
                    }
                });
            }
            Ty::Struct(fields) => {
                let d = Depth { structure: d.structure + 1, ..d };
                self.enter(d);
                self.pad(8);
                fields.iter().for_each(|f| self.value(f, d));
            }
        }
    }

    /// An array: its length, the padding to its elements, the elements.
    fn array(&mut self, alignment: usize, elements: impl FnOnce(&mut Self)) {
        self.pad(4);
        let at = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        self.pad(alignment);
        let start = self.out.len();
        elements(self);
        let len = (self.out.len() - start) as u32;
        self.out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// One option's variant value, and what the reader must make of it.
    fn option(&mut self, d: Depth) -> Written {
        let d = Depth { variant: d.variant + 1, ..d };
        self.enter(d);
        match self.pick(5) {
            0 => {
                self.signature("s", (0, 0));
                let len = self.size(1);
                let s = self.text(len);
                self.string(&s);
                Written::Str(if s.len() <= limits::STRING { Ok(s) } else { Err(s.len()) })
            }
            1 => {
                self.signature("b", (0, 0));
                let b = self.pick(1) == 1;
                self.u32(u32::from(b));
                Written::Bool(b)
            }
            2 | 3 => {
                self.signature("ay", (1, 0));
                let n = self.size(1);
                let from_input = self.u.bytes(n.min(self.u.len()).min(64)).unwrap_or_default().to_vec();
                let fill = self.pick(255) as u8;
                self.u32(n as u32);
                let start = self.out.len();
                self.out.extend_from_slice(&from_input);
                self.out.resize(start + n, fill);
                Written::Bytes(if n <= limits::BYTES { Ok(self.out[start..].to_vec()) } else { Err(n) })
            }
            _ => {
                // Any other type: nested variants and arrays of arrays among them.
                Written::Other(self.variant(d, true))
            }
        }
    }
}

/// What the reader must make of the options written, in order.
fn expected(written: &[(String, Written)]) -> (HashMap<String, OptionValue>, Option<ArgsError>) {
    let mut values = HashMap::new();
    let mut refused = None;
    for (n, (key, value)) in written.iter().enumerate() {
        if key.len() > limits::KEY || n >= limits::ENTRIES {
            refused.get_or_insert(ArgsError::InvalidArgs(String::new()));
            continue;
        }
        let kept = match value {
            Written::Str(Ok(s)) => OptionValue::Str(s.clone()),
            Written::Bool(b) => OptionValue::Bool(*b),
            Written::Bytes(Ok(b)) => OptionValue::Bytes(b.clone()),
            Written::Other(sig) => OptionValue::Other(sig.clone()),
            Written::Str(Err(_)) | Written::Bytes(Err(_)) => {
                refused.get_or_insert(if key == key::QR_CODE {
                    ArgsError::InvalidQrCode(String::new())
                } else {
                    ArgsError::InvalidArgs(String::new())
                });
                continue;
            }
        };
        values.insert(key.clone(), kept);
    }
    (values, refused)
}

fn built(data: &[u8]) {
    let budget = budget(data);
    let mut u = Unstructured::new(data);
    // Decided first, while there is input: changes after writing, and nesting past the limits.
    let change = u.int_in_range(0u8..=15).unwrap_or(0);
    let patches: Vec<(u32, u8)> = (0..1 + change % 4)
        .map(|_| (u.int_in_range(0..=u32::MAX).unwrap_or(0), u.int_in_range(0..=255).unwrap_or(0)))
        .collect();
    let deep = u.int_in_range(0u8..=7).unwrap_or(0) == 7;
    let mut g = Gen {
        u: &mut u,
        out: Vec::new(),
        deepest: Deepest::default(),
        sig_nesting: (1, 0),
        max_nesting: if deep { 70 } else { 6 },
        max_total: if deep { 90 } else { 24 },
        items: budget.items,
        budget,
        deep,
    };

    let mut written: Vec<(String, Written)> = Vec::new();
    let outer = Depth { array: 1, ..Depth::default() };
    g.enter(outer);
    g.array(8, |g| {
        let n = match g.pick(7) {
            0..=4 => g.pick(limits::ENTRIES as u32 + 3) as usize,
            _ => g.count(),
        };
        for _ in 0..n {
            if g.room() == 0 || g.items == 0 {
                break;
            }
            g.items -= 1;
            g.pad(8);
            let key = g.key(&written);
            g.string(&key);
            let value = g.option(outer);
            written.push((key, value));
        }
    });
    let (deepest, sig_nesting) = (g.deepest, g.sig_nesting);
    let mut body = g.out;

    let changed = match change {
        0..=11 => false,
        12..=14 => {
            let len = body.len().max(1);
            for (at, byte) in patches {
                if let Some(b) = body.get_mut(at as usize % len) {
                    *b = byte;
                }
            }
            true
        }
        _ => {
            body.truncate(patches[0].0 as usize % body.len().max(1));
            true
        }
    };

    let data = Data::new(body.as_slice(), Context::new_dbus(LE, 0));
    let read = data.deserialize_for_dynamic_signature::<_, Checked<Options>>("a{sv}");
    if changed {
        if let Ok((checked, _)) = read {
            let options = checked.get().expect("an `a{sv}` body is read");
            check_within(&options);
        }
        return;
    }

    let within = deepest.total <= 60 && deepest.array <= 30 && deepest.structure <= 30;
    let within = within && sig_nesting.0 <= 30 && sig_nesting.1 <= 30;
    let past = deepest.total > 65 || deepest.array > 33 || deepest.structure > 33;
    let past = past || sig_nesting.0 > 33 || sig_nesting.1 > 33;
    match read {
        Ok((checked, used)) => {
            assert!(
                !past,
                "nested past the limits and read: {:?}",
                (deepest.total, deepest.array, deepest.structure, sig_nesting)
            );
            assert_eq!(used, body.len(), "the whole body is read");
            let options = checked.get().expect("an `a{sv}` body is read");
            check_within(&options);
            let (values, refused) = expected(&written);
            let kept: HashMap<String, OptionValue> =
                options.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect();
            assert_eq!(kept, values, "the options kept are those written within the limits");
            match (options.check(), refused) {
                (Ok(()), None) => {}
                (Err(ArgsError::InvalidArgs(_)), Some(ArgsError::InvalidArgs(_))) => {}
                (Err(ArgsError::InvalidQrCode(_)), Some(ArgsError::InvalidQrCode(_))) => {}
                (got, want) => panic!("refused with {got:?}, expected {want:?}"),
            }
        }
        Err(e) => assert!(!within, "a valid body of {} bytes not read: {e}", body.len()),
    }
}
