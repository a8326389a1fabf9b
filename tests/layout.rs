//! The layout's one-way flow, checked: every top-level module of `src/`
//! has a layer, and its code (tests aside) names only modules of lower
//! layers through `crate::`. So there is no import circle among them and
//! nothing reaches up: http and the NATS edge → oidc → accounts and the passes → jobs →
//! signing → store → the adapters (Synapse, DAARION, avatars, token
//! checks, NATS) → telemetry → config → domain → secret, metrics and the
//! outbound HTTP client's defaults.
//!
//! A new module gets a line in `LAYERS`; an arrow that goes up fails here
//! with the file that draws it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. A module may use the ones on
/// the lines above its own, never its own line's other names or below.
const LAYERS: &[&[&str]] = &[
    &["secret", "metrics", "now_ms", "outbound"],
    &["clock"],
    &["domain"],
    &["config"],
    &["telemetry"],
    &["synapse", "daarion", "avatar", "sso", "bus"],
    &["store"],
    &["signing"],
    &["jobs"],
    &["passes", "accounts"],
    &["oidc"],
    &["http", "nats"],
    &["app"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a piece of code names as `crate::name` or inside
/// `crate::{a, b::c, …}`.
fn crate_names(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    names.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            names.push(name);
        }
    }
    names
}

/// Comments removed (a doc comment may speak of any module), and the
/// unit tests at the end of a file.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn modules_only_use_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = layer_of(&top) else {
            panic!("src/{top} has no layer in tests/layout.rs: give it one");
        };
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for name in crate_names(&code) {
            if name == top {
                continue;
            }
            match layer_of(&name) {
                Some(layer) if layer < own => {}
                Some(_) => wrong
                    .entry(relative.display().to_string())
                    .or_default()
                    .push(name),
                None => panic!(
                    "{} names crate::{name}, which has no layer in tests/layout.rs",
                    relative.display()
                ),
            }
        }
    }
    for names in wrong.values_mut() {
        names.sort();
        names.dedup();
    }
    assert!(
        wrong.is_empty(),
        "arrows that go up or sideways (file: modules it names):\n{wrong:#?}"
    );
}

#[test]
fn names_are_read_from_paths_and_groups() {
    assert_eq!(
        crate_names("use crate::{metrics, telemetry::spawn};\nlet x = crate::now_ms();"),
        ["metrics", "telemetry", "now_ms"]
    );
    assert_eq!(
        code_of("let a = 1; // crate::http\n#[cfg(test)]\nuse crate::app;"),
        "let a = 1; "
    );
}
