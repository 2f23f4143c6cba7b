//! Helpers shared by the hostile-plugin tests (`hostile.rs`,
//! `host_work.rs`): a call context on rank 3, a small activation, bit
//! equality, and `expect_failure`.

use std::sync::Arc;

use flexmodel::hooks::{CallContext, Hook, HookError, RankInfo, Runtime, WasmHook};
use flexmodel_tests::wasm;
use tch::{Kind, Tensor};

pub const POINT: &str = "blocks.2.hook_resid_post";

pub fn ctx() -> CallContext {
    CallContext {
        hook_point: POINT.into(),
        rank: RankInfo {
            global_rank: 3,
            tp_rank: 1,
            tp_size: 2,
            world_size: 4,
            ..RankInfo::SINGLE
        },
        forward_index: 0,
        generation: None,
        backward: false,
        tokens: None,
    }
}

pub fn activation() -> Tensor {
    tch::manual_seed(11);
    Tensor::randn([2, 4, 8], (Kind::Float, tch::Device::Cpu))
}

pub fn bits_equal(a: &Tensor, b: &Tensor) -> bool {
    let a: Vec<f32> = Vec::try_from(a.flatten(0, -1)).unwrap();
    let b: Vec<f32> = Vec::try_from(b.flatten(0, -1)).unwrap();
    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()) && a.len() == b.len()
}

/// Run `mode` on `rt`, check the error names plugin, point and rank, that
/// the activation is unchanged, and that a good plugin still works after it
/// (and the hostile plugin fails the same way again: no state leaks).
pub fn expect_failure(rt: &Arc<Runtime>, config: &str) -> HookError {
    let hostile = WasmHook::new(rt.load(&wasm("hostile")).unwrap(), config).unwrap();
    let orig = activation();
    let mut t = orig.copy();
    let err = hostile
        .call(&ctx(), &mut t)
        .expect_err("hostile call must fail");
    eprintln!("{config}: {err}");
    assert_eq!(err.plugin, "hostile");
    assert_eq!(err.hook_point, POINT);
    assert_eq!(err.rank, 3);
    let text = err.to_string();
    assert!(
        text.contains("hostile") && text.contains(POINT) && text.contains("rank 3"),
        "{text}"
    );
    assert!(
        bits_equal(&t, &orig),
        "activation changed by a failed call ({config})"
    );

    // The host keeps serving: a good plugin on the same runtime works.
    let good = WasmHook::new(rt.load(&wasm("scale")).unwrap(), r#"{"factor": 2}"#).unwrap();
    good.call(&ctx(), &mut t)
        .expect("good plugin after a hostile one");
    assert!(bits_equal(&t, &(&orig * 2.0)));

    // The hostile plugin is re-instantiated if it trapped, and fails alike.
    let mut t2 = orig.copy();
    let again = hostile.call(&ctx(), &mut t2).expect_err("fails again");
    assert_eq!(
        std::mem::discriminant(&again.kind),
        std::mem::discriminant(&err.kind)
    );
    assert!(bits_equal(&t2, &orig));
    err
}
