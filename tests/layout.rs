//! The repository's shape: the container image builds the operator without the sandbox, and the
//! project documents itself (nothing cites files outside the repository, or issue numbers).

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_image_builds_the_operator_without_the_sandbox() {
    let dockerfile = read("Dockerfile");
    let build = dockerfile.lines().find(|l| l.contains("cargo build")).expect("a cargo build step");
    assert!(build.contains("--no-default-features") && build.contains("--release"), "{build}");
    // The workspace's members must be in the build context for the manifest to load.
    let ignore = read(".dockerignore");
    for member in workspace_members() {
        assert!(dockerfile.contains(&format!("COPY {member} ./{member}")), "the Dockerfile does not copy {member}/");
        assert!(ignore.lines().any(|l| l == format!("!{member}/")), ".dockerignore leaves out {member}/");
    }
}

#[test]
fn the_default_features_carry_the_sandbox_and_nothing_else() {
    let manifest = read("Cargo.toml");
    assert!(manifest.contains("default = [\"sandbox\"]"), "the sandbox feature is on by default");
    assert!(manifest.contains("sandbox = [\"dep:defender-sandbox\"]"));
    let optional = manifest.lines().any(|l| l.starts_with("defender-sandbox = ") && l.contains("optional = true"));
    assert!(optional, "the operator depends on defender-sandbox only through the sandbox feature");
}

/// `[workspace] members` of `Cargo.toml`.
fn workspace_members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let line = manifest.lines().find(|l| l.starts_with("members = [")).expect("[workspace] members");
    let list = &line[line.find('[').unwrap() + 1..line.rfind(']').unwrap()];
    list.split(',').map(|m| m.trim().trim_matches('"').to_string()).filter(|m| !m.is_empty()).collect()
}

/// Every text file of the repository, but build output and version control.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "corpus" | "artifacts") {
                files(&path, out);
            }
        } else if !name.ends_with(".lock") {
            out.push(path);
        }
    }
}

#[test]
fn nothing_cites_files_outside_the_repository_or_issue_numbers() {
    // Spelled apart so that this file does not find itself.
    let design = ["DESIGN", ".md"].concat();
    let reference = ["reference", "/"].concat();
    let issue = regex::Regex::new(&["(?i)\\bissue", " #?[0-9]+"].concat()).unwrap();
    let mut all = Vec::new();
    files(Path::new(ROOT), &mut all);
    let mut citations = Vec::new();
    for path in all {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for (number, line) in text.lines().enumerate() {
            let cites_reference = line.match_indices(&reference).any(|(at, _)| line[at..].contains(".md"));
            if line.contains(&design) || cites_reference || issue.is_match(line) {
                citations.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
            }
        }
    }
    assert!(citations.is_empty(), "carry the facts into the repository instead:\n{}", citations.join("\n"));
}
