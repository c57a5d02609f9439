use std::collections::BTreeSet;

use super::*;

/// Where the code turns outcomes into reason labels: (file, where the span starts, where it
/// ends). A span with no end is the function starting there, up to its closing brace.
const EMITTERS: &[(&str, &str, Option<&str>)] = &[
    ("agent/mesh/src/policy/eval.rs", "pub fn as_str", None),
    ("agent/mesh/src/connections.rs", "pub fn reason", None),
    ("agent/mesh/src/connections.rs", "pub fn as_str", None),
    ("waypoint/src/forward.rs", "pub fn as_str", None),
    ("agent/mesh/src/policy/jwt.rs", "pub fn reason", None),
    ("agent/mesh/src/policy/error.rs", "pub fn reason", None),
    ("agent/mesh/src/registry/objects.rs", "pub fn reason", None),
    ("agent/mesh/src/registry/local.rs", "fn rebuild", None),
    (
        "waypoint/src/routing.rs",
        "accepted_reason: if accepted",
        Some("message:"),
    ),
    ("agent/src/admin.rs", "for (reason, pods) in", Some("\n")),
];

/// The reason-shaped string literals (one word, no spaces or punctuation) of a span of
/// `source`, as [`EMITTERS`] describes it.
fn literals(source: &str, start: &str, end: Option<&str>) -> Vec<String> {
    let at = source
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in the emitter's file: update EMITTERS"));
    let text = &source[at..];
    let body = if let Some(end) = end {
        &text[..text.find(end).unwrap_or(text.len())]
    } else {
        let mut depth = 0usize;
        let mut close = text.len();
        for (i, c) in text.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        close = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        &text[..close]
    };
    body.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_owned)
        .collect()
}

fn emitted() -> BTreeSet<String> {
    EMITTERS
        .iter()
        .flat_map(|(file, start, end)| {
            let source = std::fs::read_to_string(shell::root().join(file))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            let found = literals(&source, start, *end);
            assert!(!found.is_empty(), "{file} {start:?}: no reason found");
            found
        })
        .collect()
}

#[test]
fn every_reason_the_code_emits_is_documented_and_every_documented_one_is_emitted() {
    let code = emitted();
    let documented: BTreeSet<String> = CATALOGUE.iter().map(|r| r.name.to_owned()).collect();
    let undocumented: Vec<_> = code.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "reasons the code emits with no entry in agent/api/src/reasons.rs: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "documented reasons no code emits any more (remove them from agent/api/src/reasons.rs): {stale:?}"
    );
}

#[test]
fn each_reason_is_documented_once_with_a_meaning_and_an_action() {
    let mut names = BTreeSet::new();
    for reason in CATALOGUE {
        assert!(names.insert(reason.name), "{} twice", reason.name);
        assert!(!reason.seen.is_empty(), "{}: seen nowhere", reason.name);
        assert!(
            reason.meaning.ends_with('.') && reason.action.ends_with('.'),
            "{}: meaning and action are sentences",
            reason.name
        );
    }
}

#[test]
fn the_committed_reference_is_the_catalogue_rendered() {
    let committed = std::fs::read_to_string(path()).unwrap_or_default();
    assert!(
        committed == render(CATALOGUE),
        "docs/reference/reasons.md differs from the catalogue: run `cargo xtask docs-reference`"
    );
}

#[test]
fn the_scan_finds_literals_of_one_function_only() {
    let source =
        "fn a() -> &str { match x { A => \"one\", B => \"two words\" } }\nfn b() { \"three\" }";
    assert_eq!(literals(source, "fn a", None), ["one"]);
    assert_eq!(
        literals(
            "x\nfor (r, _) in [(\"p\", 1), (\"q\", 2)] {\n\"z\"",
            "for (r",
            Some("\n")
        ),
        ["p", "q"]
    );
}
