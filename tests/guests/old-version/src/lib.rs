//! A component built against an old `flexmodel:hook@0.0.1` contract: the host
//! must refuse it with an error naming both versions.
wit_bindgen::generate!({
    inline: "
        package flexmodel:hook@0.0.1;
        interface plugin {
            metadata: func() -> string;
            on-forward: func(hook-point: string, values: list<f32>) -> list<f32>;
        }
        world hook-plugin {
            export plugin;
        }
    ",
});

struct C;
impl exports::flexmodel::hook::plugin::Guest for C {
    fn metadata() -> String {
        "old".into()
    }
    fn on_forward(_hook_point: String, values: Vec<f32>) -> Vec<f32> {
        values
    }
}
export!(C);
