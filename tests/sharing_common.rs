//! What the plugin-sharing tests share: a private plugin cache per test,
//! running `flexmodel` with the test registry's credentials, one-line
//! errors, packing `scale.wasm` as `acme:scale`, trust files, safetensors
//! metadata.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli_common::{bin, ok};
use flexmodel_tests::artifacts_dir;

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fm-sharing-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `flexmodel` with a private plugin cache and the registry's credentials.
pub fn fm(cache: &Path, args: &[&str]) -> std::process::Output {
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

pub fn err(o: &std::process::Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(e.trim().lines().count(), 1, "one-line error: {e}");
    e
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub const PLUGIN_TOML: &str = r#"
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
pub fn packed(dir: &Path, cache: &Path) -> PathBuf {
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

pub fn trust(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("trust.toml");
    std::fs::write(&p, body).unwrap();
    p
}

/// The metadata of a safetensors file.
pub fn safetensors_metadata(p: &Path) -> std::collections::HashMap<String, String> {
    let bytes = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_value(header["__metadata__"].clone()).unwrap()
}
