//! The text stages before BPE: cutting added tokens out of a prompt, normalising what is
//! left, and GPT-2's byte-level alphabet that BPE works in.
//!
//! Kept apart from `mod.rs` because each is a rule of `tokenizers` reproduced on its own
//! (the Aho-Corasick leftmost-longest match, NFC + white space + per-char lower case, the
//! reversible byte table), and the vocabulary writer needs the alphabet too.

use std::collections::HashMap;
use std::sync::OnceLock;

use unicode_normalization::UnicodeNormalization;

/// A piece of a prompt: text still to tokenise, or an added token's id.
pub(super) enum Piece<'a> {
    Text(&'a str),
    Added(u32),
}

/// Cuts added tokens out of `text`, leftmost match first and the longest one there, as the
/// Aho-Corasick automaton in `tokenizers` does.
pub(super) fn split_added<'a>(text: &'a str, added: &[(String, u32)]) -> Vec<Piece<'a>> {
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
pub(super) fn normalize(text: &str) -> String {
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

pub(super) fn char_to_byte() -> &'static HashMap<char, u8> {
    static MAP: OnceLock<HashMap<char, u8>> = OnceLock::new();
    MAP.get_or_init(|| {
        (0..=255u8)
            .map(|b| (byte_to_char()[b as usize], b))
            .collect()
    })
}
