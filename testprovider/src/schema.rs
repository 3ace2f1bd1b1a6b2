//! What the provider offers Terraform: the provider block and the one resource type,
//! `kwobjects_object`. Terraform checks every value it sends and every state it gets back
//! against these.

use crate::tfplugin6::{Schema, StringKind, schema};

/// The resource type's name (`<provider>_<type>`).
pub(crate) const OBJECT: &str = "kwobjects_object";

/// The provider block: `endpoint`, required.
pub(crate) fn provider() -> Schema {
    block(
        "The kwobjects provider manages the objects of one test object store.",
        vec![string(
            "endpoint",
            "Base URL of the object store; objects live under {endpoint}/objects/{name}.",
            Presence::Required,
        )],
    )
}

/// `kwobjects_object`: `name` (required; a new name replaces the object), `content` (required),
/// `id` (computed: the name).
pub(crate) fn object() -> Schema {
    block(
        "One object in the store.",
        vec![
            string("id", "The object's name.", Presence::Computed),
            string("name", "The object's name in the store; changing it replaces the object.", Presence::Required),
            string("content", "The object's content, as plain text.", Presence::Required),
        ],
    )
}

enum Presence {
    Required,
    Computed,
}

fn block(description: &str, attributes: Vec<schema::Attribute>) -> Schema {
    Schema {
        version: 0,
        block: Some(schema::Block {
            version: 0,
            attributes,
            description: description.to_owned(),
            description_kind: StringKind::Plain.into(),
            ..schema::Block::default()
        }),
    }
}

fn string(name: &str, description: &str, presence: Presence) -> schema::Attribute {
    schema::Attribute {
        name: name.to_owned(),
        // A type constraint in Terraform's JSON form.
        r#type: br#""string""#.to_vec(),
        description: description.to_owned(),
        description_kind: StringKind::Plain.into(),
        required: matches!(presence, Presence::Required),
        computed: matches!(presence, Presence::Computed),
        ..schema::Attribute::default()
    }
}
