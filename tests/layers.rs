//! The module layering of docs/ARCHITECTURE.md, checked on the source.
//!
//! Every `crate::` and `super::` path in `src/` is resolved to the unit it
//! names (the longest entry of [`LAYERS`] it starts with), and a unit may
//! only name units of lower layers: dependencies run one way, so no module
//! imports from a module that imports it. Units of one layer (the processor
//! and the delivery worker, say) do not name each other at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lowest first. A module not listed belongs to its nearest listed parent.
const LAYERS: &[&[&str]] = &[
    &["events", "metrics", "retry"],
    &["codec", "templates", "testing"],
    &["gdpr::shredding"],
    &["core::ids", "core::slots"],
    &["core::rules"],
    &["core::state"],
    &["core::clock"],
    &["core::nurture"],
    &["core::apply"],
    &["core"],
    &["ml::table", "ml::derived"],
    &["ml::linear"],
    &["ml::trees"],
    &["ml", "forecast"],
    &["analytics"],
    &["config"],
    &["store"],
    &["registry"],
    &["kafka"],
    &["gdpr"],
    &["pipeline", "notify"],
    &["import", "simulate"],
    &["api"],
    &["cli"],
];

fn rank(unit: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&unit))
        .expect("units come from LAYERS")
}

/// The listed unit a module path belongs to.
fn unit_of(path: &[String]) -> Option<&'static str> {
    (1..=path.len()).rev().find_map(|n| {
        let joined = path[..n].join("::");
        LAYERS
            .iter()
            .flat_map(|layer| layer.iter())
            .find(|u| **u == joined)
            .copied()
    })
}

/// The module path of a source file under `src/`: `src/core/nurture/fire.rs`
/// is `core::nurture::fire`, `src/core/mod.rs` is `core`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module paths a file names through `crate::` and `super::`.
fn references(module: &[String], text: &str) -> Vec<(Vec<String>, usize)> {
    let mut found = Vec::new();
    // Inline modules (`mod tests {`), with the indent that closes each.
    let mut inline: Vec<(String, String)> = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let indent: String = line.chars().take_while(|c| *c == ' ').collect();
        if inline
            .last()
            .is_some_and(|(_, close)| line == format!("{close}}}"))
        {
            inline.pop();
        }
        let words: Vec<&str> = code.split_whitespace().collect();
        if let [.., "mod", name, "{"] = words.as_slice() {
            inline.push((name.to_string(), indent.clone()));
        }
        let module: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(name, _)| name.clone()))
            .collect();
        let mut rest = code;
        while let Some(at) = rest.find("crate::").or_else(|| rest.find("super::")) {
            let preceded_by_ident = rest[..at].chars().next_back().is_some_and(is_ident);
            let tail = &rest[at..];
            rest = &rest[at + 6..];
            if preceded_by_ident {
                continue;
            }
            let mut base: Vec<String> = if tail.starts_with("crate::") {
                Vec::new()
            } else {
                module.clone()
            };
            let mut segments = tail.split("::");
            let mut path_rest = Vec::new();
            for segment in segments.by_ref() {
                let name: String = segment.chars().take_while(|c| is_ident(*c)).collect();
                match name.as_str() {
                    "crate" => {}
                    "super" => {
                        base.pop();
                    }
                    "" => break,
                    _ => {
                        path_rest.push(name.clone());
                        if name.len() != segment.len() {
                            break;
                        }
                    }
                }
            }
            base.extend(path_rest);
            found.push((base, line_no + 1));
        }
    }
    found
}

#[test]
fn dependencies_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut edges: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut unlisted = Vec::new();
    for file in &files {
        let module = module_path(&src, file);
        if module == ["lib"] || module == ["main"] {
            continue;
        }
        let Some(from) = unit_of(&module) else {
            unlisted.push(module.join("::"));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable source");
        assert!(
            !text.contains("crate::{"),
            "{}: name each module in its own `use crate::module::...` (grouped crate imports hide layers)",
            file.display()
        );
        for (target, line) in references(&module, &text) {
            let Some(to) = unit_of(&target) else {
                continue;
            };
            if to == from {
                continue;
            }
            *edges.entry((from, to)).or_default() += 1;
            if rank(to) >= rank(from) {
                violations.push(format!(
                    "{}:{line}: `{from}` names `{}` (`{to}` is not below `{from}`)",
                    file.strip_prefix(&src).unwrap().display(),
                    target.join("::"),
                ));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "modules in no layer of tests/layers.rs: {unlisted:?}"
    );
    assert!(
        violations.is_empty(),
        "imports against the layer order:\n{}",
        violations.join("\n")
    );
    // The check must have seen the tree it guards.
    assert!(
        edges.contains_key(&("pipeline", "core::apply")),
        "{edges:?}"
    );
    assert!(edges.contains_key(&("store", "core::state")), "{edges:?}");
}

#[test]
fn the_check_sees_a_circle() {
    let module: Vec<String> = vec!["core".into(), "state".into()];
    let refs = references(
        &module,
        "use crate::core::apply::Output;\nuse super::nurture::NurtureState; // crate::ml\n",
    );
    let units: Vec<_> = refs.iter().map(|(p, _)| unit_of(p).unwrap()).collect();
    assert_eq!(units, ["core::apply", "core::nurture"]);
    assert!(rank("core::apply") > rank("core::state"));
    // `super` in an inline test module is the file's own module.
    let refs = references(
        &module,
        "#[cfg(test)]\nmod tests {\n    use super::*;\n}\nuse super::rules::X;\n",
    );
    let paths: Vec<String> = refs.iter().map(|(p, _)| p.join("::")).collect();
    assert_eq!(paths, ["core::state", "core::rules::X"]);
}

/// Metric names are listed once, in `src/metrics/mod.rs`; everything else
/// reports through an internal event (see `metrics::internal_events`).
#[test]
fn metric_names_are_declared_in_one_place() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let declared = src.join("metrics").join("mod.rs");
    let mut strays = Vec::new();
    for file in files.iter().filter(|f| **f != declared) {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            if line.contains("\"leadflow_") {
                strays.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        strays.is_empty(),
        "metric names outside src/metrics/mod.rs:\n{}",
        strays.join("\n")
    );
    let names = std::fs::read_to_string(&declared)
        .expect("readable metrics")
        .matches("\"leadflow_")
        .count();
    assert!(
        names >= 20,
        "the metrics are declared in src/metrics/mod.rs ({names} found)"
    );
}
