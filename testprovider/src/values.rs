//! The provider's two kinds of value, typed: the provider block (`endpoint`) and one
//! `kwobjects_object` (`id`, `name`, `content`), read from and written to the `DynamicValue`s
//! that carry them over the wire (MessagePack; JSON for states Terraform stored on disk).
//!
//! Why a module: every RPC starts by turning bytes from Terraform into one of these, and a
//! value of the wrong shape must become a diagnostic, not a panic or a silently empty string.

use std::collections::BTreeMap;

use crate::msgpack::{self, Value};
use crate::tfplugin6::DynamicValue;

/// One string attribute: null, not known until apply, or known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Text {
    /// Null (not set).
    Null,
    /// Known only after apply.
    Unknown,
    /// A known string.
    Known(String),
}

impl Text {
    /// The string, if it is known.
    pub(crate) fn known(&self) -> Option<&str> {
        match self {
            Text::Known(text) => Some(text),
            Text::Null | Text::Unknown => None,
        }
    }

    fn to_msgpack(&self) -> Value {
        match self {
            Text::Null => Value::Nil,
            Text::Unknown => Value::Unknown,
            Text::Known(text) => Value::Str(text.clone()),
        }
    }
}

/// Why a `DynamicValue` is not the object the schema describes. Messages name attributes and
/// types, never values.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ValueError {
    /// Neither encoding was filled in.
    #[error("the value is empty (neither MessagePack nor JSON)")]
    Empty,
    /// The MessagePack bytes do not decode.
    #[error("the value is not valid MessagePack: {0}")]
    Msgpack(#[from] msgpack::DecodeError),
    /// The JSON bytes do not parse.
    #[error("the value is not valid JSON: {0}")]
    Json(String),
    /// Not an object (a map of attribute names).
    #[error("expected an object, got {0}")]
    NotObject(String),
    /// An attribute that is not a string.
    #[error("attribute {name:?} should be a string, got {got}")]
    NotString {
        /// The attribute.
        name: String,
        /// What it was instead.
        got: String,
    },
    /// An attribute the schema does not have.
    #[error("unexpected attribute {0:?}")]
    Unexpected(String),
}

/// The provider block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProviderConfig {
    /// Base URL of the object store.
    pub(crate) endpoint: Text,
}

impl ProviderConfig {
    /// The configuration in `value` (`None`: null).
    pub(crate) fn decode(value: Option<&DynamicValue>) -> Result<Option<Self>, ValueError> {
        let Some(attributes) = attributes(value)? else { return Ok(None) };
        let [endpoint] = pick(attributes, ["endpoint"])?;
        Ok(Some(ProviderConfig { endpoint }))
    }
}

/// One `kwobjects_object`: a state, a plan, or a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object {
    /// The object's id in Terraform's state: its name.
    pub(crate) id: Text,
    /// The object's name in the store.
    pub(crate) name: Text,
    /// The object's content.
    pub(crate) content: Text,
}

impl Object {
    /// The object in `value` (`None`: null, e.g. the prior state of a create).
    pub(crate) fn decode(value: Option<&DynamicValue>) -> Result<Option<Self>, ValueError> {
        let Some(attributes) = attributes(value)? else { return Ok(None) };
        let [id, name, content] = pick(attributes, ["id", "name", "content"])?;
        Ok(Some(Object { id, name, content }))
    }

    /// The object in a state Terraform stored as JSON (`UpgradeResourceState`).
    pub(crate) fn from_state_json(json: &[u8]) -> Result<Option<Self>, ValueError> {
        Object::decode(Some(&DynamicValue { msgpack: Vec::new(), json: json.to_vec() }))
    }

    /// A state of the object named `name` holding `content`.
    pub(crate) fn stored(name: &str, content: String) -> Self {
        Object { id: Text::Known(name.to_owned()), name: Text::Known(name.to_owned()), content: Text::Known(content) }
    }

    /// `object` as a `DynamicValue` (`None`: null).
    pub(crate) fn encode(object: Option<&Self>) -> DynamicValue {
        let value = match object {
            None => Value::Nil,
            Some(object) => Value::Map(
                [("content", &object.content), ("id", &object.id), ("name", &object.name)]
                    .into_iter()
                    .map(|(name, text)| (Value::Str(name.to_owned()), text.to_msgpack()))
                    .collect(),
            ),
        };
        DynamicValue { msgpack: msgpack::encode(&value), json: Vec::new() }
    }
}

/// The string attributes of the object in `value`, by name; `None` if it is null.
fn attributes(value: Option<&DynamicValue>) -> Result<Option<BTreeMap<String, Text>>, ValueError> {
    let Some(value) = value else { return Ok(None) };
    if !value.msgpack.is_empty() {
        from_msgpack(msgpack::decode(&value.msgpack)?)
    } else if !value.json.is_empty() {
        from_json(serde_json::from_slice(&value.json).map_err(|e| ValueError::Json(e.to_string()))?)
    } else {
        Err(ValueError::Empty)
    }
}

fn from_msgpack(value: Value) -> Result<Option<BTreeMap<String, Text>>, ValueError> {
    let entries = match value {
        Value::Nil => return Ok(None),
        Value::Map(entries) => entries,
        other => return Err(ValueError::NotObject(other.to_string())),
    };
    let mut attributes = BTreeMap::new();
    for (key, value) in entries {
        let Value::Str(name) = key else { return Err(ValueError::NotObject(format!("a map with {key} keys"))) };
        let text = match value {
            Value::Nil => Text::Null,
            Value::Unknown => Text::Unknown,
            Value::Str(text) => Text::Known(text),
            other => return Err(ValueError::NotString { name, got: other.to_string() }),
        };
        attributes.insert(name, text);
    }
    Ok(Some(attributes))
}

fn from_json(value: serde_json::Value) -> Result<Option<BTreeMap<String, Text>>, ValueError> {
    let entries = match value {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(entries) => entries,
        _ => return Err(ValueError::NotObject("a JSON value that is not an object".to_owned())),
    };
    let mut attributes = BTreeMap::new();
    for (name, value) in entries {
        let text = match value {
            serde_json::Value::Null => Text::Null,
            serde_json::Value::String(text) => Text::Known(text),
            _ => return Err(ValueError::NotString { name, got: "another JSON type".to_owned() }),
        };
        attributes.insert(name, text);
    }
    Ok(Some(attributes))
}

/// The attributes `names` (null where absent); any other attribute is an error.
fn pick<const N: usize>(mut attributes: BTreeMap<String, Text>, names: [&str; N]) -> Result<[Text; N], ValueError> {
    let picked = names.map(|name| attributes.remove(name).unwrap_or(Text::Null));
    match attributes.into_keys().next() {
        Some(extra) => Err(ValueError::Unexpected(extra)),
        None => Ok(picked),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_object_survives_the_wire_with_unknowns_and_nulls() {
        let object = Object { id: Text::Unknown, name: Text::Known("a".into()), content: Text::Null };
        let wire = Object::encode(Some(&object));
        assert_eq!(Object::decode(Some(&wire)).unwrap(), Some(object));
        assert_eq!(Object::decode(Some(&Object::encode(None))).unwrap(), None);
        assert_eq!(Object::decode(None).unwrap(), None);
    }

    #[test]
    fn a_stored_json_state_reads_as_the_same_object() {
        let object = Object::from_state_json(br#"{"id":"a","name":"a","content":"x"}"#).unwrap();
        assert_eq!(object, Some(Object::stored("a", "x".into())));
    }

    #[test]
    fn values_of_the_wrong_shape_are_errors_naming_the_attribute() {
        let wrong = DynamicValue { msgpack: msgpack::encode(&Value::Str("x".into())), json: Vec::new() };
        assert!(matches!(Object::decode(Some(&wrong)), Err(ValueError::NotObject(_))));
        let number = Value::Map(vec![(Value::Str("name".into()), Value::Int(1))]);
        let number = DynamicValue { msgpack: msgpack::encode(&number), json: Vec::new() };
        let error = Object::decode(Some(&number)).unwrap_err();
        assert_eq!(error.to_string(), "attribute \"name\" should be a string, got a number");
        let extra = Object::from_state_json(br#"{"name":"a","colour":"red"}"#).unwrap_err();
        assert_eq!(extra.to_string(), "unexpected attribute \"colour\"");
        assert!(matches!(Object::decode(Some(&DynamicValue::default())), Err(ValueError::Empty)));
        let object = Object::encode(Some(&Object::stored("a", "x".into())));
        assert!(matches!(ProviderConfig::decode(Some(&object)), Err(ValueError::Unexpected(_))));
    }
}
