//! The command line on real text: `run` batching prompts of any lengths
//! (one rank, threads, `mpirun`) like one at a time, `generate` with several
//! prompts and end-of-sequence tokens, and the built-in demo on SmolLM2.

mod cli_common;

use std::process::Command;

use cli_common::{assert_same_file, bin, flexmodel, models, mpirun, ok, run_args};
use flexmodel_tests::artifacts_dir;

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
