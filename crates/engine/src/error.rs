//! The engine's one error type.
//!
//! Callers (the CLI, the worker) show these messages to operators, so every
//! variant says which file and which field is wrong, and what is accepted.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or generating images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the model directory must have is absent or unreadable.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    /// A configuration value we cannot honour: names the file, the field and what is accepted.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },

    /// A request value outside what the pipeline accepts (bad size, unknown scheduler, ...).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },

    /// The device asked for cannot be used; says what is missing.
    #[error("{0}")]
    Device(String),

    /// The caller's cancel flag was raised between two steps.
    #[error("cancelled")]
    Cancelled,

    /// A tensor operation failed; carries candle's own message.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),

    /// A run in a [`Batch`](crate::pipeline::Batch) panicked in its own part of a step
    /// (guidance, the scheduler, decoding); the others went on. Carries the panic's message.
    #[error("the run panicked: {0}")]
    Panicked(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}
