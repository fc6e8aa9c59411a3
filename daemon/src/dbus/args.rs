//! Method arguments whose signature is checked by us, not by zbus. A call with the wrong
//! signature (`busctl call … StartGrant s x`) would otherwise be answered with zbus's own
//! `org.freedesktop.zbus.Error`, which no client expects; wrapped in [`Checked`] it is answered
//! with the documented `org.freedesktop.DBus.Error.InvalidArgs`.

use std::marker::PhantomData;

use serde::de::{Deserialize, DeserializeSeed, Deserializer};
use zbus::zvariant::{DynamicDeserialize, DynamicType, Signature, Type};

use crate::error::LinkError;

/// One argument of type `T`, or nothing when the call carried another signature.
pub struct Checked<T>(Option<T>);

impl<T> Checked<T> {
    /// The argument, or `InvalidArgs` naming the expected signature.
    pub fn get(self) -> Result<T, LinkError>
    where
        T: Type,
    {
        self.0.ok_or_else(|| {
            LinkError::InvalidArgs(format!("the method takes one argument of type `{}`", T::SIGNATURE))
        })
    }
}

/// Introspection shows the argument as `T`.
impl<T: Type> Type for Checked<T> {
    const SIGNATURE: &'static Signature = T::SIGNATURE;
}

impl<'de, T: Type + Deserialize<'de>> DynamicDeserialize<'de> for Checked<T> {
    type Deserializer = Seed<T>;

    fn deserializer_for_signature(signature: &Signature) -> zbus::zvariant::Result<Self::Deserializer> {
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
