//! Sharing hook plugins between teams, end to end with the `flexmodel`
//! binary: pack (manifest + standard metadata), inspect, keygen, sign,
//! verify under a trust policy (every refusal), wasmsign2's own verifier,
//! and a real OCI registry (Debian's `docker-registry`, the CNCF
//! distribution registry, started here on a free loopback port with
//! htpasswd auth): publish, pull by tag and by digest, the manifest's media
//! types and annotations, a pulled plugin run by reference giving the same
//! output as the local file, the lockfile and `--locked`, provenance in the
//! output file.

mod cli_common;
mod registry_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cli_common::{bin, models, ok, saved};
use flexmodel_tests::artifacts_dir;
use registry_common::{curl, registry};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fm-sharing-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `flexmodel` with a private plugin cache and the registry's credentials.
fn fm(cache: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env("FLEXMODEL_PLUGIN_CACHE", cache)
        .env("FLEXMODEL_REGISTRY_USER", "acme")
        .env("FLEXMODEL_REGISTRY_PASSWORD", "s3cret")
        .env_remove("FLEXMODEL_REGISTRY")
        .env_remove("FLEXMODEL_REGISTRIES")
        .env("DOCKER_CONFIG", cache.join("no-docker"))
        .output()
        .unwrap()
}

fn err(o: &std::process::Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(e.trim().lines().count(), 1, "one-line error: {e}");
    e
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const PLUGIN_TOML: &str = r#"
name = "acme:scale"
authors = "Acme Interpretability <interp@acme.example>"
licenses = "Apache-2.0"
source = "https://example.invalid/acme/hooks"
revision = "0123abc"

[config_schema]
type = "object"
additionalProperties = false
[config_schema.properties.factor]
type = "number"
[config_schema.properties.slice]
type = "array"

[resources]
fuel_per_call = 2000000000
memory_bytes = 67108864
"#;

/// Pack `scale.wasm` as `acme:scale` into `dir`; its path.
fn packed(dir: &Path, cache: &Path) -> PathBuf {
    std::fs::write(dir.join("plugin.toml"), PLUGIN_TOML).unwrap();
    let out = dir.join("scale.packed.wasm");
    ok(&fm(
        cache,
        &[
            "plugin",
            "pack",
            s(&artifacts_dir().join("scale.wasm")),
            "--manifest",
            s(&dir.join("plugin.toml")),
            "-o",
            s(&out),
        ],
    ));
    out
}

fn trust(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("trust.toml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn pack_inspect_sign_verify_and_every_refusal() {
    let dir = tmp("sign");
    let cache = dir.join("cache");
    let plugin = packed(&dir, &cache);
    let v: serde_json::Value = serde_json::from_str(&ok(&fm(
        &cache,
        &["plugin", "inspect", s(&plugin), "--json"],
    )))
    .unwrap();
    assert_eq!(v["manifest"]["name"], "acme:scale");
    assert_eq!(
        v["manifest"]["contract"],
        format!("flexmodel:hook@{}", flexmodel::hooks::WIT_VERSION)
    );
    assert_eq!(v["manifest"]["edit_mode"], "edits");
    assert_eq!(v["manifest"]["resources"]["memory_bytes"], 67108864);
    assert_eq!(
        v["metadata"]["authors"],
        "Acme Interpretability <interp@acme.example>"
    );
    assert_eq!(v["metadata"]["licenses"], "Apache-2.0");
    assert_eq!(v["metadata"]["revision"], "0123abc");
    assert_eq!(v["info"]["name"], "scale");
    assert_eq!(v["signature"]["state"], "unsigned");
    let bytes = std::fs::read(&plugin).unwrap();
    assert_eq!(v["sha256"], flexmodel::package::digest(&bytes));

    ok(&fm(
        &cache,
        &["plugin", "keygen", "-o", s(&dir.join("acme"))],
    ));
    ok(&fm(
        &cache,
        &["plugin", "keygen", "-o", s(&dir.join("other"))],
    ));
    let e = err(&fm(
        &cache,
        &["plugin", "keygen", "-o", s(&dir.join("acme"))],
    ));
    assert!(e.contains("refusing to overwrite"), "{e}");
    let signed = dir.join("scale.signed.wasm");
    ok(&fm(
        &cache,
        &[
            "plugin",
            "sign",
            s(&plugin),
            "--key",
            s(&dir.join("acme")),
            "-o",
            s(&signed),
        ],
    ));
    let sbytes = std::fs::read(&signed).unwrap();
    // wasmsign2's own verifier accepts our signature.
    let pk = wasmsign2::PublicKey::from_file(dir.join("acme.pub")).unwrap();
    pk.verify(&mut std::io::Cursor::new(&sbytes), None).unwrap();
    let wrong = wasmsign2::PublicKey::from_file(dir.join("other.pub")).unwrap();
    assert!(
        wrong
            .verify(&mut std::io::Cursor::new(&sbytes), None)
            .is_err()
    );

    let t = trust(
        &dir,
        "default = \"require-signed\"\n[namespace.acme]\nkeys = [\"acme.pub\"]\n[namespace.other]\nkeys = [\"other.pub\"]\n",
    );
    let out = ok(&fm(
        &cache,
        &["plugin", "verify", s(&signed), "--trust", s(&t)],
    ));
    assert!(out.contains("signed by"), "{out}");

    let refused = |file: &Path, trust: &Path| {
        err(&fm(
            &cache,
            &["plugin", "verify", s(file), "--trust", s(trust)],
        ))
    };
    // Unsigned.
    assert!(refused(&plugin, &t).contains("unsigned"));
    // Not packed: no namespace.
    let bare = dir.join("bare.wasm");
    std::fs::write(
        &bare,
        flexmodel::package::pack::strip(&bytes, &["flexmodel-manifest"]).unwrap(),
    )
    .unwrap();
    assert!(refused(&bare, &t).contains("no manifest"));
    // Signed by a key trusted for another namespace.
    let by_other = dir.join("by-other.wasm");
    ok(&fm(
        &cache,
        &[
            "plugin",
            "sign",
            s(&plugin),
            "--key",
            s(&dir.join("other")),
            "-o",
            s(&by_other),
        ],
    ));
    let e = refused(&by_other, &t);
    assert!(
        e.contains("trusted for namespace other, not for acme"),
        "{e}"
    );
    // Signed by a key nobody trusts.
    let t2 = trust(
        &dir,
        "default = \"require-signed\"\n[namespace.acme]\nkeys = [\"acme.pub\"]\n",
    );
    let e = refused(&by_other, &t2);
    assert!(e.contains("not trusted"), "{e}");
    // One bit changed anywhere after the signature section.
    for at in [sbytes.len() / 2, sbytes.len() - 1] {
        let mut b = sbytes.clone();
        b[at] ^= 1;
        let f = dir.join("flipped.wasm");
        std::fs::write(&f, &b).unwrap();
        let e = refused(&f, &t);
        assert!(e.contains("changed after signing"), "{e}");
    }
    // An edit after signing (a repack) breaks it: the repack drops the
    // signature, and a manifest edited in place no longer matches.
    let repacked = dir.join("repacked.wasm");
    ok(&fm(
        &cache,
        &[
            "plugin",
            "pack",
            s(&signed),
            "--manifest",
            s(&dir.join("plugin.toml")),
            "-o",
            s(&repacked),
        ],
    ));
    assert!(refused(&repacked, &t).contains("unsigned"));
    let mut edited = sbytes.clone();
    let i = sbytes
        .windows(10)
        .position(|w| w == b"Apache-2.0")
        .expect("licenses in the metadata");
    edited[i..i + 10].copy_from_slice(b"Apache-3.0");
    let f = dir.join("edited.wasm");
    std::fs::write(&f, &edited).unwrap();
    assert!(refused(&f, &t).contains("changed after signing"));
    // OpenSSH ed25519 keys work too: signed with the private key, trusted
    // through the `.pub` line.
    let ssh = dir.join("ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let kg = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f", s(&ssh.join("id"))])
        .status()
        .expect("ssh-keygen (openssh-client; scripts/setup.sh installs it)");
    assert!(kg.success());
    let by_ssh = ssh.join("signed.wasm");
    ok(&fm(
        &cache,
        &[
            "plugin",
            "sign",
            s(&plugin),
            "--key",
            s(&ssh.join("id")),
            "-o",
            s(&by_ssh),
        ],
    ));
    let ssh_trust = trust(
        &ssh,
        "default = \"require-signed\"\n[namespace.acme]\nkeys = [\"id.pub\"]\n",
    );
    ok(&fm(
        &cache,
        &["plugin", "verify", s(&by_ssh), "--trust", s(&ssh_trust)],
    ));
    assert!(refused(&by_ssh, &t).contains("not trusted"));
    // Under allow-unsigned an unsigned plugin passes, a broken signature never.
    let open = trust(&dir, "default = \"allow-unsigned\"\n");
    ok(&fm(
        &cache,
        &["plugin", "verify", s(&plugin), "--trust", s(&open)],
    ));
    assert!(refused(&f, &open).contains("changed after signing"));
    // A per-namespace policy overrides the default.
    let mixed = trust(
        &dir,
        "default = \"allow-unsigned\"\n[namespace.acme]\nkeys = [\"acme.pub\"]\npolicy = \"require-signed\"\n",
    );
    assert!(refused(&plugin, &mixed).contains("unsigned"));

    // `run` takes the policy: refused before anything runs, accepted when signed.
    let model = models().join("gpt2-tiny");
    let run = |file: &Path, config: &str| {
        fm(
            &cache,
            &[
                "run",
                "--model",
                s(&model),
                "--token-ids",
                "1,2,3,4",
                "--hook",
                &format!("{}@transformer.h.0={config}", s(file)),
                "--trust",
                s(&t),
            ],
        )
    };
    assert!(err(&run(&plugin, r#"{"factor":2}"#)).contains("unsigned"));
    // So does `generate`.
    let e = err(&fm(
        &cache,
        &[
            "generate",
            "--model",
            s(&model),
            "--token-ids",
            "1,2,3",
            "--max-new-tokens",
            "2",
            "--hook",
            &format!("{}@transformer.h.0={{\"factor\":2}}", s(&plugin)),
            "--trust",
            s(&t),
        ],
    ));
    assert!(e.contains("unsigned"), "{e}");
    ok(&run(&signed, r#"{"factor":2}"#));
    // The manifest's config schema is checked before init, naming the field.
    let e = err(&run(&signed, r#"{"factor":"two"}"#));
    assert!(e.contains("/factor"), "{e}");
    let e = err(&run(&signed, r#"{"factr":2}"#));
    assert!(e.contains("factr"), "{e}");
}

#[test]
fn a_manifest_that_disagrees_with_the_component_is_refused() {
    let dir = tmp("mismatch");
    let cache = dir.join("cache");
    for (extra, what) in [
        ("version = \"9.9.9\"\n", "version"),
        ("hook_points = [\"blocks.*\"]\n", "hook points"),
        ("edit_mode = \"read-only\"\n", "edit mode"),
        ("[resources]\nmemory_bytes = 1099511627776\n", "memory"),
    ] {
        let toml = dir.join("bad.toml");
        std::fs::write(&toml, format!("name = \"acme:scale\"\n{extra}")).unwrap();
        let e = err(&fm(
            &cache,
            &[
                "plugin",
                "pack",
                s(&artifacts_dir().join("scale.wasm")),
                "--manifest",
                s(&toml),
                "-o",
                s(&dir.join("x.wasm")),
            ],
        ));
        assert!(e.contains(what), "{what}: {e}");
        assert!(!dir.join("x.wasm").exists(), "nothing written");
    }
    // A manifest section edited into a packed component: refused at load.
    let plugin = packed(&dir, &cache);
    let bytes = std::fs::read(&plugin).unwrap();
    let stripped = flexmodel::package::pack::strip(&bytes, &["flexmodel-manifest"]).unwrap();
    let mut forged = stripped.clone();
    let m = serde_json::json!({
        "schema": "flexmodel-manifest/1", "name": "acme:scale", "version": "0.1.0",
        "contract": "flexmodel:hook@0.1.0", "hook_points": [], "edit_mode": "edits",
    });
    flexmodel::package::pack::push_custom(
        &mut forged,
        "flexmodel-manifest",
        m.to_string().as_bytes(),
    );
    let f = dir.join("forged.wasm");
    std::fs::write(&f, &forged).unwrap();
    let model = models().join("gpt2-tiny");
    let e = err(&fm(
        &cache,
        &[
            "run",
            "--model",
            s(&model),
            "--token-ids",
            "1,2",
            "--hook",
            &format!("{}@transformer.h.0", s(&f)),
        ],
    ));
    assert!(e.contains("contract"), "{e}");
}

#[test]
fn publish_pull_run_lock_through_a_real_registry() {
    let dir = tmp("registry");
    let cache = dir.join("cache");
    let reg = registry(&dir);
    let plugin = packed(&dir, &cache);
    ok(&fm(
        &cache,
        &["plugin", "keygen", "-o", s(&dir.join("acme"))],
    ));
    ok(&fm(
        &cache,
        &["plugin", "sign", s(&plugin), "--key", s(&dir.join("acme"))],
    ));
    let bytes = std::fs::read(&plugin).unwrap();
    let digest = flexmodel::package::digest(&bytes);

    // Without credentials the registry refuses the push.
    let anon = Command::new(bin())
        .args([
            "plugin",
            "publish",
            s(&plugin),
            &format!("{}/acme/scale:0.1.0", reg.addr),
        ])
        .env("DOCKER_CONFIG", dir.join("none"))
        .env_remove("FLEXMODEL_REGISTRY_USER")
        .output()
        .unwrap();
    assert!(!anon.status.success());
    let out = ok(&fm(
        &cache,
        &[
            "plugin",
            "publish",
            s(&plugin),
            &format!("{}/acme/scale:0.1.0", reg.addr),
        ],
    ));
    assert!(out.contains(&digest), "{out}");
    let manifest_digest = out
        .split("manifest ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_string();

    // The manifest as the registry holds it: wkg's media types, annotations.
    let (code, _) = curl(&[&format!(
        "http://{}/v2/acme/scale/manifests/0.1.0",
        reg.addr
    )]);
    assert_eq!(code, 401, "the registry requires auth");
    let (code, body) = curl(&[
        "-u",
        "acme:s3cret",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{}/v2/acme/scale/manifests/0.1.0", reg.addr),
    ]);
    assert_eq!(code, 200, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(m["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(m["layers"][0]["digest"], digest.as_str());
    let a = &m["annotations"];
    assert_eq!(a["org.opencontainers.image.title"], "acme:scale");
    assert_eq!(a["org.opencontainers.image.version"], "0.1.0");
    assert_eq!(a["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(a["dev.flexmodel.package"], "acme:scale");
    assert_eq!(a["dev.flexmodel.edit-mode"], "edits");
    assert!(a["dev.flexmodel.signed-by"].as_str().unwrap().len() > 8);

    let t = trust(
        &dir,
        "default = \"require-signed\"\n[namespace.acme]\nkeys = [\"acme.pub\"]\n",
    );
    let registry_arg = ["--registry", reg.addr.as_str(), "--trust", s(&t)];
    // Pull by tag and by digest; the cache is content-addressed.
    let pulled = dir.join("pulled.wasm");
    let mut args = vec!["plugin", "pull", "acme:scale@0.1.0", "-o", s(&pulled)];
    args.extend(registry_arg);
    ok(&fm(&cache, &args));
    assert_eq!(std::fs::read(&pulled).unwrap(), bytes);
    let hex = digest.trim_start_matches("sha256:");
    assert!(cache.join("blobs/sha256").join(hex).exists());
    let by_digest = format!("acme:scale@{manifest_digest}");
    let other_cache = dir.join("cache2");
    let mut args = vec!["plugin", "pull", by_digest.as_str()];
    args.extend(registry_arg);
    ok(&fm(&other_cache, &args));
    assert!(other_cache.join("blobs/sha256").join(hex).exists());
    // A registry prefix: published under it, pulled with it.
    ok(&fm(
        &cache,
        &[
            "plugin",
            "publish",
            s(&plugin),
            &format!("{}/teams/x/acme/scale:0.1.0", reg.addr),
        ],
    ));
    let prefixed = format!("{}/teams/x", reg.addr);
    ok(&fm(
        &dir.join("cache-prefix"),
        &[
            "plugin",
            "pull",
            "acme:scale@0.1.0",
            "--registry",
            &prefixed,
            "--trust",
            s(&t),
        ],
    ));
    // Credentials from Docker's config.json, the registry from a mapping file.
    let docker = dir.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({"auths": {reg.addr.clone(): {"auth": "YWNtZTpzM2NyZXQ="}}}).to_string(),
    )
    .unwrap();
    let mapping = dir.join("registries.toml");
    std::fs::write(&mapping, format!("[namespace]\nacme = \"{}\"\n", reg.addr)).unwrap();
    let o = Command::new(bin())
        .args([
            "plugin",
            "pull",
            "acme:scale@0.1.0",
            "--registries",
            s(&mapping),
            "--trust",
            s(&t),
        ])
        .env("FLEXMODEL_PLUGIN_CACHE", dir.join("cache-docker"))
        .env("DOCKER_CONFIG", &docker)
        .env_remove("FLEXMODEL_REGISTRY_USER")
        .env_remove("FLEXMODEL_REGISTRY_PASSWORD")
        .env_remove("FLEXMODEL_REGISTRY")
        .output()
        .unwrap();
    ok(&o);
    // Wrong credentials: the registry's refusal, in one line.
    let o = Command::new(bin())
        .args([
            "plugin",
            "pull",
            "acme:scale@0.1.0",
            "--registries",
            s(&mapping),
        ])
        .env("FLEXMODEL_PLUGIN_CACHE", dir.join("cache-wrong"))
        .env("FLEXMODEL_REGISTRY_USER", "acme")
        .env("FLEXMODEL_REGISTRY_PASSWORD", "wrong")
        .output()
        .unwrap();
    err(&o);
    // A pulled plugin the policy refuses never enters the cache.
    let strict = dir.join("strict");
    std::fs::create_dir_all(&strict).unwrap();
    ok(&fm(
        &cache,
        &["plugin", "keygen", "-o", s(&strict.join("k"))],
    ));
    let t_wrong = trust(
        &strict,
        "default = \"require-signed\"\n[namespace.acme]\nkeys = [\"k.pub\"]\n",
    );
    let cache3 = dir.join("cache3");
    let e = err(&fm(
        &cache3,
        &[
            "plugin",
            "pull",
            "acme:scale@0.1.0",
            "--registry",
            &reg.addr,
            "--trust",
            s(&t_wrong),
        ],
    ));
    assert!(e.contains("not trusted"), "{e}");
    assert!(!cache3.join("blobs/sha256").join(hex).exists());

    // Run by reference: the same output as the local file; provenance saved.
    let model = models().join("gpt2-tiny");
    let point = "transformer.h.0={\"factor\":3}";
    let local = dir.join("local.safetensors");
    let remote = dir.join("remote.safetensors");
    ok(&fm(
        &cache,
        &[
            "run",
            "--model",
            s(&model),
            "--token-ids",
            "1,2,3,4",
            "--save",
            s(&local),
            "--hook",
            &format!("{}@{point}", s(&plugin)),
            "--trust",
            s(&t),
        ],
    ));
    let mut args = vec![
        "run",
        "--model",
        s(&model),
        "--token-ids",
        "1,2,3,4",
        "--save",
        s(&remote),
    ];
    let spec = format!("acme:scale@0.1.0@{point}");
    args.extend(["--hook", spec.as_str()]);
    args.extend(registry_arg);
    ok(&fm(&other_cache, &args));
    let (a, b) = (saved(&local), saved(&remote));
    assert!(
        a["logits"].equal(&b["logits"]),
        "same logits from the pulled plugin"
    );
    let meta = safetensors_metadata(&remote);
    let plugins: serde_json::Value = serde_json::from_str(&meta["flexmodel.plugins"]).unwrap();
    assert_eq!(plugins[0]["name"], "acme:scale");
    assert_eq!(plugins[0]["version"], "0.1.0");
    assert_eq!(plugins[0]["digest"], digest.as_str());

    // The lockfile: `plugin lock` pins; --locked refuses what it does not pin.
    let lock = dir.join("flexmodel.lock");
    let mut args = vec!["plugin", "lock", "acme:scale@0.1.0", "--lock", s(&lock)];
    args.extend(registry_arg);
    ok(&fm(&cache, &args));
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(text.contains(&digest), "{text}");
    let locked_run = |lockfile: &Path, spec: &str| {
        let mut args = vec![
            "run",
            "--model",
            s(&model),
            "--token-ids",
            "1,2,3",
            "--locked",
            "--lock",
            s(lockfile),
            "--hook",
            spec,
        ];
        args.extend(registry_arg);
        fm(&cache, &args)
    };
    ok(&locked_run(&lock, &spec));
    let e = err(&locked_run(&lock, &format!("acme:scale@0.2.0@{point}")));
    assert!(e.contains("not pinned"), "{e}");
    let e = err(&locked_run(&lock, &format!("{}@{point}", s(&plugin))));
    assert!(e.contains("--locked"), "{e}");
    // A lockfile pinning another digest: the registry's is refused.
    let bad = dir.join("bad.lock");
    std::fs::write(&bad, text.replace(hex, &"0".repeat(64))).unwrap();
    let fresh = dir.join("cache4");
    let mut args = vec![
        "run",
        "--model",
        s(&model),
        "--token-ids",
        "1,2,3",
        "--locked",
        "--lock",
        s(&bad),
        "--hook",
        &spec,
    ];
    args.extend(registry_arg);
    let e = err(&fm(&fresh, &args));
    assert!(
        e.contains("pins") || e.contains("manifest unknown") || e.contains("not found"),
        "{e}"
    );
}

/// The metadata of a safetensors file.
fn safetensors_metadata(p: &Path) -> std::collections::HashMap<String, String> {
    let bytes = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_value(header["__metadata__"].clone()).unwrap()
}

/// The README's "Sharing a hook with another team" commands, run as
/// written (`flexmodel` on the PATH, `REGISTRY` the test registry, `cargo`
/// at the repository root with the guest build's flags).
#[test]
fn the_readme_sharing_walkthrough_runs_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let section = readme
        .split("## Sharing a hook with another team")
        .nth(1)
        .expect("README section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a sh block");
    let dir = tmp("readme");
    let cache = dir.join("cache");
    let reg_dir = dir.join("registry-data");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let reg = registry(&reg_dir);
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::symlink(repo.join("artifacts"), work.join("artifacts")).unwrap();
    let cargo_home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap()));
    let script = format!("cargo() {{ (cd {repo:?} && command cargo \"$@\"); }}\n{block}\n");
    let bin_dir = bin().parent().unwrap().to_path_buf();
    let o = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&work)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("REGISTRY", &reg.addr)
        .env("FLEXMODEL_PLUGIN_CACHE", &cache)
        .env("FLEXMODEL_REGISTRY_USER", "acme")
        .env("FLEXMODEL_REGISTRY_PASSWORD", "s3cret")
        .env("DOCKER_CONFIG", dir.join("no-docker"))
        .env(
            "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
            format!(
                "--remap-path-prefix={}=/flexmodel --remap-path-prefix={cargo_home}=/cargo",
                repo.display()
            ),
        )
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "README commands failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = saved(&work.join("out.safetensors"));
    assert!(out.contains_key("logits"));
    let meta = safetensors_metadata(&work.join("out.safetensors"));
    let plugins: serde_json::Value = serde_json::from_str(&meta["flexmodel.plugins"]).unwrap();
    assert_eq!(plugins[0]["name"], "acme:scale");
    assert!(
        plugins[0]["signed_by"]
            .as_str()
            .unwrap()
            .ends_with("acme.pub")
    );
    assert!(
        std::fs::read_to_string(work.join("flexmodel.lock"))
            .unwrap()
            .contains("acme:scale")
    );
}
