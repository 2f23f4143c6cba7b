//! Fidelity against Hugging Face transformers: the tiny random models made by
//! `tests/reference/make_models.py` (PyTorch, eager attention) are loaded
//! here and every hook point's activation and the logits must match what
//! PyTorch's own forward hooks recorded, within 1e-4 (f32). Also: a `scale`
//! ×2 WASM edit at a block output gives the logits of a PyTorch forward hook
//! doing the same.

use std::path::PathBuf;

use flexmodel::hooks::{CallContext, Hook, RankInfo, WasmHook};
use flexmodel::models::{HookSite, Model, ModelError, NoHooks, Weights};
use flexmodel_tests::{Capture, max_abs, runtime, wasm};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn models_dir() -> PathBuf {
    std::env::var_os("FLEXMODEL_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../artifacts/models"))
}

fn model_names() -> Vec<String> {
    let dir = models_dir();
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/make-models.sh", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("reference.safetensors").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no reference models in {}", dir.display());
    v
}

struct Reference {
    w: Weights,
    names: Vec<String>,
}

impl Reference {
    fn open(name: &str) -> Reference {
        let dir = models_dir().join(name);
        let w = Weights::open_file(&dir.join("reference.safetensors")).unwrap();
        let names = w.names().map(String::from).collect();
        Reference { w, names }
    }
    fn get(&self, name: &str) -> Tensor {
        let kind = if name == "input_ids" {
            Kind::Int64
        } else {
            Kind::Float
        };
        self.w.get(name, kind, Device::Cpu, "reference").unwrap()
    }
}

#[test]
fn every_hook_point_and_the_logits_match_transformers() {
    for name in model_names() {
        let r = Reference::open(&name);
        let model = Model::load(&models_dir().join(&name), Kind::Float, Device::Cpu).unwrap();
        let ids = r.get("input_ids");
        let mut cap = Capture::default();
        let logits = model.forward(&ids, &mut cap).unwrap();
        let d = max_abs(&logits, &r.get("logits"));
        assert!(d <= TOL, "{name}: logits differ by {d}");
        // Without hooks the forward may take fused paths (no pattern
        // materialised): the same logits.
        let plain = model.forward(&ids, &mut NoHooks).unwrap();
        let d = max_abs(&plain, &r.get("logits"));
        assert!(d <= TOL, "{name}: logits without hooks differ by {d}");

        // Two-sided: every point we expose was recorded by PyTorch, and every
        // recorded point is one we expose, with equal values.
        let ours: Vec<&String> = cap.0.keys().collect();
        let size = ids.size();
        let listed: Vec<String> = model
            .points(size[0], size[1])
            .into_iter()
            .map(|p| p.name)
            .collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        assert_eq!(
            ours.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            listed_sorted,
            "{name}: fired points = listed points"
        );
        let theirs: Vec<&String> = r
            .names
            .iter()
            .filter(|n| !["input_ids", "logits", "edit_logits"].contains(&n.as_str()))
            .collect();
        let mut theirs_sorted: Vec<&String> = theirs.clone();
        theirs_sorted.sort();
        assert_eq!(
            ours, theirs_sorted,
            "{name}: our hook points vs the reference's"
        );
        for p in &listed {
            let (a, b) = (&cap.0[p], r.get(p));
            assert_eq!(a.size(), b.size(), "{name}: shape of {p}");
            assert_eq!(
                model
                    .points(size[0], size[1])
                    .iter()
                    .find(|x| &x.name == p)
                    .unwrap()
                    .shape,
                a.size(),
                "{name}: listed shape of {p}"
            );
            let d = max_abs(a, &b);
            assert!(d <= TOL, "{name}: {p} differs by {d}");
        }
    }
}

/// A hook site calling one hook at one point.
struct One<'a> {
    point: String,
    hook: &'a dyn Hook,
}

impl HookSite for One<'_> {
    fn active(&self, p: &str) -> bool {
        p == self.point
    }
    fn fire(&mut self, point: &str, mut t: Tensor) -> Result<Tensor, ModelError> {
        let c = CallContext {
            hook_point: point.into(),
            rank: RankInfo::SINGLE,
            forward_index: 0,
            generation: None,
            backward: false,
            tokens: None,
        };
        self.hook
            .call(&c, &mut t)
            .map_err(|e| ModelError::Hook(Box::new(e)))?;
        Ok(t)
    }
}

#[test]
fn wasm_scale_edit_matches_a_pytorch_forward_hook() {
    let rt = runtime();
    let scale = WasmHook::new(rt.load(&wasm("scale")).unwrap(), r#"{"factor": 2.0}"#).unwrap();
    for name in model_names() {
        let r = Reference::open(&name);
        let point =
            r.w.metadata("edit_point")
                .expect("edit_point in reference metadata");
        let model = Model::load(&models_dir().join(&name), Kind::Float, Device::Cpu).unwrap();
        let ids = r.get("input_ids");
        let plain = model.forward(&ids, &mut NoHooks).unwrap();
        let edited = model
            .forward(
                &ids,
                &mut One {
                    point: point.clone(),
                    hook: &scale,
                },
            )
            .unwrap();
        let want = r.get("edit_logits");
        let d = max_abs(&edited, &want);
        assert!(d <= TOL, "{name}: edited logits differ by {d}");
        assert!(
            max_abs(&plain, &want) > 1e-2,
            "{name}: the edit must change the logits"
        );
    }
}
