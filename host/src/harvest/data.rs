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

/// Documents of `path`: `.txt`, one per non-empty line; `.jsonl`, one per
/// line: a string, `{"text": ...}`, `{"prompt": ...}` or `{"token_ids": [...]}`.
pub fn read(
    path: &Path,
    tok: Option<&Tokenizer>,
    vocab: i64,
) -> Result<Vec<Vec<i64>>, HarvestError> {
    let f = std::fs::File::open(path).map_err(|e| HarvestError::io(path, e))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut docs = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| HarvestError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let text_or_ids = if jsonl {
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| HarvestError::Input(format!("{}: not JSON: {e}", at())))?;
            match &v {
                serde_json::Value::String(s) => Err(s.clone()),
                serde_json::Value::Object(o) => {
                    match (o.get("text").or(o.get("prompt")), o.get("token_ids")) {
                        (Some(serde_json::Value::String(s)), _) => Err(s.clone()),
                        (_, Some(serde_json::Value::Array(a))) => Ok(a
                            .iter()
                            .map(|x| {
                                x.as_i64().ok_or_else(|| {
                                    HarvestError::Input(format!(
                                        "{}: token ids must be integers",
                                        at()
                                    ))
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()?),
                        _ => {
                            return Err(HarvestError::Input(format!(
                                "{}: expected \"text\", \"prompt\" or \"token_ids\"",
                                at()
                            )));
                        }
                    }
                }
                _ => {
                    return Err(HarvestError::Input(format!(
                        "{}: expected a string or an object",
                        at()
                    )));
                }
            }
        } else {
            Err(line)
        };
        let ids = match text_or_ids {
            Ok(ids) => ids,
            Err(text) => tok
                .ok_or_else(|| {
                    HarvestError::Input(
                        "the model folder has no tokenizer.json: give token_ids".into(),
                    )
                })?
                .encode(&text)
                .map_err(|e| HarvestError::Input(format!("{}: {e}", at())))?,
        };
        if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= vocab) {
            return Err(HarvestError::Input(format!(
                "{}: token id {bad} is outside 0..{vocab}",
                at()
            )));
        }
        if !ids.is_empty() {
            docs.push(ids);
        }
    }
    if docs.is_empty() {
        return Err(HarvestError::Input(format!(
            "{} holds no documents",
            path.display()
        )));
    }
    Ok(docs)
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
