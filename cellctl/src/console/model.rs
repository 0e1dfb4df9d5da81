//! What the console's picture is made of, derived (pure) from `cellctl status`'s gathering
//! and the newest chart points: one node per process with its colour **and** the reasons
//! in words, the switches, and the events found by comparing one gathering with the last.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::series::Point;
use crate::status::{Health, Status};

/// A cell whose 5xx share of the last interval is over this is amber.
pub const ERROR_SHARE_AMBER: f64 = 0.05;
/// …when it served at least this many requests per second (a few errors of a trickle are
/// noise).
pub const ERROR_MIN_RPS: f64 = 2.0;
/// Events kept.
pub const EVENTS_KEPT: usize = 200;

/// The degradation switches of the router's route table (router/README.md); a switch raft-meta
/// knows of is listed too.
pub const KNOWN_SWITCHES: [&str; 11] = [
    "packet_send",
    "c2c_send",
    "b2c_send",
    "claims",
    "packet_get",
    "claims_list",
    "wallet",
    "history",
    "subsidy_grant",
    "subsidy_list",
    "payment_callback",
];

/// One box of the picture.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Node {
    /// `router`, `meta1`, `c1`.
    pub id: String,
    /// `router`, `meta` or `cell`.
    pub kind: &'static str,
    pub region: String,
    pub health: Health,
    /// The word shown with the colour: `OK`, `WARN` or `DOWN`/`FAIL`.
    pub label: &'static str,
    /// Why it is not green (empty when green).
    pub reasons: Vec<String>,
    /// What else is worth reading on the box (`leader`, `ready`, pid …).
    pub detail: String,
}

fn label(kind: &str, h: Health, reasons: &[String]) -> &'static str {
    match h {
        Health::Green => "OK",
        Health::Amber => "WARN",
        Health::Red if reasons.iter().any(|r| r.starts_with("down")) || kind == "meta" => "DOWN",
        Health::Red => "FAIL",
    }
}

/// The nodes of the picture: the router, raft-meta's nodes, the cells (in the order of the
/// deployment record).
pub fn nodes(status: &Status, latest: &BTreeMap<String, Point>) -> Vec<Node> {
    let mut out = Vec::new();
    let down = |p: &crate::status::Process| -> Vec<String> {
        if p.health == Health::Red {
            vec![format!("down: {}", p.detail)]
        } else if p.health == Health::Amber {
            vec![p.detail.clone()]
        } else {
            Vec::new()
        }
    };

    let r = &status.router;
    let mut reasons = down(r);
    let mut health = r.health;
    for (name, message) in &status.switches_off {
        health = health.worst(Health::Amber);
        reasons.push(if message.is_empty() {
            format!("switch {name} off")
        } else {
            format!("switch {name} off: {message}")
        });
    }
    out.push(Node {
        id: "router".into(),
        kind: "router",
        region: r.region.clone(),
        health,
        label: label("router", health, &reasons),
        reasons,
        detail: r.detail.clone(),
    });

    for m in &status.meta {
        let mut reasons = down(m);
        let mut health = m.health;
        if status.leader.is_none() {
            health = health.worst(Health::Amber);
            reasons.push("no raft leader".into());
        }
        out.push(Node {
            id: m.name.clone(),
            kind: "meta",
            region: m.region.clone(),
            health,
            label: label("meta", health, &reasons),
            reasons,
            detail: m.detail.clone(),
        });
    }

    for c in &status.cells {
        let p = &c.process;
        let mut health = p.health;
        let mut reasons = Vec::new();
        if p.health == Health::Red {
            reasons.push(format!("down: {}", p.detail));
        } else if p.health == Health::Amber && !p.detail.starts_with("ready") {
            reasons.push(p.detail.clone());
        }
        if c.liveness == "down" || c.liveness == "suspect" {
            reasons.push(format!("raft-meta sees it {}", c.liveness));
        }
        if let Some(why) = &c.fenced {
            health = health.worst(Health::Amber);
            reasons.push(why.clone());
        }
        for s in status.shards.iter().filter(|s| s.primary == p.name) {
            if s.alarm != Health::Green {
                health = health.worst(s.alarm);
                for why in &s.reasons {
                    // The cell answers but not for this shard: the map names it primary
                    // before it has promoted (a failover in progress), or it lost it.
                    let promoting = s.last_failover.as_ref().is_some_and(|f| f.to == p.name);
                    if why == "primary unreachable" && p.health == Health::Green && promoting {
                        reasons.push(format!(
                            "shard {}: not served here yet (promotion pending)",
                            s.shard
                        ));
                        continue;
                    }
                    let lagging = why.contains("lags") || why.contains("not pulled");
                    reasons.push(if lagging {
                        format!("lagging: shard {}: {why}", s.shard)
                    } else {
                        format!("shard {}: {why}", s.shard)
                    });
                }
            }
            match s
                .durability
                .as_ref()
                .and_then(|d| d["state"].as_str())
                .unwrap_or("")
            {
                "alone" => {
                    health = health.worst(Health::Amber);
                    reasons.push(format!(
                        "alarm async: shard {} acknowledges without its backup",
                        s.shard
                    ));
                }
                "refusing" => {
                    health = health.worst(Health::Amber);
                    reasons.push(format!(
                        "shard {} refused money writes in the last 5 s (backup not confirming)",
                        s.shard
                    ));
                }
                _ => {}
            }
        }
        if let Some(point) = latest.get(&p.name) {
            if let Some(share) = point
                .server_error_share()
                .filter(|s| *s > ERROR_SHARE_AMBER && point.rps.unwrap_or(0.0) >= ERROR_MIN_RPS)
            {
                health = health.worst(Health::Amber);
                reasons.push(format!(
                    "error rate: {:.0}% of requests answered 5xx (bound {:.0}%)",
                    share * 100.0,
                    ERROR_SHARE_AMBER * 100.0
                ));
            }
        }
        out.push(Node {
            id: p.name.clone(),
            kind: "cell",
            region: p.region.clone(),
            health,
            label: label("cell", health, &reasons),
            reasons,
            detail: format!("{}, liveness {}", p.detail, c.liveness),
        });
    }
    out
}

/// The regions as columns: the cells' regions in the order of the record, then the regions
/// of raft-meta's nodes that hold no cell (the tie-breaker), then `-` for what has none.
pub fn regions(status: &Status) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |r: &str| {
        if !out.iter().any(|o| o == r) {
            out.push(r.to_owned());
        }
    };
    for c in &status.cells {
        add(&c.process.region);
    }
    for m in &status.meta {
        add(&m.region);
    }
    add(&status.router.region);
    out
}

/// A switch as the page lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SwitchRow {
    pub name: String,
    pub on: bool,
    pub message: String,
}

/// Every known switch with raft-meta's state of it (on when never set).
pub fn switches(view: Option<&wire::MapView>) -> Vec<SwitchRow> {
    let mut rows: BTreeMap<String, SwitchRow> = KNOWN_SWITCHES
        .iter()
        .map(|n| {
            (
                (*n).to_owned(),
                SwitchRow {
                    name: (*n).to_owned(),
                    on: true,
                    message: String::new(),
                },
            )
        })
        .collect();
    for (name, s) in view.map(|v| &v.switches).into_iter().flatten() {
        rows.insert(
            name.clone(),
            SwitchRow {
                name: name.clone(),
                on: s.on,
                message: s.message.clone(),
            },
        );
    }
    rows.into_values().collect()
}

/// Something that happened, as the console saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Milliseconds since the Unix epoch (raft-meta's decision time for a failover).
    pub at_ms: u64,
    /// `failover`, `liveness`, `health`, `reprotection`, `switch`, `drill`.
    pub kind: &'static str,
    /// The shard or process it is about.
    pub subject: String,
    pub text: String,
    /// A failover's recovery time (decision to the new primary's promotion), when known;
    /// a drill's longest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rto_ms: Option<i64>,
    /// A drill's report page, served by the console (admin token, as every `/api/` route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// What the last gathering showed, to compare the next with.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    health: BTreeMap<String, Health>,
    liveness: BTreeMap<String, String>,
    backups: BTreeMap<String, Option<String>>,
    switches: BTreeMap<String, bool>,
    /// (shard, epoch) of the failovers listed, with whether their RTO is known yet.
    failovers: BTreeMap<(String, u64), bool>,
}

/// The event log: newest first, bounded.
#[derive(Debug, Default)]
pub struct Events {
    pub list: VecDeque<Event>,
    seen: Option<Seen>,
}

impl Events {
    pub fn push(&mut self, e: Event) {
        self.list.push_front(e);
        // Newest first; a failover carries raft-meta's decision time, older than the tick.
        self.list
            .make_contiguous()
            .sort_by_key(|e| std::cmp::Reverse(e.at_ms));
        self.list.truncate(EVENTS_KEPT);
    }

    /// Compares a gathering with the last and records what changed. The first gathering
    /// records only the failovers raft-meta already holds (the last of each shard).
    pub fn observe(
        &mut self,
        status: &Status,
        nodes: &[Node],
        switches: &[SwitchRow],
        now_ms: u64,
    ) {
        let first = self.seen.is_none();
        let prev = self.seen.take().unwrap_or_default();
        let mut seen = Seen::default();

        for s in &status.shards {
            if let Some(f) = &s.last_failover {
                let key = (s.shard.clone(), f.epoch);
                let had = prev.failovers.get(&key).copied();
                seen.failovers.insert(key.clone(), f.took_ms.is_some());
                let text = format!(
                    "shard {}: {} failover {} → {} (epoch {}){}",
                    s.shard,
                    f.kind,
                    f.from,
                    f.to,
                    f.epoch,
                    f.took_ms
                        .map(|t| format!(", RTO {t} ms"))
                        .unwrap_or_default()
                );
                match had {
                    None => self.push(Event {
                        at_ms: f.at_ms,
                        kind: "failover",
                        subject: s.shard.clone(),
                        text,
                        rto_ms: f.took_ms,
                        report: None,
                    }),
                    // The promotion became known: the event gets its RTO.
                    Some(false) if f.took_ms.is_some() => {
                        if let Some(e) = self.list.iter_mut().find(|e| {
                            e.kind == "failover" && e.subject == s.shard && e.at_ms == f.at_ms
                        }) {
                            e.text = text;
                            e.rto_ms = f.took_ms;
                        }
                    }
                    _ => {}
                }
            }
            seen.backups.insert(s.shard.clone(), s.backup.clone());
            if let Some(before) = prev.backups.get(&s.shard) {
                if *before != s.backup && !first {
                    let text = match (&s.backup, before) {
                        (Some(b), Some(a)) => {
                            format!("shard {}: re-protected, backup {a} → {b}", s.shard)
                        }
                        (Some(b), None) => format!("shard {}: re-protected by {b}", s.shard),
                        (None, Some(a)) => {
                            format!("shard {}: left without a backup (was {a})", s.shard)
                        }
                        (None, None) => continue,
                    };
                    self.push(Event {
                        at_ms: now_ms,
                        kind: "reprotection",
                        subject: s.shard.clone(),
                        text,
                        rto_ms: None,
                        report: None,
                    });
                }
            }
        }

        for c in &status.cells {
            let name = &c.process.name;
            seen.liveness.insert(name.clone(), c.liveness.clone());
            if let Some(before) = prev.liveness.get(name) {
                if *before != c.liveness {
                    self.push(Event {
                        at_ms: now_ms,
                        kind: "liveness",
                        subject: name.clone(),
                        text: format!("cell {name}: raft-meta liveness {before} → {}", c.liveness),
                        rto_ms: None,
                        report: None,
                    });
                }
            }
        }

        for n in nodes {
            seen.health.insert(n.id.clone(), n.health);
            if let Some(before) = prev.health.get(&n.id) {
                if *before != n.health {
                    let why = n
                        .reasons
                        .first()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    self.push(Event {
                        at_ms: now_ms,
                        kind: "health",
                        subject: n.id.clone(),
                        text: format!("{} {} → {}{why}", n.id, word(*before), word(n.health)),
                        rto_ms: None,
                        report: None,
                    });
                }
            }
        }

        for s in switches {
            seen.switches.insert(s.name.clone(), s.on);
            if let Some(before) = prev.switches.get(&s.name) {
                if *before != s.on {
                    self.push(Event {
                        at_ms: now_ms,
                        kind: "switch",
                        subject: s.name.clone(),
                        text: if s.on {
                            format!("switch {} turned on", s.name)
                        } else {
                            format!("switch {} turned off: {}", s.name, s.message)
                        },
                        rto_ms: None,
                        report: None,
                    });
                }
            }
        }
        self.seen = Some(seen);
    }
}

fn word(h: Health) -> &'static str {
    match h {
        Health::Green => "green",
        Health::Amber => "amber",
        Health::Red => "red",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{CellStatus, LastFailover, Process, ShardStatus};

    fn process(name: &str, region: &str, health: Health, detail: &str) -> Process {
        Process {
            name: name.into(),
            region: region.into(),
            url: format!("http://{name}"),
            pid: Some(1),
            health,
            detail: detail.into(),
            restarts: 0,
        }
    }

    fn shard(id: &str, primary: &str, backup: &str) -> ShardStatus {
        ShardStatus {
            shard: id.into(),
            primary: primary.into(),
            backup: Some(backup.into()),
            head: Some(10),
            acked: Some(10),
            reported: None,
            lag_records: Some(0),
            lag_ms: Some(0),
            last_pull_ms_ago: Some(100),
            policy: "async".into(),
            alone: false,
            durability: Some(serde_json::json!({"state": "protected"})),
            paused: false,
            last_failover: None,
            alarm: Health::Green,
            reasons: vec![],
        }
    }

    /// c1 (east) ⇄ c3 (west), raft-meta in east, west and tiebreak, all well.
    fn healthy() -> Status {
        let cell = |id: &str, region: &str, backup: &str| CellStatus {
            process: process(id, region, Health::Green, "ready"),
            backup: Some(backup.into()),
            slots: 512,
            liveness: "alive".into(),
            serving: vec![id.into()],
            fenced: None,
            payments: "closed".into(),
        };
        Status {
            health: Health::Green,
            router: process("router", "-", Health::Green, "ready"),
            meta: vec![
                process("meta1", "east", Health::Green, "ready, leader"),
                process("meta2", "west", Health::Green, "ready"),
                process("meta3", "tiebreak", Health::Green, "ready"),
            ],
            cells: vec![cell("c1", "east", "c3"), cell("c3", "west", "c1")],
            shards: vec![shard("c1", "c1", "c3"), shard("c3", "c3", "c1")],
            leader: Some(1),
            term: Some(1),
            map_version: Some(9),
            switches_off: BTreeMap::new(),
        }
    }

    fn node<'a>(nodes: &'a [Node], id: &str) -> &'a Node {
        nodes.iter().find(|n| n.id == id).expect(id)
    }

    #[test]
    fn a_healthy_deployment_is_green_in_words_too() {
        let s = healthy();
        let nodes = nodes(&s, &BTreeMap::new());
        assert_eq!(nodes.len(), 6);
        assert!(nodes
            .iter()
            .all(|n| n.health == Health::Green && n.label == "OK" && n.reasons.is_empty()));
        assert_eq!(regions(&s), ["east", "west", "tiebreak", "-"]);
    }

    #[test]
    fn every_colour_comes_with_its_reason() {
        let mut s = healthy();
        // A frozen cell: no answer, raft-meta has it down.
        s.cells[0].process.health = Health::Red;
        s.cells[0].process.detail = "no answer within 1 s".into();
        s.cells[0].liveness = "down".into();
        // Its backup's shard runs alone (alarm async) and lags.
        s.shards[1].alarm = Health::Amber;
        s.shards[1].reasons = vec!["backup lags 2000 records".into()];
        s.shards[1].durability = Some(serde_json::json!({"state": "alone"}));
        s.switches_off.insert("c2c_send".into(), "paused".into());
        s.leader = None;
        let busy = Point {
            t: 1,
            rps: Some(100.0),
            errors: BTreeMap::from([(503, 10.0)]),
            p50_ms: None,
            p99_ms: None,
            batch: None,
        };
        let nodes = nodes(&s, &BTreeMap::from([("c3".to_owned(), busy)]));

        let c1 = node(&nodes, "c1");
        assert_eq!((c1.health, c1.label), (Health::Red, "DOWN"));
        assert_eq!(c1.reasons[0], "down: no answer within 1 s");
        assert!(c1.reasons.iter().any(|r| r == "raft-meta sees it down"));
        let c3 = node(&nodes, "c3");
        assert_eq!((c3.health, c3.label), (Health::Amber, "WARN"));
        let all = c3.reasons.join(" | ");
        assert!(
            all.contains("lagging: shard c3: backup lags 2000 records"),
            "{all}"
        );
        assert!(all.contains("alarm async"), "{all}");
        assert!(
            all.contains("error rate: 10% of requests answered 5xx"),
            "{all}"
        );
        let router = node(&nodes, "router");
        assert_eq!(router.health, Health::Amber);
        assert_eq!(router.reasons, ["switch c2c_send off: paused"]);
        assert!(node(&nodes, "meta2")
            .reasons
            .contains(&"no raft leader".to_owned()));
    }

    #[test]
    fn a_trickle_of_errors_raises_no_alarm() {
        let s = healthy();
        let trickle = Point {
            t: 1,
            rps: Some(1.0),
            errors: BTreeMap::from([(500, 0.5)]),
            p50_ms: None,
            p99_ms: None,
            batch: None,
        };
        let nodes = nodes(&s, &BTreeMap::from([("c1".to_owned(), trickle)]));
        assert_eq!(node(&nodes, "c1").health, Health::Green);
    }

    #[test]
    fn events_follow_liveness_failovers_their_rto_and_reprotection() {
        let mut events = Events::default();
        let s = healthy();
        let n = nodes(&s, &BTreeMap::new());
        let sw = switches(None);
        events.observe(&s, &n, &sw, 1_000);
        assert!(events.list.is_empty(), "nothing happened yet");

        // c1 goes down; raft-meta moves shard c1 to c3, RTO not known yet.
        let mut s = healthy();
        s.cells[0].liveness = "down".into();
        s.cells[0].process.health = Health::Red;
        s.shards[0].primary = "c3".into();
        s.shards[0].backup = None;
        s.shards[0].last_failover = Some(LastFailover {
            kind: "automatic".into(),
            from: "c1".into(),
            to: "c3".into(),
            epoch: 2,
            at_ms: 1_500,
            took_ms: None,
        });
        let n = nodes(&s, &BTreeMap::new());
        events.observe(&s, &n, &sw, 2_000);
        let kinds: Vec<&str> = events.list.iter().map(|e| e.kind).collect();
        assert!(
            kinds.contains(&"liveness") && kinds.contains(&"health"),
            "{kinds:?}"
        );
        let failover = events.list.iter().find(|e| e.kind == "failover").unwrap();
        assert_eq!(failover.rto_ms, None);
        assert!(failover.text.contains("automatic failover c1 → c3"));
        assert!(events
            .list
            .iter()
            .any(|e| e.kind == "reprotection" && e.text.contains("left without a backup")));

        // The promotion is reported: the same event gets its RTO; then c4 backs it up.
        s.shards[0].last_failover.as_mut().unwrap().took_ms = Some(900);
        s.shards[0].backup = Some("c4".into());
        events.observe(&s, &n, &sw, 3_000);
        let failovers: Vec<&Event> = events
            .list
            .iter()
            .filter(|e| e.kind == "failover")
            .collect();
        assert_eq!(failovers.len(), 1);
        assert_eq!(failovers[0].rto_ms, Some(900));
        assert!(failovers[0].text.ends_with("RTO 900 ms"));
        assert!(events
            .list
            .iter()
            .any(|e| e.kind == "reprotection" && e.text.contains("re-protected by c4")));
        // Newest first.
        assert!(events
            .list
            .iter()
            .zip(events.list.iter().skip(1))
            .all(|(a, b)| a.at_ms >= b.at_ms));
    }

    #[test]
    fn switches_lists_the_known_and_raft_metas_own() {
        let view: wire::MapView = serde_json::from_value(serde_json::json!({
            "version": 3, "map": null,
            "switches": {"c2c_send": {"on": false, "message": "paused", "version": 2},
                         "extra_flow": {"on": true, "message": "", "version": 3}},
            "policies": {}, "liveness": {}
        }))
        .unwrap();
        let rows = switches(Some(&view));
        assert_eq!(rows.len(), KNOWN_SWITCHES.len() + 1);
        let c2c = rows.iter().find(|r| r.name == "c2c_send").unwrap();
        assert!(!c2c.on && c2c.message == "paused");
        assert!(rows.iter().any(|r| r.name == "extra_flow"));
        assert!(rows.iter().filter(|r| r.name != "c2c_send").all(|r| r.on));
    }
}
