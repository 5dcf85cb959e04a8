//! Responses the gateway writes itself (from `request_filter` or on proxy failure). Every one
//! carries `Content-Length`, which pingora needs to keep the connection alive.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::auth::error::error_body;

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

/// A JSON error in the API's shape: `{"error": {"code": ..., "message": ...}}`.
pub async fn error(
    session: &mut Session,
    status: u16,
    code: &str,
    message: &str,
    headers: &[(&'static str, String)],
) -> pingora::Result<()> {
    send(
        session,
        status,
        Some("application/json"),
        headers,
        error_body(code, message),
    )
    .await
}
