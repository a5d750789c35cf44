//! CLIP's byte-level BPE tokenizer, giving the ids diffusers' pipelines feed the text encoder.
//!
//! The oracle is what `transformers.CLIPTokenizer.from_pretrained(tokenizer_dir)` does in
//! transformers 5, and the engine runs the same thing: a `tokenizers`-library `Tokenizer`
//! (the crate transformers' fast tokenizers are built on) set up as CLIPTokenizer sets it up.
//! Its stages, in order, each changing which ids come out:
//!
//! 1. Added tokens registered with `normalized: false` are cut out of the raw text. SD 2.x
//!    registers its pad token `"!"` this way, so every `!` in a prompt becomes the bare `!`
//!    token (id 0) and never the `!</w>` or `!!</w>` BPE words.
//! 2. Normalizer: NFC, runs of white space to one space, lower case.
//! 3. Added tokens registered with `normalized: true` (SD 2.x's `<|startoftext|>` and
//!    `<|endoftext|>`) are cut out of the normalised text, so `<|EndOfText|>` typed in a prompt
//!    is the real end token.
//! 4. Pre-tokenizer: CLIP's split (contractions, letter runs, single digits, runs of anything
//!    else; white space dropped), then GPT-2's byte level.
//! 5. BPE with the `</w>` end-of-word suffix.
//! 6. Post-processor, truncation and padding: `<|startoftext|>` + at most `max_length - 2`
//!    tokens + `<|endoftext|>`, then the pad token up to `max_length` (77).
//!
//! Like CLIPTokenizer, we set every stage up in code and read only the vocabulary, the merges
//! and the added tokens from the files (a `tokenizer.json`'s own normalizer, pre-tokenizer,
//! post-processor and decoder are ignored, as transformers ignores them), so `vocab.json` +
//! `merges.txt` and a `tokenizer.json` give the same tokenizer. When a folder has both,
//! `tokenizer.json` is read, as transformers 5 does.
//!
//! Which special tokens exist, their ids and their `normalized` flags come from the model's
//! `tokenizer_config.json` and `special_tokens_map.json` (or `tokenizer.json`'s
//! `added_tokens`), because SD 1.x and SD 2.x differ: 1.x pads with `<|endoftext|>`, 2.x with
//! `!`. How transformers settles the flag when the files or two roles disagree is reproduced
//! in `config.rs`; it was worked out by loading hundreds of generated configurations in
//! transformers 5.24.
//!
//! The vocabulary itself ships with the crate (OpenAI's `bpe_simple_vocab_16e6.txt.gz`) so the
//! tiny test models can be written without downloading anything: see
//! [`clip_vocabulary_files`].
//!
//! One file per concern: this one loads a directory and sets up the library's pipeline;
//! `config.rs` holds the special tokens of the config files, `vocabulary.rs` the reading of
//! `vocab.json`, `merges.txt` and `tokenizer.json` and the writing of the shipped vocabulary.

mod config;
mod vocabulary;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as Normalizers, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    pad_encodings, truncate_encodings, AddedToken, PaddingParams, PaddingStrategy,
    SplitDelimiterBehavior, Tokenizer, TruncationParams,
};

use crate::error::Error;
use config::{parse_max_length, SpecialToken, SpecialTokens, DEFAULT_MAX_LENGTH};
use vocabulary::{byte_to_char, parse_merges, parse_vocab, read_optional_json, read_text};

pub use config::sd2_tokenizer_config_files;
pub use vocabulary::clip_vocabulary_files;

const END_OF_WORD: &str = "</w>";
const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";

/// CLIP's split, as CLIPTokenizer gives it to the `Split` pre-tokenizer.
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

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
    /// The pipeline up to the post-processor, without truncation or padding: set on the
    /// tokenizer, truncation makes it stop tokenising at the limit, and diffusers also wants
    /// what was cut off.
    tokenizer: Tokenizer,
    /// To `max_length - 2` tokens, leaving room for the start and end tokens.
    truncation: TruncationParams,
    /// To `max_length` with the pad token.
    padding: PaddingParams,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("max_length", &self.max_length)
            .finish_non_exhaustive()
    }
}

/// What a tokenizer is built from, each with the path its errors name.
struct Sources {
    /// The file the vocabulary came from (`vocab.json` or `tokenizer.json`).
    vocab_path: PathBuf,
    config_path: PathBuf,
    special_path: PathBuf,
    vocab: HashMap<String, u32>,
    merges: Merges,
    config: Option<serde_json::Value>,
    special_map: Option<serde_json::Value>,
    /// `tokenizer.json`'s `added_tokens`, when the vocabulary came from one.
    saved_added_tokens: Option<serde_json::Value>,
}

impl ClipTokenizer {
    /// Loads a diffusers `tokenizer/` directory: `tokenizer.json` when there is one (as
    /// transformers 5 does), else `vocab.json` + `merges.txt`; and `tokenizer_config.json` /
    /// `special_tokens_map.json` for the special tokens and `model_max_length` when present.
    pub fn from_dir(dir: &Path) -> crate::Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let special_path = dir.join("special_tokens_map.json");
        let json_path = dir.join("tokenizer.json");
        let (vocab_path, vocab, merges, saved_added_tokens) = if json_path.is_file() {
            let saved = vocabulary::read_tokenizer_json(&json_path)?;
            (json_path, saved.vocab, saved.merges, saved.added_tokens)
        } else {
            let vocab_path = dir.join("vocab.json");
            let merges_path = dir.join("merges.txt");
            let vocab = parse_vocab(&vocab_path, &read_text(&vocab_path)?)?;
            let merges = parse_merges(&merges_path, &read_text(&merges_path)?, &vocab)?;
            (vocab_path, vocab, merges, None)
        };
        Self::build(Sources {
            vocab_path,
            config: read_optional_json(&config_path)?,
            special_map: read_optional_json(&special_path)?,
            config_path,
            special_path,
            vocab,
            merges,
            saved_added_tokens,
        })
    }

    /// SD 2.x's own tokenizer (OpenCLIP's vocabulary, padded with `!`), built in: what a
    /// single-file checkpoint, which holds no tokenizer, is read with.
    pub fn sd2() -> crate::Result<Self> {
        let dir = Path::new("<built-in SD 2.x tokenizer>");
        let vocab_path = dir.join("vocab.json");
        let (vocab_text, merges_text) = clip_vocabulary_files();
        let vocab = parse_vocab(&vocab_path, &vocab_text)?;
        let merges = parse_merges(&dir.join("merges.txt"), &merges_text, &vocab)?;
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
            vocab,
            merges,
            saved_added_tokens: None,
        })
    }

    fn build(sources: Sources) -> crate::Result<Self> {
        let Sources {
            vocab_path,
            config_path,
            special_path,
            vocab,
            merges,
            config,
            special_map,
            saved_added_tokens,
        } = sources;

        // Every byte has a symbol, alone and ending a word, so BPE never meets an unknown
        // piece; this is what lets `encode` be infallible.
        for ch in byte_to_char() {
            for token in [ch.to_string(), format!("{ch}{END_OF_WORD}")] {
                if !vocab.contains_key(&token) {
                    return Err(Error::config(
                        &vocab_path,
                        format!("{token:?}"),
                        format!(
                            "missing; a byte-level CLIP vocabulary has all 256 byte symbols, \
                             each alone and with {END_OF_WORD}"
                        ),
                    ));
                }
            }
        }

        let specials = SpecialTokens::from_configs(
            config.as_ref().map(|c| (config_path.as_path(), c)),
            special_map.as_ref().map(|c| (special_path.as_path(), c)),
            saved_added_tokens
                .as_ref()
                .map(|a| (vocab_path.as_path(), a)),
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
                        "token {:?} is neither in the vocabulary nor among the added tokens, \
                         so the text encoder has no embedding for it",
                        token.content
                    ),
                )
            })
        };
        let bos = id_of(&specials.bos)?;
        let eos = id_of(&specials.eos)?;
        let pad = id_of(&specials.pad)?;
        // An unknown token missing from the vocabulary is harmless (transformers would give it
        // an id past the embedding table, and it only ever matches its own text), so skip it.
        let unk = id_of(&specials.unk).ok().map(|id| (&specials.unk, id));
        let mut added = specials
            .all
            .iter()
            .map(|t| id_of(t).map(|id| (t, id)))
            .chain(unk.map(Ok))
            .collect::<crate::Result<Vec<_>>>()?;

        let max_length = match config.as_ref().and_then(|c| c.get("model_max_length")) {
            None | Some(serde_json::Value::Null) => DEFAULT_MAX_LENGTH,
            Some(value) => parse_max_length(&config_path, value)?,
        };

        let library_error = |e: tokenizers::Error| Error::File {
            path: vocab_path.clone(),
            message: format!("the tokenizers library refused it: {e}"),
        };
        let model = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
            .end_of_word_suffix(END_OF_WORD.to_string())
            .unk_token(specials.unk.content.clone())
            .build()
            .map_err(library_error)?;
        let mut tokenizer = Tokenizer::new(model);
        tokenizer
            .with_normalizer(Some(Normalizers::new(vec![
                NFC.into(),
                Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
                    .expect("a valid pattern")
                    .into(),
                Lowercase.into(),
            ])))
            .map_err(library_error)?;
        tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
            Split::new(
                SplitPattern::Regex(CLIP_SPLIT.into()),
                SplitDelimiterBehavior::Removed,
                true,
            )
            .expect("a valid pattern")
            .into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        tokenizer.with_post_processor(Some(
            RobertaProcessing::new(
                (specials.eos.content.clone(), eos),
                (specials.bos.content.clone(), bos),
            )
            .trim_offsets(false)
            .add_prefix_space(false),
        ));

        // Added tokens in id order, so those past the vocabulary get the ids declared for
        // them (the library numbers new tokens in the order they are added).
        added.sort_by_key(|&(_, id)| id);
        added.dedup_by(|(a, _), (b, _)| a.content == b.content);
        for (token, id) in added {
            if token.content.is_empty() {
                continue;
            }
            tokenizer
                .add_tokens([AddedToken::from(token.content.clone(), token.special)
                    .normalized(token.normalized)])
                .map_err(library_error)?;
            let given = tokenizer.token_to_id(&token.content);
            if given != Some(id) {
                return Err(Error::config(
                    token.file.as_deref().unwrap_or(&config_path),
                    &token.field,
                    format!(
                        "token {:?} has id {id}, but added after the vocabulary it would be \
                         {given:?}: the ids of tokens outside the vocabulary must follow it \
                         without gaps",
                        token.content
                    ),
                ));
            }
        }

        Ok(Self {
            tokenizer,
            truncation: TruncationParams {
                max_length: max_length - 2,
                ..TruncationParams::default()
            },
            padding: PaddingParams {
                strategy: PaddingStrategy::Fixed(max_length),
                pad_id: pad,
                pad_token: specials.pad.content.clone(),
                ..PaddingParams::default()
            },
            bos,
            eos,
            pad,
            max_length,
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
    /// max_length=model_max_length, truncation=True)`, and what diffusers' second, untruncated
    /// call would log as cut off.
    ///
    /// The prompt is tokenised whole, then goes through the library's own finishing steps in
    /// the order its `post_process` takes them: truncation, the post-processor's start and end
    /// tokens, padding.
    pub fn encode(&self, text: &str) -> Encoding {
        let finish = || -> tokenizers::Result<(tokenizers::Encoding, Vec<u32>)> {
            let (mut kept, _) = truncate_encodings(self.run(text), None, &self.truncation)?;
            let dropped = kept
                .take_overflowing()
                .iter()
                .flat_map(|part| part.get_ids().iter().copied())
                .collect();
            let mut encoding = self.tokenizer.post_process(kept, None, true)?;
            pad_encodings(std::slice::from_mut(&mut encoding), &self.padding)?;
            Ok((encoding, dropped))
        };
        let (encoding, dropped) =
            finish().expect("truncating, wrapping and padding one sequence cannot fail");
        Encoding {
            ids: encoding.get_ids().to_vec(),
            truncated: !dropped.is_empty(),
            dropped_text: (!dropped.is_empty()).then(|| self.decode(&dropped)),
        }
    }

    /// The prompt's tokens, without start, end or padding.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.run(text).get_ids().to_vec()
    }

    /// Turns ids back into text as `tokenizer.batch_decode` does for CLIP: the library's
    /// byte-level decoding, then transformers' CLIP wrapper around it (`</w>` to a space, outer
    /// white space stripped as Python's `str.strip` does).
    pub fn decode(&self, ids: &[u32]) -> String {
        // The byte-level decoder cannot fail, and unknown ids are skipped.
        let text = self.tokenizer.decode(ids, false).unwrap_or_default();
        // Python's str.strip() also strips the ASCII separators U+001C..U+001F.
        text.replace(END_OF_WORD, " ")
            .trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
            .to_string()
    }

    /// Every token of `text`, untruncated, without start and end.
    fn run(&self, text: &str) -> tokenizers::Encoding {
        self.tokenizer.encode(text, false).expect(
            "CLIP's pipeline cannot fail on text: every byte has a symbol (checked at load)",
        )
    }
}
