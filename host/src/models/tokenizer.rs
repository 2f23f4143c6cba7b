//! The checkpoint's `tokenizer.json`, through the `tokenizers` crate.

use std::path::Path;

use super::error::ModelError;

/// A loaded tokenizer.
#[derive(Clone)]
pub struct Tokenizer(tokenizers::Tokenizer);

impl Tokenizer {
    /// `dir/tokenizer.json`, or `None` if the folder has none.
    pub fn load(dir: &Path) -> Result<Option<Tokenizer>, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Ok(None);
        }
        tokenizers::Tokenizer::from_file(&path)
            .map(|t| Some(Tokenizer(t)))
            .map_err(|e| ModelError::Config {
                file: path.display().to_string(),
                message: e.to_string(),
            })
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, ModelError> {
        let enc = self
            .0
            .encode(text, false)
            .map_err(|e| ModelError::Input(format!("cannot tokenize: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// The text of a sequence of token ids.
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
        self.0.decode(&ids, false).unwrap_or_default()
    }

    /// The text of one token id.
    pub fn token(&self, id: i64) -> String {
        u32::try_from(id)
            .ok()
            .and_then(|i| self.0.decode(&[i], false).ok())
            .unwrap_or_else(|| format!("<{id}>"))
    }
}
