//! How mcp-sshctl prints: failures, tables that fit the terminal, durations people read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfy_table::{Cell, ColumnConstraint, ContentArrangement, Row, Table, presets};
use mcp_ssh_shim::client::ClientError;
use mcp_ssh_shim::mcp::{Call, status_text};
use serde_json::json;

/// Reports a failure: on stderr for people, as `{"error": ...}` on stdout with `--json`.
pub fn fail(as_json: bool, message: &str) {
    if as_json {
        println!("{:#}", json!({ "error": message }));
    } else {
        eprintln!("mcp-sshctl: {message}");
    }
}

/// A failure in words: the daemon's message, or what losing the daemon during a call means
/// (never the transport's internals).
pub fn error_text(e: &ClientError) -> String {
    match e {
        ClientError::Rpc(status) => status_text(status, Call::Unknown),
        other => other.to_string(),
    }
}

/// A borderless table, columns two spaces apart, the header as its first line. On a terminal it
/// fits the width: the `flexible` columns shrink and their cells end with "…"; each row stays
/// one line. Piped, nothing is cut.
pub struct TextTable {
    table: Table,
}

impl TextTable {
    pub fn new(header: &[&str], flexible: &[usize]) -> TextTable {
        let mut table = Table::new();
        let mut title = Row::from(header.to_vec());
        title.max_height(1);
        table
            .load_style(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(title);
        // Unit tests print to whatever terminal runs them: their tables are never cut.
        #[cfg(test)]
        table.force_no_tty();
        for (i, column) in table.column_iter_mut().enumerate() {
            column.set_padding((0, 2));
            if !flexible.contains(&i) {
                column.set_constraint(ColumnConstraint::ContentWidth);
            }
        }
        TextTable { table }
    }

    /// A row; control characters (a remote line's tabs, escapes, carriage returns) become
    /// spaces, so a row is one line that does not move the cursor.
    pub fn row(&mut self, cells: Vec<String>) {
        let cells = cells.into_iter().map(|text| {
            let clean: String = text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Cell::new(clean)
        });
        let mut row = Row::from(cells.collect::<Vec<_>>());
        row.max_height(1);
        self.table.add_row(row);
    }

    /// The table, one line per row, without trailing spaces, ending with a newline.
    pub fn render(&self) -> String {
        let mut out = self.table.trim_fmt();
        out.push('\n');
        out
    }
}

/// Milliseconds from `unix_ms` until now (0 for the future or an unset time).
pub fn since_ms(unix_ms: i64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    u64::try_from(now.saturating_sub(u128::try_from(unix_ms).unwrap_or(0))).unwrap_or(0)
}

/// A duration in its two largest units, as people say it: "45s", "3m 12s", "2h 5m",
/// "3days 4h" (humantime's words, the smaller units dropped).
pub fn human_duration(ms: u64) -> String {
    let full = humantime::format_duration(Duration::from_secs(ms / 1000)).to_string();
    full.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// "3m 12s ago", or "-" for an unset time.
pub fn ago(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    format!("{} ago", human_duration(since_ms(unix_ms)))
}

/// The first line of `text`, at most `max` characters ("…" marks a cut).
pub fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= max {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `Some(s)` unless `s` is empty: optional protobuf strings become JSON null.
pub fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_their_two_largest_units() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(45_900), "45s");
        assert_eq!(human_duration(192_000), "3m 12s");
        assert_eq!(human_duration(7_530_000), "2h 5m");
        assert_eq!(human_duration(273_900_000), "3days 4h");
        assert_eq!(human_duration(273_960_000), "3days 4h");
        assert_eq!(human_duration(3_600_000), "1h");
    }

    #[test]
    fn a_piped_table_keeps_every_cell_whole_and_starts_rows_at_the_margin() {
        let mut t = TextTable::new(&["HOST", "LAST ERROR"], &[1]);
        t.row(vec!["alpha".into(), "x".repeat(300)]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "HOST   LAST ERROR");
        assert!(lines[1].starts_with("alpha  xxx"), "{text}");
        assert_eq!(lines[1].len(), 7 + 300);
    }

    #[test]
    fn lines_are_cut_with_a_marker() {
        assert_eq!(first_line("abc\ndef", 10), "abc");
        assert_eq!(first_line("abcdef", 4), "abc…");
    }
}
