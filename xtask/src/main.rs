//! Build helpers of matrix-linkd.
//!
//! `cargo run -p matrix-linkd-xtask -- dist-docs OUT_DIR` writes the man pages and the shell
//! completions, generated from the clap definitions of the three programs (replacing
//! `OUT_DIR/man` and `OUT_DIR/completions`):
//!
//! - `OUT_DIR/man/matrix-linkd.8`, `matrix-link.1` (and `matrix-link-<command>.1` for each of its
//!   commands), `matrix-link-gtk.1`;
//! - `OUT_DIR/completions/bash/<program>`, `completions/zsh/_<program>`,
//!   `completions/fish/<program>.fish` for `matrix-link`, `matrix-linkd` and `matrix-link-gtk`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// The GTK app's command line, read from its source: it is kept free of GTK types, so the docs
/// are generated without building GTK.
#[path = "../../gtk/src/cli.rs"]
#[allow(dead_code)]
mod gtk_cli;

const USAGE: &str = "usage: matrix-linkd-xtask dist-docs OUT_DIR";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, out] if cmd == "dist-docs" => dist_docs(Path::new(out)),
        _ => bail!("{USAGE}"),
    }
}

/// The programs: their clap command and man section.
fn programs() -> Vec<(Command, &'static str)> {
    vec![
        (matrix_linkd::cli::Args::command(), "8"),
        (matrix_linkd_client::cli::Cli::command(), "1"),
        (gtk_cli::Args::command(), "1"),
    ]
}

fn dist_docs(out: &Path) -> Result<()> {
    // Anew each time: no page of a command that no longer exists.
    for sub in ["man", "completions"] {
        match fs::remove_dir_all(out.join(sub)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    let man_dir = out.join("man");
    fs::create_dir_all(&man_dir)?;
    for (cmd, section) in programs() {
        write_man_pages(cmd, section, &man_dir)?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let dir = out.join("completions").join(shell.to_string());
        fs::create_dir_all(&dir)?;
        for (mut cmd, _) in programs() {
            let name = cmd.get_name().to_owned();
            let path = dir.join(completion_file(shell, &name));
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut buf);
            fs::write(&path, buf).with_context(|| path.display().to_string())?;
        }
    }
    println!("wrote {}/man and {}/completions", out.display(), out.display());
    Ok(())
}

/// The file name each shell looks a completion up by.
fn completion_file(shell: Shell, name: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{name}"),
        Shell::Fish => format!("{name}.fish"),
        _ => name.to_owned(),
    }
}

/// The page of `cmd` and one page for each of its (visible) subcommands, named `<cmd>-<sub>`.
fn write_man_pages(cmd: Command, section: &'static str, dir: &Path) -> Result<()> {
    // `help` is no page of its own (`matrix-link help X` is `matrix-link X --help`).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let name = cmd.get_name().to_owned();
    render(cmd.clone(), &name, section, dir)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        let sub = sub.clone().display_name(sub_name.clone());
        render(sub, &sub_name, section, dir)?;
    }
    Ok(())
}

fn render(cmd: Command, name: &str, section: &'static str, dir: &Path) -> Result<()> {
    let path: PathBuf = dir.join(format!("{name}.{section}"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(section)
        .manual("matrix-linkd")
        .source(format!("matrix-linkd {}", env!("CARGO_PKG_VERSION")))
        .render(&mut buf)?;
    fs::write(&path, buf).with_context(|| path.display().to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every page and completion `make install` and the package name is written, and each page
    /// names its program in NAME.
    #[test]
    fn dist_docs_writes_every_page_and_completion() -> Result<()> {
        let out = std::env::temp_dir().join(format!("linkd-dist-docs-{}", std::process::id()));
        dist_docs(&out)?;
        let man = |f: &str| fs::read_to_string(out.join("man").join(f));
        for (page, name) in [
            ("matrix-linkd.8", "matrix\\-linkd"),
            ("matrix-link.1", "matrix\\-link"),
            ("matrix-link-grant.1", "matrix\\-link\\-grant"),
            ("matrix-link-gtk.1", "matrix\\-link\\-gtk"),
        ] {
            let text = man(page)?;
            assert!(text.contains(".SH NAME") && text.contains(&format!("{name} \\-")), "{page}:\n{text}");
        }
        assert!(man("matrix-link-help.1").is_err(), "no page for `help`");
        for program in ["matrix-link", "matrix-linkd", "matrix-link-gtk"] {
            for file in [format!("bash/{program}"), format!("zsh/_{program}"), format!("fish/{program}.fish")]
            {
                let text = fs::read_to_string(out.join("completions").join(&file))?;
                assert!(text.contains(program), "{file}");
            }
        }
        let bash = fs::read_to_string(out.join("completions/bash/matrix-link"))?;
        assert!(bash.contains("grant") && bash.contains("--qr-hex"), "{bash}");
        fs::remove_dir_all(&out)?;
        Ok(())
    }
}
