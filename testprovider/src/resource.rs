//! `kwobjects_object`'s lifecycle: validate, plan, apply, read and import one object.
//!
//! Why a module: these are the provider's semantics, apart from the gRPC plumbing — a plan
//! keeps the configuration and derives `id` from `name` (a new name replaces the object),
//! apply is `PUT` or `DELETE`, and read is `GET`, where an object that is gone leaves the state
//! (Terraform then plans to create it again) and different content is drift.

use crate::diagnostics;
use crate::store::Store;
use crate::tfplugin6::{AttributePath, Diagnostic};
use crate::values::{Object, Text};

/// The longest object name.
const MAX_NAME: usize = 128;

/// What is wrong with the configuration `config` (names must be one safe path segment).
pub(crate) fn validate(config: &Object) -> Vec<Diagnostic> {
    let Some(name) = config.name.known() else { return Vec::new() };
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(safe) || name == "." || name == ".." {
        return vec![diagnostics::attribute_error(
            "name",
            "Invalid object name",
            format!("{name:?} is not an object name: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-'."),
        )];
    }
    Vec::new()
}

/// A plan: the state apply will produce (`None`: the object is destroyed) and the attributes
/// whose change replaces the object.
#[derive(Debug, PartialEq)]
pub(crate) struct Plan {
    /// The planned state.
    pub(crate) planned: Option<Object>,
    /// Paths of the attributes that force a replacement.
    pub(crate) requires_replace: Vec<AttributePath>,
}

/// Plans the change from `prior` to Terraform's `proposed` new state: the configuration as it
/// is, with `id` the (planned) name; a name that differs from the prior one replaces the object.
pub(crate) fn plan(prior: Option<&Object>, proposed: Option<Object>) -> Plan {
    let Some(mut planned) = proposed else { return Plan { planned: None, requires_replace: Vec::new() } };
    planned.id = planned.name.clone();
    let renamed = prior.is_some_and(|prior| prior.name != planned.name);
    let requires_replace = if renamed { vec![diagnostics::attribute("name")] } else { Vec::new() };
    Plan { planned: Some(planned), requires_replace }
}

/// Applies `planned` (`None`: delete `prior`); the new state, or why the store refused. On an
/// error Terraform keeps `prior`.
pub(crate) async fn apply(
    store: &Store,
    prior: Option<&Object>,
    planned: Option<&Object>,
) -> Result<Option<Object>, Diagnostic> {
    let Some(planned) = planned else {
        if let Some(name) = prior.and_then(|prior| prior.name.known()) {
            store.delete(name).await.map_err(|e| diagnostics::store(&e))?;
        }
        return Ok(None);
    };
    let (Some(name), Some(content)) = (planned.name.known(), planned.content.known()) else {
        return Err(diagnostics::error(
            "Object not known at apply",
            "The planned object's name or content is still unknown at apply; Terraform should have decided them."
                .to_owned(),
        ));
    };
    store.put(name, content).await.map_err(|e| diagnostics::store(&e))?;
    Ok(Some(Object::stored(name, content.to_owned())))
}

/// The object as the store has it now (`None`: gone, so Terraform forgets it).
pub(crate) async fn read(store: &Store, current: Option<Object>) -> Result<Option<Object>, Diagnostic> {
    let Some(current) = current else { return Ok(None) };
    let Some(name) = current.name.known().or(current.id.known()) else { return Ok(None) };
    let content = store.get(name).await.map_err(|e| diagnostics::store(&e))?;
    Ok(content.map(|content| Object::stored(name, content)))
}

/// The state an import of object `name` starts from; the read that follows fills in the content.
pub(crate) fn import(name: &str) -> Result<Object, Vec<Diagnostic>> {
    let object = Object { id: Text::Known(name.to_owned()), name: Text::Known(name.to_owned()), content: Text::Null };
    match validate(&object) {
        problems if problems.is_empty() => Ok(object),
        problems => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, content: &str) -> Object {
        Object { id: Text::Null, name: Text::Known(name.into()), content: Text::Known(content.into()) }
    }

    #[test]
    fn a_plan_keeps_the_configuration_and_takes_the_id_from_the_name() {
        let created = plan(None, Some(object("a", "x")));
        assert_eq!(created.planned, Some(Object::stored("a", "x".into())));
        assert!(created.requires_replace.is_empty());

        let unknown = Object { name: Text::Unknown, ..object("a", "x") };
        assert_eq!(plan(None, Some(unknown)).planned.unwrap_or_else(|| object("", "")).id, Text::Unknown);

        let updated = plan(Some(&Object::stored("a", "x".into())), Some(object("a", "y")));
        assert_eq!(updated.planned, Some(Object::stored("a", "y".into())));
        assert!(updated.requires_replace.is_empty());
    }

    #[test]
    fn a_new_name_replaces_the_object() {
        let renamed = plan(Some(&Object::stored("a", "x".into())), Some(object("b", "x")));
        assert_eq!(renamed.requires_replace, vec![diagnostics::attribute("name")]);
        assert_eq!(plan(Some(&Object::stored("a", "x".into())), None).planned, None);
    }

    #[test]
    fn names_must_be_one_safe_path_segment() {
        for bad in ["", ".", "..", "a/b", "a b", &"n".repeat(MAX_NAME + 1)] {
            let problems = validate(&object(bad, "x"));
            assert_eq!(problems.len(), 1, "{bad:?}");
            assert_eq!(problems.first().map(|p| p.summary.as_str()), Some("Invalid object name"));
        }
        for good in ["a", "config.json", "a-b_c.1", &"n".repeat(MAX_NAME)] {
            assert!(validate(&object(good, "x")).is_empty(), "{good:?}");
        }
        assert!(validate(&Object { name: Text::Unknown, ..object("a", "x") }).is_empty());
        assert!(import("../x").is_err());
        assert_eq!(import("a").ok().map(|o| o.content), Some(Text::Null));
    }
}
