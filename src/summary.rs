//! `Summary`: the totals of a run and a bounded list of per-client rows, with the two ways they
//! are shown at the end: a table on stderr and the JSON `summary` event.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::format::{counted, millis, plural, timestamp, write_json};
use crate::listen::Peer;
use crate::worker::ClientReport;

/// Per-client rows kept for the summary: the busiest clients by bytes. Bounded, so a run that
/// serves a million short connections keeps no more than this.
pub const ROWS_KEPT: usize = 1000;

/// Rows shown in the table on stderr; the rest are counted in one line.
pub const ROWS_SHOWN: usize = 20;

/// One client's line in the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientRow {
    pub client: u64,
    pub peer: Peer,
    #[serde(rename = "connected_ms", serialize_with = "as_millis")]
    pub connected_for: Duration,
    pub messages: u64,
    pub bytes: u64,
    /// Bytes sent to the client.
    pub sent: u64,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(millis(*d))
}

/// Orders rows by bytes, then by earlier client first, for the min-heap of the busiest.
#[derive(Debug, PartialEq, Eq)]
struct ByBytes(ClientRow);

impl Ord for ByBytes {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.bytes, Reverse(self.0.client)).cmp(&(other.0.bytes, Reverse(other.0.client)))
    }
}

impl PartialOrd for ByBytes {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Totals of a run, and the busiest clients' rows.
#[derive(Debug, Default)]
pub struct Summary {
    /// Clients that got a number and a worker.
    pub clients: u64,
    /// Messages received from all clients.
    pub messages: u64,
    /// Bytes received from all clients.
    pub bytes: u64,
    /// Bytes sent to all clients.
    pub sent: u64,

    /// Connections closed without a number or a worker: access rules, `--max-conns`, no thread.
    pub refused: u64,
    /// Workers that panicked (always 0 unless there is a bug).
    pub panicked: u64,
    /// Datagrams the kernel dropped on UDP listeners, where the system counts them.
    pub datagrams_dropped: Option<u64>,
    /// TLS clients whose handshake failed.
    pub tls_failed: u64,
    /// The busiest [`ROWS_KEPT`] clients, least busy on top.
    busiest: BinaryHeap<Reverse<ByBytes>>,
}

impl Summary {
    /// Makes room for the rows of `more` clients about to be added (no more than the summary
    /// keeps), so a stop that adds thousands does not grow the list as it goes.
    pub fn reserve(&mut self, more: usize) {
        let room = (ROWS_KEPT + 1).saturating_sub(self.busiest.len());
        self.busiest.reserve(more.min(room));
    }

    /// Adds a finished client's counts (and the client to the count of clients).
    pub fn add(&mut self, report: &ClientReport) {
        self.clients += 1;
        self.messages += report.totals.messages;
        self.bytes += report.totals.bytes;
        self.sent += report.totals.sent;
        if matches!(report.end, crate::worker::End::Handshake(_)) {
            self.tls_failed += 1;
        }
        self.busiest.push(Reverse(ByBytes(ClientRow {
            client: report.id.number(),
            peer: report.peer.clone(),
            connected_for: report.totals.connected_for,
            messages: report.totals.messages,
            bytes: report.totals.bytes,
            sent: report.totals.sent,
        })));
        if self.busiest.len() > ROWS_KEPT {
            self.busiest.pop();
        }
    }

    /// The line that ends a run on stderr: clients, messages and bytes served, connections
    /// refused, then only what happened: failed TLS handshakes, the kernel's datagram drops
    /// (where UDP was heard), `unwritten` (what the output could not take, if anything), and
    /// panicked workers.
    pub fn served_line(&self, unwritten: &str) -> String {
        let tls_failed = match self.tls_failed {
            0 => String::new(),
            n => format!("; {} failed", counted(n, "TLS handshake")),
        };
        let dropped = match self.datagrams_dropped {
            Some(0) => String::from("; the kernel dropped no datagram"),
            Some(n) => format!(
                "; the kernel dropped {} (receive buffer full)",
                counted(n, "datagram")
            ),
            None => String::new(),
        };
        let panicked = match self.panicked {
            0 => String::new(),
            n => format!(
                "; {} panicked (a bug: please report it)",
                counted(n, "worker")
            ),
        };
        format!(
            "served {}: {}, {}; refused {}{tls_failed}{dropped}{unwritten}{panicked}",
            counted(self.clients, "client"),
            counted(self.messages, "message"),
            counted(self.bytes, "byte"),
            counted(self.refused, "connection")
        )
    }

    /// The kept rows, in client order.
    pub fn rows(&self) -> Vec<ClientRow> {
        let mut rows: Vec<ClientRow> = self.busiest.iter().map(|r| r.0.0.clone()).collect();
        rows.sort_by_key(|row| row.client);
        rows
    }

    /// The table for stderr: the busiest [`ROWS_SHOWN`] clients in client order, a line for
    /// the others, and the totals.
    pub fn table(&self) -> String {
        let mut shown: Vec<ClientRow> = self.busiest.iter().map(|r| r.0.0.clone()).collect();
        shown.sort_by_key(|row| Reverse((row.bytes, Reverse(row.client))));
        shown.truncate(ROWS_SHOWN);
        shown.sort_by_key(|row| row.client);
        let mut cells: Vec<[String; 6]> = vec![[
            "client".into(),
            "peer".into(),
            "connected for".into(),
            "messages".into(),
            "bytes".into(),
            "sent".into(),
        ]];
        for row in &shown {
            cells.push([
                row.client.to_string(),
                row.peer.to_string(),
                crate::format::rounded(row.connected_for).to_string(),
                row.messages.to_string(),
                row.bytes.to_string(),
                row.sent.to_string(),
            ]);
        }
        cells.push([
            "total".into(),
            counted(self.clients, "client"),
            String::new(),
            self.messages.to_string(),
            self.bytes.to_string(),
            self.sent.to_string(),
        ]);
        let widths: Vec<usize> = (0..6)
            .map(|c| {
                cells
                    .iter()
                    .map(|row| row[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (i, row) in cells.iter().enumerate() {
            if i == cells.len() - 1 {
                let hidden = self.clients.saturating_sub(shown.len() as u64);
                if hidden > 0 {
                    let _ = writeln!(
                        out,
                        "… {hidden} more {} not shown (the {} busiest are)",
                        plural(hidden, "client"),
                        shown.len()
                    );
                }
            }
            let line: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, cell)| match c {
                    0 | 3 | 4 | 5 => format!("{cell:>w$}", w = widths[c]),
                    _ => format!("{cell:<w$}", w = widths[c]),
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        out
    }

    /// Appends the JSON `summary` event: totals and the kept per-client rows.
    pub fn json(&self, out: &mut Vec<u8>) {
        #[derive(Serialize)]
        struct SummaryEvent<'a> {
            ts: &'a str,
            event: &'a str,
            clients: u64,
            messages: u64,
            bytes: u64,
            sent: u64,
            refused: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            datagrams_dropped: Option<u64>,
            tls_failed: u64,
            rows_omitted: u64,
            per_client: Vec<ClientRow>,
        }
        let per_client = self.rows();
        write_json(
            out,
            &SummaryEvent {
                ts: &timestamp(SystemTime::now()),
                event: "summary",
                clients: self.clients,
                messages: self.messages,
                bytes: self.bytes,
                sent: self.sent,
                refused: self.refused,
                datagrams_dropped: self.datagrams_dropped,
                tls_failed: self.tls_failed,
                rows_omitted: self.clients.saturating_sub(per_client.len() as u64),
                per_client,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ClientTotals;
    use crate::worker::{ClientId, End};

    fn report(n: u64, bytes: u64) -> ClientReport {
        ClientReport {
            id: ClientId::new(n),
            peer: Peer::Ip("127.0.0.1:4000".parse().expect("literal")),
            totals: ClientTotals {
                messages: 1,
                bytes,
                sent: 3 * n,
                connected_for: Duration::from_millis(1500),
            },
            dropped: crate::outbox::Dropped::default(),
            end: End::Closed,
        }
    }

    #[test]
    fn keeps_only_the_busiest_rows() {
        let mut summary = Summary::default();
        for n in 1..=(ROWS_KEPT as u64 + 500) {
            summary.add(&report(n, n % 700));
        }
        let rows = summary.rows();
        assert_eq!(rows.len(), ROWS_KEPT);
        assert!(
            rows.iter().all(|r| r.bytes >= 200),
            "the least busy were dropped"
        );
        assert_eq!(summary.messages, ROWS_KEPT as u64 + 500);
    }

    #[test]
    fn table_lists_rows_then_totals() {
        let mut summary = Summary::default();
        for n in 1..=3 {
            summary.add(&report(n, 10 * n));
        }
        let table = summary.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("client  peer"), "{table}");
        assert!(lines[1].contains("127.0.0.1:4000  1s 500ms"), "{table}");
        assert!(
            lines[4].trim_start().starts_with("total  3 clients"),
            "{table}"
        );
    }

    #[test]
    fn table_is_short_for_thousands_of_clients() {
        let mut summary = Summary::default();
        for n in 1..=5000 {
            summary.add(&report(n, n));
        }
        let table = summary.table();
        assert_eq!(table.lines().count(), ROWS_SHOWN + 3, "{table}");
        assert!(table.contains("… 4980 more clients not shown"), "{table}");
        let mut one = Summary::default();
        one.add(&report(1, 7));
        assert!(one.table().contains("total  1 client "), "{}", one.table());
        assert!(
            table.contains(" 5000 "),
            "the busiest client is shown: {table}"
        );
    }

    #[test]
    fn json_summary_parses() {
        let mut summary = Summary::default();
        summary.add(&report(1, 42));
        let mut out = Vec::new();
        summary.json(&mut out);
        let value: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(value["event"], "summary");
        assert_eq!(value["bytes"], 42);
        assert_eq!(value["per_client"][0]["connected_ms"], 1500);
        assert_eq!(value["sent"], 3);
        assert_eq!(value["per_client"][0]["sent"], 3);
    }

    /// The run's last line says only what happened: no failed handshake, drop or panic is named
    /// when there was none, and each is counted when there was.
    #[test]
    fn the_served_line_names_only_what_happened() {
        let mut summary = Summary::default();
        summary.add(&report(1, 42));
        assert_eq!(
            summary.served_line(""),
            "served 1 client: 1 message, 42 bytes; refused 0 connections"
        );
        summary.refused = 3;
        summary.tls_failed = 2;
        summary.datagrams_dropped = Some(0);
        summary.panicked = 1;
        assert_eq!(
            summary.served_line("; 4 messages not written (the output failed)"),
            "served 1 client: 1 message, 42 bytes; refused 3 connections; \
             2 TLS handshakes failed; the kernel dropped no datagram; \
             4 messages not written (the output failed); \
             1 worker panicked (a bug: please report it)"
        );
        summary.datagrams_dropped = Some(5);
        assert!(
            summary
                .served_line("")
                .contains("; the kernel dropped 5 datagrams (receive buffer full)"),
            "{}",
            summary.served_line("")
        );
    }
}
