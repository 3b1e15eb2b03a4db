//! The crate's layout rules, checked on its sources: the top-level modules (the folders along
//! the request path) import each other without cycles, and a file past 550 lines says why
//! in its module docs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> (PathBuf, Vec<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    (root, files)
}

/// The top-level module of `file`, and the top-level modules its code (not its comments)
/// names through `crate::`.
fn imports(root: &Path, file: &Path) -> (String, BTreeSet<String>) {
    let rel = file.strip_prefix(root).unwrap();
    let top = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string();
    let text = std::fs::read_to_string(file).unwrap();
    let mut refs = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for part in line.split("crate::").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            // `retry` and `breaker` are re-exports of `policy`'s modules.
            let name = match name.as_str() {
                "retry" | "breaker" => "policy".to_string(),
                _ => name,
            };
            if !name.is_empty() && name != top {
                refs.insert(name);
            }
        }
    }
    (top, refs)
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let (root, files) = src();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let (top, refs) = imports(&root, f);
        graph.entry(top).or_default().extend(refs);
    }
    graph.remove("lib");
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    // Depth-first search for a path back to the start.
    fn reaches(
        g: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        to: &str,
        seen: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> bool {
        for next in g.get(from).into_iter().flatten() {
            if next == to {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if reaches(g, next, to, seen, path) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    for m in &modules {
        let mut path = vec![m.clone()];
        let found = reaches(&graph, m, m, &mut BTreeSet::new(), &mut path);
        assert!(!found, "import cycle: {}", path.join(" -> "));
    }
    assert!(
        modules.len() > 10,
        "the scan found the modules: {modules:?}"
    );
}

#[test]
fn long_files_say_why() {
    let (root, files) = src();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines = text.lines().count();
        if lines > 550 {
            let docs: Vec<&str> = text
                .lines()
                .take_while(|l| l.starts_with("//!") || l.is_empty())
                .map(|l| l.trim_start_matches("//!").trim())
                .collect();
            let docs = docs.join(" ");
            assert!(
                docs.contains("long by choice") || docs.contains("one long file"),
                "{} has {lines} lines and no reason in its module docs",
                f.strip_prefix(&root).unwrap().display()
            );
        }
    }
}
