//! `flexmodel inspect`: the model's hook points with their shapes.

use anyhow::{Context, Result, bail};
use flexmodel::models::{Model, parse_dtype};

use super::ModelArgs;

#[derive(clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sequence length for the shapes.
    #[arg(long, default_value_t = 8)]
    pub seq_len: i64,
    /// Batch size for the shapes.
    #[arg(long, default_value_t = 1)]
    pub batch: i64,
    /// Machine-readable output (one JSON array).
    #[arg(long)]
    pub json: bool,
}

pub fn inspect(a: &InspectArgs) -> Result<()> {
    let (seq, batch) = (a.seq_len, a.batch);
    if seq < 1 || batch < 1 {
        bail!("--seq-len and --batch must be at least 1");
    }
    let m = Model::load(
        &a.model.model,
        parse_dtype(&a.model.dtype)?,
        tch::Device::Cpu,
    )
    .with_context(|| format!("loading {}", a.model.model.display()))?;
    let points = m.points(batch, seq);
    if a.json {
        println!("{}", serde_json::to_string(&points)?);
        return Ok(());
    }
    println!(
        "{} ({} hook points, shapes for batch {batch} x {seq} tokens)",
        m.architecture(),
        points.len()
    );
    let w = points.iter().map(|p| p.name.len()).max().unwrap_or(10);
    let wa = points
        .iter()
        .map(|p| p.alias.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!("{:<w$}  {:<wa$}  shape", "hook point", "alias");
    for p in &points {
        println!("{:<w$}  {:<wa$}  {:?}", p.name, p.alias, p.shape);
    }
    Ok(())
}
