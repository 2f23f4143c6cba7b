//! The source keeps its layering: dependencies flow one way between the
//! library's layers (models → distributed → hooks → package → engine → api → harvest →
//! cli), and
//! the modules inside `hooks/` and `engine/` import each other without
//! cycles. Read from the source files themselves (comments skipped).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/src")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The code of a file without comments and without its unit tests.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Names `prefix` is followed by in `code` (`crate::engine::x` -> `x`).
fn after(code: &str, prefix: &str) -> BTreeSet<String> {
    code.match_indices(prefix)
        .map(|(i, _)| {
            code[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn layers_depend_one_way() {
    // Each layer may use only the layers before it.
    let order = [
        "models",
        "distributed",
        "hooks",
        "package",
        "engine",
        "api",
        "harvest",
        "service",
    ];
    for (i, layer) in order.iter().enumerate() {
        for f in rust_files(&src().join(layer)) {
            let used = after(&code(&f), "crate::");
            for later in &order[i + 1..] {
                assert!(
                    !used.contains(*later),
                    "{} ({layer}) uses crate::{later}",
                    f.display()
                );
            }
        }
    }
}

fn assert_acyclic(folder: &str) {
    let dir = src().join(folder);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in rust_files(&dir) {
        let rel = f.strip_prefix(&dir).unwrap();
        let module = rel
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .replace(".rs", "");
        if module == "mod" {
            continue;
        }
        let c = code(&f);
        let mut deps = after(&c, &format!("crate::{folder}::"));
        if rel.components().count() == 1 {
            deps.extend(after(&c, "super::"));
        }
        deps.remove(&module);
        graph.entry(module).or_default().extend(deps);
    }
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == n) {
            panic!("import cycle: {} -> {n}", path[at..].join(" -> "));
        }
        path.push(n.to_string());
        for m in g
            .get(n)
            .into_iter()
            .flatten()
            .filter(|m| g.contains_key(*m))
        {
            visit(m, g, path, done);
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        visit(n, &graph, &mut Vec::new(), &mut done);
    }
    assert!(graph.len() > 5, "{folder}: modules found: {graph:?}");
}

#[test]
fn the_hook_runtime_has_no_import_cycles() {
    assert_acyclic("hooks");
}

#[test]
fn the_engine_has_no_import_cycles() {
    assert_acyclic("engine");
}
