// Bake libtorch's library directory into the binaries' rpath so that tests,
// benches and the CLI run without LD_LIBRARY_PATH. torch-sys exports the
// directory as DEP_TCH_LIBTORCH_LIB because it declares `links = "tch"`.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // The GPU bundle (scripts/gpu-bundle.sh sets FLEXMODEL_LINK_CUDA=1):
    // keep libtorch_cuda.so a dependency of the binaries, which the linker's
    // `--as-needed` drops otherwise (nothing calls into it directly; it
    // registers CUDA with libtorch when loaded). Without it, the host
    // loads it at run time when a CUDA device is asked for.
    if std::env::var_os("FLEXMODEL_LINK_CUDA").is_some() {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    println!("cargo:rerun-if-env-changed=FLEXMODEL_LINK_CUDA");
}
