//! `flexmodel-guest`: what building a HookFunction in C or Zig needs beyond
//! the compiler, from the same crates the Rust toolchain uses (pinned in
//! Cargo.lock, so two clean builds give the same bytes):
//!
//! - `c-bindings`: the C bindings of a world in `wit/` (wit-bindgen's C
//!   generator: `<world>.h`, `<world>.c` and `<world>_component_type.o`,
//!   the world's type information to link in; generated, never edited);
//! - `componentize`: a core module (wasm32-wasi, from clang or zig) made a
//!   component of the world: the type information embedded unless linked
//!   in already (wit-component), WASI preview1 imports adapted to preview2
//!   (the reactor adapter of the wasmtime release the host embeds).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use wit_bindgen_core::wit_parser::{Resolve, WorldId};

#[derive(Parser)]
#[command(
    name = "flexmodel-guest",
    about = "Build tools for FlexModel HookFunctions in C and Zig"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the C bindings (`<world>.h`, `<world>.c`) of a world.
    CBindings {
        /// The WIT folder.
        #[arg(long, default_value = "wit")]
        wit: PathBuf,
        #[arg(long, default_value = "hook-plugin")]
        world: String,
        /// Folder for the generated files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a core module a component of a world.
    Componentize {
        /// The core module (wasm32-wasi).
        module: PathBuf,
        #[arg(long, default_value = "wit")]
        wit: PathBuf,
        #[arg(long, default_value = "hook-plugin")]
        world: String,
        #[arg(short, long)]
        out: PathBuf,
    },
}

fn world(wit: &Path, name: &str) -> Result<(Resolve, WorldId)> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_dir(wit)
        .with_context(|| format!("reading {}", wit.display()))?;
    let id = resolve
        .select_world(&[pkg], Some(name))
        .with_context(|| format!("world {name} in {}", wit.display()))?;
    Ok((resolve, id))
}

/// Whether a core module carries a `component-type` custom section.
fn has_component_type(module: &[u8]) -> bool {
    // Sections after the 8-byte header: id, LEB128 size, payload; a custom
    // section's payload starts with its LEB128-prefixed name.
    fn leb(b: &[u8], at: &mut usize) -> Option<usize> {
        let (mut v, mut shift) = (0usize, 0);
        loop {
            let byte = *b.get(*at)?;
            *at += 1;
            v |= ((byte & 0x7f) as usize) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
            shift += 7;
            if shift > 35 {
                return None;
            }
        }
    }
    let mut at = 8;
    while at < module.len() {
        let id = module[at];
        at += 1;
        let Some(size) = leb(module, &mut at) else {
            return false;
        };
        let end = at.saturating_add(size);
        if id == 0 {
            let mut p = at;
            if let Some(n) = leb(module, &mut p)
                && module
                    .get(p..p + n)
                    .is_some_and(|name| name.starts_with(b"component-type"))
            {
                return true;
            }
        }
        at = end;
    }
    false
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::CBindings { wit, world: w, out } => {
            let (mut resolve, id) = world(&wit, &w)?;
            let opts = wit_bindgen_c::Opts {
                // A borrowed activation is dropped when the export returns
                // (the component model traps on one left undropped).
                autodrop_borrows: wit_bindgen_c::Enabled::Yes,
                ..Default::default()
            };
            let mut files = wit_bindgen_core::Files::default();
            opts.build().generate(&mut resolve, id, &mut files)?;
            std::fs::create_dir_all(&out).with_context(|| format!("{}", out.display()))?;
            for (name, bytes) in files.iter() {
                let p = out.join(name);
                std::fs::write(&p, bytes).with_context(|| format!("{}", p.display()))?;
            }
        }
        Cmd::Componentize {
            module,
            wit,
            world: w,
            out,
        } => {
            let (resolve, id) = world(&wit, &w)?;
            let mut bytes =
                std::fs::read(&module).with_context(|| format!("{}", module.display()))?;
            if bytes.get(..4) != Some(b"\0asm") {
                bail!("{} is not a WebAssembly module", module.display());
            }
            if !has_component_type(&bytes) {
                wit_component::embed_component_metadata(
                    &mut bytes,
                    &resolve,
                    id,
                    wit_component::StringEncoding::UTF8,
                )?;
            }
            use wasi_preview1_component_adapter_provider as adapter;
            let component = wit_component::ComponentEncoder::default()
                .module(&bytes)?
                .validate(true)
                .adapter(
                    adapter::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                    adapter::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
                )?
                .encode()
                .with_context(|| format!("componentizing {}", module.display()))?;
            std::fs::write(&out, component).with_context(|| format!("{}", out.display()))?;
        }
    }
    Ok(())
}
