//! `/etc/sysconfig/coordinatool[.<instance>]`: systemd `EnvironmentFile=` syntax.
//!
//! The unit reads `/etc/sysconfig/coordinatool` then `/etc/sysconfig/coordinatool.<instance>`
//! (both optional, the second wins) and starts the server with `$COORDINATOOL_OPTS` split on
//! whitespace; every other `COORDINATOOL_*` assignment becomes an environment variable. This
//! module parses that format so tests (and tools) can start the server exactly as systemd would.

use std::path::{Path, PathBuf};

/// The variable holding extra command-line options.
pub const OPTS_VAR: &str = "COORDINATOOL_OPTS";

/// A line of a sysconfig file that is not valid `KEY=value` syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", path.display())]
pub struct SysconfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses an environment file: `KEY=value` per line, `#` or `;` comments, blank lines,
/// values optionally in single quotes (literal) or double quotes (backslash escapes), and a
/// trailing backslash continuing a line. Returns the assignments in file order.
pub fn parse(path: &Path, text: &str) -> Result<Vec<(String, String)>, SysconfigError> {
    let err = |line, reason: &str| SysconfigError {
        path: path.to_path_buf(),
        line,
        reason: reason.to_string(),
    };
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((idx, raw)) = lines.next() {
        let lineno = idx + 1;
        let mut line = raw.trim_start().to_string();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        // Unquoted continuation lines: join while the line ends with a single backslash.
        while line.ends_with('\\') && !line.ends_with("\\\\") {
            line.pop();
            match lines.next() {
                Some((_, next)) => line.push_str(next),
                None => break,
            }
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(lineno, "expected KEY=value"));
        };
        let key = key.trim_end();
        if key.is_empty()
            || key.starts_with(|c: char| c.is_ascii_digit())
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(err(lineno, &format!("invalid variable name {key:?}")));
        }
        let value = unquote(value.trim()).map_err(|r| err(lineno, r))?;
        out.push((key.to_string(), value));
    }
    Ok(out)
}

fn unquote(v: &str) -> Result<String, &'static str> {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next() {
                    Some('\'') => break,
                    Some(c) => out.push(c),
                    None => return Err("unterminated single quote"),
                }
            },
            '"' => loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\' | '`' | '$')) => out.push(c),
                        Some(c) => {
                            out.push('\\');
                            out.push(c);
                        }
                        None => return Err("unterminated double quote"),
                    },
                    Some(c) => out.push(c),
                    None => return Err("unterminated double quote"),
                }
            },
            '\\' => {
                if let Some(c) = chars.next() {
                    out.push(c);
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The merged content of the sysconfig files of one instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sysconfig {
    /// Every assignment, later files overriding earlier ones.
    pub vars: Vec<(String, String)>,
    /// `COORDINATOOL_OPTS` split on whitespace.
    pub opts: Vec<String>,
}

/// Reads the base file and the instance file the way the unit's two `EnvironmentFile=-`
/// lines do (missing files are fine; later assignments override earlier ones). Returns the
/// merged variables and the options from `COORDINATOOL_OPTS`, split on whitespace as systemd
/// splits an unquoted `$VAR` in `ExecStart=`.
pub fn load(dir: &Path, instance: Option<&str>) -> Result<Sysconfig, SysconfigError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut files = vec![dir.join("coordinatool")];
    if let Some(inst) = instance {
        files.push(dir.join(format!("coordinatool.{inst}")));
    }
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(SysconfigError {
                    path: f,
                    line: 0,
                    reason: format!("cannot read: {e}"),
                });
            }
        };
        for (k, v) in parse(&f, &text)? {
            vars.retain(|(kk, _)| *kk != k);
            vars.push((k, v));
        }
    }
    let opts = vars
        .iter()
        .find(|(k, _)| k == OPTS_VAR)
        .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    Ok(Sysconfig { vars, opts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Vec<(String, String)>, SysconfigError> {
        parse(Path::new("/etc/sysconfig/coordinatool"), s)
    }

    #[test]
    fn plain_and_quoted_values() {
        let v = parse_str(
            "# comment\n; other comment\n\n  COORDINATOOL_OPTS=-v -A 1\n\
             COORDINATOOL_REDIS_HOST=\"\"\nA='x  $y'\nB=\"a \\\"b\\\" \\n\"\nC = spaced \n",
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                ("COORDINATOOL_OPTS".into(), "-v -A 1".into()),
                ("COORDINATOOL_REDIS_HOST".into(), "".into()),
                ("A".into(), "x  $y".into()),
                ("B".into(), "a \"b\" \\n".into()),
                ("C".into(), "spaced".into()),
            ]
        );
    }

    #[test]
    fn continuation_lines() {
        let v = parse_str("COORDINATOOL_OPTS=-v \\\n -A 2\n").unwrap();
        assert_eq!(v, vec![("COORDINATOOL_OPTS".into(), "-v  -A 2".into())]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_str("A=1\nnot an assignment\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(
            e.to_string(),
            "/etc/sysconfig/coordinatool:2: expected KEY=value"
        );
        let e = parse_str("1A=x\n").unwrap_err();
        assert!(e.reason.contains("invalid variable name"));
        let e = parse_str("A=\"open\n").unwrap_err();
        assert!(e.reason.contains("unterminated"));
    }

    #[test]
    fn instance_file_overrides_base() {
        let dir = std::env::temp_dir().join(format!("ct-sysconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("coordinatool"),
            "COORDINATOOL_OPTS=-v\nCOORDINATOOL_PORT=1\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("coordinatool.mnt-lustre"),
            "COORDINATOOL_OPTS=-A 3 -q\n",
        )
        .unwrap();
        let s = load(&dir, Some("mnt-lustre")).unwrap();
        assert_eq!(s.opts, vec!["-A", "3", "-q"]);
        assert!(s.vars.contains(&("COORDINATOOL_PORT".into(), "1".into())));
        assert_eq!(load(&dir, None).unwrap().opts, vec!["-v"]);
        let s = load(&dir, Some("absent")).unwrap();
        assert_eq!(s.opts, vec!["-v"]);
        assert_eq!(s.vars.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
