//! A second read of a config file that keeps every scalar exactly as written.
//!
//! Why: `serde_yaml::Value` resolves plain scalars to numbers, so `token: 00123` would become
//! `123` and `write-kubeconfig-mode: 0o600` would become `384`, silently. Command-line flags see
//! text, so the file must too. The first read (into `Value`) has already checked the document's
//! shape; this read walks the same mapping in the same order and asks the YAML deserializer for
//! each scalar as a string, which it gives verbatim.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// What the first read found for each key, in document order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Null,
    Scalar,
    List,
}

/// One key's value as text: `None` for null, one string for a scalar, several for a list.
pub(super) type Texts = Option<Vec<String>>;

/// Reads the top-level mapping of `text`, whose shapes are `shapes`, keeping scalars verbatim.
pub(super) fn read(
    text: &[u8],
    shapes: &[Shape],
) -> Result<Vec<(String, Texts)>, serde_yaml::Error> {
    Mapping { shapes }.deserialize(serde_yaml::Deserializer::from_slice(text))
}

struct Mapping<'a> {
    shapes: &'a [Shape],
}

impl<'de> DeserializeSeed<'de> for Mapping<'_> {
    type Value = Vec<(String, Texts)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Mapping<'_> {
    type Value = Vec<(String, Texts)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of flag names to values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(self.shapes.len());
        for shape in self.shapes {
            let key: Text = map
                .next_key()?
                .ok_or_else(|| de::Error::custom("the file changed while it was being read"))?;
            let texts = match shape {
                Shape::Null => {
                    map.next_value::<IgnoredAny>()?;
                    None
                }
                Shape::Scalar => Some(vec![map.next_value::<Text>()?.0]),
                Shape::List => Some(
                    map.next_value::<Vec<Text>>()?
                        .into_iter()
                        .map(|t| t.0)
                        .collect(),
                ),
            };
            out.push((key.0, texts));
        }
        Ok(out)
    }
}

/// A scalar as written.
struct Text(String);

impl<'de> de::Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
        }
        // serde_yaml answers deserialize_str with the scalar's text, before any type resolution.
        deserializer.deserialize_str(TextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_scalars_verbatim() {
        let text = b"token: 00123\nmode: 0o600\nlist: [0x10, 1e3, 'q']\nnothing:\nflag: True\n";
        let shapes = [
            Shape::Scalar,
            Shape::Scalar,
            Shape::List,
            Shape::Null,
            Shape::Scalar,
        ];
        let got = read(text, &shapes).unwrap();
        let want = vec![
            ("token".to_owned(), Some(vec!["00123".to_owned()])),
            ("mode".to_owned(), Some(vec!["0o600".to_owned()])),
            (
                "list".to_owned(),
                Some(vec!["0x10".to_owned(), "1e3".to_owned(), "q".to_owned()]),
            ),
            ("nothing".to_owned(), None),
            ("flag".to_owned(), Some(vec!["True".to_owned()])),
        ];
        assert_eq!(got, want);
    }
}
