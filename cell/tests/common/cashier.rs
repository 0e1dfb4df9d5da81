//! The fake cashier (`fake-cashier`), as a real process on loopback, for the tests of C2C
//! payments and of the payment breaker.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::json;

use super::SECRET;

pub struct Cashier {
    pub url: String,
    child: Child,
}

impl Cashier {
    /// Starts one deciding every payment `outcome` after 100 ms, dropping callbacks with
    /// probability `drop_callbacks`.
    pub fn start(outcome: &str, drop_callbacks: f64) -> Cashier {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fake-cashier"))
            .args([
                "--outcome",
                outcome,
                "--delay-ms",
                "100",
                "--drop-callbacks",
                &drop_callbacks.to_string(),
            ])
            .env("REDCELL_AUTH_SECRET", SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fake-cashier");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("fake-cashier address")
            .to_owned();
        Cashier { url, child }
    }

    /// Makes it fail (503 on its payment routes) or not, and answer after `latency_ms`.
    pub async fn set_faults(&self, failing: bool, latency_ms: u64) {
        let res = reqwest::Client::new()
            .put(format!("{}/control", self.url))
            .json(&json!({"failing": failing, "latency_ms": latency_ms}))
            .send()
            .await
            .expect("fake-cashier control");
        assert!(res.status().is_success(), "control: {}", res.status());
    }
}

impl Drop for Cashier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
