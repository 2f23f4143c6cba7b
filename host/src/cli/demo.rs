//! `flexmodel demo`: the built-in example, on a real pretrained model
//! (SmolLM2-135M-Instruct, made by setup). A logit lens over the layers for
//! a factual prompt (at which layer the answer becomes the top prediction;
//! `--plot lens.svg` draws it), then how a steering vector and an ablation,
//! both sandboxed WebAssembly hooks, change the greedy continuation.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use flexmodel::api::{FlexModel, GenerateOptions, Groups};
use flexmodel::hooks::{Runtime, RuntimeConfig};
use flexmodel::models::Tokenizer;
use tch::{Kind, Tensor};

use super::ModelArgs;
use super::lens;

#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder with the example plugins (retrieve, steer, ablate).
    #[arg(long, default_value = "artifacts/wasm")]
    pub plugins: PathBuf,
    #[arg(long, default_value = "The Eiffel Tower is in the city of")]
    pub prompt: String,
    /// The answer whose probability the lens follows.
    #[arg(long, default_value = " Paris")]
    pub target: String,
    /// Steer from the target towards this token: the vector is the
    /// difference of their embeddings.
    #[arg(long, default_value = " Rome")]
    pub steer_to: String,
    /// Steering strength.
    #[arg(long, default_value_t = 40.0)]
    pub alpha: f32,
    /// Block whose output is steered (default: two thirds of the way in).
    #[arg(long)]
    pub steer_layer: Option<usize>,
    #[arg(long, default_value_t = 8)]
    pub new_tokens: usize,
    /// Draw the logit lens to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub fn demo(a: &DemoArgs) -> Result<()> {
    if let Some(p) = &a.plot {
        super::plot::check(p)?;
    }
    let mut fm = super::load(&a.model, super::MeshArgs::single())?;
    let tok = fm
        .tokenizer()
        .cloned()
        .ok_or_else(|| anyhow!("{} has no tokenizer.json", a.model.model.display()))?;
    let points = fm.points(1, 1);
    let n_layers = points
        .iter()
        .filter(|p| p.alias.ends_with(".hook_resid_post"))
        .count();
    let heads = points
        .iter()
        .find(|p| p.alias == "blocks.0.attn.hook_z")
        .map_or(1, |p| p.shape[2]);
    let arch = fm.model().map_or("?", |m| m.architecture());
    let rt = Runtime::new(RuntimeConfig::default())?;
    let load = |n: &str| {
        let p = a.plugins.join(format!("{n}.wasm"));
        rt.load_file(&p)
            .with_context(|| format!("loading {} (run scripts/build-guests.sh)", p.display()))
    };
    let ids = tok.encode(&a.prompt)?;
    let t = Tensor::from_slice(&ids).unsqueeze(0);
    println!(
        "model: {} ({arch}, {n_layers} layers, {heads} heads)",
        a.model.model.display()
    );
    println!("prompt: {:?} ({} tokens)\n", a.prompt, ids.len());

    // 1. The logit lens, from the residual stream each block leaves.
    fm.register_wasm(
        &load("retrieve")?,
        "blocks.*.hook_resid_post",
        r#"{"slice": [null, -1]}"#,
        &["lens"],
    )?;
    let out = fm
        .forward(&t, &Groups::only(["lens"]))
        .map_err(|e| anyhow!("{e}"))?;
    let mut resid: Vec<(usize, Tensor)> = out
        .outputs
        .into_iter()
        .filter_map(|(k, v)| Some((k.rsplit('.').next()?.parse().ok()?, v)))
        .collect();
    resid.sort_by_key(|(i, _)| *i);
    let resid: Vec<Tensor> = resid.into_iter().map(|(_, v)| v).collect();
    let target = lens::token_of(&tok, &a.target)?;
    let model = fm
        .model()
        .ok_or_else(|| anyhow!("the demo runs on one rank"))?;
    let layers = lens::read(model, &resid, target, &tok)?;
    println!(
        "logit lens (retrieve.wasm at blocks.*.hook_resid_post, last token, read through the final norm and LM head):"
    );
    lens::print(&layers, &a.target);
    if let Some(path) = &a.plot {
        super::plot::lens(path, &layers, &a.target, &a.prompt)?;
        println!("plot: {}", path.display());
    }

    // 2. The continuation, clean, steered, ablated.
    let to = lens::token_of(&tok, &a.steer_to)?;
    let vector = embedding_difference(&fm, to, target)?;
    let layer = a.steer_layer.unwrap_or(2 * n_layers / 3);
    let cfg = serde_json::json!({ "vector": vector, "alpha": a.alpha }).to_string();
    fm.register_wasm(
        &load("steer")?,
        &format!("blocks.{layer}.hook_resid_post"),
        &cfg,
        &["steer"],
    )?;
    let half: Vec<i64> = (0..heads / 2).collect();
    let cfg = serde_json::json!({ "heads": half }).to_string();
    fm.register_wasm(
        &load("ablate")?,
        "blocks.*.attn.hook_z",
        &cfg,
        &["ablation"],
    )?;
    println!("\ngreedy continuation ({} tokens):", a.new_tokens);
    let runs = [
        ("clean", Groups::only(Vec::<String>::new())),
        ("steered", Groups::only(["steer"])),
        ("ablated", Groups::only(["ablation"])),
    ];
    for (name, groups) in runs {
        let text = continuation(&mut fm, &t, &groups, a.new_tokens, &tok)?;
        println!("  {name:<8} {:?}", format!("{}{text}", a.prompt));
    }
    println!(
        "steered: steer.wasm adds {} x (E[{:?}] - E[{:?}]) at blocks.{layer}.hook_resid_post; \
         ablated: ablate.wasm zeroes heads {half:?} of every layer (blocks.*.attn.hook_z)",
        a.alpha, a.steer_to, a.target
    );
    Ok(())
}

/// `E[to] - E[from]` from the token embedding table.
fn embedding_difference(fm: &FlexModel, to: i64, from: i64) -> Result<Vec<f32>> {
    let model = fm
        .model()
        .ok_or_else(|| anyhow!("the demo runs on one rank"))?;
    let params = model.parameters();
    let table = params
        .iter()
        .find(|(n, _)| {
            n.ends_with("embed_tokens.weight")
                || n.ends_with("wte.weight")
                || n.ends_with("embed_in.weight")
        })
        .map(|(_, t)| t.shallow_clone())
        .ok_or_else(|| anyhow!("no token embedding table"))?;
    drop(params);
    let v = (table.get(to) - table.get(from)).to_kind(Kind::Float);
    model.release_parameters();
    Ok(Vec::try_from(&v)?)
}

fn continuation(
    fm: &mut FlexModel,
    t: &Tensor,
    groups: &Groups,
    n: usize,
    tok: &Tokenizer,
) -> Result<String> {
    let opts = GenerateOptions {
        max_new_tokens: n,
        eos: fm.eos_tokens().to_vec(),
        ..GenerateOptions::default()
    };
    let g = fm
        .generate(t, groups, &opts, |_, _| {})
        .map_err(|e| anyhow!("{e}"))?;
    Ok(tok.decode(&g.new_tokens[0]))
}
