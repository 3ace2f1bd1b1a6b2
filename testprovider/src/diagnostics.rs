//! Errors as Terraform diagnostics: a one-line summary Terraform prints after `Error:`, a
//! detail that says what happened and what to check, and, where one attribute is at fault, its
//! path (Terraform then points at that line of the configuration).

use crate::store::{EndpointError, StoreError};
use crate::tfplugin6::{AttributePath, Diagnostic, attribute_path, diagnostic};
use crate::values::ValueError;

/// An error diagnostic.
pub(crate) fn error(summary: &str, detail: String) -> Diagnostic {
    Diagnostic { severity: diagnostic::Severity::Error.into(), summary: summary.to_owned(), detail, attribute: None }
}

/// An error diagnostic about the attribute `name` of the block being checked.
pub(crate) fn attribute_error(name: &str, summary: &str, detail: String) -> Diagnostic {
    Diagnostic { attribute: Some(attribute(name)), ..error(summary, detail) }
}

/// The path of the top-level attribute `name`.
pub(crate) fn attribute(name: &str) -> AttributePath {
    AttributePath {
        steps: vec![attribute_path::Step {
            selector: Some(attribute_path::step::Selector::AttributeName(name.to_owned())),
        }],
    }
}

/// The object store failed a request.
pub(crate) fn store(error: &StoreError) -> Diagnostic {
    let summary = match error {
        StoreError::Unreachable { .. } => "Object store unreachable",
        StoreError::Status { .. } => "Object store request failed",
    };
    self::error(summary, format!("{error}."))
}

/// The provider's `endpoint` cannot be used.
pub(crate) fn endpoint(error: &EndpointError) -> Diagnostic {
    attribute_error("endpoint", "Invalid object store endpoint", format!("{error}."))
}

/// Terraform sent a value this provider cannot read (a bug on one side or the other).
pub(crate) fn value(what: &str, error: &ValueError) -> Diagnostic {
    self::error("Invalid value from Terraform", format!("The {what} could not be read: {error}."))
}

/// A request for a resource type this provider does not have.
pub(crate) fn unknown_type(type_name: &str) -> Diagnostic {
    error("Unsupported resource type", format!("The kwobjects provider has no resource type {type_name:?}."))
}
