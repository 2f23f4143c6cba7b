//! Checkpoint loading: sharded safetensors, dtypes, devices, and the errors a
//! user gets for a broken or unsupported folder.

use std::path::{Path, PathBuf};

use flexmodel::models::{Model, ModelError, NoHooks, Weights};
use flexmodel_tests::{artifacts_dir, max_abs};
use tch::{Device, Kind, Tensor};

fn models() -> PathBuf {
    artifacts_dir().join("../models")
}

fn reference(name: &str, key: &str) -> Tensor {
    let w = Weights::open_file(&models().join(name).join("reference.safetensors")).unwrap();
    let kind = if key == "input_ids" {
        Kind::Int64
    } else {
        Kind::Float
    };
    w.get(key, kind, Device::Cpu, "test").unwrap()
}

fn logits(dir: &Path, kind: Kind, device: Device) -> Tensor {
    let m = Model::load(dir, kind, device).unwrap();
    m.forward(&reference("gpt2-tiny", "input_ids"), &mut NoHooks)
        .unwrap()
        .to_device(Device::Cpu)
}

#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    let want = reference("gpt2-tiny", "logits");
    let got = logits(
        &models().join("gpt2-tiny-sharded"),
        Kind::Float,
        Device::Cpu,
    );
    assert!(max_abs(&got, &want) <= 1e-4);
    let n = std::fs::read_dir(models().join("gpt2-tiny-sharded"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".safetensors")
        })
        .count();
    assert!(n > 1, "the test checkpoint must really be sharded");
}

#[test]
fn half_precision_dtypes() {
    let want = reference("gpt2-tiny", "logits");
    for kind in [Kind::BFloat16, Kind::Half] {
        let got = logits(&models().join("gpt2-tiny"), kind, Device::Cpu);
        let d = max_abs(&got, &want);
        assert!(d < 5e-2, "{kind:?}: {d}");
    }
    // A bf16 checkpoint loaded as f32, against the f32 checkpoint.
    let got = logits(&models().join("gpt2-tiny-bf16"), Kind::Float, Device::Cpu);
    let d = max_abs(&got, &want);
    assert!(d < 5e-2 && d > 0.0, "{d}");
}

#[test]
fn cuda_when_present() {
    if !flexmodel::models::cuda::available() {
        // Nothing to run here; the CLI refuses `--device cuda` cleanly (tests/cli.rs).
        return;
    }
    let want = reference("llama-gqa", "logits");
    let m = Model::load(&models().join("llama-gqa"), Kind::Float, Device::Cuda(0)).unwrap();
    let got = m
        .forward(&reference("llama-gqa", "input_ids"), &mut NoHooks)
        .unwrap();
    assert_eq!(got.device(), Device::Cuda(0));
    assert!(max_abs(&got.to_device(Device::Cpu), &want) <= 1e-3);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flexmodel-loading-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn missing_tensor_is_named() {
    let dir = scratch("missing");
    copy_dir(&models().join("gpt2-tiny"), &dir);
    let w = Weights::open(&dir).unwrap();
    let keep: Vec<(String, Tensor)> = w
        .names()
        .filter(|n| *n != "transformer.h.1.mlp.c_fc.weight")
        .map(|n| {
            (
                n.to_string(),
                w.get(n, Kind::Float, Device::Cpu, "test").unwrap(),
            )
        })
        .collect();
    drop(w);
    Tensor::write_safetensors(&keep, dir.join("model.safetensors")).unwrap();
    match Model::load(&dir, Kind::Float, Device::Cpu) {
        Err(ModelError::MissingTensor { name, .. }) => {
            assert_eq!(name, "transformer.h.1.mlp.c_fc.weight")
        }
        other => panic!("expected MissingTensor, got {:?}", other.err()),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unsupported_or_broken_folders_give_clear_errors() {
    let dir = scratch("arch");
    copy_dir(&models().join("gpt2-tiny"), &dir);
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "t5", "vocab_size": 10}"#,
    )
    .unwrap();
    let e = Model::load(&dir, Kind::Float, Device::Cpu).err().unwrap();
    assert!(
        matches!(e, ModelError::UnsupportedArchitecture(ref a) if a == "t5"),
        "{e}"
    );
    assert!(
        e.to_string().contains("gpt2"),
        "lists what is supported: {e}"
    );

    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert!(matches!(
        Model::load(&dir, Kind::Float, Device::Cpu),
        Err(ModelError::Config { .. })
    ));

    std::fs::copy(
        models().join("gpt2-tiny/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    assert!(matches!(
        Model::load(&dir, Kind::Float, Device::Cpu),
        Err(ModelError::Safetensors { .. })
    ));

    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(matches!(
        Model::load(&dir, Kind::Float, Device::Cpu),
        Err(ModelError::Io { .. })
    ));
    assert!(matches!(
        Model::load(Path::new("/nonexistent"), Kind::Float, Device::Cpu),
        Err(ModelError::Io { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_shapes_are_refused() {
    let dir = scratch("shape");
    copy_dir(&models().join("gpt2-tiny"), &dir);
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"n_embd\": 64", "\"n_embd\": 32");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    assert!(matches!(
        Model::load(&dir, Kind::Float, Device::Cpu),
        Err(ModelError::BadShape { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rank's slice of a tensor-parallel weight, read from the file alone,
/// equals the same slice of the whole tensor; slices outside are refused.
#[test]
fn a_rank_reads_only_its_slice() {
    let w = Weights::open(&models().join("llama-mesh")).unwrap();
    let name = "model.layers.0.self_attn.o_proj.weight";
    let full = w.get(name, Kind::Float, Device::Cpu, "test").unwrap();
    let shape = full.size();
    for (dim, start, len) in [(0usize, 16i64, 16i64), (1, 32, 32), (1, 0, 1)] {
        let part = w
            .get_part(
                name,
                &shape,
                dim,
                start,
                len,
                Kind::Float,
                Device::Cpu,
                "test",
            )
            .unwrap();
        assert!(
            part.equal(&full.narrow(dim as i64, start, len)),
            "dim {dim} [{start}, +{len})"
        );
    }
    let two = w
        .get_parts(
            name,
            &shape,
            0,
            &[(0, 8), (32, 8)],
            Kind::Float,
            Device::Cpu,
            "test",
        )
        .unwrap();
    assert!(two.equal(&Tensor::cat(
        &[full.narrow(0, 0, 8), full.narrow(0, 32, 8)],
        0
    )));
    assert!(
        w.get_part(name, &shape, 1, 60, 8, Kind::Float, Device::Cpu, "test")
            .is_err()
    );
    assert!(
        w.get_part(name, &[1, 2], 0, 0, 1, Kind::Float, Device::Cpu, "test")
            .is_err()
    );
}
