//! Config files: every command-line flag can also be set in a file given with `--config FILE`.
//!
//! One setting per line, `name value` or `name = value`, the name being the flag's long name
//! without the dashes; `#` starts a comment. The file's settings are placed before the
//! command-line arguments, so a flag given on the command line wins.

use std::path::Path;

use crate::error::{Error, Result};

/// The arguments a config file stands for (`--name value` pairs, or `--name` for a switch whose
/// value is `true`).
pub fn file_args(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io(format!("read config file {}", path.display()), e))?;
    let mut args = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = match line.split_once('=') {
            Some((n, v)) => (n.trim(), v.trim()),
            None => match line.split_once(char::is_whitespace) {
                Some((n, v)) => (n.trim(), v.trim()),
                None => (line, ""),
            },
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(Error::Config(format!("{}:{}: not a setting: {line:?}", path.display(), number + 1)));
        }
        let flag = format!("--{}", name.replace('_', "-"));
        match value.trim_matches('"') {
            "" | "true" | "yes" => args.push(flag),
            "false" | "no" => {}
            v => {
                args.push(flag);
                args.push(v.to_string());
            }
        }
    }
    Ok(args)
}

/// Splices the settings of `--config FILE` (if present in `argv`) in front of the other
/// arguments of the subcommand: `argv[..=subcommand]`, file settings, then the rest.
pub fn expand(argv: Vec<String>) -> Result<Vec<String>> {
    let Some(at) = argv.iter().position(|a| a == "--config" || a.starts_with("--config=")) else { return Ok(argv) };
    let (path, consumed) = match argv[at].strip_prefix("--config=") {
        Some(p) => (p.to_string(), 1),
        None => (argv.get(at + 1).cloned().ok_or_else(|| Error::Config("--config needs a file".into()))?, 2),
    };
    let settings = file_args(Path::new(&path))?;
    // The subcommand words come before the first flag.
    let first_flag = argv.iter().skip(1).position(|a| a.starts_with('-')).map(|i| i + 1).unwrap_or(argv.len());
    let mut out: Vec<String> = argv[..first_flag.min(at)].to_vec();
    out.extend(settings);
    out.extend(argv[first_flag.min(at)..at].iter().cloned());
    out.extend(argv[at + consumed..].iter().cloned());
    Ok(out)
}

/// Parses a size such as `4096`, `64K`, `256MiB`, `1G` (binary multiples).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("not a size: {text:?}"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("unknown size unit in {text:?} (use K, M, G)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn file_settings_come_before_command_line_flags() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let path = dir.path().join("m.conf");
        std::fs::write(&path, "# mirrorlog\nlisten = 127.0.0.1:7000\ncache_size 64MiB\nrequirepass \"s3cret\"\n")
            .unwrap();
        let argv: Vec<String> =
            ["mirrorlog", "serve", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:7001"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let out = expand(argv).unwrap();
        assert_eq!(
            out,
            vec![
                "mirrorlog",
                "serve",
                "--listen",
                "127.0.0.1:7000",
                "--cache-size",
                "64MiB",
                "--requirepass",
                "s3cret",
                "--listen",
                "127.0.0.1:7001"
            ]
        );
        std::fs::write(&path, "listen = a b = c\n!!\n").unwrap();
        assert!(file_args(&path).is_err());
    }
}
