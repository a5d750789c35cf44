//! The vocabulary: reading a `tokenizer/` directory's `vocab.json` and `merges.txt`, or the
//! same inside `tokenizer.json` (and the optional JSON configs), and writing the OpenAI CLIP
//! vocabulary the crate ships.
//!
//! The files are read here rather than by the `tokenizers` library so that an error names
//! the line or field at fault: the library's own messages name neither the file nor the
//! line, and a merge whose two halves are longer together than any token makes its BPE
//! builder panic, so every merge is checked against the vocabulary first.
//!
//! The shipped vocabulary (`assets/bpe_simple_vocab_16e6.txt.gz`) is what lets the tiny test
//! models be written without downloading anything; it is turned into the same two files a
//! published model has, so both load through the same reader.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use tokenizers::models::bpe::Merges;

use super::{END_OF_TEXT, END_OF_WORD, START_OF_TEXT};
use crate::error::Error;

/// OpenAI's CLIP merge list, as open_clip and the original CLIP repository ship it.
const BPE_SIMPLE_VOCAB_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// How many merges of the OpenAI file CLIP uses: 49408 tokens - 512 byte symbols - 2 specials.
const CLIP_MERGE_COUNT: usize = 49408 - 512 - 2;

/// GPT-2's reversible byte-to-char table, which byte-level BPE works in: printable Latin-1
/// bytes stand for themselves, the rest are moved up to U+0100 onwards, so every token is
/// printable text. (The `tokenizers` library keeps its copy private.)
pub(super) fn byte_to_char() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            table[b as usize] = if printable {
                char::from(b)
            } else {
                let c = char::from_u32(next).expect("U+0100..U+0143 are chars");
                next += 1;
                c
            };
        }
        table
    })
}

/// The byte symbols in the order CLIP's vocabulary lists them: the printable bytes first.
fn byte_symbols_in_vocab_order() -> Vec<char> {
    let table = byte_to_char();
    let printable = |b: &u8| (*b as u32) == table[*b as usize] as u32;
    let mut order: Vec<u8> = (0..=255u8).filter(printable).collect();
    order.extend((0..=255u8).filter(|b| !printable(b)));
    order.iter().map(|&b| table[b as usize]).collect()
}

/// The OpenAI CLIP vocabulary shipped in `assets/bpe_simple_vocab_16e6.txt.gz`, as the
/// `vocab.json` and `merges.txt` texts transformers' CLIPTokenizer reads: 49408 tokens (256
/// byte symbols, the same with `</w>`, one per merge, then `<|startoftext|>` and
/// `<|endoftext|>`), and `#version: 0.2` followed by the 48894 merges.
///
/// `vocab.json` is compact JSON in id order with non-ASCII written as is, so the text equals
/// Python's `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` of the same dict.
pub fn clip_vocabulary_files() -> (String, String) {
    let mut text = String::new();
    flate2::read::GzDecoder::new(BPE_SIMPLE_VOCAB_GZ)
        .read_to_string(&mut text)
        .expect("the embedded CLIP vocabulary is valid gzip'd UTF-8");
    // Line 0 is the file's own header; CLIP uses only the first CLIP_MERGE_COUNT merges.
    let merges: Vec<&str> = text.split('\n').skip(1).take(CLIP_MERGE_COUNT).collect();

    let symbols = byte_symbols_in_vocab_order();
    let mut tokens: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
    tokens.extend(symbols.iter().map(|c| format!("{c}{END_OF_WORD}")));
    tokens.extend(merges.iter().map(|m| m.replacen(' ', "", 1)));
    tokens.push(START_OF_TEXT.to_string());
    tokens.push(END_OF_TEXT.to_string());

    let mut vocab_json = String::from("{");
    for (id, token) in tokens.iter().enumerate() {
        if id > 0 {
            vocab_json.push(',');
        }
        vocab_json.push_str(&serde_json::to_string(token).expect("strings serialise"));
        vocab_json.push(':');
        vocab_json.push_str(&id.to_string());
    }
    vocab_json.push('}');

    let mut merges_txt = String::from("#version: 0.2\n");
    for merge in &merges {
        merges_txt.push_str(merge);
        merges_txt.push('\n');
    }
    (vocab_json, merges_txt)
}

pub(super) fn read_text(path: &Path) -> crate::Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: format!("cannot read the tokenizer file: {e}"),
    })
}

pub(super) fn read_optional_json(path: &Path) -> crate::Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_text(path)?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(Error::File {
            path: path.to_path_buf(),
            message: "must be a JSON object".to_string(),
        });
    }
    Ok(Some(value))
}

pub(super) fn parse_vocab(path: &Path, text: &str) -> crate::Result<HashMap<String, u32>> {
    let raw: HashMap<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| Error::File {
            path: path.to_path_buf(),
            message: format!("not a JSON object of token: id: {e}"),
        })?;
    raw.into_iter()
        .map(|(token, id)| {
            let id = id
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    Error::config(path, format!("{token:?}"), format!("id {id} is not a u32"))
                })?;
            Ok((token, id))
        })
        .collect()
}

/// `merges.txt`: a version header, then one merge per line, two tokens and one space.
pub(super) fn parse_merges(
    path: &Path,
    text: &str,
    vocab: &HashMap<String, u32>,
) -> crate::Result<Merges> {
    let mut merges = Vec::new();
    for (index, line) in text.lines().enumerate() {
        // tokenizers skips only the version header; other lines starting with '#' are merges
        // of the '#' symbol and count.
        if line.starts_with("#version") || line.is_empty() {
            continue;
        }
        let field = format!("line {}", index + 1);
        let (left, right) = line
            .split_once(' ')
            .filter(|(_, r)| !r.contains(' '))
            .ok_or_else(|| Error::config(path, &field, "a merge is two tokens and one space"))?;
        merges.push(checked_merge(path, &field, left, right, vocab)?);
    }
    Ok(merges)
}

/// A merge whose two tokens and their concatenation are all in the vocabulary.
fn checked_merge(
    path: &Path,
    field: &str,
    left: &str,
    right: &str,
    vocab: &HashMap<String, u32>,
) -> crate::Result<(String, String)> {
    for token in [left, right, &format!("{left}{right}")] {
        if !vocab.contains_key(token) {
            return Err(Error::config(
                path,
                field,
                format!("{token:?} is not in the vocabulary"),
            ));
        }
    }
    Ok((left.to_string(), right.to_string()))
}

/// What a Hugging Face tokenizers `tokenizer.json` holds that CLIP's tokenizer reads.
pub(super) struct TokenizerJson {
    /// `model.vocab`.
    pub(super) vocab: HashMap<String, u32>,
    /// `model.merges`.
    pub(super) merges: Merges,
    /// `added_tokens`, which transformers reads when `tokenizer_config.json` has no
    /// `added_tokens_decoder` (transformers 5 saves them here only).
    pub(super) added_tokens: Option<serde_json::Value>,
}

/// Reads the BPE vocabulary and merges of a `tokenizer.json` (its `model`, of type `BPE`) and
/// its added tokens. Its normalizer, pre-tokenizer, post-processor and decoder are not read:
/// transformers' CLIPTokenizer builds CLIP's own whatever the file says, and so do we.
pub(super) fn read_tokenizer_json(path: &Path) -> crate::Result<TokenizerJson> {
    let text = read_text(path)?;
    let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })?;
    let model = &json["model"];
    match model["type"].as_str() {
        Some("BPE") | None if model.is_object() => {}
        other => {
            return Err(Error::config(
                path,
                "model.type",
                format!("{other:?}; accepted: a BPE model (CLIP's)"),
            ))
        }
    }
    if let Some(suffix) = model["end_of_word_suffix"].as_str() {
        if suffix != END_OF_WORD {
            return Err(Error::config(
                path,
                "model.end_of_word_suffix",
                format!("{suffix:?}; accepted: {END_OF_WORD:?} (CLIP's)"),
            ));
        }
    }
    let vocab = parse_vocab(path, &model["vocab"].to_string())?;
    let Some(list) = model["merges"].as_array() else {
        return Err(Error::config(
            path,
            "model.merges",
            "missing; a list of merges",
        ));
    };
    let mut merges = Vec::with_capacity(list.len());
    for (i, merge) in list.iter().enumerate() {
        let field = format!("model.merges[{i}]");
        // Older files write "a b", newer ones ["a", "b"].
        let pair = match merge {
            serde_json::Value::String(line) => {
                line.split_once(' ').filter(|(_, r)| !r.contains(' '))
            }
            serde_json::Value::Array(pair) => match pair.as_slice() {
                [serde_json::Value::String(a), serde_json::Value::String(b)] => {
                    Some((a.as_str(), b.as_str()))
                }
                _ => None,
            },
            _ => None,
        };
        let Some((left, right)) = pair else {
            return Err(Error::config(
                path,
                field,
                "a merge is \"a b\" or [\"a\", \"b\"]",
            ));
        };
        merges.push(checked_merge(path, &field, left, right, &vocab)?);
    }
    let added_tokens = json.get_mut("added_tokens").map(serde_json::Value::take);
    Ok(TokenizerJson {
        vocab,
        merges,
        added_tokens,
    })
}
