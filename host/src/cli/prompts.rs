//! Prompts from the command line or a JSONL file, as token ids.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use flexmodel::models::Tokenizer;

pub enum Prompt {
    Text(String),
    Ids(Vec<i64>),
}

pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut v = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let j: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        v.push(match j {
            serde_json::Value::String(s) => Prompt::Text(s),
            serde_json::Value::Object(o) => {
                if let Some(s) = o.get("prompt").and_then(|s| s.as_str()) {
                    Prompt::Text(s.to_string())
                } else if let Some(ids) = o.get("token_ids").and_then(|a| a.as_array()) {
                    Prompt::Ids(
                        ids.iter()
                            .map(|x| {
                                x.as_i64().ok_or_else(|| {
                                    anyhow!(
                                        "{}:{}: token ids must be integers",
                                        path.display(),
                                        i + 1
                                    )
                                })
                            })
                            .collect::<Result<_>>()?,
                    )
                } else {
                    bail!(
                        "{}:{}: expected {{\"prompt\": ...}} or {{\"token_ids\": [...]}}",
                        path.display(),
                        i + 1
                    )
                }
            }
            _ => bail!(
                "{}:{}: expected a string or an object",
                path.display(),
                i + 1
            ),
        });
    }
    if v.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(v)
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
