//! Tidy: the few conventions of STYLE.md that a machine can check.
//!
//! - `unsafe` appears only in `env/` (and `rdma/`), and every `unsafe` block
//!   there has a `// SAFETY:` comment on one of the lines just above it.
//! - Every other crate root says `#![forbid(unsafe_code)]`.
//! - No `.unwrap()` in non-test code of the crates that parse outside input
//!   (`nvmf/`, `target/`): input errors must become a status or a typed error.
//!   Test modules (after `#[cfg(test)]`) and `tests/` are exempt.
//! - Lines stay within 120 characters.

use std::fs;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources(crate_dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    rust_files(&workspace_root().join(crate_dir).join("src"), &mut out);
    out.sort();
    out
}

/// Files that are whole test modules: declared as `#[cfg(test)] mod name;`
/// by their parent module.
fn test_only_files(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = fs::read_to_string(file) else { continue };
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs") | Some("lib.rs") | Some("main.rs") => file.parent().map(Path::to_path_buf),
            _ => file.parent().map(|p| p.join(file.file_stem().unwrap_or_default())),
        };
        let Some(dir) = dir else { continue };
        let lines: Vec<&str> = text.lines().collect();
        for w in lines.windows(2) {
            let decl = w[1].trim();
            if w[0].trim() == "#[cfg(test)]" && decl.starts_with("mod ") && decl.ends_with(';') {
                let name = decl.trim_start_matches("mod ").trim_end_matches(';').trim();
                out.push(dir.join(format!("{name}.rs")));
                out.push(dir.join(name).join("mod.rs"));
            }
        }
    }
    out
}

/// The lines of a file before its first `#[cfg(test)]`: the production code,
/// by our convention of test modules at the end of a file.
fn production_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines().enumerate().take_while(|(_, l)| !l.trim_start().starts_with("#[cfg(test)]")).collect()
}

fn is_code_line(line: &str) -> bool {
    let t = line.trim_start();
    !(t.starts_with("//") || t.starts_with("/*") || t.starts_with('*'))
}

#[test]
fn unsafe_only_in_env_and_rdma_with_safety_notes() {
    let mut problems = Vec::new();
    for krate in ["nvmf", "target", "bench", "tests"] {
        for file in sources(krate) {
            let text = fs::read_to_string(&file).expect("readable source");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if is_code_line(line)
                    && (code.contains("unsafe {")
                        || code.contains("unsafe fn")
                        || code.contains("unsafe impl"))
                {
                    problems.push(format!("{}:{}: unsafe outside env/ and rdma/", file.display(), n + 1));
                }
            }
        }
    }
    for krate in ["env", "rdma"] {
        for file in sources(krate) {
            let text = fs::read_to_string(&file).expect("readable source");
            let lines: Vec<&str> = text.lines().collect();
            for (n, line) in lines.iter().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if !is_code_line(line) || !code.contains("unsafe {") {
                    continue;
                }
                let window = &lines[n.saturating_sub(6)..=n];
                if !window.iter().any(|l| l.contains("SAFETY:")) {
                    problems.push(format!(
                        "{}:{}: unsafe block without a `// SAFETY:` note",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn safe_crates_forbid_unsafe_code() {
    for root in
        ["nvmf/src/lib.rs", "target/src/lib.rs", "target/src/main.rs", "bench/src/lib.rs", "tests/src/lib.rs"]
    {
        let text = fs::read_to_string(workspace_root().join(root)).expect("crate root exists");
        assert!(text.contains("#![forbid(unsafe_code)]"), "{root} must say #![forbid(unsafe_code)]");
    }
}

#[test]
fn no_unwrap_in_production_code_of_input_parsing_crates() {
    let mut problems = Vec::new();
    for krate in ["nvmf", "target"] {
        let files = sources(krate);
        let tests_only = test_only_files(&files);
        for file in files.iter().filter(|f| !tests_only.contains(f)) {
            let text = fs::read_to_string(file).expect("readable source");
            for (n, line) in production_lines(&text) {
                if is_code_line(line) && line.contains(".unwrap()") {
                    problems.push(format!("{}:{}: .unwrap() in production code", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "use a typed error or `expect` with the invariant:\n{}",
        problems.join("\n")
    );
}

#[test]
fn lines_within_120_characters() {
    let mut problems = Vec::new();
    for krate in ["env", "nvmf", "target", "bench", "tests"] {
        for file in sources(krate) {
            let text = fs::read_to_string(&file).expect("readable source");
            for (n, line) in text.lines().enumerate() {
                if line.chars().count() > 120 {
                    problems.push(format!(
                        "{}:{}: {} characters",
                        file.display(),
                        n + 1,
                        line.chars().count()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn tidy_catches_what_it_claims_to() {
    // The checks above read text; make sure their predicates fire on the shapes they look for.
    let text = "fn f() { x.unwrap(); }\n#[cfg(test)]\nmod t { fn g() { y.unwrap(); } }\n";
    let prod = production_lines(text);
    assert_eq!(prod.len(), 1);
    assert!(prod[0].1.contains(".unwrap()"));
    assert!(!is_code_line("    // SAFETY: fine"));
    assert!(is_code_line("    unsafe { libc::close(fd) };"));
}
