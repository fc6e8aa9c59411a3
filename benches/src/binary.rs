//! The binaries measured: which daemon, its size, whether it is stripped or a debug build.

use std::{
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

pub struct Binary {
    pub path: PathBuf,
    pub bytes: u64,
    /// Has a `.symtab` section (not stripped).
    pub symbols: bool,
    /// Has DWARF (`.debug_info` or `.debug_line`): the workspace's dev profile always emits line
    /// tables, a release build has none.
    pub debug_info: bool,
}

impl Binary {
    pub fn inspect(path: &Path) -> Result<Self> {
        let bytes = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?.len();
        let sections = elf_sections(path).with_context(|| format!("reading {} as ELF", path.display()))?;
        let has = |n: &str| sections.iter().any(|s| s == n);
        Ok(Self {
            path: path.to_owned(),
            bytes,
            symbols: has(".symtab"),
            debug_info: has(".debug_info") || has(".debug_line"),
        })
    }

    /// A debug build: built under a `debug` profile directory, or carrying DWARF.
    pub fn looks_debug(&self) -> bool {
        self.debug_info || self.path.components().any(|c| c.as_os_str() == "debug")
    }

    pub fn describe(&self) -> String {
        format!(
            "{} B ({:.2} MB, {:.2} MiB), {}{}",
            self.bytes,
            self.bytes as f64 / 1e6,
            self.bytes as f64 / 1_048_576.0,
            if self.symbols { "not stripped (.symtab)" } else { "stripped (no .symtab)" },
            if self.debug_info { ", with debug info" } else { "" },
        )
    }
}

/// The daemon binary the bench measures (`LINKD_DAEMON_BIN`, as the test helpers use it); refuses
/// a debug build unless `BENCH_ALLOW_DEBUG=1`.
pub fn daemon() -> Result<Binary> {
    let Some(path) = std::env::var_os("LINKD_DAEMON_BIN") else {
        bail!(
            "LINKD_DAEMON_BIN is not set: the bench measures the release daemon `make bench` builds \
             (cargo build --release -p matrix-linkd --bin matrix-linkd; \
             LINKD_DAEMON_BIN=$PWD/target/release/matrix-linkd)"
        );
    };
    let bin = Binary::inspect(&std::fs::canonicalize(&path).context("LINKD_DAEMON_BIN")?)?;
    if bin.looks_debug() && std::env::var("BENCH_ALLOW_DEBUG").as_deref() != Ok("1") {
        bail!(
            "{} looks like a debug build ({}): the figures are for the release build. Run `make bench`, \
             or set BENCH_ALLOW_DEBUG=1 to measure it anyway (figures then say `debug`)",
            bin.path.display(),
            bin.describe()
        );
    }
    Ok(bin)
}

/// Section names of a 64-bit little-endian ELF file.
fn elf_sections(path: &Path) -> Result<Vec<String>> {
    let mut f = std::fs::File::open(path)?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h)?;
    if &h[0..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")) as u64;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(&h, 0x28), u16_at(&h, 0x3a), u16_at(&h, 0x3c), u16_at(&h, 0x3e));
    if shentsize < 64 || shnum == 0 || shnum > 10_000 {
        bail!("unexpected section header table");
    }
    let mut table = vec![0u8; (shentsize * shnum) as usize];
    f.seek(SeekFrom::Start(shoff))?;
    f.read_exact(&mut table)?;
    let header = |i: u64| &table[(i * shentsize) as usize..][..shentsize as usize];
    let strtab = header(shstrndx);
    let (str_off, str_size) = (u64_at(strtab, 0x18), u64_at(strtab, 0x20).min(1 << 20));
    let mut names = vec![0u8; str_size as usize];
    f.seek(SeekFrom::Start(str_off))?;
    f.read_exact(&mut names)?;
    Ok((0..shnum)
        .filter_map(|i| {
            let at = u32_at(header(i), 0) as usize;
            let name = names.get(at..)?;
            let end = name.iter().position(|&b| b == 0)?;
            Some(String::from_utf8_lossy(&name[..end]).into_owned())
        })
        .collect())
}
