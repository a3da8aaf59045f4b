//! A YAML document as a tree of located nodes, and a serde `Deserializer` over it.
//!
//! Why not deserialize the typed config straight from the YAML text? Serde stops at the
//! first error, and an operator fixing a policy file wants every mistake at once. So a file
//! is parsed once into [`Node`]s (only YAML syntax errors stop here), then each part of it
//! (each route, each upstream, ...) is deserialized from its node on its own, so one bad
//! route does not hide the next one. Every node keeps its line and column, which lets
//! structural and semantic errors alike point at the place in the file.

use serde::de::{self, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::forward_to_deserialize_any;
use serde_saphyr::Spanned;
use std::fmt;

/// Line and column (1-based) of a node in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

/// One YAML value with where it was written.
#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Option<Pos>,
    pub value: Value,
}

/// The YAML data model we accept (tags and anchors are resolved by the parser).
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// Parses one YAML document. The error is the parser's, with its location.
    pub fn parse(text: &str) -> Result<Node, serde_saphyr::Error> {
        let spanned: Spanned<RawNode> = serde_saphyr::from_str(text)?;
        Ok(spanned.into())
    }

    /// The value of `key` when this node is a mapping with a string key `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The key node of `key` (for errors about the key itself, such as unknown fields).
    pub fn key(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
                .map(|(k, _)| k),
            _ => None,
        }
    }

    /// Deserializes this node into `T`, reporting the YAML path of the failure relative to
    /// this node.
    pub fn decode<T: de::DeserializeOwned>(&self) -> Result<T, DecodeError> {
        serde_path_to_error::deserialize(NodeDe(self)).map_err(|e| {
            let path = e.path().to_string();
            DecodeError {
                path: if path == "." { String::new() } else { path },
                message: e.into_inner().to_string(),
            }
        })
    }

    /// Finds the node at a path such as `routes[2].match.host` (relative to this node),
    /// going as deep as the path exists. For a path that ends at a missing or unknown key,
    /// the nearest existing ancestor is returned.
    pub fn locate(&self, path: &str) -> Option<Pos> {
        let mut node = self;
        let mut best = self.pos;
        for step in path_steps(path) {
            let next = match step {
                Step::Key(k) => node.get(k),
                Step::Index(i) => match &node.value {
                    Value::Seq(items) => items.get(i),
                    _ => None,
                },
            };
            match next {
                Some(n) => {
                    node = n;
                    best = n.pos.or(best);
                }
                None => break,
            }
        }
        best
    }

    fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A structural error found while deserializing a node.
#[derive(Debug, Clone)]
pub struct DecodeError {
    /// YAML path relative to the decoded node, empty for the node itself.
    pub path: String,
    pub message: String,
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `a.b[3].c` into steps. Keys containing `.` or `[` cannot be addressed, which is
/// fine: this only steers error locations.
fn path_steps(path: &str) -> impl Iterator<Item = Step<'_>> {
    path.split('.').filter(|s| !s.is_empty()).flat_map(|part| {
        let (key, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        let key = (!key.is_empty()).then_some(Step::Key(key));
        let indices = rest
            .split(['[', ']'])
            .filter_map(|s| s.parse::<usize>().ok())
            .map(Step::Index);
        key.into_iter().chain(indices)
    })
}

/// Joins a parent path and a child path for error messages.
pub fn join_path(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (_, true) => parent.to_string(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

// ---------------------------------------------------------------------------------------
// Building the tree from serde-saphyr (which reports locations through `Spanned`).

/// The untyped shape serde-saphyr hands us; converted to [`Node`] right after parsing.
enum RawNode {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<RawNode>>),
    Map(Vec<(Spanned<RawNode>, Spanned<RawNode>)>),
}

impl From<Spanned<RawNode>> for Node {
    fn from(s: Spanned<RawNode>) -> Node {
        let pos = (s.referenced.line() > 0).then(|| Pos {
            line: s.referenced.line(),
            column: s.referenced.column(),
        });
        let value = match s.value {
            RawNode::Null => Value::Null,
            RawNode::Bool(b) => Value::Bool(b),
            RawNode::Int(i) => Value::Int(i),
            RawNode::UInt(u) => Value::UInt(u),
            RawNode::Float(f) => Value::Float(f),
            RawNode::Str(s) => Value::Str(s),
            RawNode::Seq(items) => Value::Seq(items.into_iter().map(Node::from).collect()),
            RawNode::Map(entries) => Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (Node::from(k), Node::from(v)))
                    .collect(),
            ),
        };
        Node { pos, value }
    }
}

impl<'de> de::Deserialize<'de> for RawNode {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawNode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<RawNode, E> {
                Ok(RawNode::Null)
            }
            fn visit_none<E>(self) -> Result<RawNode, E> {
                Ok(RawNode::Null)
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<RawNode, D::Error> {
                de::Deserialize::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawNode, E> {
                Ok(RawNode::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawNode, E> {
                Ok(RawNode::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawNode, E> {
                Ok(RawNode::UInt(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawNode, E> {
                Ok(RawNode::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawNode, E> {
                Ok(RawNode::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<RawNode, E> {
                Ok(RawNode::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RawNode, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element::<Spanned<RawNode>>()? {
                    items.push(item);
                }
                Ok(RawNode::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<RawNode, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = a.next_key::<Spanned<RawNode>>()? {
                    let v = a.next_value::<Spanned<RawNode>>()?;
                    entries.push((k, v));
                }
                Ok(RawNode::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------
// Deserializing typed structs from a node.

type DeError = de::value::Error;

/// A serde `Deserializer` reading from a borrowed [`Node`].
#[derive(Clone, Copy)]
pub struct NodeDe<'a>(pub &'a Node);

impl<'de, 'a> IntoDeserializer<'de, DeError> for NodeDe<'a> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Int(i) => v.visit_i64(*i),
            Value::UInt(u) => v.visit_u64(*u),
            Value::Float(f) => v.visit_f64(*f),
            Value::Str(s) => v.visit_str(s),
            Value::Seq(items) => {
                let mut seq = de::value::SeqDeserializer::new(items.iter().map(NodeDe));
                let out = v.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Map(entries) => {
                let mut map = de::value::MapDeserializer::new(
                    entries.iter().map(|(k, val)| (NodeDe(k), NodeDe(val))),
                );
                let out = v.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.0.value {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    /// Strings are accepted where YAML wrote a scalar of another type (`port: 8080` into a
    /// `String` field), because operators should not need quotes for that.
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Int(i) => v.visit_string(i.to_string()),
            Value::UInt(u) => v.visit_string(u.to_string()),
            Value::Float(f) => v.visit_string(f.to_string()),
            Value::Bool(b) => v.visit_string(b.to_string()),
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_string(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match &self.0.value {
            Value::Str(s) => v.visit_enum(s.as_str().into_deserializer()),
            _ => Err(de::Error::custom(format_args!(
                "expected a string naming a variant, found {}",
                self.0.kind()
            ))),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        port: Option<u16>,
        items: Vec<Item>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Item {
        a: String,
    }

    #[test]
    fn decodes_typed_values_and_keeps_positions() {
        let n = Node::parse("name: x\nport: 80\nitems:\n  - a: one\n  - a: two\n").unwrap();
        let d: Doc = n.decode().unwrap();
        assert_eq!(d.name, "x");
        assert_eq!(d.port, Some(80));
        assert_eq!(d.items[1].a, "two");
        assert_eq!(n.locate("items[1].a").unwrap().line, 5);
    }

    #[test]
    fn decode_error_names_the_path() {
        let n = Node::parse("name: x\nitems:\n  - a: one\n  - b: two\n").unwrap();
        let e = n.decode::<Doc>().unwrap_err();
        assert_eq!(e.path, "items[1].b");
        assert!(e.message.contains("unknown field `b`"), "{}", e.message);
        assert_eq!(n.locate(&e.path).unwrap().line, 4);
    }

    #[test]
    fn numbers_are_accepted_as_strings() {
        let n = Node::parse("name: 8080\nitems: []\n").unwrap();
        let d: Doc = n.decode().unwrap();
        assert_eq!(d.name, "8080");
    }

    #[test]
    fn path_steps_understand_indices() {
        let n = Node::parse("a:\n  - b: [1, 2]\n  - b: [3,\n      4]\n").unwrap();
        assert_eq!(n.locate("a[1].b[1]").unwrap().line, 4);
        assert_eq!(n.locate("a[1].nope").unwrap().line, 3);
    }
}
