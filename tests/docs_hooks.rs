//! The "write a hook in X" pages (`docs/hooks/*.md`): every `sh` block of a
//! page runs, in order, in one shell from the repository root (install,
//! build, `flexmodel run --hook`); every code block naming a `file=` is
//! that file, byte for byte; and the logits the page's run saves are
//! bit-identical to the Rust `scale` plugin's on the same input.

use std::path::{Path, PathBuf};
use std::process::Command;

use flexmodel::api::{FlexModel, Groups};
use flexmodel_tests::{model_dir, runtime, wasm};
use tch::{Device, Kind, Tensor};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (info string, body) of every fenced block.
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_string(), String::new())),
            (Some(_), Some("")) => out.push(open.take().unwrap()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed code block");
    out
}

/// Run the page's commands; the folder its `$out` names.
fn run_page(page: &str) -> PathBuf {
    let path = repo().join("docs/hooks").join(page);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut script = String::from("set -euo pipefail\n");
    let mut shown = 0;
    for (info, body) in blocks(&text) {
        if let Some(file) = info
            .split_whitespace()
            .find_map(|w| w.strip_prefix("file="))
        {
            let real = std::fs::read_to_string(repo().join(file)).unwrap();
            assert_eq!(body, real, "{page}: the code shown is {file}");
            shown += 1;
        }
        if info == "sh" {
            script.push_str(&body);
        }
    }
    assert_eq!(shown, 1, "{page} shows its plugin's code");
    script.push_str("echo \"OUT=$out\"\n");
    let o = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{page}: {}\n{stdout}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let out = stdout
        .lines()
        .find_map(|l| l.strip_prefix("OUT="))
        .expect("the page's $out");
    PathBuf::from(out)
}

/// The Rust `scale` plugin's logits for the pages' run.
fn rust_logits() -> Tensor {
    let mut m = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    let scale = runtime().load(&wasm("scale")).unwrap();
    m.register_wasm(
        &scale,
        "blocks.0.hook_resid_post",
        r#"{"factor": 0.5, "slice": [null, -1]}"#,
        &[],
    )
    .unwrap();
    let ids = Tensor::from_slice(&[5i64, 17, 3, 99]).view([1, -1]);
    m.forward(&ids, &Groups::All).unwrap().logits
}

fn check(page: &str, name: &str) {
    let out = run_page(page);
    let saved: Vec<(String, Tensor)> =
        Tensor::read_safetensors(Path::new(&out).join(format!("{name}.safetensors"))).unwrap();
    let logits = saved
        .into_iter()
        .find(|(k, _)| k == "logits")
        .expect("saved logits")
        .1;
    let want = rust_logits();
    assert!(
        logits.view([-1]).equal(&want.view([-1])),
        "{page}: the logits are the Rust plugin's"
    );
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn the_c_page_runs_as_written() {
    check("c.md", "scale-c");
}

#[test]
fn the_zig_page_runs_as_written() {
    check("zig.md", "scale-zig");
}

#[test]
fn the_javascript_page_runs_as_written() {
    check("javascript.md", "scale-js");
}

#[test]
fn the_python_page_runs_as_written() {
    check("python.md", "scale-py");
}
