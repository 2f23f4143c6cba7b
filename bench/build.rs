// Bake libtorch's library directory into the binaries' rpath so that tests,
// benches and the CLI run without LD_LIBRARY_PATH. torch-sys exports the
// directory as DEP_TCH_LIBTORCH_LIB because it declares `links = "tch"`.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
