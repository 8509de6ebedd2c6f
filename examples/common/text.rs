//! The sentiment model's text pipeline, shared by `examples/sentiment.rs` (training) and the
//! browser page (`web/`, scoring a typed review) so that both see the same token ids.

use std::collections::HashMap;

/// The padding id (row 0 of the embedding table, kept zero).
pub const PAD: u32 = 0;
/// The id of a word outside the vocabulary.
pub const UNK: u32 = 1;

/// Lower-case, `<br />` stripped, words `[a-z0-9]+('[a-z]+)?` and `!` / `?` (as the PyTorch script).
pub fn tokens(text: &str) -> Vec<String> {
    let t = text.replace("<br />", " ").to_lowercase();
    let c: Vec<char> = t.chars().collect();
    let word = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if word(c[i]) {
            let s = i;
            while i < c.len() && word(c[i]) {
                i += 1;
            }
            if i + 1 < c.len() && c[i] == '\'' && c[i + 1].is_ascii_lowercase() {
                i += 1;
                while i < c.len() && c[i].is_ascii_lowercase() {
                    i += 1;
                }
            }
            out.push(c[s..i].iter().collect());
        } else {
            if c[i] == '!' || c[i] == '?' {
                out.push(c[i].to_string());
            }
            i += 1;
        }
    }
    out
}

/// A review's token ids: each word's vocabulary id (`UNK` if it has none), its last `max_len`
/// only; an empty review is one `UNK`.
pub fn encode(toks: &[String], stoi: &HashMap<&str, u32>, max_len: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = toks.iter().map(|t| *stoi.get(t.as_str()).unwrap_or(&UNK)).collect();
    if ids.is_empty() {
        ids.push(UNK);
    }
    ids.split_off(ids.len().saturating_sub(max_len))
}
