//! Bindings generated from `wit/hook.wit` by `wasmtime::component::bindgen!`.
//! Never edited by hand: change the WIT and rebuild.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "hook-plugin",
    with: {
        "flexmodel:hook/tensor.activation": crate::hooks::activation::ActivationBuf,
    },
    imports: { default: trappable },
});

pub use self::flexmodel::hook::types as wit_types;
