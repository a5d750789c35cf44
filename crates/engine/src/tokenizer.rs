//! CLIP's byte-level BPE tokenizer, giving the ids diffusers' pipelines feed the text encoder.
//!
//! The oracle is what `transformers.CLIPTokenizer.from_pretrained(tokenizer_dir)` does in
//! transformers 5: a `tokenizers`-library pipeline, not OpenAI's original Python (no ftfy, no
//! HTML unescaping). A prompt goes through these stages, in this order, because each one
//! changes which ids come out:
//!
//! 1. Special tokens registered with `normalized: false` are cut out of the raw text. SD 2.x
//!    registers its pad token `"!"` this way, so every `!` in a prompt becomes the bare `!`
//!    token (id 0) and never the `!</w>` or `!!</w>` BPE words.
//! 2. Each remaining piece is normalised: NFC, runs of Unicode white space to one space,
//!    lower case one char at a time (no final-sigma rule, as `tokenizers` does it).
//! 3. Special tokens registered with `normalized: true` (SD's `<|startoftext|>` and
//!    `<|endoftext|>`) are cut out of the normalised text, so `<|EndOfText|>` typed in a prompt
//!    is the real end token.
//! 4. CLIP's split: contractions, letter runs, single digits, runs of anything else; white
//!    space is dropped. Then GPT-2's byte-level split of each piece, which only matters for a
//!    literal `<|startoftext|>` that reached this stage (it becomes `<|`, words, `|>`).
//! 5. Each piece's UTF-8 bytes become the 256 printable stand-in chars, the last one carrying
//!    the `</w>` end-of-word suffix, and merges apply lowest rank first.
//! 6. `<|startoftext|>` + at most `max_length - 2` tokens + `<|endoftext|>`, then the pad
//!    token up to `max_length` (77).
//!
//! Which special tokens exist, their ids and their `normalized` flags come from the model's
//! `tokenizer_config.json` and `special_tokens_map.json`, because SD 1.x and SD 2.x differ: 1.x
//! pads with `<|endoftext|>`, 2.x with `!`. How transformers settles the flag when the two files
//! or two roles disagree is reproduced in [`SpecialTokens`]; it was worked out by loading
//! hundreds of generated configurations in transformers 5.24.
//!
//! The vocabulary itself ships with the crate (OpenAI's `bpe_simple_vocab_16e6.txt.gz`) so the
//! tiny test models can be written without downloading anything: see
//! [`clip_vocabulary_files`].

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::Error;

/// OpenAI's CLIP merge list, as open_clip and the original CLIP repository ship it.
const BPE_SIMPLE_VOCAB_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");

/// How many merges of the OpenAI file CLIP uses: 49408 tokens - 512 byte symbols - 2 specials.
const CLIP_MERGE_COUNT: usize = 49408 - 512 - 2;

const END_OF_WORD: &str = "</w>";
const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";

/// CLIP's text encoder has 77 positions; transformers' own default (1e30, "unset") cannot be
/// padded to, so a missing `model_max_length` means the encoder's size.
const DEFAULT_MAX_LENGTH: usize = 77;

/// Anything above this is one of transformers' "unset" sentinels, not a real length.
const LARGEST_MAX_LENGTH: f64 = 65536.0;

/// Per-word BPE results are cached; a long-running worker sees endless new words, so the
/// cache is dropped when it grows past this.
const CACHE_LIMIT: usize = 50_000;

/// The ids for one prompt, always exactly [`ClipTokenizer::max_length`] long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// `<|startoftext|>`, the prompt's tokens, `<|endoftext|>`, then padding.
    pub ids: Vec<u32>,
    /// Whether some of the prompt's tokens did not fit.
    pub truncated: bool,
    /// The tokens that did not fit, decoded back to text the way diffusers logs them.
    pub dropped_text: Option<String>,
}

/// CLIP's tokenizer as loaded from a diffusers `tokenizer/` directory.
pub struct ClipTokenizer {
    /// Token text (in the byte stand-in alphabet) by id, for decoding dropped text.
    tokens_by_id: HashMap<u32, String>,
    /// For each byte: the id of its stand-in char alone, and with `</w>`.
    byte_ids: [[u32; 2]; 256],
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Added tokens matched in the raw prompt.
    raw_added: Vec<(String, u32)>,
    /// Added tokens matched in the normalised prompt.
    normalized_added: Vec<(String, u32)>,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
    clip_split: Regex,
    byte_level_split: Regex,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("merges", &self.merges.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("max_length", &self.max_length)
            .finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Loads `vocab.json` + `merges.txt` (+ `tokenizer_config.json` / `special_tokens_map.json`
    /// for the special tokens and `model_max_length` when present) from a diffusers
    /// `tokenizer/` directory.
    pub fn from_dir(dir: &Path) -> crate::Result<Self> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let config_path = dir.join("tokenizer_config.json");
        let special_path = dir.join("special_tokens_map.json");

        let vocab = parse_vocab(&vocab_path, &read_text(&vocab_path)?)?;
        let merges_text = read_text(&merges_path)?;
        let config = read_optional_json(&config_path)?;
        let special_map = read_optional_json(&special_path)?;

        let mut tokens_by_id: HashMap<u32, String> =
            vocab.iter().map(|(t, &id)| (id, t.clone())).collect();

        let mut byte_ids = [[0u32; 2]; 256];
        for (byte, ch) in byte_to_char().iter().enumerate() {
            for (suffix, slot) in [("", 0), (END_OF_WORD, 1)] {
                let token = format!("{ch}{suffix}");
                byte_ids[byte][slot] = *vocab.get(&token).ok_or_else(|| {
                    Error::config(
                        &vocab_path,
                        format!("{token:?}"),
                        format!(
                            "missing; a byte-level CLIP vocabulary has all 256 byte symbols, \
                             each alone and with {END_OF_WORD}"
                        ),
                    )
                })?;
            }
        }

        let merges = parse_merges(&merges_path, &merges_text, &vocab)?;

        let specials = SpecialTokens::from_configs(
            config.as_ref().map(|c| (config_path.as_path(), c)),
            special_map.as_ref().map(|c| (special_path.as_path(), c)),
        )?;
        let id_of = |token: &SpecialToken| -> crate::Result<u32> {
            if let Some(id) = token.id {
                return Ok(id);
            }
            vocab.get(&token.content).copied().ok_or_else(|| {
                Error::config(
                    token.file.as_deref().unwrap_or(&config_path),
                    &token.field,
                    format!(
                        "token {:?} is neither in vocab.json nor in added_tokens_decoder, \
                         so the text encoder has no embedding for it",
                        token.content
                    ),
                )
            })
        };
        let bos = id_of(&specials.bos)?;
        let eos = id_of(&specials.eos)?;
        let pad = id_of(&specials.pad)?;

        let mut raw_added = Vec::new();
        let mut normalized_added = Vec::new();
        // An unknown token missing from the vocabulary is harmless (transformers would give it
        // an id past the embedding table, and it only ever matches its own text), so skip it.
        let unk = id_of(&specials.unk).ok().map(|id| (&specials.unk, id));
        let added = specials.all.iter().map(|t| id_of(t).map(|id| (t, id)));
        for entry in added.chain(unk.map(Ok)) {
            let (token, id) = entry?;
            tokens_by_id
                .entry(id)
                .or_insert_with(|| token.content.clone());
            let list = if token.normalized {
                &mut normalized_added
            } else {
                &mut raw_added
            };
            if !token.content.is_empty() && !list.iter().any(|(c, _)| *c == token.content) {
                list.push((token.content.clone(), id));
            }
        }

        let max_length = match config.as_ref().and_then(|c| c.get("model_max_length")) {
            None | Some(serde_json::Value::Null) => DEFAULT_MAX_LENGTH,
            Some(value) => parse_max_length(&config_path, value)?,
        };

        Ok(Self {
            tokens_by_id,
            byte_ids,
            merges,
            raw_added,
            normalized_added,
            bos,
            eos,
            pad,
            max_length,
            clip_split: Regex::new(
                r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
            )
            .expect("CLIP split pattern"),
            // GPT-2's pattern without its white-space alternatives: CLIP's split never leaves
            // white space in a piece, and those alternatives need look-ahead `regex` lacks.
            byte_level_split: Regex::new(
                r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+",
            )
            .expect("GPT-2 split pattern"),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The number of ids [`encode`](Self::encode) returns (77 for every SD model).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The padding id: 0 (`!`) for SD 2.x, 49407 (`<|endoftext|>`) for SD 1.x.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The `<|startoftext|>` id every encoding starts with.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The `<|endoftext|>` id closing every encoding; CLIP pools the text at its position.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Tokenises `text` as the SD pipeline does: `tokenizer(text, padding="max_length",
    /// max_length=model_max_length, truncation=True)`.
    pub fn encode(&self, text: &str) -> Encoding {
        let tokens = self.tokenize(text);
        let room = self.max_length - 2;
        let truncated = tokens.len() > room;
        let kept = &tokens[..tokens.len().min(room)];

        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(kept);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);

        Encoding {
            ids,
            truncated,
            dropped_text: truncated.then(|| self.decode(&tokens[room..])),
        }
    }

    /// The prompt's tokens, without start, end or padding.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for raw in split_added(text, &self.raw_added) {
            let piece = match raw {
                Piece::Added(id) => {
                    ids.push(id);
                    continue;
                }
                Piece::Text(piece) => piece,
            };
            let normalized = normalize(piece);
            for normal in split_added(&normalized, &self.normalized_added) {
                match normal {
                    Piece::Added(id) => ids.push(id),
                    Piece::Text(text) => self.tokenize_normalized(text, &mut ids),
                }
            }
        }
        ids
    }

    /// Turns ids back into text as `tokenizer.batch_decode` does for CLIP: byte stand-ins back
    /// to bytes (invalid UTF-8 replaced), `</w>` to a space, outer white space trimmed.
    pub fn decode(&self, ids: &[u32]) -> String {
        let char_to_byte = char_to_byte();
        let mut bytes = Vec::new();
        for id in ids {
            let Some(token) = self.tokens_by_id.get(id) else {
                continue;
            };
            // As tokenizers' ByteLevel decoder: a token with a char outside the stand-in
            // alphabet (only possible for added tokens) is taken as plain text.
            let mapped: Option<Vec<u8>> = token
                .chars()
                .map(|c| char_to_byte.get(&c).copied())
                .collect();
            match mapped {
                Some(b) => bytes.extend(b),
                None => bytes.extend_from_slice(token.as_bytes()),
            }
        }
        let text = String::from_utf8_lossy(&bytes).replace(END_OF_WORD, " ");
        // Python's str.strip() also strips the ASCII separators U+001C..U+001F.
        text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
            .to_string()
    }

    fn tokenize_normalized(&self, text: &str, ids: &mut Vec<u32>) {
        for clip_piece in self.clip_split.find_iter(text) {
            for word in self.byte_level_split.find_iter(clip_piece.as_str()) {
                self.bpe(word.as_str(), ids);
            }
        }
    }

    fn bpe(&self, word: &str, out: &mut Vec<u32>) {
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(word).cloned()) {
            out.extend(hit);
            return;
        }
        let bytes = word.as_bytes();
        let mut symbols: Vec<u32> = bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| self.byte_ids[b as usize][usize::from(i + 1 == bytes.len())])
            .collect();
        // Lowest rank first, leftmost on ties: the order tokenizers' merge heap pops them.
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.merges.get(&(w[0], w[1])).map(|&(r, id)| (r, i, id)))
                .min_by_key(|&(rank, i, _)| (rank, i));
            let Some((_, i, merged)) = best else { break };
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
        out.extend_from_slice(&symbols);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(word.to_string(), symbols);
        }
    }
}

enum Piece<'a> {
    Text(&'a str),
    Added(u32),
}

/// Cuts added tokens out of `text`, leftmost match first and the longest one there, as the
/// Aho-Corasick automaton in `tokenizers` does.
fn split_added<'a>(text: &'a str, added: &[(String, u32)]) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let hit = added
            .iter()
            .filter(|(content, _)| rest.starts_with(content.as_str()))
            .max_by_key(|(content, _)| content.len());
        match hit {
            Some((content, id)) => {
                if start < pos {
                    pieces.push(Piece::Text(&text[start..pos]));
                }
                pieces.push(Piece::Added(*id));
                pos += content.len();
                start = pos;
            }
            None => pos += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if start < text.len() {
        pieces.push(Piece::Text(&text[start..]));
    }
    pieces
}

/// NFC, then every run of Unicode white space to one space, then per-char lower case.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.nfc() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
            continue;
        }
        in_space = false;
        // Char by char, as tokenizers' Lowercase: a word-final 'Σ' becomes 'σ', not 'ς'.
        out.extend(c.to_lowercase());
    }
    out
}

/// GPT-2's reversible byte-to-char table: printable Latin-1 bytes stand for themselves, the
/// rest are moved up to U+0100 onwards, so every token is printable text.
fn byte_to_char() -> &'static [char; 256] {
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

fn char_to_byte() -> &'static HashMap<char, u8> {
    static MAP: OnceLock<HashMap<char, u8>> = OnceLock::new();
    MAP.get_or_init(|| {
        (0..=255u8)
            .map(|b| (byte_to_char()[b as usize], b))
            .collect()
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
struct SpecialToken {
    content: String,
    normalized: bool,
    /// Set when `added_tokens_decoder` gives the id; otherwise the id comes from vocab.json.
    id: Option<u32>,
    file: Option<std::path::PathBuf>,
    field: String,
}

/// The special tokens as transformers 5 registers them.
///
/// Per role, `special_tokens_map.json` wins over `tokenizer_config.json`, and CLIPTokenizer's
/// defaults fill the rest. Roles are then registered in the order bos, eos, unk, pad, skipping
/// a declaration equal to one already registered (same text when both are plain strings; same
/// content, `normalized` and file when both are objects; a string never equals an object); of
/// the declarations left, the last one for a given content decides its `normalized` flag. A
/// plain string is not normalised. `added_tokens_decoder`, when present, overrides all that
/// for the contents it lists and adds its other tokens (textual-inversion words).
struct SpecialTokens {
    bos: SpecialToken,
    eos: SpecialToken,
    /// Registered like the others, so its text in a prompt is cut out, but never produced by
    /// BPE: every byte has a symbol, so nothing is unknown.
    unk: SpecialToken,
    pad: SpecialToken,
    /// Everything to cut out of prompts: `added_tokens_decoder`, then bos, eos and pad.
    all: Vec<SpecialToken>,
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
    fn from_configs(
        config: Option<(&Path, &serde_json::Value)>,
        special_map: Option<(&Path, &serde_json::Value)>,
    ) -> crate::Result<Self> {
        const ROLES: [(&str, &str); 4] = [
            ("bos_token", START_OF_TEXT),
            ("eos_token", END_OF_TEXT),
            ("unk_token", END_OF_TEXT),
            ("pad_token", END_OF_TEXT),
        ];
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
        if let Some((file, decoder)) =
            config.and_then(|(f, c)| c.get("added_tokens_decoder").map(|d| (f, d)))
        {
            let entries = decoder.as_object().ok_or_else(|| {
                Error::config(
                    file,
                    "added_tokens_decoder",
                    "must be an object of id: token",
                )
            })?;
            for (key, entry) in entries {
                let field = format!("added_tokens_decoder.{key}");
                let id: u32 = key.parse().map_err(|_| {
                    Error::config(file, &field, "the key must be a token id (an integer)")
                })?;
                let (mut token, _) = parse_declaration(file, &field, entry)?;
                let special = entry
                    .get("special")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                token.normalized = entry
                    .get("normalized")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(!special);
                token.id = Some(id);
                flags.insert(token.content.clone(), token.normalized);
                all.push(token);
            }
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

fn parse_max_length(path: &Path, value: &serde_json::Value) -> crate::Result<usize> {
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

fn read_text(path: &Path) -> crate::Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: format!("cannot read the tokenizer file: {e}"),
    })
}

fn read_optional_json(path: &Path) -> crate::Result<Option<serde_json::Value>> {
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

fn parse_vocab(path: &Path, text: &str) -> crate::Result<HashMap<String, u32>> {
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

fn parse_merges(
    path: &Path,
    text: &str,
    vocab: &HashMap<String, u32>,
) -> crate::Result<HashMap<(u32, u32), (u32, u32)>> {
    let mut merges = HashMap::new();
    let mut rank = 0u32;
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
        let lookup = |token: &str| {
            vocab.get(token).copied().ok_or_else(|| {
                Error::config(path, &field, format!("{token:?} is not in vocab.json"))
            })
        };
        let pair = (lookup(left)?, lookup(right)?);
        let merged = lookup(&format!("{left}{right}"))?;
        // A repeated pair keeps its last rank, as a HashMap built from the list does.
        merges.insert(pair, (rank, merged));
        rank += 1;
    }
    Ok(merges)
}
