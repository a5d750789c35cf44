//! Typed reads from the JSON config files of a diffusers model directory.
//!
//! diffusers configs are open-ended dictionaries: each class takes the keys it
//! knows and defaults the rest, and files saved by different versions carry
//! different keys. So instead of one serde struct per file we read key by key,
//! with the default of the class that reads it, and every error names the file
//! and the field and says what is accepted.
//!
//! Every config of the directory is read through this one type: the networks', the
//! scheduler's, the safety checker's and preprocessor's. It imports nothing of the engine
//! but the error type, so those readers below the loader can use it without a cycle.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A config read from one diffusers JSON file: each type says how to parse the object, and
/// reading the file (or text already in hand) is the same for all of them.
pub(crate) trait FromJson: Sized {
    /// Parses an already-read config (the file name in `c` is used in errors).
    fn from_config(c: &JsonConfig) -> Result<Self>;

    /// Reads and parses the file at `path`.
    fn load(path: &Path) -> Result<Self> {
        Self::from_config(&JsonConfig::load(path)?)
    }

    /// Parses JSON `text` as the file at `path` would hold it (`path` is for errors).
    fn from_text(path: &str, text: &str) -> Result<Self> {
        Self::from_config(&JsonConfig::from_json(Path::new(path), text)?)
    }
}

/// One parsed config file, remembered with its path for error messages.
///
/// `pub` only so that the public `SchedulerConfig` can deref to it (its schedulers read it
/// key by key); the module is private to the crate and every method crate-visible, so
/// nothing outside the engine can name it or read through it.
#[derive(Debug, Clone)]
pub struct JsonConfig {
    path: PathBuf,
    values: Map<String, Value>,
}

impl JsonConfig {
    /// Reads and parses `path`; a missing file is an error naming it.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            path: path.to_owned(),
            message: format!("cannot read this config file: {e}"),
        })?;
        Self::from_json(path, &text)
    }

    /// Parses JSON text; `path` is only used in error messages.
    pub(crate) fn from_json(path: &Path, text: &str) -> Result<Self> {
        // Python's json module writes infinities and NaN as bare `-Infinity`, `Infinity`,
        // `NaN` (diffusers saves DPMSolverMultistep's `lambda_min_clipped` as `-Infinity`);
        // strict JSON has no such tokens, so they are read as strings that `f64_or` accepts.
        let value: Value = serde_json::from_str(text)
            .or_else(|first| {
                let quoted = non_finite_tokens().replace_all(text, "$1\"$2\"");
                serde_json::from_str(&quoted).map_err(|_| first)
            })
            .map_err(|e| Error::File {
                path: path.to_owned(),
                message: format!("not valid JSON: {e}"),
            })?;
        match value {
            Value::Object(values) => Ok(JsonConfig {
                path: path.to_owned(),
                values,
            }),
            _ => Err(Error::File {
                path: path.to_owned(),
                message: "expected a JSON object".into(),
            }),
        }
    }

    /// An error naming this file and `field`.
    pub(crate) fn error(&self, field: &str, message: impl Into<String>) -> Error {
        Error::config(&self.path, field, message)
    }

    /// The value of `key`, treating JSON `null` as absent (diffusers writes `null` for "use the default").
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::String(s)) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
            Some(Value::String(s)) if s == "Infinity" => Ok(f64::INFINITY),
            Some(Value::String(s)) if s == "NaN" => Ok(f64::NAN),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.error(key, format!("expected a number, found {v}"))),
        }
    }

    pub(crate) fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                self.error(key, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }

    pub(crate) fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(key, format!("expected true or false, found {v}"))),
        }
    }

    pub(crate) fn str_or(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_owned()),
            Some(v) => v
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| self.error(key, format!("expected a string, found {v}"))),
        }
    }

    /// A required non-negative integer.
    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        if self.get(key).is_none() {
            return Err(self.error(key, "missing; expected a non-negative integer"));
        }
        self.usize_or(key, 0)
    }

    /// A list of non-negative integers; a single integer stands for `len` copies of itself
    /// (diffusers accepts both for per-block fields such as `attention_head_dim`).
    pub(crate) fn usize_list(&self, key: &str, len: usize) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Err(self.error(key, "missing; expected an integer or a list of integers")),
            Some(Value::Array(items)) => {
                let list = items
                    .iter()
                    .map(|v| {
                        v.as_u64().map(|n| n as usize).ok_or_else(|| {
                            self.error(key, format!("expected non-negative integers, found {v}"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                if list.len() != len {
                    return Err(self.error(
                        key,
                        format!("has {} entries; expected {len}, one per block", list.len()),
                    ));
                }
                Ok(list)
            }
            Some(v) => v.as_u64().map(|n| vec![n as usize; len]).ok_or_else(|| {
                self.error(key, format!("expected an integer or a list, found {v}"))
            }),
        }
    }

    /// A list of strings (block types).
    pub(crate) fn str_list(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.error(key, format!("expected strings, found {v}")))
                })
                .collect(),
            Some(v) => Err(self.error(key, format!("expected a list of strings, found {v}"))),
            None => Err(self.error(key, "missing; expected a list of strings")),
        }
    }

    /// Fails unless `key` is absent, null, or equal to `expected`: for the many diffusers options
    /// that change the architecture in ways SD 2.x never uses.
    pub(crate) fn require(&self, key: &str, expected: &Value, what: &str) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if v == expected => Ok(()),
            Some(v) => Err(self.error(
                key,
                format!("value {v} is not supported; accepted: {expected} ({what})"),
            )),
        }
    }
}

/// A bare `-Infinity`, `Infinity` or `NaN` in value position (after `:`, `[` or `,`).
fn non_finite_tokens() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"([:\[,]\s*)(-Infinity|Infinity|NaN)\b").expect("a valid pattern")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_numbers_are_read() {
        let c = JsonConfig::from_json(
            Path::new("scheduler_config.json"),
            r#"{"lambda_min_clipped": -Infinity, "x": [1, NaN], "name": "Infinity stays a string"}"#,
        )
        .unwrap();
        assert_eq!(
            c.f64_or("lambda_min_clipped", 0.0).unwrap(),
            f64::NEG_INFINITY
        );
        assert_eq!(c.str_or("name", "").unwrap(), "Infinity stays a string");
    }

    #[test]
    fn invalid_json_names_the_file() {
        let e = JsonConfig::from_json(Path::new("unet/config.json"), "{\"a\": }").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unet/config.json: not valid JSON"),
            "{e}"
        );
    }
}
