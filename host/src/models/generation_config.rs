//! The model's end-of-sequence tokens, as transformers' `generate` finds
//! them: `eos_token_id` of `generation_config.json`, else of `config.json`
//! (an id or a list of ids).

use std::path::Path;

fn ids(v: &serde_json::Value) -> Option<Vec<i64>> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().map(|i| vec![i]),
        serde_json::Value::Array(a) => Some(a.iter().filter_map(|x| x.as_i64()).collect()),
        _ => None,
    }
}

fn from_file(path: &Path) -> Option<Vec<i64>> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    ids(v.get("eos_token_id")?)
}

/// The end-of-sequence token ids of the model in `dir` (empty if neither
/// file names one).
pub fn eos_tokens(dir: &Path) -> Vec<i64> {
    from_file(&dir.join("generation_config.json"))
        .or_else(|| from_file(&dir.join("config.json")))
        .unwrap_or_default()
}
