//! Real English text available offline on every Debian machine: the license
//! texts of `base-files` in `/usr/share/common-licenses` (GPL, LGPL, Apache,
//! Artistic, ...), as paragraphs (documents split at blank lines).

use anyhow::{Context, Result, bail};

pub const SOURCE: &str = "/usr/share/common-licenses";

/// The paragraphs of every file in [`SOURCE`], in file-name order.
pub fn paragraphs() -> Result<Vec<String>> {
    let mut files: Vec<_> = std::fs::read_dir(SOURCE)
        .with_context(|| format!("reading {SOURCE} (Debian base-files)"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for p in text.split("\n\n") {
            let p = p.split_whitespace().collect::<Vec<_>>().join(" ");
            if p.len() > 40 {
                out.push(p);
            }
        }
    }
    if out.is_empty() {
        bail!("no text in {SOURCE}");
    }
    Ok(out)
}
