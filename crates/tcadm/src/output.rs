//! Output encodings (YAML, JSON) and terminal styling.

use std::io::{self, IsTerminal, Write};

use serde::Serialize;

/// Standard output as every command writes it: when the reader goes away (`tcadm get clients |
/// head -1`), the process ends at once, quietly and with exit code 0, as Unix tools end on
/// SIGPIPE. Handling it here, below every writer, covers the commands and the library code they
/// call alike (clap_complete, for one, panics when a write fails).
pub struct ExitOnClosedPipe<W> {
    inner: W,
}

impl<W: Write> ExitOnClosedPipe<W> {
    /// Wraps standard output (or any writer standing for it).
    pub fn new(inner: W) -> Self {
        ExitOnClosedPipe { inner }
    }

    fn check<T>(result: io::Result<T>) -> io::Result<T> {
        if let Err(error) = &result
            && error.kind() == io::ErrorKind::BrokenPipe
        {
            std::process::exit(0);
        }
        result
    }
}

impl<W: Write> Write for ExitOnClosedPipe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Self::check(self.inner.write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Self::check(self.inner.write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Self::check(self.inner.flush())
    }
}

/// Serializes to YAML (block style, strings quoted where a plain scalar would read back as
/// something else).
pub fn to_yaml<T: Serialize>(value: &T) -> String {
    let mut text = serde_saphyr::to_string(value).expect("JSON values serialize to YAML");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Serializes to indented JSON with a final newline.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("values serialize to JSON");
    text.push('\n');
    text
}

/// Whether colours are wanted: `NO_COLOR` (any non-empty value) turns them off.
pub fn no_color_requested() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// How text is decorated on one stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// ANSI colours on.
    pub color: bool,
}

impl Style {
    /// Colours for standard output when it is a terminal and `NO_COLOR` is not set.
    pub fn stdout() -> Self {
        Style {
            color: std::io::stdout().is_terminal() && !no_color_requested(),
        }
    }

    /// Colours for standard error when it is a terminal and `NO_COLOR` is not set.
    pub fn stderr() -> Self {
        Style {
            color: std::io::stderr().is_terminal() && !no_color_requested(),
        }
    }

    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Green text.
    pub fn green(self, text: &str) -> String {
        self.paint("32", text)
    }

    /// Red text.
    pub fn red(self, text: &str) -> String {
        self.paint("31", text)
    }

    /// Yellow text.
    pub fn yellow(self, text: &str) -> String {
        self.paint("33", text)
    }

    /// Cyan text.
    pub fn cyan(self, text: &str) -> String {
        self.paint("36", text)
    }

    /// Bold red text, for `error:`.
    pub fn error(self, text: &str) -> String {
        self.paint("1;31", text)
    }

    /// Colours an apply action word: created green, configured yellow, pruned red.
    pub fn action(self, action: &str) -> String {
        match action {
            "created" => self.green(action),
            "configured" => self.yellow(action),
            "pruned" => self.red(action),
            _ => action.to_string(),
        }
    }

    /// Colours a unified diff line by line.
    pub fn diff(self, diff: &str) -> String {
        if !self.color {
            return diff.to_string();
        }
        let mut out = String::new();
        for line in diff.split_inclusive('\n') {
            let (body, newline) = match line.strip_suffix('\n') {
                Some(body) => (body, "\n"),
                None => (line, ""),
            };
            let painted = if body.starts_with("+++") || body.starts_with("---") {
                self.paint("1", body)
            } else if body.starts_with('+') {
                self.green(body)
            } else if body.starts_with('-') {
                self.red(body)
            } else if body.starts_with("@@") {
                self.cyan(body)
            } else {
                body.to_string()
            };
            out.push_str(&painted);
            out.push_str(newline);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_quotes_strings_that_would_read_back_as_other_types() {
        let value = json!({
            "resourceVersion": "12",
            "rack": "7",
            "flag": "true",
            "empty": "",
            "none": "null",
            "version": "1.4.2",
            "float": "1.5",
            "time": "2026-11-22T01:20:00.000Z",
            "number": 3
        });
        let yaml = to_yaml(&value);
        for (key, plain) in [
            ("resourceVersion", "12"),
            ("rack", "7"),
            ("flag", "true"),
            ("none", "null"),
            ("float", "1.5"),
        ] {
            assert!(
                !yaml.contains(&format!("{key}: {plain}\n")),
                "{key} is not quoted in:\n{yaml}"
            );
        }
        assert!(yaml.contains("number: 3\n"), "{yaml}");
        let documents =
            tc_api::decode::parse_documents("out.yaml", &yaml, &Default::default()).unwrap();
        assert_eq!(documents[0].value, value);
    }

    #[test]
    fn plain_style_adds_no_escape_codes() {
        let style = Style { color: false };
        assert_eq!(style.action("created"), "created");
        assert_eq!(style.diff("+a\n-b\n"), "+a\n-b\n");
        let colored = Style { color: true };
        assert_eq!(colored.green("x"), "\x1b[32mx\x1b[0m");
        assert_eq!(
            colored.diff("+a\n-b\n c\n"),
            "\x1b[32m+a\x1b[0m\n\x1b[31m-b\x1b[0m\n c\n"
        );
    }
}
