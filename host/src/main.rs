//! `flexmodel`: a thin command line over the `flexmodel` library. It parses
//! and dispatches; each subcommand lives in its own module under `cli/`.
//!
//! ```text
//! flexmodel inspect --model DIR [--seq-len N] [--batch B] [--json]
//! flexmodel run --model DIR (--prompt TEXT | --prompts FILE.jsonl | --token-ids 1,2,3)
//!               [--hook PLUGIN.wasm@PATTERN[=CONFIG_JSON]]... [--save OUT.safetensors]
//!               [--hook namespace:name@VERSION@PATTERN[=CONFIG_JSON]] [--trust trust.toml] [--locked]
//!               [--stop-at POINT] [--tp N] [--pp N] [--dp N]
//! flexmodel generate --model DIR --prompt TEXT [--max-new-tokens N] [--hook ...]
//! flexmodel demo --model DIR --plugins DIR
//! flexmodel plugin pack|inspect|keygen|sign|verify|publish|pull|lock ...
//! ```
//! Any error ends the process with exit code 1 and a one-line reason on stderr.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "flexmodel",
    version,
    about = "Read and edit LLM internals with sandboxed WebAssembly hooks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the model's hook points with their shapes.
    Inspect(cli::inspect::InspectArgs),
    /// Run the forward with hooks; print next-token predictions; save outputs.
    Run(cli::run::RunArgs),
    /// Generate text (greedy, or sampled with --temperature), hooks firing at
    /// every step; tokens are printed as they come.
    Generate(cli::generate::GenerateArgs),
    /// The built-in example on SmolLM2: a logit lens over the layers, and how
    /// a steering vector and an ablation change the continuation.
    Demo(cli::demo::DemoArgs),
    /// Activations of a dataset to disk (safetensors shards of real tokens,
    /// a manifest; resumable), for SAE training and probing.
    Harvest(cli::harvest::HarvestArgs),
    /// Share hook plugins: pack, inspect, keygen, sign, verify, publish,
    /// pull, lock.
    #[command(subcommand)]
    Plugin(cli::plugin::PluginCmd),
    /// Serve the model to many tenants: an HTTP/JSON API of jobs with
    /// sandboxed hooks (`serve keys add|list|revoke` manages API keys).
    Serve(cli::serve::ServeArgs),
    /// Run a job on a `flexmodel serve` server and save its result.
    #[command(subcommand)]
    Remote(cli::remote::RemoteCmd),
}

fn main() {
    let cli = Cli::parse();
    // Keep large activation buffers warm across forwards (see tune_allocator).
    if std::env::var_os("FLEXMODEL_NO_MALLOPT").is_none() {
        flexmodel::tune_allocator();
    }
    let r = match &cli.cmd {
        Cmd::Inspect(a) => cli::inspect::inspect(a),
        Cmd::Run(a) => cli::run::run(a),
        Cmd::Generate(a) => cli::generate::generate(a),
        Cmd::Demo(a) => cli::demo::demo(a),
        Cmd::Harvest(a) => cli::harvest::harvest(a),
        Cmd::Plugin(c) => cli::plugin::plugin(c),
        Cmd::Serve(a) => cli::serve::serve(a),
        Cmd::Remote(c) => cli::remote::remote(c),
    };
    if let Err(e) = r {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
