//! Route decisions, pure: which public route a request is, who may call it, which slot it
//! belongs to and which degradation switches guard it (API.md route table).
//!
//! | route | slot from | caller |
//! |---|---|---|
//! | `POST /v1/subsidies` | body `uid` | scope `subsidy:grant` |
//! | `GET /v1/users/{uid}/{subsidies,wallet,packets}` | path uid | that user or admin |
//! | `POST /v1/packets` | token `sub` | an app user |
//! | `GET /v1/packets/{id}`, `GET /v1/packets/{id}/claims` | packet id | any caller |
//! | `POST /v1/packets/{id}/claims` | packet id | an app user |
//! | `POST /v1/payments/{id}/callback` | payment id | scope `payment:callback` |
//!
//! Everything else (including `/v1/internal/*` and `/v1/admin/clock`) is 404 here.

use axum::http::Method;
use topology::auth::Principal;
use topology::{IdKind, MintedId, Slot, Uid};

use crate::error::RouterError;

/// A recognised public route, before the caller is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Grant,
    UserRead {
        uid: String,
        /// The flow's name, which is also its switch.
        flow: &'static str,
        switches: &'static [&'static str],
    },
    Send,
    PacketGet(String),
    Claim(String),
    ClaimsList(String),
    Callback(String),
    Reconciliation,
}

impl Route {
    /// The method and path template of this route in the public OpenAPI document
    /// (`wire/openapi/public.json`); a test checks the two agree both ways.
    pub fn template(&self) -> (Method, &'static str) {
        match self {
            Route::Grant => (Method::POST, "/v1/subsidies"),
            Route::UserRead { flow, .. } => match *flow {
                "subsidy_list" => (Method::GET, "/v1/users/{uid}/subsidies"),
                "wallet" => (Method::GET, "/v1/users/{uid}/wallet"),
                _ => (Method::GET, "/v1/users/{uid}/packets"),
            },
            Route::Send => (Method::POST, "/v1/packets"),
            Route::PacketGet(_) => (Method::GET, "/v1/packets/{packet_id}"),
            Route::Claim(_) => (Method::POST, "/v1/packets/{packet_id}/claims"),
            Route::ClaimsList(_) => (Method::GET, "/v1/packets/{packet_id}/claims"),
            Route::Callback(_) => (Method::POST, "/v1/payments/{payment_id}/callback"),
            Route::Reconciliation => (Method::GET, "/v1/admin/reconciliation"),
        }
    }
}

/// Where a request goes and what guards it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The flow's name: a metrics label and the first switch consulted.
    pub flow: &'static str,
    pub slot: Slot,
    /// Degradation switches that, when off, refuse this request with 503 `degraded`.
    pub switches: &'static [&'static str],
}

fn need(method: &Method, allowed: Method, route: Route) -> Result<Route, RouterError> {
    if *method == allowed {
        Ok(route)
    } else {
        Err(RouterError::MethodNotAllowed(method.to_string()))
    }
}

/// Recognises the route from method and path alone.
pub fn classify(method: &Method, path: &str) -> Result<Route, RouterError> {
    let segs: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let own = |s: &str| s.to_owned();
    match segs.as_slice() {
        ["v1", "subsidies"] => need(method, Method::POST, Route::Grant),
        ["v1", "users", uid, what] => {
            let (flow, switches): (_, &'static [&'static str]) = match *what {
                "subsidies" => ("subsidy_list", &["subsidy_list"]),
                "wallet" => ("wallet", &["wallet"]),
                "packets" => ("history", &["history"]),
                _ => return Err(not_found()),
            };
            need(
                method,
                Method::GET,
                Route::UserRead {
                    uid: own(uid),
                    flow,
                    switches,
                },
            )
        }
        ["v1", "packets"] => need(method, Method::POST, Route::Send),
        ["v1", "packets", id] => need(method, Method::GET, Route::PacketGet(own(id))),
        ["v1", "packets", id, "claims"] => match *method {
            Method::POST => Ok(Route::Claim(own(id))),
            Method::GET => Ok(Route::ClaimsList(own(id))),
            _ => Err(RouterError::MethodNotAllowed(method.to_string())),
        },
        ["v1", "payments", id, "callback"] => need(method, Method::POST, Route::Callback(own(id))),
        ["v1", "admin", "reconciliation"] => need(method, Method::GET, Route::Reconciliation),
        _ => Err(not_found()),
    }
}

fn not_found() -> RouterError {
    RouterError::NotFound("not_found", "no such route".into())
}

fn forbidden(why: &str) -> RouterError {
    RouterError::Forbidden(why.to_owned())
}

fn packet_slot(id: &str) -> Result<Slot, RouterError> {
    MintedId::parse(IdKind::Packet, id)
        .map(|id| id.slot())
        .map_err(|_| RouterError::NotFound("packet_not_found", "no such packet".into()))
}

/// Decides the slot of a routable request and refuses what the caller clearly may not do.
/// `body` is the whole request body (at most [`crate::BODY_LIMIT`] bytes).
pub fn decide(route: &Route, who: &Principal, body: &[u8]) -> Result<Decision, RouterError> {
    let decision = |flow, slot, switches: &'static [&'static str]| Decision {
        flow,
        slot,
        switches,
    };
    match route {
        Route::Grant => {
            if !who.has_scope("subsidy:grant") {
                return Err(forbidden("requires scope subsidy:grant"));
            }
            let value: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| RouterError::invalid("body", format!("not JSON: {e}")))?;
            let uid = value
                .get("uid")
                .and_then(|u| u.as_str())
                .ok_or_else(|| RouterError::invalid("uid", "a string is required"))?;
            let uid = Uid::parse(uid).map_err(|e| RouterError::invalid("uid", e.to_string()))?;
            Ok(decision("subsidy_grant", uid.slot(), &["subsidy_grant"]))
        }
        Route::UserRead {
            uid,
            flow,
            switches,
        } => {
            let uid = Uid::parse(uid).map_err(|e| RouterError::invalid("uid", e.to_string()))?;
            if who.uid() != Some(&uid) && !who.is_admin() {
                return Err(forbidden("a user may only read their own records"));
            }
            Ok(decision(flow, uid.slot(), switches))
        }
        Route::Send => {
            let uid = who
                .uid()
                .ok_or_else(|| forbidden("only an app user may send a packet"))?;
            // The kind picks the finer switch; a body the cell will refuse anyway is routed
            // by the sender alone and answered by the cell (400 naming the field).
            let kind = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned));
            let switches: &[&'static str] = match kind.as_deref() {
                Some("c2c") => &["packet_send", "c2c_send"],
                Some("b2c") => &["packet_send", "b2c_send"],
                _ => &["packet_send"],
            };
            Ok(decision("packet_send", uid.slot(), switches))
        }
        Route::PacketGet(id) => Ok(decision("packet_get", packet_slot(id)?, &["packet_get"])),
        Route::ClaimsList(id) => Ok(decision("claims_list", packet_slot(id)?, &["claims_list"])),
        Route::Claim(id) => {
            if who.uid().is_none() {
                return Err(forbidden("only an app user may claim"));
            }
            Ok(decision("claim", packet_slot(id)?, &["claims"]))
        }
        Route::Callback(id) => {
            if !who.has_scope("payment:callback") {
                return Err(forbidden("requires scope payment:callback"));
            }
            let slot = MintedId::parse(IdKind::Payment, id)
                .map_err(|_| RouterError::NotFound("not_found", "no such payment".into()))?
                .slot();
            Ok(decision("payment_callback", slot, &["payment_callback"]))
        }
        Route::Reconciliation => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the public document is served by the router: an operational path
    /// of `ops`, or a route `classify` recognises as that very template; and every route
    /// `classify` recognises (each variant of [`Route`]) is in the document.
    #[test]
    fn the_public_document_and_the_routes_agree() {
        let doc: serde_json::Value = serde_json::from_str(wire::openapi::PUBLIC).unwrap();
        let paths = doc["paths"].as_object().expect("the document has paths");
        let mut documented = Vec::new();
        for (path, item) in paths {
            for (method, _) in item.as_object().unwrap() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                documented.push((method.clone(), path.clone()));
                if crate::app::OPS_PATHS.contains(&path.as_str()) {
                    assert_eq!(method, Method::GET, "{path}");
                    continue;
                }
                let concrete = path
                    .replace("{uid}", "u1")
                    .replace("{packet_id}", "pk_x")
                    .replace("{payment_id}", "pay_x");
                let route = classify(&method, &concrete)
                    .unwrap_or_else(|e| panic!("{method} {path} is documented, not routed: {e:?}"));
                assert_eq!(route.template(), (method, path.as_str()));
            }
        }
        let every_variant = [
            Route::Grant,
            Route::UserRead {
                uid: "u".into(),
                flow: "subsidy_list",
                switches: &[],
            },
            Route::UserRead {
                uid: "u".into(),
                flow: "wallet",
                switches: &[],
            },
            Route::UserRead {
                uid: "u".into(),
                flow: "history",
                switches: &[],
            },
            Route::Send,
            Route::PacketGet("p".into()),
            Route::Claim("p".into()),
            Route::ClaimsList("p".into()),
            Route::Callback("p".into()),
            Route::Reconciliation,
        ];
        for route in every_variant {
            let (method, path) = route.template();
            assert!(
                documented.contains(&(method.clone(), path.to_owned())),
                "{method} {path} is routed but missing from the public document"
            );
        }
        for path in crate::app::OPS_PATHS {
            assert!(
                paths.contains_key(*path),
                "{path} is served but not documented"
            );
        }
    }

    fn user(u: &str) -> Principal {
        Principal::User(Uid::parse(u).unwrap())
    }

    fn svc(scope: &str) -> Principal {
        Principal::Service {
            name: "x".into(),
            scopes: vec![scope.into()],
        }
    }

    #[test]
    fn internal_and_unknown_routes_are_not_found() {
        for p in [
            "/v1/internal/transfers",
            "/v1/admin/clock",
            "/",
            "/v1/packets/",
            "/v1/users/u1",
            "/v1/users/u1/wallet/x",
        ] {
            assert!(
                matches!(
                    classify(&Method::POST, p),
                    Err(RouterError::NotFound(..) | RouterError::MethodNotAllowed(_))
                ),
                "{p}"
            );
        }
        assert!(matches!(
            classify(&Method::GET, "/v1/admin/clock"),
            Err(RouterError::NotFound(..))
        ));
    }

    #[test]
    fn routes_by_uid_token_and_id() {
        let u1 = user("u1");
        let r = classify(&Method::GET, "/v1/users/u1/wallet").unwrap();
        assert_eq!(decide(&r, &u1, b"").unwrap().slot, Slot::of(b"u1"));
        assert!(matches!(
            decide(&r, &user("u2"), b""),
            Err(RouterError::Forbidden(_))
        ));
        assert!(decide(&r, &svc("admin"), b"").is_ok());

        let r = classify(&Method::POST, "/v1/packets").unwrap();
        let d = decide(&r, &u1, br#"{"kind":"c2c"}"#).unwrap();
        assert_eq!(d.slot, Slot::of(b"u1"));
        assert!(d.switches.contains(&"c2c_send"));
        assert!(decide(&r, &svc("admin"), b"").is_err());

        let slot = Slot::new(513).unwrap();
        let pk = MintedId::mint(IdKind::Packet, slot);
        let r = classify(&Method::POST, &format!("/v1/packets/{pk}/claims")).unwrap();
        assert_eq!(decide(&r, &u1, b"").unwrap().slot, slot);
        let pay = MintedId::mint(IdKind::Payment, slot);
        let r = classify(&Method::POST, &format!("/v1/payments/{pay}/callback")).unwrap();
        assert!(matches!(
            decide(&r, &u1, b""),
            Err(RouterError::Forbidden(_))
        ));
        assert_eq!(
            decide(&r, &svc("payment:callback"), b"").unwrap().slot,
            slot
        );

        let r = classify(&Method::POST, "/v1/subsidies").unwrap();
        let grant = svc("subsidy:grant");
        assert_eq!(
            decide(&r, &grant, br#"{"uid":"u9"}"#).unwrap().slot,
            Slot::of(b"u9")
        );
        assert!(matches!(
            decide(&r, &grant, br#"{"uid":"bad uid"}"#),
            Err(RouterError::Invalid { field: "uid", .. })
        ));
        assert!(decide(&r, &grant, b"\xff").is_err());
        assert!(decide(&r, &u1, br#"{"uid":"u1"}"#).is_err());
    }

    #[test]
    fn bad_ids_are_not_found() {
        let r = classify(&Method::GET, "/v1/packets/pk_zzz").unwrap();
        assert!(matches!(
            decide(&r, &user("u1"), b""),
            Err(RouterError::NotFound("packet_not_found", _))
        ));
    }
}
