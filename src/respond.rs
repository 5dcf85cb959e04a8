//! Responses the gateway writes itself (from `request_filter` or on proxy failure). Every one
//! carries `Content-Length`, which pingora needs to keep the connection alive.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::auth::ApiError;

pub async fn send(
    session: &mut Session,
    status: u16,
    content_type: Option<&'static str>,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(status, Some(headers.len() + 3))?;
    header.insert_header("content-length", body.len().to_string())?;
    if let Some(content_type) = content_type {
        header.insert_header("content-type", content_type)?;
    }
    header.insert_header("cache-control", "no-store")?;
    for (name, value) in headers {
        header.append_header(*name, value.as_str())?;
    }
    let head_only = body.is_empty() || session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

/// An [`ApiError`] as a JSON response (`{"error": {"code", "message"}}`, with `Retry-After`
/// where the error has one), plus `headers`.
pub async fn api_error(
    session: &mut Session,
    error: &ApiError,
    headers: &[(&'static str, String)],
) -> pingora::Result<()> {
    let mut all = headers.to_vec();
    if let Some(seconds) = error.retry_after() {
        all.push(("retry-after", seconds.to_string()));
    }
    send(
        session,
        error.status(),
        Some("application/json"),
        &all,
        error.body(),
    )
    .await
}
