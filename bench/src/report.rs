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

/// CPU model, cores and memory of this machine, for the benchmark headers.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1048576.0)
        .unwrap_or(0.0);
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM")
}
