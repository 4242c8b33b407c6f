//! Link-time options for the gateway binary.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    // Packed relative relocations (RELR, glibc >= 2.36, Debian 12): the position-independent
    // binary's ~660 KB table of relocations shrinks to ~8 KB. That table is read at every start (by
    // the dynamic loader, or by the static-pie build's own start-up code), so it counted in the
    // resident set; idle RSS drops by about 0.5 MB.
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=GATEWAY_GIT_COMMIT={}", git_commit());
}

/// The commit `--version` names: `GIT_COMMIT` when the build passes it (the Dockerfile does, as
/// its context has no `.git`), else the checkout's HEAD, else "unknown".
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    if let Ok(commit) = std::env::var("GIT_COMMIT") {
        let commit = commit.trim();
        if !commit.is_empty() {
            return commit.chars().take(12).collect();
        }
    }
    // Rebuild when HEAD moves: a new commit rewrites the branch's ref, a checkout rewrites HEAD.
    let git = std::path::Path::new(".git");
    if git.is_dir() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
            && let Some(reference) = head.trim().strip_prefix("ref: ")
        {
            println!("cargo:rerun-if-changed=.git/{reference}");
            println!("cargo:rerun-if-changed=.git/packed-refs");
        }
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
