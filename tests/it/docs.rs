//! The documentation holds together: every page under docs/ (and SECURITY.md) opens
//! with a contents list that names exactly its `##`/`###` headings, and every relative
//! link in docs/, README.md, ARCHITECTURE.md and SECURITY.md names a file of the
//! repository (and, with `#anchor`, a heading of that page). So a page that gains a
//! section, or moves, cannot leave a stale contents list or a dead link behind.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown pages checked, relative to the repository.
fn pages() -> Vec<PathBuf> {
    let mut out = vec![
        PathBuf::from("README.md"),
        PathBuf::from("ARCHITECTURE.md"),
        PathBuf::from("SECURITY.md"),
    ];
    let mut dirs = vec![root().join("docs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("docs/") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p.strip_prefix(root()).expect("inside").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's anchor of a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// (level, text) of every `##` and deeper heading.
fn headings(text: &str) -> Vec<(usize, String)> {
    prose(text)
        .into_iter()
        .filter_map(|l| {
            let level = l.chars().take_while(|c| *c == '#').count();
            (level >= 2 && l[level..].starts_with(' ')).then(|| (level, l[level + 1..].to_string()))
        })
        .collect()
}

#[test]
fn every_docs_page_lists_its_own_sections() {
    for page in pages() {
        let is_doc = page.starts_with("docs") || page == Path::new("SECURITY.md");
        if !is_doc || page == Path::new("docs/README.md") {
            continue;
        }
        let text = std::fs::read_to_string(root().join(&page)).expect("read");
        let Some((_, after)) = text.split_once("\n**Contents**\n") else {
            panic!("{} has no **Contents** list", page.display());
        };
        let listed: Vec<&str> = after
            .lines()
            .skip_while(|l| l.is_empty())
            .take_while(|l| !l.is_empty())
            .collect();
        let want: Vec<String> = headings(&text)
            .into_iter()
            .filter(|(level, _)| *level <= 3)
            .map(|(level, h)| format!("{}- [{h}](#{})", "  ".repeat(level - 2), slug(&h)))
            .collect();
        assert_eq!(
            listed,
            want.iter().map(String::as_str).collect::<Vec<_>>(),
            "{}: the contents list differs from the headings",
            page.display()
        );
    }
}

#[test]
fn every_relative_link_names_a_file_and_a_heading_that_exist() {
    let mut dead = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(root().join(&page)).expect("read");
        for line in prose(&text) {
            for link in line.split("](").skip(1) {
                let Some(target) = link.split(')').next() else {
                    continue;
                };
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
                let file = if path.is_empty() {
                    root().join(&page)
                } else {
                    root()
                        .join(page.parent().unwrap_or(Path::new("")))
                        .join(path)
                };
                if !file.exists() {
                    dead.push(format!("{}: {target}", page.display()));
                    continue;
                }
                if !anchor.is_empty() && file.extension().is_some_and(|x| x == "md") {
                    let linked = std::fs::read_to_string(&file).expect("read");
                    if !headings(&linked).iter().any(|(_, h)| slug(h) == anchor) {
                        dead.push(format!("{}: {target} (no such heading)", page.display()));
                    }
                }
            }
        }
    }
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
}
