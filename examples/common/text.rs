//! The sentiment model's text pipeline, shared by `examples/sentiment.rs` (training), the
//! browser page (`web/`, scoring a typed review) and the burn example (`burn/examples`), so that
//! all see the same token ids and batches. Plain std: errors are strings.

use std::collections::HashMap;
use std::path::Path;

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

/// `text,label` CSV with every text quoted (`""` inside), one record per line: each review's
/// tokens and label.
pub fn read_reviews(path: &Path) -> Result<Vec<(Vec<String>, f32)>, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let bad = || format!("{name}:{}: not a `\"text\",label` record", n + 1);
        let (body, label) = line.rsplit_once(',').ok_or_else(bad)?;
        let body = body.strip_prefix('"').and_then(|b| b.strip_suffix('"')).ok_or_else(bad)?;
        let label: f32 = label.trim().parse().map_err(|_| bad())?;
        out.push((tokens(&body.replace("\"\"", "\"")), label));
    }
    Ok(out)
}

/// The IMDB sample encoded: the vocabulary (`<pad>`, `<unk>`, then the training words seen at
/// least `min_count` times, sorted) and each review's last `max_len` token ids with its label.
pub struct Corpus {
    pub itos: Vec<String>,
    pub train: Vec<(Vec<u32>, f32)>,
    pub test: Vec<(Vec<u32>, f32)>,
}

/// Reads the sample from `dir` (the first `limit` training reviews, 0: all).
pub fn corpus(dir: &Path, limit: usize, min_count: usize, max_len: usize) -> Result<Corpus, String> {
    let mut train = read_reviews(&dir.join("imdb_reviews_train_1.csv"))?;
    train.extend(read_reviews(&dir.join("imdb_reviews_train_2.csv"))?);
    if limit > 0 {
        train.truncate(limit);
    }
    let test = read_reviews(&dir.join("imdb_reviews_test.csv"))?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (toks, _) in &train {
        for t in toks {
            *counts.entry(t).or_default() += 1;
        }
    }
    let mut words: Vec<&str> = counts.iter().filter(|(_, &c)| c >= min_count).map(|(w, _)| *w).collect();
    words.sort_unstable();
    let mut itos = vec!["<pad>".to_string(), "<unk>".to_string()];
    itos.extend(words.iter().map(|w| w.to_string()));
    let stoi: HashMap<&str, u32> = itos.iter().enumerate().map(|(i, w)| (w.as_str(), i as u32)).collect();
    let train = train.iter().map(|(t, y)| (encode(t, &stoi, max_len), *y)).collect();
    let test = test.iter().map(|(t, y)| (encode(t, &stoi, max_len), *y)).collect();
    Ok(Corpus { itos, train, test })
}

/// GloVe rows (`embed` wide, from the text file at `path`) into `table` `[itos.len(), embed]`
/// where the word has one (the padding and unknown rows untouched); returns how many.
pub fn glove_rows(path: &Path, itos: &[String], embed: usize, table: &mut [f32]) -> Result<usize, String> {
    let index: HashMap<&str, usize> = itos.iter().enumerate().skip(2).map(|(i, w)| (w.as_str(), i)).collect();
    let glove = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut found = 0;
    for line in glove.lines() {
        let mut parts = line.split(' ');
        let Some(&i) = parts.next().and_then(|w| index.get(w)) else { continue };
        let v: Vec<f32> = parts.map(|x| x.parse().unwrap_or(0.0)).collect();
        if v.len() == embed {
            table[i * embed..(i + 1) * embed].copy_from_slice(&v);
            found += 1;
        }
    }
    Ok(found)
}

/// Batches: indices sorted by length (stable), cut into `batch`-sized runs.
pub fn buckets(data: &[(Vec<u32>, f32)], batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| data[i].0.len());
    order.chunks(batch).map(|c| c.to_vec()).collect()
}
