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
//! or two roles disagree is reproduced in `config.rs`; it was worked out by loading
//! hundreds of generated configurations in transformers 5.24.
//!
//! The vocabulary itself ships with the crate (OpenAI's `bpe_simple_vocab_16e6.txt.gz`) so the
//! tiny test models can be written without downloading anything: see
//! [`clip_vocabulary_files`].
//!
//! One file per concern: this one loads a directory and runs the stages; `text.rs` holds
//! stages 1 to 3 and the byte alphabet of stage 5, `config.rs` the special tokens of the
//! two config files, `vocabulary.rs` the reading of `vocab.json` and `merges.txt` and the
//! writing of the shipped vocabulary.

mod config;
mod text;
mod vocabulary;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use regex::Regex;

use crate::error::Error;
use config::{parse_max_length, SpecialToken, SpecialTokens, DEFAULT_MAX_LENGTH};
use text::{byte_to_char, char_to_byte, normalize, split_added, Piece};
use vocabulary::{parse_merges, parse_vocab, read_optional_json, read_text};

pub use config::sd2_tokenizer_config_files;
pub use vocabulary::clip_vocabulary_files;

const END_OF_WORD: &str = "</w>";
const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";

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

/// What a tokenizer is built from, each with the path its errors name.
struct Sources {
    vocab_path: PathBuf,
    merges_path: PathBuf,
    config_path: PathBuf,
    special_path: PathBuf,
    vocab: HashMap<String, u32>,
    merges_text: String,
    config: Option<serde_json::Value>,
    special_map: Option<serde_json::Value>,
}

impl ClipTokenizer {
    /// Loads `vocab.json` + `merges.txt`, or without them `tokenizer.json` (+
    /// `tokenizer_config.json` / `special_tokens_map.json` for the special tokens and
    /// `model_max_length` when present) from a diffusers `tokenizer/` directory.
    pub fn from_dir(dir: &Path) -> crate::Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let special_path = dir.join("special_tokens_map.json");
        // `vocab.json` and `merges.txt`, or (transformers 5 saves only this) the same
        // vocabulary and merges inside the Hugging Face tokenizers' `tokenizer.json`.
        let json_path = dir.join("tokenizer.json");
        let (vocab_path, merges_path, vocab, merges_text) =
            if !dir.join("vocab.json").is_file() && json_path.is_file() {
                let (vocab, merges) = vocabulary::from_tokenizer_json(&json_path)?;
                (json_path.clone(), json_path, vocab, merges)
            } else {
                let vocab_path = dir.join("vocab.json");
                let merges_path = dir.join("merges.txt");
                let vocab = parse_vocab(&vocab_path, &read_text(&vocab_path)?)?;
                let merges_text = read_text(&merges_path)?;
                (vocab_path, merges_path, vocab, merges_text)
            };
        let config = read_optional_json(&config_path)?;
        let special_map = read_optional_json(&special_path)?;
        Self::build(Sources {
            vocab_path,
            merges_path,
            config_path,
            special_path,
            vocab,
            merges_text,
            config,
            special_map,
        })
    }

    /// SD 2.x's own tokenizer (OpenCLIP's vocabulary, padded with `!`), built in: what a
    /// single-file checkpoint, which holds no tokenizer, is read with.
    pub fn sd2() -> crate::Result<Self> {
        let dir = Path::new("<built-in SD 2.x tokenizer>");
        let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let (vocab_text, merges_text) = clip_vocabulary_files();
        let vocab = parse_vocab(&vocab_path, &vocab_text)?;
        let config_file = |name: &str| -> crate::Result<Option<serde_json::Value>> {
            let Some((_, text)) = sd2_tokenizer_config_files()
                .into_iter()
                .find(|(file, _)| *file == name)
            else {
                return Ok(None);
            };
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::File {
                    path: dir.join(name),
                    message: format!("not valid JSON: {e}"),
                })
        };
        Self::build(Sources {
            config: config_file("tokenizer_config.json")?,
            special_map: config_file("special_tokens_map.json")?,
            config_path: dir.join("tokenizer_config.json"),
            special_path: dir.join("special_tokens_map.json"),
            vocab_path,
            merges_path,
            vocab,
            merges_text,
        })
    }

    fn build(sources: Sources) -> crate::Result<Self> {
        let Sources {
            vocab_path,
            merges_path,
            config_path,
            special_path,
            vocab,
            merges_text,
            config,
            special_map,
        } = sources;

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
