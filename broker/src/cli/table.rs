//! Column-aligned tables for human output.
//!
//! Each column is as wide as its widest cell, so a value with a space in it (an agent's
//! `sandbox network=none`) or longer than usual never pushes the columns after it out of line.
//! Scripts use `--json`, never these tables.

use super::output::outln;

/// A header and rows, printed with two spaces between columns; the last column is not padded.
#[derive(Debug)]
pub(super) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(header: &[&str]) -> Self {
        Self { rows: vec![header.iter().map(|h| (*h).to_owned()).collect()] }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(super) fn print(&self) -> anyhow::Result<()> {
        for line in self.render() {
            outln!("{line}")?;
        }
        Ok(())
    }

    fn render(&self) -> Vec<String> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
            .collect();
        self.rows
            .iter()
            .map(|row| {
                let mut line = String::new();
                for (c, cell) in row.iter().enumerate() {
                    if c + 1 == row.len() {
                        line.push_str(cell);
                    } else {
                        let width = widths.get(c).copied().unwrap_or(0);
                        line.push_str(&format!("{cell:<width$}  "));
                    }
                }
                line.trim_end().to_owned()
            })
            .collect()
    }
}

/// A Unix time as an RFC 3339 UTC date (`2026-12-06T04:21:30Z`), for people; `--json` keeps numbers.
/// Unknown times (absent, or 0 as in rows the first migration created) print as `-`.
pub(super) fn date(unix: Option<i64>) -> String {
    unix.filter(|t| *t > 0).map_or_else(|| "-".to_owned(), crate::clock::rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_with_spaces_does_not_shift_the_columns_after_it() {
        let mut table = Table::new(&["ID", "ISOLATION", "HOST"]);
        table.row(vec!["a1".to_owned(), "sandbox network=none".to_owned(), "h1".to_owned()]);
        table.row(vec!["a2".to_owned(), "process".to_owned(), "h2".to_owned()]);
        assert_eq!(
            table.render(),
            ["ID  ISOLATION             HOST", "a1  sandbox network=none  h1", "a2  process               h2"]
        );
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(date(Some(1_796_532_941)), "2026-12-06T04:55:41Z");
        assert_eq!(date(None), "-");
        assert_eq!(date(Some(0)), "-", "the default pool's creation time is unknown");
    }
}
