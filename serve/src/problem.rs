//! problem+json (RFC 9457) answers of the serving loop, in the member order of
//! `wire::problem::Problem`: `type`, `title`, `status`, `code`, `detail`.

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
#[cfg(test)]
use http_body_util::BodyExt as _;
use wire::problem::Problem;

/// The body of a problem with `code`.
pub fn body(status: StatusCode, code: &str, detail: &str) -> String {
    let problem = Problem {
        kind: format!("https://redcell.dev/problems/{code}"),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        code: code.to_owned(),
        detail: detail.to_owned(),
    };
    serde_json::to_string(&problem).expect("a problem of strings serializes")
}

/// A problem+json response; `retry_after_s` adds `Retry-After`.
pub fn response(
    status: StatusCode,
    code: &str,
    detail: &str,
    retry_after_s: Option<u32>,
) -> Response {
    let mut res = Response::new(Body::from(body(status, code, detail)));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(s) = retry_after_s {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    res
}

/// The whole HTTP/1.1 answer to a connection refused because the process is full; written
/// straight to the socket, no hyper connection is made for it.
pub fn overloaded_bytes() -> Vec<u8> {
    let body = body(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "this process has as many connections open as it allows; retry",
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The stable code for an error status that reached the client without a body (a layer
/// under the application, such as a timeout, answered with the status alone).
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

/// An error response with no body and no content type gets a problem+json body; a 503
/// without `Retry-After` gets `Retry-After: 1`. Everything else passes unchanged.
pub fn dress_bare(method: &Method, res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let mut res = if res.headers().contains_key(header::CONTENT_TYPE)
        || res.body().size_hint().exact() != Some(0)
        || method == Method::HEAD
    {
        res
    } else {
        let detail = match status {
            StatusCode::SERVICE_UNAVAILABLE => "the server could not answer in time; retry",
            _ => status.canonical_reason().unwrap_or("error"),
        };
        let (mut parts, _) = res.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let dressed = response(status, code_for(status), detail, None);
        let (new_parts, body) = dressed.into_parts();
        parts.headers.extend(new_parts.headers);
        Response::from_parts(parts, body)
    };
    if status == StatusCode::SERVICE_UNAVAILABLE && !res.headers().contains_key(header::RETRY_AFTER)
    {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bare_503_gets_a_problem_and_retry_after() {
        let mut bare = Response::new(Body::empty());
        *bare.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let res = dress_bare(&Method::POST, bare);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let p: Problem = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((p.status, p.code.as_str()), (503, "unavailable"));
    }

    #[tokio::test]
    async fn an_answer_with_a_body_is_left_alone() {
        let res = response(StatusCode::CONFLICT, "x", "y", None);
        let res = dress_bare(&Method::POST, res);
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"type":"https://redcell.dev/problems/x","title":"Conflict","status":409,"code":"x","detail":"y"}"#
        );
    }
}
