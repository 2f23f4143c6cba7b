//! Prompts from the command line or a JSONL file, as token ids.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use flexmodel::models::Tokenizer;

pub use flexmodel::harvest::Doc as Prompt;

/// The prompts of a JSONL file (`flexmodel::harvest::read_docs`: a string,
/// {"prompt": ...}, {"text": ...} or {"token_ids": [...]} per line).
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    Ok(flexmodel::harvest::read_docs(path)?)
}

pub fn token_ids(p: &Prompt, tok: Option<&Tokenizer>, vocab: i64) -> Result<Vec<i64>> {
    let ids = match p {
        Prompt::Ids(ids) => ids.clone(),
        Prompt::Text(t) => tok
            .ok_or_else(|| anyhow!("the model folder has no tokenizer.json: pass --token-ids"))?
            .encode(t)?,
    };
    if ids.is_empty() {
        bail!("empty prompt");
    }
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i >= vocab) {
        bail!("token id {bad} is outside the vocabulary (0..{vocab})");
    }
    Ok(ids)
}

/// The prompts of a command: `--prompt` (repeatable), `--prompts FILE`, or
/// `--token-ids`.
pub fn collect(
    texts: &[String],
    file: Option<&Path>,
    ids: Option<&Vec<i64>>,
) -> Result<Vec<Prompt>> {
    let mut v: Vec<Prompt> = texts.iter().cloned().map(Prompt::Text).collect();
    if let Some(f) = file {
        v.extend(read_prompts(f)?);
    }
    if let Some(ids) = ids {
        v.push(Prompt::Ids(ids.clone()));
    }
    if v.is_empty() {
        bail!("give --prompt, --prompts or --token-ids");
    }
    Ok(v)
}
