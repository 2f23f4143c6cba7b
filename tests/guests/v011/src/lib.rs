//! A plugin built against the frozen `flexmodel:hook@0.1.1` contract
//! (`wit/hook.wit` here is that version, unchanged): it doubles the
//! activation and, during generation, emits the step it was told (through
//! 0.1.1's `generation` interface). Hosts of later 0.1.x versions must run
//! it unchanged.
wit_bindgen::generate!({
    path: "wit",
    world: "hook-plugin",
});

use exports::flexmodel::hook::plugin::Guest;
use flexmodel::hook::tensor::Activation;
use flexmodel::hook::types::{Access, CallContext, EditMode, HookError, PluginInfo};
use flexmodel::hook::{generation, output};

struct V011;

impl Guest for V011 {
    fn metadata() -> PluginInfo {
        PluginInfo {
            name: "v011".into(),
            version: "0.1.1".into(),
            description: "Doubles the activation, emits the generation step (WIT 0.1.1)".into(),
            hook_points: Vec::new(),
            edits: true,
        }
    }

    fn init(_config: String) -> Result<Access, HookError> {
        Ok(Access {
            mode: EditMode::InPlace,
            reads: None,
        })
    }

    fn on_forward(_ctx: CallContext, act: &Activation) -> Result<(), HookError> {
        if let Some(g) = generation::current() {
            output::emit("step", &[1], &[g.step as f32])?;
        }
        act.scale(&Vec::new(), 2.0)
    }
}

export!(V011);
