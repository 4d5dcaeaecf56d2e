//! Serde support (feature `serde`): each validated type travels as its canonical string (a
//! port as a number), parsed with the same `FromStr` as everywhere else, so a bad value in
//! JSON or TOML gets the same error as on the command line.

use crate::limit::MaxConnections;
use crate::net::{Port, Protocol, SourcePrefix};
use crate::policy::{OnExpiry, ProtectedPort};
use core::fmt;
use core::marker::PhantomData;
use core::str::FromStr;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

struct FromStrVisitor<T>(PhantomData<T>, &'static str);

impl<T> Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

macro_rules! via_str {
    ($t:ty, $what:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(FromStrVisitor(PhantomData, $what))
            }
        }
    };
}

via_str!(Protocol, "\"tcp\" or \"udp\"");
via_str!(SourcePrefix, "an IPv4 or IPv6 address or CIDR prefix");
via_str!(OnExpiry, "\"keep\" or \"cut\"");
via_str!(ProtectedPort, "PORT/PROTO[:keep|cut]");

/// Ports are numbers in JSON and TOML (`"port": 22`).
impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.get())
    }
}

struct PortVisitor;

impl Visitor<'_> for PortVisitor {
    type Value = Port;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number from 1 to 65535")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
        u16::try_from(v)
            .ok()
            .and_then(Port::new)
            .ok_or_else(|| E::custom(crate::ParseError::Port))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(crate::ParseError::Port))
            .and_then(|v| self.visit_u64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
        v.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Binary formats (postcard) cannot describe themselves: ask for the u16 they hold.
        if d.is_human_readable() {
            d.deserialize_any(PortVisitor)
        } else {
            d.deserialize_u16(PortVisitor)
        }
    }
}

/// Connection limits are numbers in JSON and TOML (`"maxConnections": 1`).
impl Serialize for MaxConnections {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.get())
    }
}

struct MaxConnectionsVisitor;

impl Visitor<'_> for MaxConnectionsVisitor {
    type Value = MaxConnections;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number of connections (maxConnections), a whole number from 1 to 65535")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MaxConnections, E> {
        MaxConnections::try_from(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<MaxConnections, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(crate::MaxConnectionsError))
            .and_then(|v| self.visit_u64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<MaxConnections, E> {
        v.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for MaxConnections {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(MaxConnectionsVisitor)
        } else {
            d.deserialize_u32(MaxConnectionsVisitor)
        }
    }
}
