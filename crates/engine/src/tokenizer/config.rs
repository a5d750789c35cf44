//! What `tokenizer_config.json` and `special_tokens_map.json` (and `tokenizer.json`'s
//! `added_tokens`) declare: the special tokens, their `normalized` flags and ids, and
//! `model_max_length`; and SD 2.1's own two files, which the tiny model ships.
//!
//! SD 1.x and SD 2.x differ here (1.x pads with `<|endoftext|>`, 2.x with `!`), and
//! transformers settles disagreements between the two files, or between two roles, by
//! rules of its own, reproduced in [`SpecialTokens`]; they were worked out by loading
//! hundreds of generated configurations in transformers 5.24.

use std::collections::HashMap;
use std::path::Path;

use super::{END_OF_TEXT, START_OF_TEXT};
use crate::error::Error;

/// CLIP's text encoder has 77 positions; transformers' own default (1e30, "unset") cannot be
/// padded to, so a missing `model_max_length` means the encoder's size.
pub(super) const DEFAULT_MAX_LENGTH: usize = 77;

/// Anything above this is one of transformers' "unset" sentinels, not a real length.
const LARGEST_MAX_LENGTH: f64 = 65536.0;

/// `tokenizer_config.json` and `special_tokens_map.json` as stabilityai/stable-diffusion-2-1
/// publishes them: pad `!`, start `<|startoftext|>`, end and unknown `<|endoftext|>`,
/// `model_max_length` 77.
pub fn sd2_tokenizer_config_files() -> Vec<(&'static str, String)> {
    const TOKENIZER_CONFIG: &str = r#"{
  "add_prefix_space": false,
  "bos_token": {
    "__type": "AddedToken",
    "content": "<|startoftext|>",
    "lstrip": false,
    "normalized": true,
    "rstrip": false,
    "single_word": false
  },
  "do_lower_case": true,
  "eos_token": {
    "__type": "AddedToken",
    "content": "<|endoftext|>",
    "lstrip": false,
    "normalized": true,
    "rstrip": false,
    "single_word": false
  },
  "errors": "replace",
  "model_max_length": 77,
  "name_or_path": "openai/clip-vit-large-patch14",
  "pad_token": "!",
  "special_tokens_map_file": "./special_tokens_map.json",
  "tokenizer_class": "CLIPTokenizer",
  "unk_token": {
    "__type": "AddedToken",
    "content": "<|endoftext|>",
    "lstrip": false,
    "normalized": true,
    "rstrip": false,
    "single_word": false
  }
}
"#;
    const SPECIAL_TOKENS_MAP: &str = r#"{
  "bos_token": {
    "content": "<|startoftext|>",
    "lstrip": false,
    "normalized": true,
    "rstrip": false,
    "single_word": false
  },
  "eos_token": {
    "content": "<|endoftext|>",
    "lstrip": false,
    "normalized": true,
    "rstrip": false,
    "single_word": false
  },
  "pad_token": "!",
  "unk_token": {
    "content": "<|endoftext|>",
    "lstrip": false,
    "normalized": true,
    "rstrip": false,
    "single_word": false
  }
}
"#;
    vec![
        ("tokenizer_config.json", TOKENIZER_CONFIG.to_string()),
        ("special_tokens_map.json", SPECIAL_TOKENS_MAP.to_string()),
    ]
}

/// One special or added token and where it was declared (for error messages).
#[derive(Debug, Clone)]
pub(super) struct SpecialToken {
    pub(super) content: String,
    pub(super) normalized: bool,
    /// Special (skipped when decoding with special tokens skipped): the four roles, and the
    /// added tokens that say so.
    pub(super) special: bool,
    /// Set when the added tokens give the id; otherwise the id comes from the vocabulary.
    pub(super) id: Option<u32>,
    pub(super) file: Option<std::path::PathBuf>,
    pub(super) field: String,
}

/// The special tokens as transformers 5 registers them.
///
/// Per role, `special_tokens_map.json` wins over `tokenizer_config.json`, and CLIPTokenizer's
/// defaults fill the rest. Roles are then registered in the order bos, eos, unk, pad, skipping
/// a declaration equal to one already registered (same text when both are plain strings; same
/// content, `normalized` and file when both are objects; a string never equals an object); of
/// the declarations left, the last one for a given content decides its `normalized` flag. A
/// plain string is not normalised. `added_tokens_decoder`, when present, overrides all that
/// for the contents it lists and adds its other tokens (textual-inversion words), and then
/// `special_tokens_map.json` is not read at all. Without it, `tokenizer.json`'s
/// `added_tokens` (where transformers 5 saves them) take its place.
pub(super) struct SpecialTokens {
    pub(super) bos: SpecialToken,
    pub(super) eos: SpecialToken,
    /// Registered like the others, so its text in a prompt is cut out, but never produced by
    /// BPE: every byte has a symbol, so nothing is unknown.
    pub(super) unk: SpecialToken,
    pub(super) pad: SpecialToken,
    /// Everything to cut out of prompts: the added tokens, then bos, eos and pad.
    pub(super) all: Vec<SpecialToken>,
}

#[derive(PartialEq)]
enum Declaration<'a> {
    Plain(&'a str),
    Object {
        content: &'a str,
        normalized: Option<bool>,
        file: &'a Path,
    },
}

impl SpecialTokens {
    /// `saved_added_tokens` is `tokenizer.json`'s `added_tokens`, when there is one.
    pub(super) fn from_configs(
        config: Option<(&Path, &serde_json::Value)>,
        special_map: Option<(&Path, &serde_json::Value)>,
        saved_added_tokens: Option<(&Path, &serde_json::Value)>,
    ) -> crate::Result<Self> {
        const ROLES: [(&str, &str); 4] = [
            ("bos_token", START_OF_TEXT),
            ("eos_token", END_OF_TEXT),
            ("unk_token", END_OF_TEXT),
            ("pad_token", END_OF_TEXT),
        ];
        let added = added_token_entries(config, saved_added_tokens)?;
        let special_map = special_map.filter(|_| !added.from_decoder);
        let mut declared: Vec<(SpecialToken, Declaration)> = Vec::new();
        for (role, default) in ROLES {
            let found = [special_map, config]
                .into_iter()
                .flatten()
                .find_map(|(file, json)| {
                    json.get(role)
                        .filter(|v| !v.is_null())
                        .map(|value| (file, value))
                });
            let (token, declaration) = match found {
                None => (
                    SpecialToken {
                        content: default.to_string(),
                        normalized: false,
                        special: true,
                        id: None,
                        file: None,
                        field: role.to_string(),
                    },
                    Declaration::Plain(default),
                ),
                Some((file, value)) => parse_declaration(file, role, value)?,
            };
            declared.push((token, declaration));
        }

        // Registration: skip declarations equal to an earlier registered one.
        let mut registered: Vec<usize> = Vec::new();
        for (i, (_, declaration)) in declared.iter().enumerate() {
            if !registered.iter().any(|&j| declared[j].1 == *declaration) {
                registered.push(i);
            }
        }
        let mut flags: HashMap<String, bool> = HashMap::new();
        for &i in &registered {
            flags.insert(declared[i].0.content.clone(), declared[i].0.normalized);
        }

        let mut all: Vec<SpecialToken> = Vec::new();
        for (file, field, id, entry) in added.entries {
            let (mut token, _) = parse_declaration(file, &field, entry)?;
            token.special = entry
                .get("special")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            token.normalized = entry
                .get("normalized")
                .and_then(|v| v.as_bool())
                .unwrap_or(!token.special);
            token.id = Some(id);
            flags.insert(token.content.clone(), token.normalized);
            all.push(token);
        }

        let finish = |mut token: SpecialToken| -> SpecialToken {
            token.normalized = flags[&token.content];
            if let Some(listed) = all.iter().find(|t| t.content == token.content) {
                token.id = listed.id;
            }
            token
        };
        let mut roles: Vec<SpecialToken> = declared.into_iter().map(|(t, _)| t).collect();
        let pad = finish(roles.pop().expect("four roles"));
        let unk = finish(roles.pop().expect("four roles"));
        let eos = finish(roles.pop().expect("four roles"));
        let bos = finish(roles.pop().expect("four roles"));
        for token in [&bos, &eos, &pad] {
            if !all.iter().any(|t| t.content == token.content) {
                all.push(token.clone());
            }
        }
        Ok(Self {
            bos,
            eos,
            unk,
            pad,
            all,
        })
    }
}

/// The added tokens transformers registers before the special tokens, each with its file,
/// field and id: `tokenizer_config.json`'s `added_tokens_decoder` (`{"id": token}`), or
/// without one `tokenizer.json`'s `added_tokens` (`[{"id": id, ...token}]`).
struct AddedTokenEntries<'a> {
    entries: Vec<(&'a Path, String, u32, &'a serde_json::Value)>,
    /// Whether they came from `added_tokens_decoder`.
    from_decoder: bool,
}

fn added_token_entries<'a>(
    config: Option<(&'a Path, &'a serde_json::Value)>,
    saved: Option<(&'a Path, &'a serde_json::Value)>,
) -> crate::Result<AddedTokenEntries<'a>> {
    let decoder = config.and_then(|(f, c)| c.get("added_tokens_decoder").map(|d| (f, d)));
    if let Some((file, decoder)) = decoder {
        let entries = decoder.as_object().ok_or_else(|| {
            Error::config(
                file,
                "added_tokens_decoder",
                "must be an object of id: token",
            )
        })?;
        let entries = entries
            .iter()
            .map(|(key, entry)| {
                let field = format!("added_tokens_decoder.{key}");
                let id: u32 = key.parse().map_err(|_| {
                    Error::config(file, &field, "the key must be a token id (an integer)")
                })?;
                Ok((file, field, id, entry))
            })
            .collect::<crate::Result<_>>()?;
        return Ok(AddedTokenEntries {
            entries,
            from_decoder: true,
        });
    }
    let mut entries = Vec::new();
    if let Some((file, list)) = saved {
        let list = list.as_array().ok_or_else(|| {
            Error::config(file, "added_tokens", "must be a list of token objects")
        })?;
        for (i, entry) in list.iter().enumerate() {
            let field = format!("added_tokens[{i}]");
            let id = entry
                .get("id")
                .and_then(serde_json::Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    Error::config(
                        file,
                        format!("{field}.id"),
                        "must be a token id (an integer)",
                    )
                })?;
            entries.push((file, field, id, entry));
        }
    }
    Ok(AddedTokenEntries {
        entries,
        from_decoder: false,
    })
}

fn parse_declaration<'a>(
    file: &'a Path,
    field: &str,
    value: &'a serde_json::Value,
) -> crate::Result<(SpecialToken, Declaration<'a>)> {
    match value {
        serde_json::Value::String(content) => Ok((
            SpecialToken {
                content: content.clone(),
                normalized: false,
                special: true,
                id: None,
                file: Some(file.to_path_buf()),
                field: field.to_string(),
            },
            Declaration::Plain(content),
        )),
        serde_json::Value::Object(object) => {
            let content = object
                .get("content")
                .and_then(|c| c.as_str())
                .ok_or_else(|| {
                    Error::config(
                        file,
                        format!("{field}.content"),
                        "a token object needs a string `content`",
                    )
                })?;
            let normalized = match object.get("normalized") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::Bool(b)) => Some(*b),
                Some(_) => {
                    return Err(Error::config(
                        file,
                        format!("{field}.normalized"),
                        "must be true or false",
                    ))
                }
            };
            Ok((
                SpecialToken {
                    content: content.to_string(),
                    normalized: normalized.unwrap_or(false),
                    special: true,
                    id: None,
                    file: Some(file.to_path_buf()),
                    field: field.to_string(),
                },
                Declaration::Object {
                    content,
                    normalized,
                    file,
                },
            ))
        }
        _ => Err(Error::config(
            file,
            field,
            "must be a string or a token object with `content`",
        )),
    }
}

pub(super) fn parse_max_length(path: &Path, value: &serde_json::Value) -> crate::Result<usize> {
    let number = value.as_f64().filter(|n| n.fract() == 0.0);
    match number {
        Some(n) if (2.0..=LARGEST_MAX_LENGTH).contains(&n) => Ok(n as usize),
        Some(n) if n > LARGEST_MAX_LENGTH => Err(Error::config(
            path,
            "model_max_length",
            format!(
                "{value} is transformers' \"no limit\" value; CLIP's text encoder takes 77 \
                 tokens, so set 77"
            ),
        )),
        _ => Err(Error::config(
            path,
            "model_max_length",
            format!("{value} is not a whole number of at least 2 (start and end tokens)"),
        )),
    }
}
