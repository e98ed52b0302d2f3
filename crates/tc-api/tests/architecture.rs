//! Architecture invariants checked on the resolved dependency graph (Cargo.lock): the pure crates
//! never depend, even indirectly, on an async runtime, a web framework, a database, an HTTP client,
//! a file watcher, a system-information crate or a zip library. Dev-dependencies are included, so
//! the check is stricter than what the crates link.

use std::collections::{BTreeMap, BTreeSet};

fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"))
        .expect("Cargo.lock");
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_string())
            .expect("package name");
        let mut dependencies = vec![];
        if let Some(start) = block.find("dependencies = [") {
            let rest = &block[start + "dependencies = [".len()..];
            let list = &rest[..rest.find(']').expect("closing bracket")];
            for entry in list.split(',') {
                let entry = entry.trim().trim_matches('"');
                if let Some(dependency) = entry.split_whitespace().next() {
                    dependencies.push(dependency.to_string());
                }
            }
        }
        graph.entry(name).or_default().extend(dependencies);
    }
    graph
}

fn closure(graph: &BTreeMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut pending = vec![root.to_string()];
    while let Some(name) = pending.pop() {
        if seen.insert(name.clone()) {
            pending.extend(graph.get(&name).cloned().unwrap_or_default());
        }
    }
    seen
}

#[test]
fn pure_crates_stay_pure() {
    let graph = lock_graph();
    let forbidden = [
        "tokio", "axum", "redb", "reqwest", "notify", "sysinfo", "zip", "hyper",
    ];
    for root in ["tc-api", "tc-proto", "tc-reconcile"] {
        assert!(graph.contains_key(root), "{root} is not in Cargo.lock");
        let reached = closure(&graph, root);
        let bad: Vec<&str> = forbidden
            .iter()
            .copied()
            .filter(|f| reached.contains(*f))
            .collect();
        assert!(bad.is_empty(), "{root} depends on {bad:?}");
    }
}
