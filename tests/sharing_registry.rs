//! Sharing hook plugins through a real OCI registry (Debian's
//! `docker-registry`, the CNCF distribution registry, started on a free
//! loopback port with htpasswd auth): publish, pull by tag and by digest,
//! the manifest's media types and annotations, credentials and mapping
//! files, a pulled plugin run by reference giving the same output as the
//! local file, the lockfile and `--locked`, provenance in the output file,
//! and the README's walkthrough run as written.

mod cli_common;
mod registry_common;
mod sharing_common;

use std::path::Path;
use std::process::Command;

use cli_common::{bin, models, ok, saved};
use registry_common::{curl, registry};
use sharing_common::{err, fm, packed, s, safetensors_metadata, tmp, trust};

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
