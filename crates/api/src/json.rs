//! A request body read as JSON, strictly: a key given twice in one object is refused.
//!
//! `serde_json::Value` keeps the last of two equal keys, so `{"prompt": "a", "prompt": "b"}`
//! would run "b" while a proxy, a log or the client's own code reads "a". SPEC 1.1 refuses
//! a duplicated key at any depth. This reader builds the same `Value` serde_json would,
//! through a seed that knows the path of the value it reads (`modelInputs.prompt`,
//! `x[2].y`), so the refusal names the key and where it stands. The path is a chain of
//! borrowed steps, written out only for a refusal: copying it into every child would cost
//! a 20 MiB body of one long key over a long array hours of CPU. Nesting is bounded by
//! serde_json's own recursion limit, which applies to any seed.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::request::RequestError;

/// The body as a JSON value. Bad JSON names its line and column once; a repeated key is
/// `duplicate_field` naming the key's path, line and column.
pub(crate) fn parse(body: &[u8]) -> Result<Value, RequestError> {
    let duplicate = RefCell::new(None);
    let mut reader = serde_json::Deserializer::from_slice(body);
    let read = Strict {
        path: &Step::Root,
        duplicate: &duplicate,
    }
    .deserialize(&mut reader)
    .and_then(|value| reader.end().map(|()| value));
    read.map_err(|e| match duplicate.take() {
        Some(path) => RequestError {
            code: "duplicate_field",
            message: format!(
                "{path} appears twice (line {}, column {}); send each key once",
                e.line(),
                e.column()
            ),
            field: Some(path),
        },
        // serde_json's message already ends "at line L column C".
        None => RequestError {
            code: "invalid_json",
            field: None,
            message: format!("the body is not valid JSON: {e}"),
        },
    })
}

/// Where a value stands in the document: the steps from the root, each borrowing the one
/// before (no copies while reading).
enum Step<'p> {
    Root,
    Key(&'p Step<'p>, &'p str),
    Index(&'p Step<'p>, usize),
}

impl fmt::Display for Step<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Root => Ok(()),
            Step::Key(Step::Root, key) => f.write_str(key),
            Step::Key(parent, key) => write!(f, "{parent}.{key}"),
            Step::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Reads one value at `path`, recording the path of a repeated key in `duplicate` (the
/// error serde_json returns carries the position, not our path).
struct Strict<'a> {
    path: &'a Step<'a>,
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity, so serde_json never hands one over.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let step = Step::Index(self.path, items.len());
            let child = Strict {
                path: &step,
                duplicate: self.duplicate,
            };
            match seq.next_element_seed(child)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let step = Step::Key(self.path, &key);
            if object.contains_key(&key) {
                let path = step.to_string();
                let message = format!("{path} appears twice");
                *self.duplicate.borrow_mut() = Some(path);
                return Err(de::Error::custom(message));
            }
            let child = Strict {
                path: &step,
                duplicate: self.duplicate,
            };
            let value = map.next_value_seed(child)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_serde_json_reads() {
        let text = br#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": 18446744073709551615}"#;
        let strict = parse(text).unwrap();
        let plain: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(strict, plain);
    }

    #[test]
    fn a_repeated_key_is_named_with_its_path_and_position() {
        let e = parse(b"{\"m\": {\"p\": 1,\n \"p\": 2}}").unwrap_err();
        assert_eq!(e.code, "duplicate_field");
        assert_eq!(e.field.as_deref(), Some("m.p"));
        assert!(
            e.message.starts_with("m.p appears twice (line 2, column"),
            "{}",
            e.message
        );
        let e = parse(br#"{"a": [{"k": 1}, {"k": 1, "k": 2}]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("a[1].k"));
        let e = parse(br#"{"a": 1, "a": 1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("a"));
        // Equal keys in different objects are not repeats.
        assert!(parse(br#"{"a": {"k": 1}, "b": {"k": 1}}"#).is_ok());
    }

    #[test]
    fn a_long_key_over_a_long_array_reads_in_linear_time() {
        // 1 MiB of key and a million elements: a path copied into every element would be
        // a terabyte of copying; this finishes as fast as serde_json's own reader.
        let mut body = format!("{{\"{}\": [", "k".repeat(1 << 20)).into_bytes();
        body.extend(std::iter::repeat_n(&b"0,"[..], 1 << 20).flatten());
        body.extend(b"0], \"x\": {\"y\": [1, {\"z\": 1, \"z\": 2}]}}");
        let e = parse(&body).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("x.y[1].z"));
    }

    #[test]
    fn bad_json_states_its_position_once() {
        let e = parse(b"{\n  \"a\": 1,}").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        assert_eq!(e.message.matches("line").count(), 1, "{}", e.message);
        assert!(e.message.contains("line 2 column"), "{}", e.message);
        let e = parse(b"{} x").unwrap_err();
        assert!(e.message.contains("trailing characters"), "{}", e.message);
    }
}
