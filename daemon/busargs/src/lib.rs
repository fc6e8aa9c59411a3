//! Method arguments whose signature is checked by us, not by zbus. A call with the wrong
//! signature (`busctl call … StartGrant s x`) would otherwise be answered with zbus's own
//! `org.freedesktop.zbus.Error`, which no client expects; wrapped in [`Checked`] it is answered
//! with the documented `org.freedesktop.DBus.Error.InvalidArgs`.
//!
//! A `Start*` call's `a{sv}` options are read by [`Options`] within [`limits`], before anything
//! becomes a generic value. This crate holds no more than that reader, so that the fuzz workspace
//! can drive it as zbus does without building zbus or matrix-sdk; the daemon re-exports it as
//! `dbus::args` and turns an [`ArgsError`] into its own error.

use std::{collections::HashMap, fmt, marker::PhantomData};

use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use zvariant::{DynamicDeserialize, DynamicType, OwnedValue, Signature, Type};

/// Why arguments are refused. The daemon turns each into its `LinkError` of the same name (an
/// `org.freedesktop.DBus.Error.InvalidArgs`, an `…Error.InvalidQrCode`); the messages read as the
/// daemon's own.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// Malformed or oversize arguments.
    #[error("{0}")]
    InvalidArgs(String),
    /// A `qr_code` longer than any QR code.
    #[error("invalid QR code: {0}")]
    InvalidQrCode(String),
}

/// One argument of type `T`, or nothing when the call carried another signature.
pub struct Checked<T>(Option<T>);

impl<T> Checked<T> {
    /// The argument, or `InvalidArgs` naming the expected signature.
    pub fn get(self) -> Result<T, ArgsError>
    where
        T: Type,
    {
        self.0.ok_or_else(|| {
            ArgsError::InvalidArgs(format!("the method takes one argument of type `{}`", T::SIGNATURE))
        })
    }
}

/// Introspection shows the argument as `T`.
impl<T: Type> Type for Checked<T> {
    const SIGNATURE: &'static Signature = T::SIGNATURE;
}

impl<'de, T: Type + Deserialize<'de>> DynamicDeserialize<'de> for Checked<T> {
    type Deserializer = Seed<T>;

    fn deserializer_for_signature(signature: &Signature) -> zvariant::Result<Self::Deserializer> {
        Ok(Seed { body: signature.clone(), _arg: PhantomData })
    }
}

/// Reads the body as `T` when its signature is `T`'s, else reads nothing.
pub struct Seed<T> {
    body: Signature,
    _arg: PhantomData<T>,
}

impl<T> DynamicType for Seed<T> {
    fn signature(&self) -> Signature {
        self.body.clone()
    }
}

impl<'de, T: Type + Deserialize<'de>> DeserializeSeed<'de> for Seed<T> {
    type Value = Checked<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        if self.body == *T::SIGNATURE {
            T::deserialize(deserializer).map(|v| Checked(Some(v)))
        } else {
            Ok(Checked(None))
        }
    }
}

/// Bounds on a `Start*` call's `a{sv}` options. A QR code is at most a few KB and the options in
/// total a few hundred bytes; anything larger is refused before it becomes a value.
pub mod limits {
    /// Entries in the dictionary.
    pub const ENTRIES: usize = 32;
    /// A key's length in bytes.
    pub const KEY: usize = 64;
    /// A string value's length in bytes.
    pub const STRING: usize = 1024;
    /// A byte-array value's length (`qr_code`).
    pub const BYTES: usize = 4096;
}

/// One option's value, as far as the daemon reads options: the types its keys use, or the
/// signature of any other (a known key with another type is `InvalidArgs`; an unknown key is
/// ignored).
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    Str(String),
    Bool(bool),
    Bytes(Vec<u8>),
    /// Another type, by signature; its value was skipped, not read.
    Other(String),
}

/// A `Start*` call's `a{sv}` options, read without turning them into generic values: each value
/// is read as the type it says it is, within [`limits`], and anything beyond the limits is
/// skipped in place (an `ay` is borrowed from the message, never copied or expanded) and recorded
/// as [`Options::refused`]. So a call of any size costs its message buffer and nothing more until
/// the caller is identified and the call refused with `InvalidArgs`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Options {
    values: HashMap<String, OptionValue>,
    /// Why the options are refused, when they are: the first limit they passed.
    refused: Option<ArgsError>,
}

impl Options {
    pub fn get(&self, key: &str) -> Option<&OptionValue> {
        self.values.get(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The options kept (those within the limits), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &OptionValue)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The error for the first limit the options passed: `InvalidArgs`, or `InvalidQrCode` for a
    /// `qr_code` longer than any QR code (as the same call with a code a little too long gets).
    pub fn check(&self) -> Result<(), ArgsError> {
        match &self.refused {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn refuse(&mut self, why: String) {
        self.refused.get_or_insert(ArgsError::InvalidArgs(why));
    }

    fn too_long(&mut self, key: &str, len: usize) {
        let e = if key == matrix_linkd_api::options::QR_CODE {
            ArgsError::InvalidQrCode("the QR code is empty or too long".into())
        } else {
            ArgsError::InvalidArgs(format!("option `{key}` is too long ({len} bytes)"))
        };
        self.refused.get_or_insert(e);
    }
}

impl<K: Into<String>> FromIterator<(K, OptionValue)> for Options {
    fn from_iter<I: IntoIterator<Item = (K, OptionValue)>>(iter: I) -> Self {
        Self { values: iter.into_iter().map(|(k, v)| (k.into(), v)).collect(), refused: None }
    }
}

/// Introspection shows `a{sv}`.
impl Type for Options {
    const SIGNATURE: &'static Signature = <HashMap<String, OwnedValue> as Type>::SIGNATURE;
}

impl<'de> Deserialize<'de> for Options {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OptionsVisitor)
    }
}

struct OptionsVisitor;

impl<'de> Visitor<'de> for OptionsVisitor {
    type Value = Options;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a{sv}")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Options, M::Error> {
        let mut options = Options::default();
        let mut entries = 0usize;
        while let Some(key) = map.next_key_seed(BoundedStr(limits::KEY))? {
            entries += 1;
            let Ok(key) = key else {
                options.refuse(format!("an option name is longer than {} bytes", limits::KEY));
                // Skipped as a value within the limits is read: an `ay` or a string in one step,
                // not walked element by element (64 MiB of `ay` under `IgnoredAny`: 0.7 s).
                let _: Bounded = map.next_value()?;
                continue;
            };
            if entries > limits::ENTRIES {
                options.refuse(format!("more than {} options", limits::ENTRIES));
                let _: Bounded = map.next_value()?;
                continue;
            }
            match map.next_value::<Bounded>()? {
                Bounded::Within(value) => {
                    options.values.insert(key, value);
                }
                Bounded::TooLong(n) => options.too_long(&key, n),
            }
        }
        Ok(options)
    }
}

/// One variant's value within the limits, or the length that passed them.
enum Bounded {
    Within(OptionValue),
    TooLong(usize),
}

impl<'de> Deserialize<'de> for Bounded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(VariantVisitor)
    }
}

/// A variant is read as (signature, value): the signature says how to read the value.
struct VariantVisitor;

impl<'de> Visitor<'de> for VariantVisitor {
    type Value = Bounded;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a variant")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bounded, A::Error> {
        let signature: Signature =
            seq.next_element()?.ok_or_else(|| de::Error::custom("a variant without a signature"))?;
        let missing = || de::Error::custom("a variant without a value");
        let bounded = match signature.to_string().as_str() {
            "s" => match seq.next_element_seed(BoundedStr(limits::STRING))?.ok_or_else(missing)? {
                Ok(s) => Bounded::Within(OptionValue::Str(s)),
                Err(len) => Bounded::TooLong(len),
            },
            "b" => Bounded::Within(OptionValue::Bool(seq.next_element()?.ok_or_else(missing)?)),
            "ay" => seq.next_element_seed(BoundedBytes)?.ok_or_else(missing)?,
            other => {
                seq.next_element::<IgnoredAny>()?.ok_or_else(missing)?;
                Bounded::Within(OptionValue::Other(other.to_owned()))
            }
        };
        Ok(bounded)
    }
}

/// A string (a key or a value), borrowed from the message and copied only within its limit of
/// bytes; past it, its length.
struct BoundedStr(usize);

impl<'de> DeserializeSeed<'de> for BoundedStr {
    type Value = Result<String, usize>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        struct V(usize);
        impl<'de> Visitor<'de> for V {
            type Value = Result<String, usize>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(if s.len() <= self.0 { Ok(s.to_owned()) } else { Err(s.len()) })
            }
        }
        deserializer.deserialize_str(V(self.0))
    }
}

/// A byte array, borrowed from the message and copied only within [`limits::BYTES`].
struct BoundedBytes;

impl<'de> DeserializeSeed<'de> for BoundedBytes {
    type Value = Bounded;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Bounded, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bounded;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte array")
            }
            fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Bounded, E> {
                Ok(if b.len() <= limits::BYTES {
                    Bounded::Within(OptionValue::Bytes(b.to_vec()))
                } else {
                    Bounded::TooLong(b.len())
                })
            }
        }
        deserializer.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use zvariant::{Value, serialized::Context, to_bytes};

    use super::*;

    fn read(options: &HashMap<&str, Value<'_>>) -> Options {
        let ctxt = Context::new_dbus(zvariant::LE, 0);
        let bytes = to_bytes(ctxt, options).unwrap();
        bytes.deserialize::<Options>().unwrap().0
    }

    #[test]
    fn options_are_read_as_their_types() {
        let o = read(&HashMap::from([
            ("qr_code", Value::from(vec![1u8, 2, 3])),
            ("notify", Value::from(false)),
            ("protocol", Value::from("2024")),
            ("timeout", Value::from(5u32)),
        ]));
        assert!(o.check().is_ok());
        assert_eq!(o.get("qr_code"), Some(&OptionValue::Bytes(vec![1, 2, 3])));
        assert_eq!(o.get("notify"), Some(&OptionValue::Bool(false)));
        assert_eq!(o.get("protocol"), Some(&OptionValue::Str("2024".into())));
        assert_eq!(o.get("timeout"), Some(&OptionValue::Other("u".into())));
    }

    #[test]
    fn options_past_the_limits_are_refused_and_not_kept() {
        let big = read(&HashMap::from([("qr_code", Value::from(vec![7u8; 8 << 20]))]));
        assert!(matches!(big.check(), Err(ArgsError::InvalidQrCode(_))));
        assert!(big.get("qr_code").is_none());
        let long = read(&HashMap::from([("homeserver", Value::from("x".repeat(limits::STRING + 1)))]));
        assert!(matches!(long.check(), Err(ArgsError::InvalidArgs(m)) if m.contains("homeserver")));
        assert!(long.get("homeserver").is_none());
        let keys: Vec<String> = (0..=limits::ENTRIES).map(|n| format!("k{n}")).collect();
        let many = read(&keys.iter().map(|k| (k.as_str(), Value::from(true))).collect());
        assert!(matches!(many.check(), Err(ArgsError::InvalidArgs(m)) if m.contains("options")));
        let long_key = "k".repeat(limits::KEY + 1);
        let odd = read(&HashMap::from([(long_key.as_str(), Value::from(true))]));
        assert!(odd.check().is_err());
    }

    /// An option refused for its name or for being one too many is skipped whole, whatever its
    /// value, and reading goes on after it.
    #[test]
    fn refused_options_are_skipped_whole() {
        let long_key = "k".repeat(limits::KEY + 1);
        let big = Value::from(vec![7u8; 8 << 20]);
        let ctxt = Context::new_dbus(zvariant::LE, 0);
        for value in
            [big, Value::from("x".repeat(limits::STRING + 1)), Value::Value(Box::new(Value::from(1u32)))]
        {
            let map = HashMap::from([(long_key.as_str(), value), ("notify", Value::from(true))]);
            let bytes = to_bytes(ctxt, &map).unwrap();
            let (o, used) = bytes.deserialize::<Options>().unwrap();
            assert_eq!(used, bytes.len());
            assert!(matches!(o.check(), Err(ArgsError::InvalidArgs(m)) if m.contains("name")));
            assert_eq!(o.iter().collect::<Vec<_>>(), [("notify", &OptionValue::Bool(true))]);
        }
        // In key order: the `qr_code` comes last, one too many.
        let mut many: BTreeMap<String, Value<'_>> =
            (0..limits::ENTRIES).map(|n| (format!("k{n:02}"), Value::from(true))).collect();
        many.insert("qr_code".into(), Value::from(vec![1u8; 8 << 20]));
        let bytes = to_bytes(ctxt, &many).unwrap();
        let (o, used) = bytes.deserialize::<Options>().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(o.iter().count(), limits::ENTRIES);
        assert!(matches!(o.check(), Err(ArgsError::InvalidArgs(m)) if m.contains("options")));
    }
}
