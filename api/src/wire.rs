//! String enums of the API: one definition gives `as_str`, a strict `FromStr`, `Display` and
//! serde as the string.
//!
//! An *open* enum (declared with a fallback variant, e.g. `Other`) also deserialises values it
//! does not know into that variant, so that a newer controller's new status or code never
//! makes an older client fail to read a response; its `FromStr` still refuses them (a value
//! this version writes or stores must be one it knows).

use std::fmt;

/// A value that is not one of an enum's names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct UnknownValue {
    /// What was parsed ("role", "status", ...).
    pub what: &'static str,
    pub value: String,
    /// The accepted names.
    pub allowed: &'static [&'static str],
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} is invalid: use ", self.what, self.value)?;
        let n = self.allowed.len();
        for (i, a) in self.allowed.iter().enumerate() {
            if i > 0 {
                f.write_str(if i + 1 == n { " or " } else { ", " })?;
            }
            f.write_str(a)?;
        }
        Ok(())
    }
}

/// Defines a string enum (used for the API's enums, and by the controller for its stored
/// states); see the module documentation.
///
/// ```ignore
/// wire_enum! {
///     /// A closed enum: unknown names are refused everywhere.
///     pub enum Role("role") { Reader = "reader", Admin = "admin" }
/// }
/// wire_enum! {
///     /// An open enum: unknown names deserialise into `Other`.
///     pub enum PortStatus("status", Other) { Initiated = "Initiated" }
/// }
/// ```
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $s:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $s, )+
                }
            }
        }

        $crate::wire_enum!(@common $name $what $( $variant = $s ),+);

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($what:literal, $fallback:ident) {
            $( $(#[$vmeta:meta])* $variant:ident = $s:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this version does not know (sent by a newer peer), kept verbatim.
            $fallback(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $s, )+
                    $name::$fallback(s) => s.as_str(),
                }
            }

            /// Every known value, in declaration order.
            pub fn known() -> impl Iterator<Item = $name> {
                [$($name::$variant),+].into_iter()
            }

            /// The value for a name, unknown names kept in the fallback variant.
            pub fn lenient(s: &str) -> $name {
                s.parse().unwrap_or_else(|_| $name::$fallback(s.to_string()))
            }
        }

        $crate::wire_enum!(@common $name $what $( $variant = $s ),+);

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                Ok($name::lenient(&s))
            }
        }
    };
    // What both kinds share: the names, a strict FromStr, Display, Serialize.
    (@common $name:ident $what:literal $( $variant:ident = $s:literal ),+) => {
        impl $name {
            /// Every known name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($s),+];
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $s => Ok($name::$variant), )+
                    _ => Err($crate::UnknownValue {
                        what: $what,
                        value: s.to_string(),
                        allowed: Self::NAMES,
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        /// Strict, like `FromStr` (for values read from a store).
        impl ::std::convert::TryFrom<String> for $name {
            type Error = $crate::UnknownValue;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    };
}

pub(crate) use crate::wire_enum;

/// Deserialises a list of objects leniently: keys the element type does not know are dropped
/// before the element (which itself rejects unknown fields, as a request body must) is read.
/// For response bodies that embed a request type (a policy's ports).
pub(crate) fn lenient_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + KnownFields,
{
    let raw: Vec<serde_json::Map<String, serde_json::Value>> = serde::Deserialize::deserialize(d)?;
    raw.into_iter()
        .map(|mut m| {
            T::prune(&mut m);
            serde_json::from_value(serde_json::Value::Object(m)).map_err(serde::de::Error::custom)
        })
        .collect()
}

/// The JSON field names of a type that rejects unknown fields.
pub trait KnownFields {
    const FIELDS: &'static [&'static str];

    /// Drops the fields this version does not know (a type with nested objects that also
    /// reject unknown fields prunes those too).
    fn prune(m: &mut serde_json::Map<String, serde_json::Value>) {
        retain_known(m, Self::FIELDS);
    }
}

/// Keeps only `fields` of `m`.
pub fn retain_known(m: &mut serde_json::Map<String, serde_json::Value>, fields: &[&str]) {
    m.retain(|k, _| fields.contains(&k.as_str()));
}

#[cfg(test)]
mod tests {
    wire_enum! {
        enum Closed("colour") { Red = "red", Green = "green", Blue = "blue" }
    }
    wire_enum! {
        enum Open("shape", Other) { Round = "round" }
    }

    #[test]
    fn closed_and_open() {
        assert_eq!("red".parse::<Closed>(), Ok(Closed::Red));
        let e = "pink".parse::<Closed>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "colour \"pink\" is invalid: use red, green or blue"
        );
        assert!(serde_json::from_str::<Closed>("\"pink\"").is_err());
        assert_eq!(serde_json::to_string(&Closed::Blue).unwrap(), "\"blue\"");
        assert_eq!(Closed::ALL.len(), 3);
        // Open: a newer peer's value is kept, written back unchanged, and refused by FromStr.
        let o: Open = serde_json::from_str("\"square\"").unwrap();
        assert_eq!(o, Open::Other("square".into()));
        assert_eq!(serde_json::to_string(&o).unwrap(), "\"square\"");
        assert!("square".parse::<Open>().is_err());
        assert_eq!(Open::known().count(), 1);
    }
}
