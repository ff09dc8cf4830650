//! Link options for the `gator-ota` binary alone: how much of it stays
//! resident while the service idles, which on a gateway is nearly always.
//!
//! - Packed relative relocations (DT_RELR; glibc 2.36: Debian 12, Raspberry
//!   Pi OS Bookworm). A position-independent binary carries a relocation
//!   for every pointer in its read-only data, and the loader reads the whole
//!   table at start: 0.65 MiB of the amd64 binary, resident for the life of
//!   the process. Packed, the same fits in a few KiB; address randomisation
//!   is kept. x86_64 only: Debian 12's GNU ld for aarch64 (2.40) ignores the
//!   option, with a warning.
//! - The start-up order (`deploy/startup-order.txt`, made by
//!   `deploy/startup-order.sh`): the functions that run from start to idle,
//!   placed together. The kernel maps a binary's pages around each one
//!   touched, and start-up touches code spread over the whole binary; in one
//!   place, 1 MiB of code is resident at idle instead of 4.5. The list
//!   names symbols of one build configuration (target, profile,
//!   Cargo.lock, compiler); for any other, nothing in it matches and the
//!   layout is the linker's own. lld only (`--symbol-ordering-file`): the
//!   host's default linker since Rust 1.90; the Raspberry Pi builds link
//!   with GNU ld and go without.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let (arch, os) = (var("CARGO_CFG_TARGET_ARCH"), var("CARGO_CFG_TARGET_OS"));
    if os == "linux" && arch == "x86_64" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("deploy/startup-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    if var("PROFILE") == "release" && order.is_file() && links_with_lld() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names from another configuration are expected, and harmless.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// rustc 1.90 and later link x86_64-unknown-linux-gnu with their own lld,
/// unless a linker is configured; any other linker would refuse the option.
fn links_with_lld() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("TARGET") != "x86_64-unknown-linux-gnu"
        || std::env::var_os("RUSTC_LINKER").is_some()
        || var("CARGO_ENCODED_RUSTFLAGS").contains("linker")
    {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let info = String::from_utf8_lossy(&out.stdout);
    let minor = info
        .lines()
        .find_map(|l| l.strip_prefix("release: 1."))
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
