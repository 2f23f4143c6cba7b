//! Component validation as the loader runs it before compiling: the header
//! check, wasmparser's validator with the features wasmtime enables for
//! components, the top-level import/export names, the standard metadata.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if flexmodel::hooks::artifact::check_header(data).is_err() {
        return;
    }
    let mut v = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    let _ = v.validate_all(data);
    let _ = flexmodel::package::inspect::interface_names(data);
    let _ = flexmodel::package::inspect::metadata(data);
});
