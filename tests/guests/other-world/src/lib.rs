//! A valid component that targets some other world: the host must refuse it.
wit_bindgen::generate!({
    inline: "
        package other:thing@1.0.0;
        world calculator {
            export add: func(a: u32, b: u32) -> u32;
        }
    ",
});

struct C;
impl Guest for C {
    fn add(a: u32, b: u32) -> u32 {
        a.wrapping_add(b)
    }
}
export!(C);
