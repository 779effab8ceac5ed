//! The crate's shape, read from its source: no import circle between files,
//! and a small public API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, as its module path (`beat::beat_loop`).
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("src").flatten() {
            let path = entry.path();
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("")
                .to_owned();
            if path.is_dir() {
                walk(&path, &format!("{prefix}{name}::"), out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = match name.as_str() {
                    "lib" => "crate".to_owned(),
                    "mod" => prefix.trim_end_matches("::").to_owned(),
                    _ => format!("{prefix}{name}"),
                };
                out.insert(module, std::fs::read_to_string(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), "", &mut out);
    out
}

/// The file-level import graph: `a` -> the modules it names by a `crate::`
/// path: its `use` lines, paths in code, and doc links (a link to a layer
/// below is a dependency too, of the docs).
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (module, text) in modules {
        let mut deps = BTreeSet::new();
        // Test modules may reach anywhere; the layering is about the code.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let end = rest
                .find(|c: char| {
                    !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')
                })
                .unwrap_or(rest.len());
            let segments: Vec<&str> = rest[..end]
                .split("::")
                .take_while(|s| s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_'))
                .collect();
            // The longest prefix that is a module (a file) of the crate.
            for n in (1..=segments.len()).rev() {
                let candidate = segments[..n].join("::");
                if modules.contains_key(&candidate) && candidate != *module {
                    deps.insert(candidate);
                    break;
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let graph = imports(&modules());
    // Depth-first search for a cycle, reporting it.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", cycle.join(" -> "));
        }
    }
    assert!(
        graph.len() > 20,
        "the walk found the files: {:?}",
        graph.keys()
    );
}

#[test]
fn the_layers_point_one_way() {
    // model <- transport <- config <- read, operate / beat <- handle, run <- the facade.
    let rank = |module: &str| match module.split("::").next().unwrap_or("") {
        "model" => 0,
        "transport" => 1,
        "config" => 2,
        "read" | "operate" | "beat" => 3,
        "handle" | "run" => 4,
        _ => 5,
    };
    let graph = imports(&modules());
    let mut upward = Vec::new();
    for (module, deps) in &graph {
        for dep in deps {
            // The builder holds the sidecar's process probe (beat::probe).
            let allowed = module == "config::builder" && dep == "beat::probe";
            if rank(dep) > rank(module) && !allowed {
                upward.push(format!("{module} -> {dep}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports against the layers: {upward:?}");
}

/// The names a user of the crate meets at its top: re-exports, free
/// functions, public modules and their items (hidden ones excluded).
#[test]
fn the_public_api_stays_small() {
    let modules = modules();
    let lib = &modules["crate"];
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut hidden_next = false;
    for line in lib.lines().map(str::trim) {
        if line == "#[doc(hidden)]" {
            hidden_next = true;
            continue;
        }
        let hidden = std::mem::take(&mut hidden_next);
        if hidden {
            continue;
        }
        if let Some(rest) = line.strip_prefix("pub use ") {
            let list = rest.trim_end_matches(';');
            let items = match list.split_once('{') {
                Some((_, inner)) => inner.trim_end_matches('}').to_owned(),
                None => list.rsplit("::").next().unwrap_or("").to_owned(),
            };
            names.extend(
                items
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty()),
            );
        } else if let Some(rest) = line.strip_prefix("pub fn ") {
            names.insert(rest.split('(').next().unwrap_or("").to_owned());
        } else if let Some(rest) = line.strip_prefix("pub mod ") {
            let module = rest.trim_end_matches(';').to_owned();
            names.insert(module.clone());
            let text = &modules[&module];
            for item in text.lines().filter(|l| l.starts_with("pub ")) {
                let word = item.split_whitespace().nth(2).unwrap_or("");
                names.insert(format!(
                    "{module}::{}",
                    word.split(['(', '<', '{', ':', ';']).next().unwrap_or("")
                ));
            }
        }
    }
    assert!(
        names.len() <= 30,
        "{} top-level names (at most 30): {names:?}",
        names.len()
    );
    for seed in [
        "start_heartbeat",
        "increment_job",
        "increment_error",
        "Heartbeat",
    ] {
        assert!(names.contains(seed), "{seed} is part of the API: {names:?}");
    }
}
