//! Drills on the console: each report `cellctl drill` kept in `DIR/drills/` becomes an event
//! with a link to its page, which the console serves (to admins, as every `/api/` route).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde_json::Value;

use super::model::Event;

/// The drills already turned into events.
#[derive(Debug, Default)]
pub struct Drills {
    seen: BTreeSet<String>,
}

impl Drills {
    /// Events for the reports under `dir` not seen before, oldest first. A directory
    /// without a readable `report.json` (a drill still writing it) is looked at again next
    /// time.
    pub fn fresh(&mut self, dir: &Path) -> Vec<Event> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut fresh = Vec::new();
        for id in entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
        {
            if !valid_id(&id) || self.seen.contains(&id) {
                continue;
            }
            if let Some(event) = event(&dir.join(&id), &id) {
                self.seen.insert(id);
                fresh.push(event);
            }
        }
        fresh.sort_by_key(|e| e.at_ms);
        fresh
    }
}

/// Whether `id` can name a kept drill: `drill::report::kept_name`'s alphabet, so a request
/// can never reach outside `DIR/drills/`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('-')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The report page of drill `id`, when there is one.
pub fn page(dir: &Path, id: &str) -> Option<String> {
    if !valid_id(id) {
        return None;
    }
    std::fs::read_to_string(dir.join(id).join("report.html")).ok()
}

/// The event of the drill whose report is in `dir`: when it was written, its verdict, RTO
/// and what the ledger found.
fn event(dir: &Path, id: &str) -> Option<Event> {
    let path = dir.join("report.json");
    let at_ms = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    let s: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let trials = s["trials"].as_array().map_or(0, Vec::len);
    let rto = match (s["rto_ms"]["p50"].as_u64(), s["rto_ms"]["max"].as_u64()) {
        (Some(p50), Some(max)) => format!(", RTO p50 {p50} ms / max {max} ms"),
        _ => String::new(),
    };
    let text = format!(
        "drill {}: {}, {trials} trial{}{rto}; {} acknowledged, {} lost, {} duplicated",
        s["scenario"].as_str().unwrap_or("?"),
        if s["ok"] == true { "PASS" } else { "FAIL" },
        if trials == 1 { "" } else { "s" },
        s["acknowledged"],
        s["acknowledged_lost"],
        s["duplicated"],
    );
    Some(Event {
        at_ms,
        kind: "drill",
        subject: id.to_owned(),
        text,
        rto_ms: s["rto_ms"]["max"].as_i64(),
        report: Some(format!("/api/drills/{id}/report.html")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_the_drills_directory() {
        assert!(valid_id("20261207T180512Z-kill-cell"));
        for bad in [
            "",
            "..",
            "../secret",
            "a/b",
            "-x",
            "a.html",
            &"x".repeat(65),
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn each_kept_report_becomes_one_event_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("20261207T180512Z-kill-cell")).unwrap();
        // Still being written: no report.json yet, no event, looked at again later.
        let mut drills = Drills::default();
        assert!(drills.fresh(dir).is_empty());
        let report = serde_json::json!({
            "ok": true, "scenario": "kill-cell", "trials": [{}],
            "rto_ms": {"p50": 1375, "max": 1403},
            "acknowledged": 812, "acknowledged_lost": 0, "duplicated": 0,
        });
        std::fs::write(
            dir.join("20261207T180512Z-kill-cell/report.json"),
            report.to_string(),
        )
        .unwrap();
        let events = drills.fresh(dir);
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.kind, "drill");
        assert_eq!(
            e.text,
            "drill kill-cell: PASS, 1 trial, RTO p50 1375 ms / max 1403 ms; 812 acknowledged, 0 lost, 0 duplicated"
        );
        assert_eq!(
            e.report.as_deref(),
            Some("/api/drills/20261207T180512Z-kill-cell/report.html")
        );
        assert!(drills.fresh(dir).is_empty(), "an event is made once");
        assert_eq!(page(dir, "../x"), None);
    }
}
