//! The docs cannot drift from the repository and the binary: every link in README.md and
//! docs/*.md reaches a file that exists (and a heading that exists, for `#anchors`), every
//! repository path they name in backticks exists, and every flag `run --help` prints is in the
//! operator's guide. (The endpoint and metric lists of docs/admin-api.md are held to the real
//! admin API by admin.rs.)

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// README.md and every page under docs/, as (path relative to the repository, text).
fn pages() -> Vec<(PathBuf, String)> {
    let root = repository();
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .map(|path| path.strip_prefix(&root).unwrap().to_owned())
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
        .into_iter()
        .map(|page| {
            let text = std::fs::read_to_string(root.join(&page)).unwrap();
            (page, text)
        })
        .collect()
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    prose(text)
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| anchor(heading.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_link_reaches_a_file_and_heading_that_exist() {
    let root = repository();
    let mut broken = Vec::new();
    let mut checked = 0;
    for (page, text) in pages() {
        let text_prose = prose(&text);
        for target in text_prose.split("](").skip(1) {
            let target = target.split(')').next().unwrap();
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                root.join(&page)
            } else {
                root.join(page.parent().unwrap()).join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target}: no such file", page.display()));
                continue;
            }
            if !fragment.is_empty() {
                let linked = std::fs::read_to_string(&path).unwrap();
                if !anchors(&linked).iter().any(|a| a == fragment) {
                    broken.push(format!("{}: {target}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_repository_path_a_doc_names_exists() {
    let root = repository();
    const TOP: [&str; 8] = [
        "engine/",
        "tools/",
        "tests/",
        "docs/",
        "examples/",
        "bench/",
        "fuzz/",
        ".ci/",
    ];
    let mut missing = Vec::new();
    let mut checked = 0;
    for (page, text) in pages() {
        for quoted in prose(&text).split('`').skip(1).step_by(2) {
            let candidate = quoted.trim_end_matches('/');
            let plain = !candidate.is_empty()
                && candidate
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
            if !plain {
                continue; // a command, a placeholder (`corpus/<target>/`), a pattern
            }
            let repository_path = TOP.iter().any(|top| candidate.starts_with(top))
                || (!candidate.contains('/') && candidate.ends_with(".md"));
            if !repository_path {
                continue;
            }
            checked += 1;
            let exists = root.join(candidate).exists()
                || (!candidate.contains('/') && root.join("docs").join(candidate).exists());
            if !exists {
                missing.push(format!("{}: `{quoted}`", page.display()));
            }
        }
    }
    assert!(checked > 20, "only {checked} paths found");
    assert!(
        missing.is_empty(),
        "named but missing:\n{}",
        missing.join("\n")
    );
}

/// The operator's guide cannot fall behind `run --help`: every flag the help prints (hidden
/// ones it does not print) appears in docs/operating.md as a whole flag.
#[test]
fn the_operators_guide_documents_every_run_flag() {
    let guide = std::fs::read_to_string(repository().join("docs/operating.md")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    let is_flag_char = |c: char| c.is_ascii_alphanumeric() || c == '-';
    // Definition lines (`      --token <TOKEN>`, `  -h, --help`) are indented less than the
    // help text under them, which may also name other flags.
    let flags: Vec<String> = help
        .lines()
        .filter(|line| line.len() - line.trim_start().len() <= 6)
        .filter_map(|line| {
            line.trim_start()
                .trim_start_matches("-h, ")
                .strip_prefix("--")
        })
        .map(|rest| {
            format!(
                "--{}",
                &rest[..rest.find(|c: char| !is_flag_char(c)).unwrap_or(rest.len())]
            )
        })
        .collect();
    assert!(flags.len() > 30, "{flags:?}");
    for flag in flags {
        let documented = guide
            .match_indices(&flag)
            .any(|(at, _)| !guide[at + flag.len()..].starts_with(is_flag_char));
        assert!(
            documented,
            "{flag} is in run --help but not in docs/operating.md"
        );
    }
}
