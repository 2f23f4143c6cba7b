//! The sandbox against a determined stranger (issue 9), at the level of the
//! runtime and the engine: compile bombs and oversized components, the
//! compiled-code cache as an attacker who can write its directory would use
//! it, per-forward output caps (across generation steps too), outputs that
//! say who made them, and tensor-parallel ranks that disagree.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flexmodel::api::{FlexError, FlexModel, GenerateOptions, Groups, Options};
use flexmodel::hooks::{ForwardLimits, HookErrorKind, LoadError, Runtime, RuntimeConfig};
use flexmodel_tests::{model_dir, runtime, wasm};
use tch::{Device, Kind, Tensor};

/// A fresh private directory (0700) for one test.
fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flexmodel-sandbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .unwrap();
    d
}

/// A runtime with its own cache directory and key (in `root`).
fn cached_runtime(root: &std::path::Path, f: impl FnOnce(&mut RuntimeConfig)) -> Arc<Runtime> {
    let mut c = RuntimeConfig {
        cache_dir: Some(root.join("cache")),
        cache_key_file: Some(root.join("keys").join("cache.key")),
        ..RuntimeConfig::default()
    };
    f(&mut c);
    Runtime::new(c).expect("runtime")
}

/// A small component whose compilation is costly: one function with many
/// live locals updated inside nested loops (register allocation work grows
/// much faster than its size).
fn compile_bomb(locals: usize, depth: usize) -> Vec<u8> {
    let mut body = String::new();
    for d in 0..depth {
        body.push_str(&format!("(loop $l{d}\n"));
    }
    for i in 0..locals {
        let j = (i * 7 + 1) % locals;
        body.push_str(&format!(
            "(local.set {i} (i64.add (local.get {i}) (i64.mul (local.get {j}) (local.get {}))))\n",
            (i + 3) % locals
        ));
    }
    for d in (0..depth).rev() {
        body.push_str(&format!("(br_if $l{d} (i64.eqz (local.get {d})))\n)\n"));
    }
    let wat = format!(
        "(component (core module (func (export \"f\") (local {}) {body})))",
        "i64 ".repeat(locals)
    );
    wat::parse_str(&wat).expect("bomb WAT")
}

#[test]
fn a_component_over_the_size_limit_is_refused_before_compiling() {
    let root = fresh_dir("size");
    let rt = cached_runtime(&root, |c| c.compile.max_component_bytes = 4096);
    let bytes = wasm("retrieve");
    match rt.load(&bytes) {
        Err(LoadError::TooLarge {
            bytes: n, limit, ..
        }) => {
            assert_eq!((n, limit), (bytes.len(), 4096))
        }
        other => panic!("{other:?}"),
    }
    let path = flexmodel_tests::artifacts_dir().join("retrieve.wasm");
    let e = rt.load_file(&path).unwrap_err();
    assert!(e.to_string().contains("retrieve.wasm"), "{e}");
    assert_eq!(rt.compiles(), 0);
}

#[test]
fn a_compile_bomb_fails_with_compile_limit_within_the_time_budget() {
    let root = fresh_dir("bomb");
    let rt = cached_runtime(&root, |c| c.compile.timeout = Duration::from_secs(3));
    // 9 KB; about 18 s to compile without a limit (Intel Xeon, 2 cores).
    let bomb = compile_bomb(500, 200);
    eprintln!("bomb: {} bytes", bomb.len());
    let start = Instant::now();
    let e = rt.load(&bomb).unwrap_err();
    let took = start.elapsed();
    eprintln!("{e} after {took:?}");
    match &e {
        LoadError::CompileLimit { plugin, limit } => {
            assert!(plugin.starts_with("sha256:"), "{plugin}");
            assert!(
                limit.contains("time") || limit.contains("memory"),
                "{limit}"
            );
        }
        other => panic!("expected CompileLimit, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Nothing was cached, and a good plugin still loads.
    assert!(rt.cache_entry(&bomb).is_some_and(|p| !p.exists()));
    rt.load(&wasm("scale"))
        .expect("a good plugin after the bomb");
}

#[test]
fn a_compile_bomb_fails_with_compile_limit_at_the_memory_budget() {
    let root = fresh_dir("bomb-mem");
    let rt = cached_runtime(&root, |c| {
        c.compile.timeout = Duration::from_secs(60);
        c.compile.max_memory_bytes = 400 << 20;
    });
    let e = rt.load(&compile_bomb(1500, 200)).unwrap_err();
    eprintln!("{e}");
    assert!(
        matches!(&e, LoadError::CompileLimit { limit, .. } if limit.contains("memory")),
        "{e}"
    );
}

#[test]
fn processes_of_a_machine_compile_a_component_once() {
    // Two runtimes (two engines, as two MPI processes would have) load the
    // same new component at the same time: one compiles, the other waits on
    // the entry's lock and takes the cached artifact.
    let root = fresh_dir("once");
    let bytes = Arc::new(wasm("probe"));
    let rts: Vec<Arc<Runtime>> = (0..2).map(|_| cached_runtime(&root, |_| {})).collect();
    let handles: Vec<_> = rts
        .iter()
        .map(|rt| {
            let (rt, b) = (rt.clone(), bytes.clone());
            std::thread::spawn(move || rt.load(&b).map(|p| p.info.name.clone()))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), "probe");
    }
    assert_eq!(rts.iter().map(|r| r.compiles()).sum::<u64>(), 1);
}

#[test]
fn the_cache_is_bounded_and_evicts_the_least_recently_used() {
    let root = fresh_dir("evict");
    let names = ["retrieve", "scale", "ablate"];
    let sizes: Vec<u64> = names
        .iter()
        .map(|n| {
            let rt = cached_runtime(&fresh_dir(&format!("size-{n}")), |_| {});
            rt.load(&wasm(n)).unwrap();
            std::fs::metadata(rt.cache_entry(&wasm(n)).unwrap())
                .unwrap()
                .len()
        })
        .collect();
    // Room for the two largest, not for all three.
    let mut sorted = sizes.clone();
    sorted.sort();
    let bound = sorted[1] + sorted[2];
    for n in names {
        let rt = cached_runtime(&root, |c| c.cache.max_bytes = bound);
        rt.load(&wasm(n)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = cached_runtime(&root, |c| c.cache.max_bytes = bound);
    let cache = rt.cache().unwrap();
    assert!(cache.size() <= bound, "{} > {bound}", cache.size());
    assert!(
        !rt.cache_entry(&wasm("retrieve")).unwrap().exists(),
        "oldest entry kept"
    );
    assert!(
        rt.cache_entry(&wasm("ablate")).unwrap().exists(),
        "newest entry evicted"
    );
}

/// Load `name` into a fresh cache under `root`, return the entry's path.
fn cache_one(root: &std::path::Path, name: &str) -> PathBuf {
    let rt = cached_runtime(root, |_| {});
    rt.load(&wasm(name)).unwrap();
    let p = rt.cache_entry(&wasm(name)).unwrap();
    assert!(p.exists());
    p
}

#[test]
fn a_tampered_cache_entry_is_recompiled_never_run() {
    let root = fresh_dir("tamper");
    let entry = cache_one(&root, "scale");
    // Flip bytes in the native code (the end of the artifact) and keep the
    // file otherwise intact: the old checksum scheme would have accepted a
    // matching `.sha256` written next to it.
    let mut b = std::fs::read(&entry).unwrap();
    let n = b.len();
    for x in &mut b[n / 2..n / 2 + 64] {
        *x ^= 0xff;
    }
    std::fs::write(&entry, &b).unwrap();
    let rt = cached_runtime(&root, |_| {});
    let p = rt.load(&wasm("scale")).unwrap();
    assert_eq!(rt.compiles(), 1, "a tampered entry must be recompiled");
    let h = flexmodel::hooks::WasmHook::new(p, r#"{"factor": 3}"#).unwrap();
    let mut t = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
    flexmodel::hooks::Hook::call(&h, &ctx(), &mut t).unwrap();
    assert_eq!(t.double_value(&[0, 0]), 3.0);
    // The entry was rewritten and is valid again.
    let rt2 = cached_runtime(&root, |_| {});
    rt2.load(&wasm("scale")).unwrap();
    assert_eq!(rt2.compiles(), 0);
}

#[test]
fn another_plugins_entry_under_this_ones_name_is_not_run() {
    let root = fresh_dir("swap");
    let a = cache_one(&root, "scale");
    let b = cache_one(&root, "retrieve");
    std::fs::copy(&b, &a).unwrap();
    let rt = cached_runtime(&root, |_| {});
    let p = rt.load(&wasm("scale")).unwrap();
    assert_eq!(
        p.info.name, "scale",
        "loading scale ran another plugin's code"
    );
    assert_eq!(rt.compiles(), 1);
}

#[test]
fn a_planted_symlink_is_neither_followed_nor_written_through() {
    let root = fresh_dir("symlink");
    let rt = cached_runtime(&root, |_| {});
    let entry = rt.cache_entry(&wasm("ablate")).unwrap();
    let victim = root.join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, &entry).unwrap();
    rt.load(&wasm("ablate")).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let m = std::fs::symlink_metadata(&entry).unwrap();
    assert!(m.file_type().is_file(), "the entry is now a regular file");
}

#[test]
fn an_unsafe_cache_directory_is_refused_clearly() {
    let root = fresh_dir("perms");
    let cache = root.join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let c = RuntimeConfig {
        cache_dir: Some(cache.clone()),
        cache_key_file: Some(root.join("keys").join("cache.key")),
        ..RuntimeConfig::default()
    };
    let e = Runtime::new(c).err().expect("refused");
    assert!(matches!(e, LoadError::Cache { .. }), "{e}");
    assert!(e.to_string().contains("writable by group or others"), "{e}");
    // The key may not live in the cache directory.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    let c = RuntimeConfig {
        cache_dir: Some(cache.clone()),
        cache_key_file: Some(cache.join("cache.key")),
        ..RuntimeConfig::default()
    };
    let e = Runtime::new(c).err().expect("refused");
    assert!(e.to_string().contains("must not be inside"), "{e}");
    // A symlink instead of a directory.
    let link = root.join("link");
    std::os::unix::fs::symlink(&cache, &link).unwrap();
    let c = RuntimeConfig {
        cache_dir: Some(link),
        cache_key_file: Some(root.join("keys").join("cache.key")),
        ..RuntimeConfig::default()
    };
    let e = Runtime::new(c).err().expect("refused");
    assert!(e.to_string().contains("symlink"), "{e}");
}

fn ctx() -> flexmodel::hooks::CallContext {
    flexmodel::hooks::CallContext {
        hook_point: "blocks.0.hook_resid_post".into(),
        rank: flexmodel::hooks::RankInfo::SINGLE,
        forward_index: 0,
        generation: None,
        backward: false,
        tokens: None,
    }
}

fn ids() -> Tensor {
    Tensor::from_slice(&[3i64, 17, 42, 5, 88, 9]).view([1, 6])
}

#[test]
fn outputs_record_their_plugin_and_a_taken_key_is_an_error() {
    let rt = runtime();
    let retrieve = rt.load(&wasm("retrieve")).unwrap();
    let hostile = rt.load(&wasm("hostile")).unwrap();
    let mut fm = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    fm.register_wasm(&retrieve, "blocks.0.hook_resid_post", "{}", &["r"])
        .unwrap();
    let out = fm.forward(&ids(), &Groups::All).unwrap();
    let by = &out.producers["transformer.h.0"];
    assert!(
        by.starts_with("retrieve@") && by.contains("sha256:"),
        "{by}"
    );
    // Saved with the file: safetensors metadata names the producer.
    let path =
        std::env::temp_dir().join(format!("flexmodel-prov-{}.safetensors", std::process::id()));
    flexmodel::api::save_safetensors(&path, &out.outputs, &out.producers).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = &header["__metadata__"];
    assert_eq!(
        meta[flexmodel::api::producer_key("transformer.h.0")],
        serde_json::Value::String(by.clone())
    );
    let _ = std::fs::remove_file(&path);

    // A later plugin emitting under the key retrieve already holds: an
    // error naming both, never a silent `#2`.
    let h = fm
        .register_wasm(
            &hostile,
            "blocks.0.hook_resid_post",
            r#"{"mode": "emit-point"}"#,
            &["h"],
        )
        .unwrap();
    match fm.forward(&ids(), &Groups::All) {
        Err(FlexError::Hook { error, partial }) => {
            assert_eq!(error.plugin, "hostile");
            assert!(
                matches!(&error.kind, HookErrorKind::OutputConflict(c)
                    if c.key == "transformer.h.0" && c.owner.starts_with("retrieve@")),
                "{error}"
            );
            // The earlier plugin's output is intact.
            let partial = partial.into_inner().unwrap();
            assert!(partial["transformer.h.0"].equal(&out.outputs["transformer.h.0"]));
        }
        other => panic!("{other:?}"),
    }
    // The model is unchanged: without the hostile hook, the same logits.
    fm.remove(h);
    let again = fm.forward(&ids(), &Groups::All).unwrap();
    assert!(again.logits.equal(&out.logits));
}

#[test]
fn per_forward_output_caps_span_every_hook_and_every_generation_step() {
    let rt = runtime();
    let retrieve = rt.load(&wasm("retrieve")).unwrap();
    let mut fm = FlexModel::load(&model_dir("gpt2-tiny"), Kind::Float, Device::Cpu).unwrap();
    fm.register_wasm(
        &retrieve,
        "blocks.*.hook_resid_post",
        r#"{"slice": [null, -1]}"#,
        &[],
    )
    .unwrap();
    let n_blocks = fm.forward(&ids(), &Groups::All).unwrap().outputs.len() as u64;
    assert!(n_blocks >= 2);
    // One forward fits, a forward with one more output does not.
    fm.set_forward_limits(ForwardLimits {
        max_outputs: n_blocks - 1,
        ..ForwardLimits::default()
    });
    match fm.forward(&ids(), &Groups::All) {
        Err(FlexError::Hook { error, .. }) => {
            assert!(
                matches!(error.kind, HookErrorKind::ForwardLimit { .. }),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Generation: each step fits, the sum over 4 steps does not.
    fm.set_forward_limits(ForwardLimits {
        max_outputs: 3 * n_blocks,
        ..ForwardLimits::default()
    });
    fm.forward(&ids(), &Groups::All).expect("one forward fits");
    let opts = GenerateOptions {
        max_new_tokens: 4,
        ..GenerateOptions::default()
    };
    match fm.generate(&ids(), &Groups::All, &opts, |_, _| {}) {
        Err(FlexError::Hook { error, .. }) => {
            assert!(
                matches!(error.kind, HookErrorKind::ForwardLimit { .. }),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
}

fn tp2() -> FlexModel {
    let mut o = Options::new(1, 1, 2).unwrap();
    o.timeout = Duration::from_secs(30);
    assert!(
        o.check_edits,
        "rank agreement is on by default, in release builds too"
    );
    FlexModel::load_with(&model_dir("gpt2-tiny"), &o).unwrap()
}

fn expect_diverged(dm: &mut FlexModel, what: &str) {
    match dm.forward(&ids(), &Groups::All) {
        Err(FlexError::Hook { error, .. }) => {
            assert_eq!(error.plugin, "hostile");
            assert!(
                matches!(&error.kind, HookErrorKind::Diverged { message } if message.contains(what)),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_plugin_that_differs_per_tp_rank_fails_every_rank_with_diverged() {
    let rt = runtime();
    let hostile = rt.load(&wasm("hostile")).unwrap();
    // A replicated point (the residual stream) and a split point (MLP hidden).
    for point in ["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post"] {
        let mut dm = tp2();
        dm.register_wasm(&hostile, point, r#"{"mode": "diverge"}"#, &[])
            .unwrap();
        expect_diverged(&mut dm, "edit");
    }
    // Outputs: rank 1's would have been dropped silently.
    let mut dm = tp2();
    dm.register_wasm(
        &hostile,
        "blocks.1.hook_resid_post",
        r#"{"mode": "diverge-emit"}"#,
        &[],
    )
    .unwrap();
    expect_diverged(&mut dm, "output");
}

#[test]
fn per_forward_output_caps_hold_on_a_mesh_and_across_its_generation_steps() {
    let rt = runtime();
    let retrieve = rt.load(&wasm("retrieve")).unwrap();
    let mut o = Options::new(2, 1, 2).unwrap();
    o.timeout = Duration::from_secs(30);
    // gpt2-tiny at PP2: each stage holds one block, so one output per stage
    // and forward: one forward fits, four generation steps do not.
    o.forward_limits = ForwardLimits {
        max_outputs: 3,
        ..ForwardLimits::default()
    };
    let mut dm = FlexModel::load_with(&model_dir("gpt2-tiny"), &o).unwrap();
    dm.register_wasm(
        &retrieve,
        "blocks.*.hook_resid_post",
        r#"{"slice": [null, -1]}"#,
        &[],
    )
    .unwrap();
    dm.forward(&ids(), &Groups::All)
        .expect("one forward fits on every stage");
    let opts = GenerateOptions {
        max_new_tokens: 4,
        ..GenerateOptions::default()
    };
    match dm.generate(&ids(), &Groups::All, &opts, |_, _| {}) {
        Err(FlexError::Hook { error, .. }) => {
            assert!(
                matches!(error.kind, HookErrorKind::ForwardLimit { .. }),
                "{error}"
            )
        }
        other => panic!("{other:?}"),
    }
}
