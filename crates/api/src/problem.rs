//! RFC 7807 problem documents: every non-2xx answer of the API is one.
//!
//! A stable `code` lets clients branch without parsing prose; `detail` is the
//! prose, written for a person: what was wrong and what is accepted.

use serde::Serialize;

/// `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type; ours are `about:blank`-style tags under `/problems/`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Machine-readable, stable across releases.
    pub code: String,
    /// The request field at fault, when there is one (`modelInputs.width`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    pub fn new(status: u16, code: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("/problems/{code}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            code: code.to_owned(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub const CONTENT_TYPE: &'static str = "application/problem+json";
}
