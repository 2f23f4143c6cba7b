//! The `flexmodel-manifest` parser, on the section's bytes and on whole
//! binaries (the section walker that finds it).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = flexmodel::hooks::manifest::Manifest::parse(data) {
        // What parses must round-trip and validate configurations cleanly.
        let again = flexmodel::hooks::manifest::Manifest::parse(m.to_json().as_bytes())
            .expect("a parsed manifest re-parses");
        assert_eq!(again, m);
        let _ = m.validate_config("fuzz", "{\"factor\": 2}");
    }
    let _ = flexmodel::hooks::manifest::read(data);
    let _ = flexmodel::package::pack::strip(data, &["flexmodel-manifest"]);
});
