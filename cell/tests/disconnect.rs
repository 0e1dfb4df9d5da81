//! Claims whose clients hang up mid-request must give their admission permit back: hyper drops
//! the handler's future when the socket closes, and a permit released only by a line after an
//! `.await` is then never released, so the packet answers `429 claim_busy` to everyone.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Sends one claim request on a fresh connection and closes the socket `after` it was sent,
/// without reading the answer.
async fn claim_and_hang_up(addr: &str, packet: &str, token: &str, after: Duration) {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST /v1/packets/{packet}/claims HTTP/1.1\r\nhost: {addr}\r\n\
         authorization: Bearer {token}\r\ncontent-length: 0\r\n\r\n"
    );
    socket
        .write_all(request.as_bytes())
        .await
        .expect("send claim");
    // A blocking sleep: tokio's timer cannot wait less than a millisecond, and the claim it
    // must interrupt takes about that long.
    std::thread::sleep(after);
    drop(socket);
}

#[tokio::test]
async fn claims_whose_clients_hang_up_do_not_leave_the_packet_busy() {
    // Arrange: 2 shares, one claimed by the user who will hang up: 1 left, gate limit 2.
    let cell = TestCell::spawn().await;
    let packet = cell.paid_packet("sender", 200, 2).await;
    let (s, v) = cell
        .call(
            Method::POST,
            &format!("/v1/packets/{packet}/claims"),
            Some(&user("hangup")),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Act: 60 claims (far more than the limit of 2), each socket closed just after sending.
    // The same user each time, so the packet keeps its last share (each is an `Existing` claim).
    let addr = cell.url.trim_start_matches("http://").to_owned();
    let token = user("hangup");
    // Hyper drops a handler's future only if the close arrives while the handler is running
    // (a close that comes with the request ends the connection before the handler starts), so
    // the hang-ups come 0 to 3 ms after the request, to land inside a claim however fast it is.
    for i in 0..60 {
        let after = Duration::from_micros(50 * i);
        claim_and_hang_up(&addr, &packet, &token, after).await;
    }

    // Assert: a fresh user gets a share, without a restart. A few 429s are allowed while the
    // server is still dropping the hung-up requests, but only for 2 s: well under the 5 s
    // permit TTL, so it is the release on drop that must free the gate, not the ageing out.
    let fresh = user("fresh");
    let deadline = Instant::now() + Duration::from_secs(2);
    let (status, body) = loop {
        let res = cell
            .http
            .post(format!("{}/v1/packets/{packet}/claims", cell.url))
            .bearer_auth(&fresh)
            .send()
            .await
            .expect("claim");
        let status = res.status();
        let body = res.text().await.expect("body");
        if status != StatusCode::TOO_MANY_REQUESTS || Instant::now() >= deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a packet with a share left refused a fresh claimer: {body}"
    );
}
