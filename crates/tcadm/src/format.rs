//! Plain-text formatting: ages, sizes, label summaries and aligned tables.

use std::collections::BTreeMap;
use std::time::Duration;

use tc_api::Timestamp;

use crate::output::one_line;

/// Separator between table columns, as kubectl prints it.
const COLUMN_GAP: &str = "   ";

/// Formats a duration the way kubectl prints ages: `45s`, `5m12s`, `40m`, `3h5m`, `20h`, `3d4h`,
/// `200d`, `2y30d`, `9y`. Precision drops as the duration grows.
pub fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let years = days / 365;
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        match seconds % 60 {
            0 => format!("{minutes}m"),
            rest => format!("{minutes}m{rest}s"),
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            rest => format!("{hours}h{rest}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            rest => format!("{days}d{rest}h"),
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if years < 8 {
        match days % 365 {
            0 => format!("{years}y"),
            rest => format!("{years}y{rest}d"),
        }
    } else {
        format!("{years}y")
    }
}

/// The age of `time` at `now`, or `placeholder` when there is no time.
pub fn age(time: Option<Timestamp>, now: Timestamp, placeholder: &str) -> String {
    match time {
        Some(time) => human_duration(now.since(time)),
        None => placeholder.to_string(),
    }
}

/// Formats a byte count with binary units and one decimal: `512B`, `1.5KiB`, `12.0MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// Longest label summary printed in a table cell before the rest is counted instead.
const LABEL_SUMMARY_WIDTH: usize = 48;

/// Summarises labels for a table cell: `key=value` pairs, sorted, comma-separated, without the
/// automatic `thinfleet.io/` labels (their values have their own columns); long lists end in
/// `+N` for the labels left out. `<none>` when nothing is left.
pub fn label_summary(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .filter(|(key, _)| !key.starts_with("thinfleet.io/"))
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if pairs.is_empty() {
        return "<none>".into();
    }
    let mut summary = String::new();
    for (index, pair) in pairs.iter().enumerate() {
        let separator = if index == 0 { "" } else { "," };
        let left = pairs.len() - index;
        let fits = summary.len() + separator.len() + pair.len() <= LABEL_SUMMARY_WIDTH;
        if !fits && index > 0 {
            summary.push_str(&format!(",+{left}"));
            return summary;
        }
        summary.push_str(separator);
        summary.push_str(pair);
    }
    summary
}

/// Every label as `key=value`, sorted, one string per label.
pub fn label_lines(labels: &BTreeMap<String, String>) -> Vec<String> {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

/// A table of text cells, printed with columns aligned like kubectl's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// Column titles, upper case.
    pub headers: Vec<String>,
    /// One entry per row, as many cells as headers.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column titles.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: vec![],
        }
    }

    /// Adds a row.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The width of every column, wide enough for the header and every cell (as printed, with
    /// control characters escaped).
    pub fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| text_width(h)).collect();
        for row in &self.rows {
            for (index, cell) in row.iter().enumerate() {
                if index < widths.len() {
                    widths[index] = widths[index].max(text_width(cell));
                }
            }
        }
        widths
    }

    /// Renders headers and rows, each line ending in a newline, no trailing spaces.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = render_row(&self.headers, &widths);
        for row in &self.rows {
            out.push_str(&render_row(row, &widths));
        }
        out
    }
}

/// Renders one row with the given column widths; the last cell is not padded. A cell's control
/// characters, newlines and tabs included, are shown as escapes ([`one_line`]): a value from a
/// client can neither drive the terminal nor start a row of its own.
pub fn render_row(cells: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (index, cell) in cells.iter().enumerate() {
        if index > 0 {
            line.push_str(COLUMN_GAP);
        }
        let cell = one_line(cell);
        line.push_str(&cell);
        if index + 1 < cells.len() {
            let width = widths.get(index).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    let trimmed_len = line.trim_end().len();
    line.truncate(trimmed_len);
    line.push('\n');
    line
}

/// Width of a cell in columns as printed (control characters escaped), counting characters.
fn text_width(text: &str) -> usize {
    one_line(text).chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (0, "0s"),
            (12, "12s"),
            (119, "119s"),
            (120, "2m"),
            (312, "5m12s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (2 * 86_400, "2d"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (8 * 86_400, "8d"),
            (729 * 86_400, "729d"),
            (730 * 86_400, "2y"),
            (760 * 86_400, "2y30d"),
            (9 * 365 * 86_400, "9y"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(
                human_duration(Duration::from_secs(seconds)),
                expected,
                "{seconds}s"
            );
        }
    }

    #[test]
    fn age_of_a_missing_time_is_the_placeholder() {
        let now = Timestamp::from_unix_millis(100_000);
        assert_eq!(age(None, now, "<never>"), "<never>");
        assert_eq!(
            age(Some(Timestamp::from_unix_millis(88_000)), now, "-"),
            "12s"
        );
        assert_eq!(
            age(Some(Timestamp::from_unix_millis(200_000)), now, "-"),
            "0s"
        );
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(1023), "1023B");
        assert_eq!(human_size(1024), "1.0KiB");
        assert_eq!(human_size(1536), "1.5KiB");
        assert_eq!(human_size(12 * 1024 * 1024), "12.0MiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.0GiB");
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_summary_skips_automatic_labels_and_counts_the_rest() {
        assert_eq!(label_summary(&labels(&[])), "<none>");
        assert_eq!(
            label_summary(&labels(&[("thinfleet.io/arch", "x86_64")])),
            "<none>"
        );
        assert_eq!(
            label_summary(&labels(&[
                ("thinfleet.io/arch", "x86_64"),
                ("site", "berlin"),
                ("rack", "7")
            ])),
            "rack=7,site=berlin"
        );
        let many = labels(&[
            ("aaaaaaaaaa", "1111111111"),
            ("bbbbbbbbbb", "2222222222"),
            ("cccccccccc", "3333333333"),
            ("dddddddddd", "4444444444"),
        ]);
        assert_eq!(
            label_summary(&many),
            "aaaaaaaaaa=1111111111,bbbbbbbbbb=2222222222,+2"
        );
        let one_long = labels(&[("k", &"v".repeat(60))]);
        assert_eq!(label_summary(&one_long), format!("k={}", "v".repeat(60)));
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(&["NAME", "PHASE", "LABELS"]);
        table.push(vec![
            "kiosk-1".into(),
            "Online".into(),
            "site=berlin".into(),
        ]);
        table.push(vec!["k2".into(), "Offline".into(), "".into()]);
        assert_eq!(
            table.render(),
            "NAME      PHASE     LABELS\n\
             kiosk-1   Online    site=berlin\n\
             k2        Offline\n"
        );
    }

    #[test]
    fn a_table_without_rows_prints_its_header() {
        let table = Table::new(&["NAME", "AGE"]);
        assert_eq!(table.render(), "NAME   AGE\n");
    }
}
