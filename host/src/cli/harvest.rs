//! `flexmodel harvest`: activations of a dataset streamed to disk
//! ([`flexmodel::harvest`]), with a progress bar in tokens per second.

use std::path::PathBuf;

use anyhow::Result;
use flexmodel::api::Padding;
use flexmodel::harvest::{self, Spec};

use super::{MeshArgs, ModelArgs};

#[derive(clap::Args)]
pub struct HarvestArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Documents: FILE.txt (one per non-empty line) or FILE.jsonl (a string,
    /// {"text": ...}, {"prompt": ...} or {"token_ids": [...]} per line).
    #[arg(long)]
    pub data: PathBuf,
    /// Hook points (names, aliases or patterns), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub points: Vec<String>,
    /// Output folder: shards and manifest.json (rerun to resume).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per row: longer documents continue in the next row.
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    /// Tokens per shard.
    #[arg(long, default_value_t = 65536)]
    pub shard_tokens: usize,
    #[arg(long, default_value = "right")]
    pub padding: Padding,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

pub fn harvest(a: &HarvestArgs) -> Result<()> {
    let mut fm = super::load(&a.model, a.mesh)?;
    let spec = Spec {
        model_dir: a.model.model.clone(),
        data: a.data.clone(),
        points: a.points.clone(),
        out: a.out.clone(),
        batch_size: a.batch_size,
        context: a.context,
        shard_tokens: a.shard_tokens,
        padding: a.padding,
    };
    let root = fm.is_root();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} tokens {per_sec} {elapsed_precise}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if !root {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = std::time::Instant::now();
    let mut first = None;
    let m = harvest::run(&mut fm, &spec, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        first.get_or_insert(done);
    })?;
    bar.finish_and_clear();
    if root {
        let new = m.tokens_done() - first.unwrap_or(m.tokens_done()).min(m.tokens_done());
        let secs = started.elapsed().as_secs_f64();
        println!(
            "harvested {} of {} tokens in {} shards to {} ({} points; {:.0} tokens/s this run)",
            m.tokens_done(),
            m.total_tokens,
            m.shards.len(),
            a.out.display(),
            m.identity.points.len(),
            new as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}
