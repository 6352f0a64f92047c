//! `KEY=VALUE` env files (`config/<env>.env`), the format docker and systemd use.
//!
//! Blank lines and `#` comments are skipped, an `export ` prefix is allowed, and a value may
//! be wrapped in single or double quotes. Anything else is an error with its line number:
//! a typo in a config file must not be silently ignored.

use std::path::{Path, PathBuf};

/// One `KEY=VALUE` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvLine {
    /// 1-based line number in the file.
    pub line: usize,
    /// The key.
    pub key: String,
    /// The value, unquoted.
    pub value: String,
}

/// Why an env file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// The file could not be opened or read.
    #[error("cannot read env file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is not `KEY=VALUE`.
    #[error("{path}:{line}: {reason} (expected KEY=VALUE, `# comment` or a blank line)")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Reads and parses an env file.
pub fn read_env_file(path: &Path) -> Result<Vec<EnvLine>, EnvFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| EnvFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_env(&text).map_err(|(line, reason)| EnvFileError::Syntax {
        path: path.to_path_buf(),
        line,
        reason,
    })
}

/// Parses env-file text; an error is `(line, reason)`.
pub fn parse_env(text: &str) -> Result<Vec<EnvLine>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let s = raw.trim();
        if s.is_empty() || s.starts_with('#') {
            continue;
        }
        let s = s.strip_prefix("export ").map(str::trim_start).unwrap_or(s);
        let Some((key, value)) = s.split_once('=') else {
            return Err((line, format!("no `=` in `{s}`")));
        };
        let key = key.trim();
        if key.is_empty()
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || key.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err((line, format!("`{key}` is not a valid variable name")));
        }
        let value = unquote(value.trim()).map_err(|reason| (line, reason))?;
        out.push(EnvLine {
            line,
            key: key.to_string(),
            value,
        });
    }
    Ok(out)
}

fn unquote(v: &str) -> Result<String, String> {
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            return match rest.strip_suffix(q) {
                Some(inner) if !inner.contains(q) => Ok(inner.to_string()),
                _ => Err(format!("unbalanced quote in `{v}`")),
            };
        }
    }
    // An unquoted value ends at a ` #` comment, as in shell.
    Ok(match v.find(" #") {
        Some(i) => v[..i].trim_end().to_string(),
        None => v.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_quotes_and_export() {
        let text = "# comment\n\nIB_STREAM_HOST=127.0.0.1\nexport IB_STREAM_PORTS=\"4002,7497\"\n\
                    IB_STREAM_CLIENT_ID='12' \nIB_STREAM_LOG=info # trailing\n";
        let got = parse_env(text).unwrap();
        let kv: Vec<(&str, &str, usize)> = got
            .iter()
            .map(|l| (l.key.as_str(), l.value.as_str(), l.line))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("IB_STREAM_HOST", "127.0.0.1", 3),
                ("IB_STREAM_PORTS", "4002,7497", 4),
                ("IB_STREAM_CLIENT_ID", "12", 5),
                ("IB_STREAM_LOG", "info", 6),
            ]
        );
    }

    #[test]
    fn bad_lines_name_their_line() {
        assert_eq!(parse_env("A=1\nnonsense\n").unwrap_err().0, 2);
        assert_eq!(parse_env("1A=2").unwrap_err().0, 1);
        assert_eq!(parse_env("A=\"open").unwrap_err().0, 1);
        assert_eq!(parse_env("A B=1").unwrap_err().0, 1);
    }
}
