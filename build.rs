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
    startup_symbol_order();
}

/// Release builds on x86_64 Linux lay out first the ~5 MB of functions that start-up, an idle
/// replica and a simple request path execute (link/startup-symbols.txt, recorded with callgrind
/// by link/record-startup-symbols.sh). Scattered through the 18 MB of code, they touched about 11
/// MB of pages (each page fault also maps its neighbours), all of it in the idle resident set.
/// Names missing from the binary (code changed since the recording) are skipped, so a stale list
/// costs memory, never correctness. Only with rustc's default linker there, LLD: a linker chosen
/// in RUSTFLAGS may not know the option.
fn startup_symbol_order() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    println!("cargo:rerun-if-changed=link/startup-symbols.txt");
    let custom_linker = flags.contains("fuse-ld") || flags.contains("linker");
    if target != "x86_64-unknown-linux-gnu" || profile != "release" || custom_linker {
        return;
    }
    let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") else { return };
    let list = std::path::Path::new(&dir).join("link/startup-symbols.txt");
    if list.is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", list.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
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
