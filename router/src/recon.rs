//! `GET /v1/admin/reconciliation` at the router: every cell's report, fetched in parallel
//! and summed. `totals` are summed field by field, `ok` holds when every cell is ok, and each
//! finding is tagged with the cell that reported it. A cell that cannot answer makes the
//! whole answer 503 `cell_unavailable`: a partial sum would look like lost money.

use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use topology::auth::Principal;
use topology::CellStatus;

use crate::app::Ctx;
use crate::error::RouterError;
use crate::proxy::{Outgoing, Target};

const PATH: &str = "/v1/admin/reconciliation";

pub async fn handle(
    ctx: &Ctx,
    who: &Principal,
    headers: &HeaderMap,
    traceparent: String,
) -> Result<Response, RouterError> {
    if !who.is_admin() {
        return Err(RouterError::Forbidden("requires scope admin".into()));
    }
    let snap = ctx.maps.current();
    let map = snap
        .map
        .clone()
        .ok_or_else(|| RouterError::CellUnavailable("the router has no map yet".into()))?;
    let mut tasks = tokio::task::JoinSet::new();
    // The cells that serve some shard's slots: each reports the shards it serves, so every
    // slot is counted once. A cell that lost its shard at a failover (fenced, or down) has
    // nothing to report and is not asked.
    for info in map.cells.values() {
        if info.status == CellStatus::Retired
            || !map
                .shards_served_by(&info.id)
                .any(|s| map.slots_in(&s.id).next().is_some())
        {
            continue;
        }
        let target = Target {
            cell: info.id.clone(),
            url: info.url.clone(),
            route: None,
        };
        let out = Outgoing {
            method: Method::GET,
            path_and_query: PathAndQuery::from_static(PATH),
            headers: headers.clone(),
            body: Bytes::new(),
            traceparent: traceparent.clone(),
        };
        let fwd = ctx.forwarder.clone();
        tasks.spawn(async move {
            let resp = fwd.send(&target, &out).await?;
            let status = resp.status();
            let body = fwd.read_body(&target, resp, 16 << 20).await?;
            if status != StatusCode::OK {
                return Err(RouterError::CellUnavailable(format!(
                    "cell {} answered {status} to reconciliation",
                    target.cell
                )));
            }
            let report: Value = serde_json::from_slice(&body).map_err(|e| {
                RouterError::CellUnavailable(format!("cell {}: bad report: {e}", target.cell))
            })?;
            Ok::<_, RouterError>((target.cell.to_string(), report))
        });
    }
    let mut reports = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let one = joined
            .map_err(|e| RouterError::CellUnavailable(format!("reconciliation task: {e}")))??;
        reports.push(one);
    }
    reports.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(axum::Json(sum(&reports)).into_response())
}

/// Sums cell reports: `{"ok","findings","totals","cells"}`.
pub fn sum(reports: &[(String, Value)]) -> Value {
    let mut ok = true;
    let mut findings = Vec::new();
    let mut totals: Map<String, Value> = Map::new();
    for (cell, report) in reports {
        ok &= report.get("ok").and_then(Value::as_bool).unwrap_or(false);
        for f in report
            .get("findings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut f = f.clone();
            match f.as_object_mut() {
                Some(obj) => {
                    obj.insert("cell".into(), json!(cell));
                }
                None => f = json!({"cell": cell, "finding": f}),
            }
            findings.push(f);
        }
        for (k, v) in report
            .get("totals")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let add = v.as_i64().unwrap_or(0);
            let prev = totals.get(k).and_then(Value::as_i64).unwrap_or(0);
            totals.insert(k.clone(), json!(prev.saturating_add(add)));
        }
    }
    let cells: Vec<&str> = reports.iter().map(|(c, _)| c.as_str()).collect();
    json!({"ok": ok, "findings": findings, "totals": totals, "cells": cells})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_field_by_field() {
        let a = json!({"ok": true, "findings": [], "totals": {"funded": 10, "wallets": 4, "escrow": 6, "in_flight": 0}});
        let b = json!({"ok": false, "findings": [{"kind": "stuck", "id": "pk_1"}], "totals": {"funded": 5, "wallets": 5, "escrow": 0, "in_flight": 1}});
        let s = sum(&[("c1".into(), a), ("c2".into(), b)]);
        assert_eq!(s["ok"], false);
        assert_eq!(s["totals"]["funded"], 15);
        assert_eq!(s["totals"]["in_flight"], 1);
        assert_eq!(s["findings"][0]["cell"], "c2");
    }
}
