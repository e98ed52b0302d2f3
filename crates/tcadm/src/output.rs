//! Output encodings (YAML, JSON), terminal styling, and the filter every printed byte passes.
//!
//! What tcadm prints comes largely from clients and objects: host names, inventory strings,
//! package messages with a hook's output, event messages, errors relayed from the controller.
//! A terminal obeys control characters in them: escape sequences set the window title, clear the
//! screen, or write the clipboard (OSC 52). So standard output and standard error go through
//! [`Terminal`], which shows every control character (C0 but newline and tab, DEL, C1) as a
//! visible escape (`\u{1b}`) and lets through only tcadm's own colour codes, and only when colours
//! are on. Table cells are escaped with [`one_line`] before the columns are measured, so
//! columns stay aligned and a value cannot start a row of its own. `-o json` and `-o yaml` stay
//! exact: their encoders escape control characters in strings, so the filter finds none.

use std::borrow::Cow;
use std::fmt::Write as _;
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

/// True for a control character: C0, DEL and C1.
fn is_control(c: char) -> bool {
    matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}')
}

/// Writes `c` as a visible escape: `\n`, `\t`, `\r`, or `\u{1b}`.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        _ => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

/// `text` with every control character escaped (newline and tab too when `keep_lines` is false).
fn escape_controls(text: &str, keep_lines: bool) -> Cow<'_, str> {
    let escaped = |c: char| is_control(c) && !(keep_lines && (c == '\n' || c == '\t'));
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `text` safe to print on one line (a table cell, a progress bar): every control character,
/// newline and tab included, is shown as an escape.
pub fn one_line(text: &str) -> Cow<'_, str> {
    escape_controls(text, false)
}

/// `text` safe to print: every control character but newline and tab is shown as an escape.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    escape_controls(text, true)
}

/// The colour codes [`Style`] writes: the only escape sequences [`Terminal`] lets through.
const STYLE_CODES: [&str; 7] = ["0", "1", "31", "32", "33", "36", "1;31"];

/// The escape sequence of an SGR code of [`STYLE_CODES`] at the start of `text`, if any.
fn style_sequence(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("\x1b[")?;
    let (code, _) = rest.split_once('m')?;
    STYLE_CODES
        .contains(&code)
        .then(|| &text[..2 + code.len() + 1])
}

/// A stream of the terminal (standard output or error, or a file standing for one) that shows
/// control characters as escapes: everything tcadm prints passes here. Newlines and tabs are
/// kept, and so are tcadm's own colour codes when `colors` is on; bytes that are not UTF-8 are
/// shown as `\x..`.
pub struct Terminal<W> {
    inner: W,
    colors: bool,
    /// The start of a UTF-8 character whose other bytes come with the next write.
    pending: Vec<u8>,
}

impl<W: Write> Terminal<W> {
    /// Wraps a stream; `colors` lets tcadm's colour codes through.
    pub fn new(inner: W, colors: bool) -> Self {
        Terminal {
            inner,
            colors,
            pending: Vec::new(),
        }
    }

    fn write_text(&mut self, text: &str) -> io::Result<()> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if c == '\x1b'
                && self.colors
                && let Some(sequence) = style_sequence(rest)
            {
                out.push_str(sequence);
                rest = &rest[sequence.len()..];
                continue;
            }
            if is_control(c) && c != '\n' && c != '\t' {
                push_escaped(&mut out, c);
            } else {
                out.push(c);
            }
            rest = &rest[c.len_utf8()..];
        }
        self.inner.write_all(out.as_bytes())
    }
}

impl<W: Write> Write for Terminal<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(buf);
        let mut start = 0;
        while start < bytes.len() {
            match std::str::from_utf8(&bytes[start..]) {
                Ok(text) => {
                    self.write_text(text)?;
                    start = bytes.len();
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    let text = std::str::from_utf8(&bytes[start..start + valid])
                        .expect("checked by from_utf8");
                    self.write_text(text)?;
                    start += valid;
                    match error.error_len() {
                        Some(invalid) => {
                            let mut escaped = String::new();
                            for byte in &bytes[start..start + invalid] {
                                let _ = write!(escaped, "\\x{byte:02x}");
                            }
                            self.inner.write_all(escaped.as_bytes())?;
                            start += invalid;
                        }
                        None => {
                            self.pending = bytes[start..].to_vec();
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let mut escaped = String::new();
            for byte in std::mem::take(&mut self.pending) {
                let _ = write!(escaped, "\\x{byte:02x}");
            }
            self.inner.write_all(escaped.as_bytes())?;
        }
        self.inner.flush()
    }
}

/// Prints one line on standard error: `prefix` (tcadm's own, maybe coloured) and `message` (which
/// may come from the controller), through [`Terminal`].
pub fn print_stderr(style: Style, prefix: &str, message: &str) {
    let mut stderr = Terminal::new(io::stderr().lock(), style.color);
    let message = terminal_safe(message);
    let line = if prefix.is_empty() {
        format!("{message}\n")
    } else {
        format!("{prefix} {message}\n")
    };
    let _ = stderr.write_all(line.as_bytes());
    let _ = stderr.flush();
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
    let text = serde_json::to_string_pretty(value).expect("values serialize to JSON");
    // serde_json escapes C0 but writes DEL and C1 as they are; `\u` escapes decode to the same
    // strings, and they can only be inside strings, so the document stays exact.
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if is_control(c) && c != '\n' {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out.push('\n');
    out
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
        debug_assert!(STYLE_CODES.contains(&code));
        // What is painted may come from the controller: its own escapes are shown, not obeyed.
        let text = terminal_safe(text);
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.into_owned()
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

    /// What a hostile client might put in a host name or a package message: a window title
    /// (OSC 0), a screen clear (CSI 2J), a clipboard write (OSC 52), a CSI as one C1 character,
    /// DEL, a carriage return, and one of tcadm's own colour codes.
    const HOSTILE: &str =
        "kiosk\x1b]0;pwned\x07\x1b[2J\x1b]52;c;ZWNobyBvd25lZA==\x1b\\\u{9b}31m\x7f\rend\x1b[32m";

    fn terminal_output(colors: bool, writes: &[&[u8]]) -> String {
        let mut terminal = Terminal::new(Vec::new(), colors);
        for bytes in writes {
            terminal.write_all(bytes).unwrap();
        }
        terminal.flush().unwrap();
        String::from_utf8(terminal.inner).unwrap()
    }

    #[test]
    fn the_terminal_shows_control_characters_instead_of_obeying_them() {
        let expected = "kiosk\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{1b}]52;c;ZWNobyBvd25lZA==\\u{1b}\\\\u{9b}31m\\u{7f}\\rend\\u{1b}[32m\n\tnext";
        let line = format!("{HOSTILE}\n\tnext");
        for colors in [false, true] {
            let out = terminal_output(colors, &[line.as_bytes()]);
            // With colours on, the filter cannot tell one of tcadm's colour codes in a value
            // from its own: values are escaped where they are laid out (cells, describe lines,
            // painted words, messages), so none reaches it raw.
            if !colors {
                assert_eq!(out, expected);
            }
            assert!(!out.contains(['\x07', '\x7f', '\u{9b}', '\r']), "{out:?}");
        }
        // Split anywhere, even inside a character, the result is the same.
        let bytes = line.as_bytes();
        for split in 0..bytes.len() {
            let out = terminal_output(false, &[&bytes[..split], &bytes[split..]]);
            assert_eq!(out, expected, "split at {split}");
        }
        assert_eq!(terminal_output(false, &[b"a\xffb"]), "a\\xffb");
    }

    #[test]
    fn only_tcadm_colour_codes_pass_and_only_with_colours() {
        let painted = Style { color: true }.green("created");
        assert_eq!(terminal_output(true, &[painted.as_bytes()]), painted);
        assert_eq!(
            terminal_output(false, &[painted.as_bytes()]),
            "\\u{1b}[32mcreated\\u{1b}[0m"
        );
        // Painting escapes what it paints.
        let painted = Style { color: true }.red(HOSTILE);
        let out = terminal_output(true, &[painted.as_bytes()]);
        assert!(out.starts_with("\x1b[31mkiosk\\u{1b}]0;pwned"), "{out:?}");
        assert!(out.ends_with("end\\u{1b}[32m\x1b[0m"), "{out:?}");
    }

    #[test]
    fn one_line_escapes_newlines_and_tabs_too() {
        assert_eq!(one_line("a\nb\tc\x1b"), "a\\nb\\tc\\u{1b}");
        assert_eq!(terminal_safe("a\nb\tc\x1b"), "a\nb\tc\\u{1b}");
        assert!(matches!(one_line("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn json_and_yaml_stay_exact_and_pass_the_terminal_unchanged() {
        let value = json!({ "hostname": HOSTILE, "message": "line 1\nline 2\t\u{85}" });
        for (text, decoded) in [
            (
                to_json(&value),
                serde_json::from_str::<serde_json::Value>(&to_json(&value)).unwrap(),
            ),
            (
                to_yaml(&value),
                tc_api::decode::parse_documents("out.yaml", &to_yaml(&value), &Default::default())
                    .unwrap()[0]
                    .value
                    .clone(),
            ),
        ] {
            assert_eq!(decoded, value, "{text}");
            assert_eq!(terminal_output(false, &[text.as_bytes()]), text);
        }
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
