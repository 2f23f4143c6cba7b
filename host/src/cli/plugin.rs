//! `flexmodel plugin ...`: packing, inspecting, signing, verifying,
//! publishing, pulling and locking hook plugins (see `flexmodel::package`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use flexmodel::hooks::{Runtime, RuntimeConfig};
use flexmodel::package::lock::Lockfile;
use flexmodel::package::pack::{PluginToml, pack};
use flexmodel::package::reference::{PackageRef, PluginSource};
use flexmodel::package::registry::{self, Registry};
use flexmodel::package::{TrustPolicy, inspect, sign};

use super::PluginArgs;

#[derive(Subcommand)]
pub enum PluginCmd {
    /// Write identity and manifest into a component: the standard metadata
    /// and a `flexmodel-manifest` section (what plugin.toml leaves out
    /// comes from the plugin's own info).
    Pack {
        input: PathBuf,
        /// plugin.toml (at least `name = "namespace:name"`).
        #[arg(long, required_unless_present = "namespace")]
        manifest: Option<PathBuf>,
        /// Without --manifest: the namespace; everything else from the
        /// plugin's info.
        #[arg(long)]
        namespace: Option<String>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Show everything a component says about itself, with its SHA-256.
    Inspect {
        input: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write a new Ed25519 key pair: KEY (secret, 0600) and KEY.pub.
    Keygen {
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Sign a component (the last step: any later change breaks it).
    Sign {
        input: PathBuf,
        /// Secret key (ours, or an OpenSSH ed25519 key).
        #[arg(long)]
        key: PathBuf,
        /// Default: sign in place.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Check a component against a trust policy.
    Verify {
        input: PathBuf,
        #[arg(long)]
        trust: PathBuf,
    },
    /// Publish to an OCI registry: REGISTRY/NAMESPACE/NAME:VERSION.
    Publish {
        input: PathBuf,
        target: String,
        #[arg(long)]
        insecure: bool,
    },
    /// Pull namespace:name@version (or @sha256:<manifest digest>) into the
    /// local cache, verified against the trust policy first.
    Pull {
        reference: String,
        /// Also copy the component here.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        plugins: PluginArgs,
    },
    /// Pin references to their digests in the lockfile (flexmodel.lock).
    Lock {
        references: Vec<String>,
        #[command(flatten)]
        plugins: PluginArgs,
    },
}

fn runtime() -> Result<std::sync::Arc<Runtime>> {
    Ok(Runtime::new(RuntimeConfig::default())?)
}

fn read(p: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn write(p: &PathBuf, bytes: &[u8]) -> Result<()> {
    std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))
}

pub fn plugin(cmd: &PluginCmd) -> Result<()> {
    match cmd {
        PluginCmd::Pack {
            input,
            manifest,
            namespace,
            output,
        } => {
            let bytes = read(input)?;
            let rt = runtime()?;
            let toml = match (manifest, namespace) {
                (Some(m), _) => PluginToml::read(m)?,
                (None, Some(ns)) => PluginToml {
                    name: format!("{ns}:{}", rt.load(&bytes)?.info.name),
                    ..PluginToml::default()
                },
                (None, None) => bail!("give --manifest plugin.toml or --namespace"),
            };
            let out = pack(&rt, &bytes, &toml)?;
            write(output, &out)?;
            println!(
                "packed {} -> {} ({})",
                input.display(),
                output.display(),
                flexmodel::package::digest(&out)
            );
        }
        PluginCmd::Inspect { input, json } => {
            let bytes = read(input)?;
            let i = inspect::inspect(&bytes)?;
            let info = runtime()?.load(&bytes).map(|p| p.info.clone());
            if *json {
                let mut v = serde_json::to_value(&i)?;
                v["info"] = match &info {
                    Ok(info) => serde_json::to_value(info)?,
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                };
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_inspection(&i, info.as_ref().ok());
            }
        }
        PluginCmd::Keygen { output } => {
            let pk = sign::keygen(output)?;
            println!(
                "wrote {} (secret) and {} (key id {})",
                output.display(),
                sign::pub_path(output).display(),
                sign::key_id(&pk)
            );
        }
        PluginCmd::Sign { input, key, output } => {
            let sk = sign::read_secret(key)?;
            let signed = sign::sign(&read(input)?, &sk)?;
            let out = output.as_ref().unwrap_or(input);
            write(out, &signed)?;
            println!(
                "signed {} ({})",
                out.display(),
                flexmodel::package::digest(&signed)
            );
        }
        PluginCmd::Verify { input, trust } => {
            let policy = TrustPolicy::load(trust)?;
            let v = policy.check(&read(input)?, &input.display().to_string())?;
            match &v.signed_by {
                Some(k) => println!(
                    "ok: {} signed by {}",
                    v.package.as_deref().unwrap_or("(no manifest)"),
                    k.display()
                ),
                None => println!(
                    "ok: {} unsigned, allowed by policy {:?}",
                    v.package.as_deref().unwrap_or("(no manifest)"),
                    v.policy
                ),
            }
        }
        PluginCmd::Publish {
            input,
            target,
            insecure,
        } => {
            let (repo_part, tag) = target
                .rsplit_once(':')
                .filter(|(r, t)| r.contains('/') && !t.contains('/'))
                .with_context(|| format!("{target:?}: expected REGISTRY/NAMESPACE/NAME:VERSION"))?;
            let (host, repository) = repo_part
                .split_once('/')
                .with_context(|| format!("{target:?}: expected REGISTRY/NAMESPACE/NAME:VERSION"))?;
            let bytes = read(input)?;
            let reg = Registry::parse(host)?;
            let p = registry::publish(&bytes, &reg, repository, tag, *insecure)?;
            println!(
                "published {} (manifest {}, component {})",
                p.reference, p.manifest_digest, p.digest
            );
        }
        PluginCmd::Pull {
            reference,
            output,
            plugins,
        } => {
            let r = PackageRef::parse(reference)?;
            let resolved = plugins.resolver()?.resolve(&PluginSource::Package(r))?;
            if let Some(o) = output {
                write(o, &resolved.bytes)?;
            }
            println!("pulled {reference} ({})", resolved.digest);
        }
        PluginCmd::Lock {
            references,
            plugins,
        } => {
            let mut lock = Lockfile::read(&plugins.lock)?.unwrap_or_default();
            let resolver = plugins.resolver()?;
            for reference in references {
                let r = PackageRef::parse(reference)?;
                let (_, entry) = resolver
                    .fetch(&r)
                    .with_context(|| format!("locking {reference}"))?;
                println!("{reference} -> {}", entry.digest);
                lock.pin(entry);
            }
            lock.write(&plugins.lock)?;
            println!("wrote {}", plugins.lock.display());
        }
    }
    Ok(())
}

fn print_inspection(i: &inspect::Inspection, info: Option<&flexmodel::hooks::PluginInfo>) {
    println!("sha256       {}", i.sha256.trim_start_matches("sha256:"));
    println!("bytes        {}", i.bytes);
    let m = &i.metadata;
    for (k, v) in [
        ("name", &m.name),
        ("version", &m.version),
        ("description", &m.description),
        ("authors", &m.authors),
        ("licenses", &m.licenses),
        ("source", &m.source),
        ("homepage", &m.homepage),
        ("revision", &m.revision),
    ] {
        if let Some(v) = v {
            println!("{k:<12} {v}");
        }
    }
    match &i.manifest {
        Some(m) => {
            println!("package      {}@{}", m.name, m.version);
            println!("contract     {}", m.contract);
            println!("hook points  {}", m.hook_points.join(", "));
            println!("edit mode    {:?}", m.edit_mode);
            if let Some(s) = &m.config_schema {
                println!("config       {s}");
            }
            println!(
                "resources    {}",
                serde_json::to_string(&m.resources).unwrap_or_default()
            );
        }
        None => println!("manifest     (none: not packed)"),
    }
    println!(
        "signature    {}{}",
        i.signature.state,
        if i.signature.key_ids.is_empty() {
            String::new()
        } else {
            format!(" (key id {})", i.signature.key_ids.join(", "))
        }
    );
    if let Some(info) = info {
        println!(
            "info         {}@{} edits={} points={:?}",
            info.name, info.version, info.edits, info.hook_points
        );
    }
    println!("imports      {}", i.imports.join(", "));
    println!("exports      {}", i.exports.join(", "));
}
