//! `flexmodel-compile`: see the library docs. Not meant to be run by hand.

fn main() {
    std::process::exit(flexmodel_compile::worker_main());
}
