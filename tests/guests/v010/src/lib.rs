//! A plugin built against the frozen `flexmodel:hook@0.1.0` contract
//! (`wit/hook.wit` here is that version, unchanged): it doubles the
//! activation. Hosts of later 0.1.x versions must run it unchanged.
wit_bindgen::generate!({
    path: "wit",
    world: "hook-plugin",
});

use exports::flexmodel::hook::plugin::Guest;
use flexmodel::hook::tensor::Activation;
use flexmodel::hook::types::{Access, CallContext, EditMode, HookError, PluginInfo};

struct V010;

impl Guest for V010 {
    fn metadata() -> PluginInfo {
        PluginInfo {
            name: "v010".into(),
            version: "0.1.0".into(),
            description: "Doubles the activation (built against WIT 0.1.0)".into(),
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
        act.scale(&Vec::new(), 2.0)
    }
}

export!(V010);
