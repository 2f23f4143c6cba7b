//! Shared by the benchmark binaries: rewrite one section of BENCHMARKS.md.

use std::path::Path;

use anyhow::{Context, Result};

/// Replace (or append) the section between `<!-- NAME:begin -->` and
/// `<!-- NAME:end -->` in `path`, keeping the rest of the file.
pub fn write_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\n".to_string());
    let block = format!("{begin}\n{body}{end}\n");
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}{}{}",
                &old[..a],
                block,
                old[b + end.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n\n{block}", old.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}
