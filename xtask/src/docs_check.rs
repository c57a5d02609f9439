//! The book's Markdown as data: its runnable blocks with their expected output, the match
//! of shown output against real output, and the internal link and anchor check.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

/// The line, or the part of a line, that stands for whatever the real output has there.
pub const ELIDED: char = '…';

/// A ```` ```sh run ```` block and, when an ```` ```output ```` block follows it, what it
/// must print.
#[derive(Debug, PartialEq, Eq)]
pub struct Block {
    /// 1-based line of the opening fence, for error messages.
    pub line: usize,
    pub script: String,
    pub expected: Option<Vec<String>>,
}

struct Fence<'a> {
    info: &'a str,
    /// Index of the opening fence line.
    start: usize,
    body: Vec<&'a str>,
}

/// Splits Markdown into its fenced blocks, in order (fences of three backticks or more; a
/// fence closes on a line of at least as many backticks).
fn fences(markdown: &str) -> Vec<Fence<'_>> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        let ticks = trimmed.chars().take_while(|c| *c == '`').count();
        if ticks < 3 {
            i += 1;
            continue;
        }
        let info = trimmed[ticks..].trim();
        let start = i;
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() {
            let close = lines[i].trim();
            if close.len() >= ticks && close.chars().all(|c| c == '`') {
                break;
            }
            body.push(lines[i]);
            i += 1;
        }
        out.push(Fence { info, start, body });
        i += 1;
    }
    out
}

/// The runnable blocks of a chapter, each with the output block that follows it, if any.
pub fn runnable_blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let fences = fences(markdown);
    let mut blocks = Vec::new();
    for (n, fence) in fences.iter().enumerate() {
        if fence.info != "sh run" {
            continue;
        }
        let end = fence.start + fence.body.len() + 1;
        let expected = fences.get(n + 1).filter(|next| {
            next.info == "output"
                && lines[end + 1..next.start]
                    .iter()
                    .all(|l| l.trim().is_empty())
        });
        blocks.push(Block {
            line: fence.start + 1,
            script: fence.body.join("\n"),
            expected: expected.map(|e| e.body.iter().map(|l| (*l).to_owned()).collect()),
        });
    }
    blocks
}

/// Lines of fences that look meant to run but would not (`sh  run`, `sh run!`, `bash run`):
/// such a block would never be checked, so it is an error, not a silent skip.
pub fn misspelt_runnable(markdown: &str) -> Vec<usize> {
    fences(markdown)
        .iter()
        .filter(|f| f.info != "sh run" && f.info.split_whitespace().any(|w| w.starts_with("run")))
        .map(|f| f.start + 1)
        .collect()
}

/// Where the expected lines fail to appear in `actual`: `None` when they all do, as one
/// contiguous run (a line of only `…` stands for any number of lines).
///
/// The `…` lines cut the expected lines into segments that must each match contiguously, in
/// order; taking each segment at its earliest place after the one before is then exact, so
/// the match is linear in the segments' positions, never a backtracking search.
pub fn first_unmatched(expected: &[String], actual: &str) -> Option<String> {
    let expected: Vec<&str> = expected.iter().map(|l| l.trim_end()).collect();
    let actual: Vec<&str> = actual.lines().map(str::trim_end).collect();
    if expected.iter().all(|l| l.is_empty()) {
        return None;
    }
    let elided = ELIDED.to_string();
    let segments: Vec<&[&str]> = expected
        .split(|l| l.trim() == elided)
        .filter(|segment| !segment.is_empty())
        .collect();
    let mut from = 0;
    for segment in segments {
        let found = (from..=actual.len().saturating_sub(segment.len()))
            .find(|&at| segment_at(segment, &actual, at) == segment.len());
        let Some(at) = found else {
            // For the message: the line of the segment where its best attempt broke.
            let reached = (from..actual.len())
                .map(|at| segment_at(segment, &actual, at))
                .max()
                .unwrap_or(0);
            return Some(segment[reached.min(segment.len() - 1)].to_owned());
        };
        from = at + segment.len();
    }
    None
}

/// How many lines of `segment` match `actual` from line `at` on.
fn segment_at(segment: &[&str], actual: &[&str], at: usize) -> usize {
    segment
        .iter()
        .zip(actual.get(at..).unwrap_or_default())
        .take_while(|(want, got)| line_matches(want, got))
        .count()
}

/// One line against one line: `…` inside it matches any text.
pub fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split(ELIDED).collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == line;
    };
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown file offers: its headings (outside code), with GitHub's `-1`,
/// `-2` suffixes for repeats, and explicit `id="…"` anchors.
pub fn anchors(markdown: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for line in prose_lines(markdown) {
        if let Some(heading) = line.strip_prefix('#') {
            let text = heading.trim_start_matches('#');
            if text.starts_with(' ') {
                let base = slug(&text.replace('`', ""));
                let mut anchor = base.clone();
                let mut n = 0;
                while seen.contains(&anchor) {
                    n += 1;
                    anchor = format!("{base}-{n}");
                }
                seen.insert(anchor);
            }
        }
        let mut rest = line;
        while let Some(at) = rest.find("id=\"") {
            let tail = &rest[at + 4..];
            if let Some(end) = tail.find('"') {
                seen.insert(tail[..end].to_owned());
            }
            rest = tail;
        }
    }
    seen
}

/// The lines outside fenced code blocks.
fn prose_lines(markdown: &str) -> Vec<&str> {
    let mut fence: Option<usize> = None;
    let mut out = Vec::new();
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let ticks = trimmed.chars().take_while(|c| *c == '`').count();
        match fence {
            Some(open) if ticks >= open && trimmed.trim().chars().all(|c| c == '`') => {
                fence = None;
            }
            Some(_) => {}
            None if ticks >= 3 => fence = Some(ticks),
            None => out.push(line),
        }
    }
    out
}

/// The targets of `[text](target)` and `![alt](target)` links outside code.
pub fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(markdown) {
        // Inline code spans hold examples, not links.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(n, _)| n % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let Some(end) = tail.find(')') else { break };
            let target = tail[..end].split_whitespace().next().unwrap_or("");
            out.push(target.to_owned());
            rest = &tail[end..];
        }
    }
    out
}

/// Every broken internal link of the Markdown files under `root` (and of `extra` files),
/// as `file: target: why`. External links are not followed.
pub fn broken_links(files: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            broken.push(format!("{}: cannot be read", file.display()));
            continue;
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            if !linked.exists() {
                broken.push(format!("{}: {target}: no such file", file.display()));
                continue;
            }
            if anchor.is_empty() || linked.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let offered = std::fs::read_to_string(&linked)
                .map(|t| anchors(&t))
                .unwrap_or_default();
            if !offered.contains(anchor) {
                broken.push(format!(
                    "{}: {target}: {} has no heading with anchor #{anchor}",
                    file.display(),
                    linked.display()
                ));
            }
        }
    }
    broken
}

/// Every Markdown file under `dir`, sorted.
pub fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
#[path = "docs_check_tests.rs"]
mod tests;
