//! Publishing to and pulling from OCI registries, in the layout wkg
//! (wasm-pkg-tools) uses for components: an image manifest whose config is
//! `application/vnd.wasm.config.v0+json` (architecture `wasm`, os `wasip2`,
//! the layer digests, the component's imports and exports) and exactly one
//! layer, `application/wasm`, the component itself; the manifest carries
//! `org.opencontainers.image.*` annotations and `dev.flexmodel.*` ones
//! (package, contract, hook points, edit mode, resources, signer) so a
//! registry can be browsed without downloading anything.
//!
//! Through `oci-client` (the OCI distribution client wkg itself is built
//! on; `oci-wasm` only adds the config type, built here, and would pull a
//! second copy of the wasm-tools crates).
//!
//! Where a namespace lives: the mapping file (`registries.toml`, like
//! wkg's `namespace_registries`: `[namespace] acme = "HOST:PORT[/PREFIX]"`,
//! optional `default = ...`), else `--registry`, else `FLEXMODEL_REGISTRY`.
//! Credentials: `FLEXMODEL_REGISTRY_TOKEN` (bearer), or
//! `FLEXMODEL_REGISTRY_USER` + `FLEXMODEL_REGISTRY_PASSWORD` (basic), or
//! the registry's entry in Docker's `config.json` (`$DOCKER_CONFIG` or
//! `~/.docker`), else anonymous. Plain HTTP for loopback registries or
//! with `insecure`; HTTPS otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use super::reference::{PackageRef, Selector};
use super::{PackageError, digest, read};
use crate::hooks::manifest;

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";

/// A registry and the path prefix repositories live under: `HOST:PORT[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    pub host: String,
    pub prefix: String,
}

impl Registry {
    pub fn parse(s: &str) -> Result<Registry, PackageError> {
        let s = s.trim().trim_start_matches("oci://");
        let (host, prefix) = s.split_once('/').unwrap_or((s, ""));
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(PackageError::Input(format!(
                "registry {s:?}: expected HOST:PORT[/PREFIX]"
            )));
        }
        Ok(Registry {
            host: host.into(),
            prefix: prefix.trim_matches('/').into(),
        })
    }

    fn loopback(&self) -> bool {
        let h = self
            .host
            .rsplit_once(':')
            .map_or(self.host.as_str(), |(h, _)| h);
        matches!(h, "localhost" | "127.0.0.1" | "[::1]" | "::1") || h.starts_with("127.")
    }
}

impl std::fmt::Display for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "{}", self.host)
        } else {
            write!(f, "{}/{}", self.host, self.prefix)
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    default: Option<String>,
    #[serde(default)]
    namespace: BTreeMap<String, String>,
}

/// Where to find registries: the mapping file, then `--registry`, then
/// `FLEXMODEL_REGISTRY`.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    mapping: BTreeMap<String, Registry>,
    default: Option<Registry>,
    fallback: Option<Registry>,
    pub insecure: bool,
}

impl Registries {
    /// `mapping`: an explicit mapping file; else `FLEXMODEL_REGISTRIES`, else
    /// `~/.config/flexmodel/registries.toml` when it exists.
    pub fn new(
        mapping: Option<&Path>,
        registry: Option<&str>,
        insecure: bool,
    ) -> Result<Registries, PackageError> {
        let file = mapping.map(Path::to_path_buf).or_else(|| {
            std::env::var_os("FLEXMODEL_REGISTRIES")
                .map(PathBuf::from)
                .or_else(|| {
                    dirs::config_dir()
                        .map(|d| d.join("flexmodel/registries.toml"))
                        .filter(|p| p.exists())
                })
        });
        let mut r = Registries {
            insecure,
            ..Registries::default()
        };
        if let Some(f) = file {
            let text = String::from_utf8(read(&f)?)
                .map_err(|_| PackageError::Input(format!("{} is not UTF-8", f.display())))?;
            let m: MappingFile = toml::from_str(&text)
                .map_err(|e| PackageError::Input(format!("{}: {e}", f.display())))?;
            for (ns, reg) in m.namespace {
                r.mapping.insert(ns, Registry::parse(&reg)?);
            }
            r.default = m.default.as_deref().map(Registry::parse).transpose()?;
        }
        let flag = registry
            .map(str::to_string)
            .or_else(|| std::env::var("FLEXMODEL_REGISTRY").ok());
        r.fallback = flag.as_deref().map(Registry::parse).transpose()?;
        Ok(r)
    }

    /// The registry of `namespace`.
    pub fn of(&self, namespace: &str) -> Result<Registry, PackageError> {
        self.mapping
            .get(namespace)
            .or(self.default.as_ref())
            .or(self.fallback.as_ref())
            .cloned()
            .ok_or_else(|| {
                PackageError::Input(format!(
                    "no registry for namespace {namespace}: give --registry HOST:PORT[/PREFIX], \
                     set FLEXMODEL_REGISTRY, or map it in registries.toml"
                ))
            })
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Credentials for `host` (see the module docs).
pub fn auth_for(host: &str) -> Result<RegistryAuth, PackageError> {
    if let Ok(t) = std::env::var("FLEXMODEL_REGISTRY_TOKEN") {
        return Ok(RegistryAuth::Bearer(t));
    }
    if let (Ok(u), Ok(p)) = (
        std::env::var("FLEXMODEL_REGISTRY_USER"),
        std::env::var("FLEXMODEL_REGISTRY_PASSWORD"),
    ) {
        return Ok(RegistryAuth::Basic(u, p));
    }
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".docker")));
    let Some(file) = dir.map(|d| d.join("config.json")).filter(|f| f.exists()) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let cfg: DockerConfig = serde_json::from_slice(&read(&file)?)
        .map_err(|e| PackageError::Input(format!("{}: {e}", file.display())))?;
    let entry = cfg.auths.iter().find(|(k, _)| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k.split('/').next() == Some(host)
    });
    let Some((_, a)) = entry else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let (Some(u), Some(p)) = (&a.username, &a.password) {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    if let Some(b) = &a.auth {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|e| PackageError::Input(format!("{}: auth of {host}: {e}", file.display())))?;
        let s = String::from_utf8(raw).map_err(|_| {
            PackageError::Input(format!("{}: auth of {host} is not UTF-8", file.display()))
        })?;
        if let Some((u, p)) = s.split_once(':') {
            return Ok(RegistryAuth::Basic(u.into(), p.into()));
        }
    }
    Ok(RegistryAuth::Anonymous)
}

fn client(reg: &Registry, insecure: bool) -> Client {
    let protocol = if insecure || reg.loopback() {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        ..ClientConfig::default()
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, PackageError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PackageError::Input(format!("cannot start the network runtime: {e}")))
}

fn reg_err(reg: &Registry, e: impl std::fmt::Display) -> PackageError {
    PackageError::Registry {
        registry: reg.to_string(),
        message: e.to_string(),
    }
}

/// The annotations a published plugin carries.
fn annotations(bytes: &[u8]) -> Result<BTreeMap<String, String>, PackageError> {
    let info = super::inspect::metadata(bytes)?;
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            a.insert(k.to_string(), v);
        }
    };
    put("org.opencontainers.image.title", info.name.clone());
    put("org.opencontainers.image.version", info.version.clone());
    put(
        "org.opencontainers.image.description",
        info.description.clone(),
    );
    put("org.opencontainers.image.authors", info.authors.clone());
    put("org.opencontainers.image.licenses", info.licenses.clone());
    put("org.opencontainers.image.source", info.source.clone());
    put("org.opencontainers.image.url", info.homepage.clone());
    put("org.opencontainers.image.revision", info.revision.clone());
    if let Some(m) = manifest::read(bytes)? {
        put("dev.flexmodel.package", Some(m.name.clone()));
        put("dev.flexmodel.contract", Some(m.contract.clone()));
        put("dev.flexmodel.hook-points", Some(m.hook_points.join(",")));
        put(
            "dev.flexmodel.edit-mode",
            Some(format!("{:?}", m.edit_mode).to_lowercase()),
        );
        put(
            "dev.flexmodel.resources",
            Some(serde_json::to_string(&m.resources).unwrap_or_default()),
        );
    }
    if let super::sign::Signature::Signed { key_ids } = super::sign::signature(bytes)? {
        put("dev.flexmodel.signed-by", Some(key_ids.join(",")));
    }
    put("dev.flexmodel.digest", Some(digest(bytes)));
    Ok(a)
}

/// What was published or pulled.
#[derive(Debug, Clone)]
pub struct Published {
    /// The OCI manifest's digest (what `namespace:name@sha256:…` pulls).
    pub manifest_digest: String,
    /// The component's digest (its layer; what lockfiles and results record).
    pub digest: String,
    pub reference: String,
}

/// Publish the component `bytes` as `reg`'s `repository:tag`.
pub fn publish(
    bytes: &[u8],
    reg: &Registry,
    repository: &str,
    tag: &str,
    insecure: bool,
) -> Result<Published, PackageError> {
    crate::hooks::artifact::check_header(bytes)?;
    let (imports, exports) = super::inspect::interface_names(bytes)?;
    let layer_digest = digest(bytes);
    let created = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    let config = serde_json::json!({
        "created": rfc3339(created),
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
        "component": {"exports": exports, "imports": imports, "target": null},
    });
    let config = Config {
        data: serde_json::to_vec(&config).unwrap_or_default().into(),
        media_type: CONFIG_MEDIA_TYPE.into(),
        annotations: None,
    };
    let layers = [ImageLayer {
        data: bytes.to_vec().into(),
        media_type: LAYER_MEDIA_TYPE.into(),
        annotations: None,
    }];
    let mut ann = annotations(bytes)?;
    ann.insert("org.opencontainers.image.created".into(), rfc3339(created));
    let oci_manifest = OciImageManifest::build(&layers, &config, Some(ann));
    let reference = Reference::with_tag(reg.host.clone(), repository.into(), tag.into());
    let c = client(reg, insecure);
    let auth = auth_for(&reg.host)?;
    let rt = runtime()?;
    rt.block_on(async {
        c.push(&reference, &layers, config, &auth, Some(oci_manifest))
            .await
            .map_err(|e| reg_err(reg, format!("push {repository}:{tag}: {e}")))?;
        let (_, manifest_digest) = c
            .pull_image_manifest(&reference, &auth)
            .await
            .map_err(|e| reg_err(reg, format!("reading back {repository}:{tag}: {e}")))?;
        Ok(Published {
            manifest_digest,
            digest: layer_digest,
            reference: format!("{reg}/{repository}:{tag}"),
        })
    })
}

/// Pull `r` from `reg`: the component's bytes, checked against the
/// manifest (media types, one layer, size within `max_bytes`, digest).
pub fn pull(
    r: &PackageRef,
    reg: &Registry,
    insecure: bool,
    max_bytes: usize,
) -> Result<(Vec<u8>, Published), PackageError> {
    let repository = r.repository(&reg.prefix);
    let reference = match &r.selector {
        Selector::Version(v) => {
            Reference::with_tag(reg.host.clone(), repository.clone(), v.clone())
        }
        Selector::Digest(d) => {
            Reference::with_digest(reg.host.clone(), repository.clone(), d.clone())
        }
    };
    let c = client(reg, insecure);
    let auth = auth_for(&reg.host)?;
    let rt = runtime()?;
    rt.block_on(async {
        let (m, manifest_digest) = c
            .pull_image_manifest(&reference, &auth)
            .await
            .map_err(|e| reg_err(reg, format!("{r}: {e}")))?;
        if m.config.media_type != CONFIG_MEDIA_TYPE {
            return Err(reg_err(
                reg,
                format!(
                    "{r} is not a WebAssembly component package: config media type {}",
                    m.config.media_type
                ),
            ));
        }
        let [layer] = &m.layers[..] else {
            return Err(reg_err(
                reg,
                format!("{r} has {} layers, not one", m.layers.len()),
            ));
        };
        if layer.media_type != LAYER_MEDIA_TYPE {
            return Err(reg_err(
                reg,
                format!("{r}: layer media type {}", layer.media_type),
            ));
        }
        if layer.size < 0 || layer.size as usize > max_bytes {
            return Err(reg_err(
                reg,
                format!("{r} is {} bytes, over the limit of {max_bytes}", layer.size),
            ));
        }
        let mut bytes = Vec::with_capacity(layer.size as usize);
        c.pull_blob(&reference, layer, &mut bytes)
            .await
            .map_err(|e| reg_err(reg, format!("{r}: {e}")))?;
        let got = digest(&bytes);
        if got != layer.digest {
            return Err(reg_err(
                reg,
                format!(
                    "{r}: the layer is {got}, the manifest says {}",
                    layer.digest
                ),
            ));
        }
        Ok((
            bytes,
            Published {
                manifest_digest,
                digest: got,
                reference: format!("{reg}/{repository}"),
            },
        ))
    })
}

/// `secs` since the epoch as RFC 3339 (UTC).
fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_registries() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_547_200), "2025-12-01T00:00:00Z");
        let r = Registry::parse("127.0.0.1:5000/teams/x").unwrap();
        assert_eq!(r.host, "127.0.0.1:5000");
        assert_eq!(r.prefix, "teams/x");
        assert!(r.loopback());
        assert!(!Registry::parse("ghcr.io").unwrap().loopback());
    }
}
