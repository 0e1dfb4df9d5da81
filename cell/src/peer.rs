//! Calls from this cell to another cell's internal routes, signed with an `internal` token
//! minted from the deployment secret (short-lived, renewed at half life). Used by transfer
//! delivery and by grants.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use topology::auth::Credential;

/// Every internal call ends within this.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Peers {
    /// Pooled connections to the other cells.
    pub http: reqwest::Client,
    /// This cell's `internal` credential (`sub` = `svc:cell-ID`).
    pub credential: Arc<Credential>,
}

impl Peers {
    /// POSTs `body` to `{url}{path}` and decodes the answer; `Err` carries a reason for logs.
    pub async fn post<T: DeserializeOwned>(
        &self,
        url: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, String> {
        let req = self.http.post(format!("{url}{path}")).json(body);
        self.call(req, TIMEOUT).await
    }

    /// GETs `{url}{path}` within `timeout` and decodes the answer; `Err` carries a reason.
    pub async fn get<T: DeserializeOwned>(
        &self,
        url: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<T, String> {
        let req = self.http.get(format!("{url}{path}"));
        self.call(req, timeout).await
    }

    /// Signs `req` with this cell's credential, sends it within `timeout` and decodes a 2xx.
    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, String> {
        let res = req
            .bearer_auth(&*self.credential.token())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status();
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                res.text().await.unwrap_or_default()
            ));
        }
        res.json().await.map_err(|e| e.to_string())
    }
}
