//! The `flexmodel` command line, run as a user would: inspect, run with hooks
//! and --save (the file is then opened by `safetensors.torch.load_file` in
//! Python and checked against transformers' logits), prompts files, errors.

mod cli_common;

use std::process::Command;

use cli_common::{assert_same_file, bin, flexmodel, models, mpirun, ok, python, run_args, saved};
use flexmodel_tests::artifacts_dir;

#[test]
fn inspect_lists_every_hook_point_with_shapes() {
    let dir = models().join("gpt2-tiny");
    let out = ok(&flexmodel(&[
        "inspect",
        "--model",
        dir.to_str().unwrap(),
        "--seq-len",
        "5",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pts = v.as_array().unwrap();
    // Exactly the library's list (a stale binary shows up here).
    let m = flexmodel::models::Model::load(&dir, tch::Kind::Float, tch::Device::Cpu).unwrap();
    assert_eq!(v, serde_json::to_value(m.points(1, 5)).unwrap());
    assert!(pts.len() > 30);
    let pattern = pts
        .iter()
        .find(|p| p["alias"] == "blocks.1.attn.hook_pattern")
        .unwrap();
    assert_eq!(pattern["name"], "transformer.h.1.attn.hook_pattern");
    assert_eq!(pattern["shape"], serde_json::json!([1, 4, 5, 5]));
    let text = ok(&flexmodel(&["inspect", "--model", dir.to_str().unwrap()]));
    assert!(text.contains("blocks.0.hook_resid_post"));
}

#[test]
fn run_saves_a_file_python_can_load_with_transformers_logits() {
    let dir = models().join("llama-gqa");
    let tmp =
        std::env::temp_dir().join(format!("flexmodel-cli-{}.safetensors", std::process::id()));
    // Row 0 of the reference inputs, as recorded by make_models.py.
    let check_ids = format!(
        "from safetensors.torch import load_file; r = load_file({:?}); print(','.join(str(int(i)) for i in r['input_ids'][0]))",
        dir.join("reference.safetensors").to_str().unwrap()
    );
    let py = Command::new(python())
        .args(["-c", &check_ids])
        .output()
        .unwrap();
    let ids = ok(&py).trim().to_string();
    let hook = format!(
        "{}@blocks.*.hook_resid_post={}",
        artifacts_dir().join("retrieve.wasm").display(),
        r#"{"slice": [null, -1]}"#
    );
    let scale = format!(
        "{}@blocks.0.mlp.hook_post",
        artifacts_dir().join("retrieve.wasm").display()
    );
    let out = ok(&flexmodel(&[
        "run",
        "--model",
        dir.to_str().unwrap(),
        "--token-ids",
        &ids,
        "--hook",
        &hook,
        "--hook",
        &scale,
        "--save",
        tmp.to_str().unwrap(),
    ]));
    assert!(out.contains("next token:"), "{out}");
    let script = format!(
        r#"
import torch
from safetensors.torch import load_file
d = load_file({saved:?})
r = load_file({reference:?})
assert sorted(d) == ["logits", "model.layers.0", "model.layers.0.mlp.hook_post", "model.layers.1"], sorted(d)
assert torch.allclose(d["logits"][0], r["logits"][0], atol=1e-4, rtol=0), (d["logits"][0] - r["logits"][0]).abs().max()
assert torch.allclose(d["model.layers.1"][0, 0], r["model.layers.1"][0, -1], atol=1e-4, rtol=0)
assert tuple(d["model.layers.0.mlp.hook_post"].shape) == (1, 7, 80)
print("python-ok")
"#,
        saved = tmp.to_str().unwrap(),
        reference = dir.join("reference.safetensors").to_str().unwrap()
    );
    let py = Command::new(python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(ok(&py).contains("python-ok"));
    let _ = std::fs::remove_file(&tmp);
}

#[test]
fn prompts_file_with_several_prompts() {
    let dir = models().join("demo-gpt2");
    let tmp = std::env::temp_dir().join(format!("flexmodel-cli-prompts-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let jsonl = tmp.join("p.jsonl");
    std::fs::write(&jsonl, "\"The residual stream\"\n{\"prompt\": \"Hooks are WebAssembly components\"}\n{\"token_ids\": [5, 6, 7]}\n").unwrap();
    let save = tmp.join("out.safetensors");
    let out = ok(&flexmodel(&[
        "run",
        "--model",
        dir.to_str().unwrap(),
        "--prompts",
        jsonl.to_str().unwrap(),
        "--hook",
        &format!(
            "{}@hook_embed",
            artifacts_dir().join("retrieve.wasm").display()
        ),
        "--save",
        save.to_str().unwrap(),
    ]));
    assert!(out.contains("saved 6 tensors"), "{out}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn errors_exit_non_zero_with_one_line() {
    let cases: Vec<Vec<String>> = vec![
        vec![
            "run".into(),
            "--model".into(),
            "/nonexistent".into(),
            "--token-ids".into(),
            "1".into(),
        ],
        vec![
            "run".into(),
            "--model".into(),
            models().join("gpt2-tiny").display().to_string(),
            "--token-ids".into(),
            "1,2".into(),
            "--hook".into(),
            "nope.wasm@hook_embed".into(),
        ],
        vec![
            "run".into(),
            "--model".into(),
            models().join("gpt2-tiny").display().to_string(),
            "--token-ids".into(),
            "1,2".into(),
            "--hook".into(),
            format!(
                "{}@blocks.99.hook_resid_post",
                artifacts_dir().join("retrieve.wasm").display()
            ),
        ],
        vec![
            "run".into(),
            "--model".into(),
            models().join("gpt2-tiny").display().to_string(),
            "--token-ids".into(),
            "1,2".into(),
            "--hook".into(),
            format!(
                "{}@hook_embed={{\"factor\": \"x\"}}",
                artifacts_dir().join("scale.wasm").display()
            ),
        ],
        vec![
            "run".into(),
            "--model".into(),
            models().join("gpt2-tiny").display().to_string(),
            "--prompt".into(),
            "no tokenizer here".into(),
        ],
        vec![
            "run".into(),
            "--model".into(),
            models().join("gpt2-tiny").display().to_string(),
            "--token-ids".into(),
            "1,2".into(),
            "--hook".into(),
            format!(
                "{}@hook_embed={{\"mode\": \"loop\"}}",
                artifacts_dir().join("hostile.wasm").display()
            ),
            "--fuel".into(),
            "1000000".into(),
        ],
    ];
    for args in cases {
        let o = Command::new(bin()).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
}

#[test]
fn tp_pp_dp_on_threads_save_the_same_file_as_one_rank() {
    let dir = std::env::temp_dir().join(format!("fm-cli-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = dir.join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"token_ids\": [5, 9, 2, 77, 13, 40]}\n{\"token_ids\": [1, 2, 3, 4, 5, 6]}\n",
    )
    .unwrap();
    let p = prompts.to_str().unwrap();
    let one = dir.join("one.safetensors");
    let args = run_args("llama-mesh", &one, &["--prompts", p]);
    ok(&Command::new(bin()).args(&args).output().unwrap());
    for mesh in [
        ["--tp", "2", "--pp", "2", "--dp", "1"],
        ["--tp", "2", "--pp", "1", "--dp", "2"],
    ] {
        let out = dir.join(format!("{}.safetensors", mesh.join("")));
        let mut args = run_args("llama-mesh", &out, &["--prompts", p]);
        args.extend(mesh.iter().map(|s| s.to_string()));
        ok(&Command::new(bin()).args(&args).output().unwrap());
        assert_same_file(&one, &out, &mesh.join(" "));
    }
    // --dp needs a prompt per replica.
    let o = flexmodel(&[
        "run",
        "--model",
        models().join("llama-mesh").to_str().unwrap(),
        "--token-ids",
        "1,2",
        "--dp",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least 2 prompts"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mpirun_tp2_pp2_saves_the_same_file_as_one_rank() {
    let dir = std::env::temp_dir().join(format!("fm-cli-mpi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for model in ["gpt2-tiny", "neox-parallel"] {
        let one = dir.join(format!("{model}-one.safetensors"));
        let ids = ["--token-ids", "3,17,42,5,88,9,60"];
        ok(&Command::new(bin())
            .args(run_args(model, &one, &ids))
            .output()
            .unwrap());
        let four = dir.join(format!("{model}-mpi.safetensors"));
        let mut args = run_args(model, &four, &ids);
        args.extend(["--tp", "2", "--pp", "2"].map(String::from));
        let o = mpirun()
            .args(["-np", "4"])
            .arg(bin())
            .args(&args)
            .output()
            .expect("mpirun (Open MPI) must be installed: scripts/setup.sh installs it");
        let stdout = ok(&o);
        assert_eq!(
            stdout.matches("next token").count(),
            1,
            "only global rank 0 prints: {stdout}"
        );
        assert_same_file(&one, &four, &format!("{model} mpirun -np 4 --tp 2 --pp 2"));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mpirun_a_hook_failing_on_one_rank_fails_every_rank() {
    let hostile = artifacts_dir().join("hostile.wasm");
    let hook = format!(
        "{}@blocks.1.hook_resid_mid={{\"mode\": \"error\", \"only_rank\": 1}}",
        hostile.to_str().unwrap()
    );
    let o = mpirun()
        .args(["-np", "2"])
        .arg(bin())
        .args([
            "run",
            "--model",
            models().join("gpt2-tiny").to_str().unwrap(),
        ])
        .args([
            "--token-ids",
            "1,2,3",
            "--tp",
            "2",
            "--comm-timeout",
            "20",
            "--hook",
            &hook,
        ])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("hostile plugin failed on purpose"))
        .collect();
    assert_eq!(lines.len(), 2, "both ranks report it: {err}");
    for l in &lines {
        assert!(
            l.contains("plugin `hostile` at hook point `transformer.h.1.hook_resid_mid` on rank 1"),
            "{l}"
        );
    }
}

#[test]
fn generate_streams_and_saves_the_same_on_one_rank_threads_and_mpirun() {
    let dir = std::env::temp_dir().join(format!("fm-cli-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = models().join("llama-mesh");
    let hook = format!(
        "{}@blocks.1.hook_resid_post={{\"slice\": [null, -1]}}",
        artifacts_dir().join("retrieve.wasm").to_str().unwrap()
    );
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--token-ids",
            "5,9,2,77",
            "--max-new-tokens",
            "6",
            "--hook",
            &hook,
            "--save",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let one = dir.join("one.safetensors");
    let text = ok(&Command::new(bin()).args(args(&one)).output().unwrap());
    assert!(text.contains("(6 new tokens:"), "{text}");
    let t = saved(&one);
    assert_eq!(t["tokens"].size(), vec![1, 10]);
    assert_eq!(
        t.keys().filter(|k| k.starts_with("step")).count(),
        6,
        "one retrieval per step"
    );
    let threads = dir.join("threads.safetensors");
    let mut a = args(&threads);
    a.extend(["--tp", "2", "--pp", "2"].map(String::from));
    ok(&Command::new(bin()).args(&a).output().unwrap());
    assert_same_file(&one, &threads, "generate --tp 2 --pp 2");
    let mpi = dir.join("mpi.safetensors");
    let mut a = args(&mpi);
    a.extend(["--tp", "2"].map(String::from));
    let o = mpirun()
        .args(["-np", "2"])
        .arg(bin())
        .args(&a)
        .output()
        .unwrap();
    let stdout = ok(&o);
    assert_eq!(
        stdout.matches("new tokens").count(),
        1,
        "rank 0 prints: {stdout}"
    );
    assert_same_file(&one, &mpi, "mpirun -np 2 generate --tp 2");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn saved_files_name_each_outputs_plugin_and_logs_are_escaped() {
    let dir = models().join("demo-gpt2");
    let tmp = std::env::temp_dir().join(format!("flexmodel-cli-prov-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let jsonl = tmp.join("p.jsonl");
    std::fs::write(
        &jsonl,
        "{\"token_ids\": [5, 6, 7]}\n{\"token_ids\": [8, 9]}\n",
    )
    .unwrap();
    let save = tmp.join("out.safetensors");
    let out = ok(&flexmodel(&[
        "run",
        "--model",
        dir.to_str().unwrap(),
        "--prompts",
        jsonl.to_str().unwrap(),
        "--hook",
        &format!(
            "{}@hook_embed",
            artifacts_dir().join("retrieve.wasm").display()
        ),
        "--hook",
        &format!(
            "{}@blocks.0.hook_resid_post={{\"mode\": \"log-forge\"}}",
            artifacts_dir().join("hostile.wasm").display()
        ),
        // One forward per prompt: one forged log line each.
        "--batch-size",
        "1",
        "--save",
        save.to_str().unwrap(),
    ]));
    // The plugin's newline and escape sequence stay inside its own line.
    let forged: Vec<&str> = out.lines().filter(|l| l.contains("forged")).collect();
    assert_eq!(forged.len(), 2, "{out}");
    for l in forged {
        assert!(l.starts_with("[hostile @ "), "{l:?}");
        assert!(!l.contains('\u{1b}') && l.contains("\\n"), "{l:?}");
    }
    let script = format!(
        r#"
from safetensors import safe_open
with safe_open({saved:?}, "pt") as f:
    meta = f.metadata()
    keys = sorted(f.keys())
assert keys == ["0/logits", "0/transformer.wte", "1/logits", "1/transformer.wte"], keys
for k in ["0/transformer.wte", "1/transformer.wte"]:
    assert meta["flexmodel.producer." + k].startswith("retrieve@0.2.0 (sha256:"), meta
assert "flexmodel.producer.0/logits" not in meta, meta
print("python-ok")
"#,
        saved = save.to_str().unwrap()
    );
    let py = Command::new(python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(ok(&py).contains("python-ok"));
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn stop_at_on_threads_and_mpirun_saves_the_same_file_as_one_rank() {
    let dir = std::env::temp_dir().join(format!("fm-cli-stop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ids = [
        "--token-ids",
        "3,17,42,5,88,9,60",
        "--stop-at",
        "blocks.0.mlp.hook_post",
    ];
    let one = dir.join("one.safetensors");
    let stdout = ok(&Command::new(bin())
        .args(run_args("gpt2-tiny", &one, &ids))
        .output()
        .unwrap());
    assert!(
        stdout.contains("stopped after blocks.0.mlp.hook_post"),
        "{stdout}"
    );
    let keys = saved(&one).into_keys().collect::<Vec<_>>();
    assert!(
        !keys.iter().any(|k| k == "logits" || k.contains(".1.")),
        "nothing after the stop: {keys:?}"
    );
    let threads = dir.join("threads.safetensors");
    let mut args = run_args("gpt2-tiny", &threads, &ids);
    args.extend(["--tp", "2", "--pp", "2"].map(String::from));
    ok(&Command::new(bin()).args(&args).output().unwrap());
    assert_same_file(&one, &threads, "--stop-at on threads --tp 2 --pp 2");
    let mpi = dir.join("mpi.safetensors");
    let mut args = run_args("gpt2-tiny", &mpi, &ids);
    args.extend(["--tp", "2", "--pp", "2"].map(String::from));
    let o = mpirun()
        .args(["-np", "4"])
        .arg(bin())
        .args(&args)
        .output()
        .expect("mpirun (Open MPI) must be installed: scripts/setup.sh installs it");
    ok(&o);
    assert_same_file(&one, &mpi, "--stop-at under mpirun -np 4 --tp 2 --pp 2");
    std::fs::remove_dir_all(&dir).ok();
}
