//! Responses the gateway writes itself (from `request_filter` or on proxy failure). Every one
//! carries `Content-Length`, which pingora needs to keep the connection alive, and the
//! gateway's security headers: `X-Content-Type-Options: nosniff` always, and
//! `Strict-Transport-Security` when `server.hsts` is set (proxied responses get HSTS too,
//! unless the upstream sent its own), and the request's `X-Request-Id`.

use bytes::Bytes;
use http::Response;
use pingora::http::{ResponseHeader, StaticHeaderName};
use pingora::proxy::Session;

use crate::auth::ApiError;

/// Written on every answer, parsed once.
static NOSNIFF: StaticHeaderName = StaticHeaderName::new("x-content-type-options");

pub struct Responder {
    /// The `Strict-Transport-Security` value, when configured.
    hsts: Option<String>,
}

impl Responder {
    pub fn new(hsts: Option<String>) -> Self {
        Self { hsts }
    }

    pub async fn send(
        &self,
        session: &mut Session,
        status: u16,
        content_type: Option<&'static str>,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> pingora::Result<()> {
        let mut header = ResponseHeader::build(status, Some(headers.len() + 5))?;
        header.insert_header("content-length", body.len().to_string())?;
        if let Some(content_type) = content_type {
            header.insert_header("content-type", content_type)?;
        }
        // The gateway's answers are not cached, unless the caller says otherwise (the JWKS).
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("cache-control"))
        {
            header.insert_header("cache-control", "no-store")?;
        }
        header.insert_header(&NOSNIFF, "nosniff")?;
        if let Some(hsts) = &self.hsts {
            header.insert_header("strict-transport-security", hsts.as_str())?;
        }
        for (name, value) in headers {
            header.append_header(*name, value.as_str())?;
        }
        // The request's id, set on the request by the gateway before any answer is written.
        let request_id = &crate::request_id::NAME;
        if let Some(id) = session.req_header().headers.get(request_id.header_name()) {
            header.insert_header(request_id, id.clone())?;
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
        &self,
        session: &mut Session,
        error: &ApiError,
        headers: &[(&'static str, String)],
    ) -> pingora::Result<()> {
        let mut all = headers.to_vec();
        if let Some(seconds) = error.retry_after() {
            all.push(("retry-after", seconds.to_string()));
        }
        self.send(
            session,
            error.status(),
            Some("application/json"),
            &all,
            error.body(),
        )
        .await
    }

    /// HSTS on a proxied response, unless the upstream set its own.
    pub fn secure_proxied(&self, response: &mut ResponseHeader) -> pingora::Result<()> {
        if let Some(hsts) = &self.hsts {
            if !response.headers.contains_key("strict-transport-security") {
                response.insert_header("strict-transport-security", hsts.as_str())?;
            }
        }
        Ok(())
    }
}

/// A complete response for the small apps on their own listeners (admin, demo): the same
/// `Content-Length`, `Cache-Control: no-store` and `nosniff` as the gateway's own answers.
pub fn simple(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut response = Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let length = response.body().len();
    let headers = response.headers_mut();
    if let Ok(value) = content_type.parse() {
        headers.insert(http::header::CONTENT_TYPE, value);
    }
    headers.insert(http::header::CONTENT_LENGTH, length.into());
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}
