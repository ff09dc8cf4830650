//! Link options for the `gator-ota` binary alone.
//!
//! A position-independent binary carries a relocation for every pointer in
//! its read-only data, and the loader reads the whole table at start: 0.65
//! MiB of the amd64 binary, resident for the life of the process. Packed
//! relative relocations (DT_RELR, glibc 2.36, Debian 12 and Raspberry Pi OS
//! Bookworm) hold the same in a few KiB. Address randomisation is kept.
//! Only where the linker in use is known to pack them: lld (the host's) and
//! GNU ld 2.38+ on x86_64 and aarch64; 32-bit Arm keeps the plain table.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" && matches!(arch.as_str(), "x86_64" | "aarch64") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
