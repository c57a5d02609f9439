use std::fmt::Write as _;

use super::*;

const CHAPTER: &str = "# 1. Title\n\n```sh run\necho one\necho two\n```\n\n```output\none\n```\n\n```sh\nnot run\n```\n\n```sh run\ntrue\n```\n\ntext\n\n```output\nnot this block's\n```\n";

#[test]
fn runnable_blocks_take_the_output_block_right_after_them() {
    let blocks = runnable_blocks(CHAPTER);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].line, 3);
    assert_eq!(blocks[0].script, "echo one\necho two");
    assert_eq!(blocks[0].expected, Some(vec!["one".to_owned()]));
    // Prose in between: the output block belongs to nobody.
    assert_eq!(blocks[1].expected, None);
}

#[test]
fn expected_lines_match_as_a_contiguous_run_with_elisions() {
    let actual = "a\nport 40123 open  \nb\nc\nd\n";
    let want = |lines: &[&str]| lines.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
    assert_eq!(first_unmatched(&want(&["port … open", "b"]), actual), None);
    assert_eq!(first_unmatched(&want(&["a", "…", "d"]), actual), None);
    assert_eq!(
        first_unmatched(&want(&["a", "b"]), actual),
        Some("b".to_owned()),
        "lines must be contiguous without an elided line"
    );
    assert_eq!(
        first_unmatched(&want(&["b", "x"]), actual),
        Some("x".to_owned())
    );
    assert!(line_matches("…", "anything"));
    assert!(line_matches("x…y…z", "x1y2z"));
    assert!(!line_matches("x…y", "x1z"));
    assert!(!line_matches("ab…ba", "aba"));
    assert!(line_matches("exact", "exact"));
}

#[test]
fn anchors_follow_github_and_skip_code() {
    let doc = "# 4. Zero trust at L4\n## `weftctl certs`, read\n```sh\n# not a heading\n```\n## Zero trust at L4\n<a id=\"custom\"></a>\n### no_policy\n";
    let found = anchors(doc);
    for anchor in [
        "4-zero-trust-at-l4",
        "weftctl-certs-read",
        "zero-trust-at-l4",
        "custom",
        "no_policy",
    ] {
        assert!(found.contains(anchor), "{anchor} in {found:?}");
    }
    assert!(!found.contains("not-a-heading"));
}

#[test]
fn links_outside_code_are_found_and_checked() {
    let dir = std::env::temp_dir().join(format!("weft-docs-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("b.md"), "# B\n## Part two\n").expect("b.md");
    std::fs::write(
        dir.join("a.md"),
        "See [b](b.md#part-two), [bad](b.md#nope), [gone](c.md), [web](https://x.example/)\n`[not](a link)`\n```\n[nor](this)\n```\n![img](b.md)\n[self](#a)\n# A\n",
    )
    .expect("a.md");
    let broken = broken_links(&[dir.join("a.md")]);
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].contains("#nope"), "{broken:?}");
    assert!(broken[1].contains("c.md: no such file"), "{broken:?}");
}

#[test]
fn a_fence_meant_to_run_but_misspelt_is_caught() {
    let doc = "```sh run\ntrue\n```\n```sh  run\nx\n```\n```bash run\ny\n```\n```sh\nz\n```\n";
    assert_eq!(misspelt_runnable(doc), vec![4, 7]);
}

#[test]
fn many_elided_lines_over_long_output_match_at_once() {
    // Backtracking over every split of 2,000 lines would take far longer than this test may.
    let actual = (0..2_000).fold(String::new(), |mut text, i| {
        let _ = writeln!(text, "line {i}");
        text
    });
    let want: Vec<String> = [
        "…",
        "line 1…",
        "…",
        "line 5…",
        "…",
        "line 1999",
        "…",
        "nope",
    ]
    .iter()
    .map(|l| (*l).to_owned())
    .collect();
    assert_eq!(first_unmatched(&want, &actual), Some("nope".to_owned()));
    assert_eq!(first_unmatched(&want[..6], &actual), None);
}
