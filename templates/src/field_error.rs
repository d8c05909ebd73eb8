//! How a spec problem is reported (the field and why), and the operator-wide
//! policy validation follows. Its own module so the validators of each part
//! of the spec (validate, backup) depend on it and not on each other.

use std::fmt;

/// One invalid field: its path in the object and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Joins field errors into one message for a condition or Event.
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Operator-wide settings that change what a spec may ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Accept `http://` S3 endpoints (test stores); https only otherwise.
    pub allow_http_s3: bool,
}
