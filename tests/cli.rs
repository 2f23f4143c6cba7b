//! The `flexmodel` command line, run as a user would: inspect, run with hooks
//! and --save (the file is then opened by `safetensors.torch.load_file` in
//! Python and checked against transformers' logits), prompts files, errors.

use std::path::PathBuf;
use std::process::{Command, Output};

use flexmodel_tests::artifacts_dir;

fn bin() -> PathBuf {
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

fn models() -> PathBuf {
    artifacts_dir().join("../models")
}

fn python() -> PathBuf {
    let venv = std::env::var_os("FLEXMODEL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/flexmodel/venv")
        });
    venv.join("bin/python")
}

fn flexmodel(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

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
fn demo_on_smollm2_finds_paris_in_the_logit_lens_and_steers_to_rome() {
    let dir = models().join("../smollm2-135m-instruct");
    let plot = std::env::temp_dir().join(format!("fm-lens-{}.svg", std::process::id()));
    let out = ok(&flexmodel(&[
        "demo",
        "--model",
        dir.to_str().unwrap(),
        "--plugins",
        artifacts_dir().to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]));
    assert!(
        out.contains("\" Paris\" is the top prediction from layer"),
        "{out}"
    );
    let line = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or("")
            .to_string()
    };
    assert!(line("clean").contains("city of Paris"), "{out}");
    assert!(line("steered").contains("city of Rome"), "{out}");
    assert!(!line("ablated").contains("city of Paris"), "{out}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("logit lens"),
        "an SVG chart"
    );
    std::fs::remove_file(&plot).ok();
    // A wrong --plot extension is a one-line error.
    let o = flexmodel(&[
        "demo",
        "--model",
        dir.to_str().unwrap(),
        "--plugins",
        artifacts_dir().to_str().unwrap(),
        "--plot",
        "/tmp/lens.png",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("SVG"));
}

fn saved(path: &std::path::Path) -> std::collections::BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn assert_same_file(a: &std::path::Path, b: &std::path::Path, what: &str) {
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
fn mesh_hooks() -> Vec<String> {
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

fn run_args(model: &str, out: &std::path::Path, extra: &[&str]) -> Vec<String> {
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

fn mpirun() -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--bind-to", "none"]);
    // Open MPI refuses to run as root unless told; containers launch as root.
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_plm", "isolated")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    c
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

/// Prompts of different lengths: batched (padded right or left, on one
/// rank, threads with --dp and --tp, and mpirun) the saved file equals one
/// prompt at a time, and every prompt's line is printed with stdout piped.
#[test]
fn run_batches_prompts_of_any_length_like_one_at_a_time() {
    let dir = std::env::temp_dir().join(format!("fm-cli-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = dir.join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"token_ids\": [5, 9, 2, 77, 13, 40]}\n{\"token_ids\": [1, 2]}\n{\"token_ids\": [8, 8, 3, 1]}\n\
         {\"token_ids\": [60]}\n{\"token_ids\": [4, 7, 90, 2, 2]}\n",
    )
    .unwrap();
    let p = prompts.to_str().unwrap();
    let one = dir.join("one.safetensors");
    let out = ok(&Command::new(bin())
        .args(run_args(
            "llama-mesh",
            &one,
            &["--prompts", p, "--batch-size", "1"],
        ))
        .output()
        .unwrap());
    assert_eq!(out.matches("next token").count(), 5, "{out}");
    let runs: [&[&str]; 4] = [
        &["--batch-size", "8"],
        &["--batch-size", "3", "--padding", "left"],
        &["--batch-size", "4", "--dp", "2", "--tp", "2"],
        &["--padding", "left", "--pp", "2", "--dp", "2"],
    ];
    for extra in runs {
        let name = extra.join("").replace("--", "-");
        let f = dir.join(format!("{name}.safetensors"));
        let mut args = vec!["--prompts", p];
        args.extend_from_slice(extra);
        let out = ok(&Command::new(bin())
            .args(run_args("llama-mesh", &f, &args))
            .output()
            .unwrap());
        assert_eq!(out.matches("next token").count(), 5, "{extra:?}: {out}");
        assert_same_file(&one, &f, &extra.join(" "));
    }
    let f = dir.join("mpi.safetensors");
    let mut args = run_args("llama-mesh", &f, &["--prompts", p, "--padding", "left"]);
    args.extend(["--tp", "2", "--dp", "2"].map(String::from));
    let o = mpirun()
        .args(["-np", "4"])
        .arg(bin())
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(ok(&o).matches("next token").count(), 5);
    assert_same_file(&one, &f, "mpirun -np 4 --tp 2 --dp 2, padded left");
    std::fs::remove_dir_all(&dir).ok();
}

/// Several prompts generate as one left-padded batch, each as it would
/// alone; generation stops at the model's EOS token unless --ignore-eos.
#[test]
fn generate_several_prompts_and_stop_at_an_eos_token() {
    let model = models().join("gpt2-tiny");
    let m = model.to_str().unwrap();
    let generate = |extra: &[&str]| {
        let mut a = vec!["generate", "--model", m, "--max-new-tokens", "6"];
        a.extend_from_slice(extra);
        ok(&flexmodel(&a))
    };
    let dir = std::env::temp_dir().join(format!("fm-cli-gen-eos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = dir.join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"token_ids\": [5, 9, 2, 77]}\n{\"token_ids\": [3, 1]}\n",
    )
    .unwrap();
    let batched = generate(&["--prompts", prompts.to_str().unwrap(), "--ignore-eos"]);
    for (i, ids) in ["5,9,2,77", "3,1"].iter().enumerate() {
        let alone = generate(&["--token-ids", ids, "--ignore-eos"]);
        let tail = |s: &str, k: usize| -> String {
            s.lines()
                .filter(|l| l.starts_with('('))
                .nth(k)
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(
            tail(&batched, i),
            tail(&alone, 0),
            "prompt {i}: {batched} vs {alone}"
        );
    }
    // An EOS among the greedy tokens ends the sequence there.
    let first: Vec<i64> = {
        let alone = generate(&["--token-ids", "5,9,2,77", "--ignore-eos"]);
        let l = alone
            .lines()
            .find(|l| l.starts_with('('))
            .unwrap()
            .to_string();
        let inner = &l[l.find('[').unwrap() + 1..l.find(']').unwrap()];
        inner.split(", ").map(|x| x.parse().unwrap()).collect()
    };
    let k = first.iter().position(|&t| t == first[2]).unwrap();
    let eos = first[k].to_string();
    let stopped = generate(&["--token-ids", "5,9,2,77", "--eos", &eos]);
    let want = format!("({} new tokens, ended by EOS: {:?})", k + 1, &first[..=k]);
    assert!(stopped.contains(&want), "{want}: {stopped}");
    std::fs::remove_dir_all(&dir).ok();
}
