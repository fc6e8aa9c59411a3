//! Idle daemons: memory from /proc (VmRSS, split RssAnon / RssFile), CPU time, and the HTTP
//! requests Synapse saw, over one window.

use std::time::Duration;

use anyhow::Result;
use matrix_linkd_tests::stack::Stack;

use crate::common::{access_lines, log_len};

/// A process's memory (KiB) and CPU time (s).
#[derive(Clone, Copy)]
pub struct Usage {
    pub rss: u64,
    pub anon: u64,
    pub file: u64,
    pub cpu: f64,
}

pub fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    // After the command name: state is field 3; utime and stime are fields 14 and 15 (clock ticks,
    // 100 a second on Linux).
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Usage { rss: kib("VmRSS:"), anon: kib("RssAnon:"), file: kib("RssFile:"), cpu: ticks as f64 / 100.0 })
}

pub struct Idle {
    pub label: String,
    pub before: Usage,
    pub after: Usage,
    pub parts: Parts,
}

/// Where the resident memory is (KiB), from `/proc/<pid>/smaps` at the end of the window: the
/// daemon binary's own pages, the shared libraries', the `[heap]`, the other anonymous mappings
/// (glibc's per-thread malloc arenas, thread stacks), and what is left.
#[derive(Clone, Copy, Default)]
pub struct Parts {
    pub binary: u64,
    pub libraries: u64,
    pub heap: u64,
    pub anonymous: u64,
    pub other: u64,
}

pub fn parts(pid: u32) -> Result<Parts> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let exe = exe.to_string_lossy();
    let mut p = Parts::default();
    let mut name = String::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address range, perms, offset, device, inode, then the path.
            name = fields.nth(4).unwrap_or_default().to_owned();
        } else if first == "Rss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let slot = match name.as_str() {
                n if n == exe.trim_end_matches(" (deleted)") => &mut p.binary,
                "[heap]" => &mut p.heap,
                "" | "[stack]" => &mut p.anonymous,
                n if n.starts_with('/') => &mut p.libraries,
                _ => &mut p.other,
            };
            *slot += kib;
        }
    }
    Ok(p)
}

/// Watches every daemon in `subjects` (label, pid) over the same `secs`; the HTTP requests
/// Synapse logged meanwhile (theirs: nothing else runs on the bench's stack then).
pub async fn window(
    stack: &Stack,
    subjects: &[(String, u32)],
    secs: u64,
) -> Result<(Vec<Idle>, Vec<String>)> {
    let mark = log_len(stack);
    let mut before = Vec::new();
    for (_, pid) in subjects {
        before.push(usage(*pid)?);
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let mut out = Vec::new();
    for ((label, pid), before) in subjects.iter().zip(before) {
        out.push(Idle { label: label.clone(), before, after: usage(*pid)?, parts: parts(*pid)? });
    }
    Ok((out, access_lines(stack, mark).collect()))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Idle {
    /// `| daemon | VmRSS start → end | RssAnon | RssFile | CPU |`
    pub fn row(&self) -> String {
        format!(
            "| {} | {:.1} → {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.3} s |",
            self.label,
            mib(self.before.rss),
            mib(self.after.rss),
            mib(self.after.anon),
            mib(self.after.file),
            self.after.cpu - self.before.cpu
        )
    }

    /// `| daemon | binary | libraries | [heap] | other anonymous | other |` (MiB, end of window)
    pub fn parts_row(&self) -> String {
        let p = &self.parts;
        format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            self.label,
            mib(p.binary),
            mib(p.libraries),
            mib(p.heap),
            mib(p.anonymous),
            mib(p.other)
        )
    }
}
