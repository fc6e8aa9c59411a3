//! Link settings of the daemon binary.

fn main() {
    // Relative relocations packed (DT_RELR; GNU ld ≥ 2.38, glibc ≥ 2.36, both in Debian 12): the
    // dynamic loader reads a few kilobytes at each start instead of `.rela.dyn`'s ~650 kB, and
    // those pages stay out of the daemon's resident memory (BENCHMARKS.md).
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
