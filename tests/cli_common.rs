//! What the command-line tests share: the binary, the model folders, running
//! it, comparing saved files, the hooks and arguments of the mesh runs.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use flexmodel_tests::artifacts_dir;

pub fn bin() -> PathBuf {
    // tests run from target/<profile>/deps; the binary is in target/<profile>.
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("flexmodel");
    assert!(
        p.exists(),
        "{} missing: cargo build --release -p flexmodel",
        p.display()
    );
    p
}

pub fn models() -> PathBuf {
    artifacts_dir().join("../models")
}

pub fn python() -> PathBuf {
    let venv = std::env::var_os("FLEXMODEL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/flexmodel/venv")
        });
    venv.join("bin/python")
}

pub fn flexmodel(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn saved(path: &std::path::Path) -> std::collections::BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

pub fn assert_same_file(a: &std::path::Path, b: &std::path::Path, what: &str) {
    let (a, b) = (saved(a), saved(b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: same tensors"
    );
    for (k, t) in &a {
        assert_eq!(t.size(), b[k].size(), "{what}: shape of {k}");
        let d = flexmodel_tests::max_abs(t, &b[k]);
        assert!(d <= 1e-5, "{what}: {k} differs by {d}");
    }
}

/// Hooks for the distributed runs: retrievals at replicated and split
/// points, an edit at a split point.
pub fn mesh_hooks() -> Vec<String> {
    let w = artifacts_dir();
    let r = w.join("retrieve.wasm");
    let s = w.join("scale.wasm");
    let r = r.to_str().unwrap();
    vec![
        format!("{r}@blocks.*.hook_resid_post"),
        format!("{r}@blocks.0.attn.hook_pattern"),
        format!("{r}@blocks.1.mlp.hook_post={{\"slice\": [null, -1], \"name\": \"last\"}}"),
        format!(
            "{}@blocks.0.mlp.hook_post={{\"factor\": 2}}",
            s.to_str().unwrap()
        ),
    ]
}

pub fn run_args(model: &str, out: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "--model".into(),
        models().join(model).to_str().unwrap().into(),
        "--save".into(),
        out.to_str().unwrap().into(),
    ];
    for h in mesh_hooks() {
        a.push("--hook".into());
        a.push(h);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

pub fn mpirun() -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--bind-to", "none"]);
    // Open MPI refuses to run as root unless told; containers launch as root.
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_plm", "isolated")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    c
}
