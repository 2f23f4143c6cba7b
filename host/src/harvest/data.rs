//! The documents of a harvest, tokenised and cut into rows of at most
//! `context` tokens (a longer document continues in the next row; no token
//! is dropped), with each row's document and first position.

use std::io::BufRead;
use std::path::Path;

use super::HarvestError;
use crate::models::Tokenizer;

/// One row of the stream: `ids` of document `doc` from position `start`.
#[derive(Debug, Clone)]
pub struct Row {
    pub doc: i64,
    pub start: i64,
    pub ids: Vec<i64>,
}

/// A document or prompt as a file gives it: text, or token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Doc {
    Text(String),
    Ids(Vec<i64>),
}

/// One JSON line: a string, `{"text": ...}`, `{"prompt": ...}` or
/// `{"token_ids": [...]}`; `at` names the line in errors.
fn json_doc(line: &str, at: &str) -> Result<Doc, HarvestError> {
    let bad = |m: &str| HarvestError::Input(format!("{at}: {m}"));
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| bad(&format!("not JSON: {e}")))?;
    match &v {
        serde_json::Value::String(s) => Ok(Doc::Text(s.clone())),
        serde_json::Value::Object(o) => {
            match (o.get("text").or(o.get("prompt")), o.get("token_ids")) {
                (Some(serde_json::Value::String(s)), _) => Ok(Doc::Text(s.clone())),
                (_, Some(serde_json::Value::Array(a))) => a
                    .iter()
                    .map(|x| x.as_i64().ok_or_else(|| bad("token ids must be integers")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Doc::Ids),
                _ => Err(bad("expected \"text\", \"prompt\" or \"token_ids\"")),
            }
        }
        _ => Err(bad("expected a string or an object")),
    }
}

/// The documents of `path`, in order: `.jsonl`, one JSON line each (see
/// [`json_doc`]); any other file, one per non-empty line of text. An empty
/// file is an error.
pub fn read_docs(path: &Path) -> Result<Vec<Doc>, HarvestError> {
    let f = std::fs::File::open(path).map_err(|e| HarvestError::io(path, e))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut docs = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| HarvestError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        docs.push(if jsonl {
            json_doc(&line, &format!("{}:{}", path.display(), i + 1))?
        } else {
            Doc::Text(line)
        });
    }
    if docs.is_empty() {
        return Err(HarvestError::Input(format!(
            "{} holds no documents",
            path.display()
        )));
    }
    Ok(docs)
}

/// The documents of `path` as token ids (checked against the vocabulary;
/// a document that tokenises to nothing is skipped).
pub fn read(
    path: &Path,
    tok: Option<&Tokenizer>,
    vocab: i64,
) -> Result<Vec<Vec<i64>>, HarvestError> {
    let mut out = Vec::new();
    for (i, d) in read_docs(path)?.into_iter().enumerate() {
        let ids = match d {
            Doc::Ids(ids) => ids,
            Doc::Text(text) => tok
                .ok_or_else(|| {
                    HarvestError::Input(
                        "the model folder has no tokenizer.json: give token_ids".into(),
                    )
                })?
                .encode(&text)
                .map_err(|e| HarvestError::Input(format!("document {i}: {e}")))?,
        };
        if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(HarvestError::Input(format!(
                "document {i}: token id {bad} is outside 0..{vocab}"
            )));
        }
        if !ids.is_empty() {
            out.push(ids);
        }
    }
    if out.is_empty() {
        return Err(HarvestError::Input(format!(
            "{} holds no documents",
            path.display()
        )));
    }
    Ok(out)
}

/// The rows of `docs` cut at `context` tokens.
pub fn rows(docs: &[Vec<i64>], context: usize) -> Vec<Row> {
    let mut out = Vec::new();
    for (d, ids) in docs.iter().enumerate() {
        for (c, chunk) in ids.chunks(context.max(1)).enumerate() {
            out.push(Row {
                doc: d as i64,
                start: (c * context) as i64,
                ids: chunk.to_vec(),
            });
        }
    }
    out
}

/// Batches this many apart at most are reordered (see [`bucketed`]).
const WINDOW_BATCHES: usize = 16;

/// `rows` reordered to cut padding: within each window of
/// `WINDOW_BATCHES` batches, longest first, so that a batch holds rows of
/// similar lengths (a deterministic order: a rerun resumes in it). Each
/// token keeps its `doc_index` and `position`, so the shards' order does
/// not matter to their readers.
pub fn bucketed(mut rows: Vec<Row>, batch_size: usize) -> Vec<Row> {
    for w in rows.chunks_mut(batch_size.max(1) * WINDOW_BATCHES) {
        w.sort_by_key(|r| std::cmp::Reverse(r.ids.len()));
    }
    rows
}
