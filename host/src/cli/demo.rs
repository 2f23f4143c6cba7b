//! `flexmodel demo`: the built-in example. Residual-stream norms per layer,
//! and how ablating attention heads changes the next-token predictions.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use flexmodel::api::{ForwardOutput, Groups};
use flexmodel::hooks::{Runtime, RuntimeConfig};
use tch::{Kind, Tensor};

use super::ModelArgs;
use super::show::{show, top_k};

#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder with the example plugins (retrieve.wasm, ablate.wasm).
    #[arg(long, default_value = "artifacts/wasm")]
    pub plugins: PathBuf,
    #[arg(
        long,
        default_value = "Interpretability researchers read the insides of large language"
    )]
    pub prompt: String,
}

pub fn demo(a: &DemoArgs) -> Result<()> {
    let (model, plugins, prompt) = (&a.model, &a.plugins, a.prompt.as_str());
    let mut fm = super::load(model, super::MeshArgs::single())?;
    let tok = fm
        .tokenizer()
        .cloned()
        .ok_or_else(|| anyhow!("{} has no tokenizer.json", model.model.display()))?;
    let points = fm.points(1, 1);
    let n_layers = points
        .iter()
        .filter(|p| p.alias.ends_with(".hook_resid_post"))
        .count();
    let heads = points
        .iter()
        .find(|p| p.alias == "blocks.0.attn.hook_z")
        .map(|p| p.shape[2])
        .unwrap_or(1);
    let arch = fm.model().map_or("?", |m| m.architecture());
    let rt = Runtime::new(RuntimeConfig::default())?;
    let load = |n: &str| {
        let p = plugins.join(format!("{n}.wasm"));
        rt.load_file(&p)
            .with_context(|| format!("loading {} (run scripts/build-guests.sh)", p.display()))
    };
    let retrieve = load("retrieve")?;
    let ablate = load("ablate")?;
    fm.register_wasm(
        &retrieve,
        "blocks.*.hook_resid_post",
        r#"{"slice": [null, -1]}"#,
        &["probe"],
    )?;
    let half: Vec<i64> = (0..heads / 2).collect();
    let cfg = serde_json::json!({ "heads": half }).to_string();
    fm.register_wasm(&ablate, "blocks.*.attn.hook_z", &cfg, &["ablation"])?;

    let ids = tok.encode(prompt)?;
    let t = Tensor::from_slice(&ids).unsqueeze(0);
    println!(
        "model: {} ({arch}, {n_layers} layers, {heads} heads), random weights made at setup",
        model.model.display()
    );
    println!("prompt: {prompt:?} -> {} tokens\n", ids.len());
    let clean = fm
        .forward(&t, &Groups::except(["ablation"]))
        .map_err(|e| anyhow!("{e}"))?;
    let ablated = fm.forward(&t, &Groups::All).map_err(|e| anyhow!("{e}"))?;
    print_norms(&clean, &ablated);
    println!(
        "\ntop next tokens, clean:   {}",
        show(&top_k(&clean.logits, 5, Some(&tok)))
    );
    println!("ablating heads {half:?} in every layer (ablate.wasm at blocks.*.attn.hook_z):");
    println!(
        "top next tokens, ablated: {}",
        show(&top_k(&ablated.logits, 5, Some(&tok)))
    );
    let p = clean.logits.select(1, -1).softmax(-1, Kind::Float);
    let q = ablated.logits.select(1, -1).softmax(-1, Kind::Float);
    let kl = (&p * (p.log() - q.log()))
        .sum(Kind::Double)
        .double_value(&[]);
    println!("KL(clean || ablated) at the next token: {kl:.5} nats");
    Ok(())
}

/// Each layer's residual-stream norm at the last token, clean and ablated.
fn print_norms(clean: &ForwardOutput, ablated: &ForwardOutput) {
    println!("residual stream at the last token (retrieved by retrieve.wasm, sandboxed):");
    println!("{:<8} {:>12} {:>18}", "layer", "|resid|", "|resid| ablated");
    let mut keys: Vec<&String> = clean.outputs.keys().collect();
    keys.sort_by_key(|k| {
        k.rsplit('.')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    });
    for k in keys {
        let a = clean.outputs[k]
            .to_kind(Kind::Double)
            .norm()
            .double_value(&[]);
        let b = ablated
            .outputs
            .get(k)
            .map(|t| t.to_kind(Kind::Double).norm().double_value(&[]))
            .unwrap_or(f64::NAN);
        println!(
            "{:<8} {:>12.4} {:>18.4}",
            k.rsplit('.').next().unwrap_or(k),
            a,
            b
        );
    }
}
