//! The demo upstream: a tiny web app on its own socket (`[demo] listen`), reached through the
//! real proxy path like any upstream, so a newcomer's first `cargo run` ends on a page that
//! shows what the gateway injected (`X-User-Id`, and `X-User-Email` / `X-Session-Id` when
//! enabled). It trusts those headers exactly as a legacy app behind authgate would.
//!
//! An operator removes it by deleting the `[demo]` section (or `enabled = false`) and pointing
//! the routes at their own app. It must never be enabled by default in code: only the shipped
//! `gateway.toml` turns it on.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::auth::pages::escape;
use crate::identity;
use crate::respond::simple;

pub struct DemoApp;

#[async_trait]
impl ServeHttp for DemoApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let request = session.req_header();
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        let path = request.uri.path().to_string();
        if path.starts_with("/static/") {
            return simple(
                200,
                "text/plain; charset=utf-8",
                b"A public file: served without signing in.\n".to_vec(),
            );
        }
        let row = |label: &str, value: Option<String>, hint: &str| {
            let shown = value.map_or_else(
                || format!("<em>not sent</em> <small>({})</small>", escape(hint)),
                |value| format!("<code>{}</code>", escape(&value)),
            );
            format!(
                "<tr><th scope=\"row\">{}</th><td>{shown}</td></tr>",
                escape(label)
            )
        };
        let rows = [
            row(
                "X-User-Id",
                header(identity::USER_ID),
                "only on routes with auth = \"required\"",
            ),
            row(
                "X-User-Email",
                header(identity::USER_EMAIL),
                "set session.inject_user_email = true",
            ),
            row(
                "X-Session-Id",
                header(identity::SESSION_ID),
                "set session.inject_session_id = true",
            ),
        ]
        .concat();
        let body = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>authgate demo app</title><link rel=\"stylesheet\" href=\"/auth/assets/style.css\">\
             </head><body><main class=\"wide\"><div class=\"card\"><h1>Hello from the demo app</h1>\
             <p>This page is served by a separate upstream on its own socket. authgate checked \
             your session and forwarded <code>{path}</code> with these headers:</p>\
             <table class=\"demo\">{rows}</table>\
             <p><a href=\"/auth/devices\">Your devices and sessions</a> · \
             <a href=\"/static/hello.txt\">a public file</a></p>\
             <p><small>Replace this app: delete the <code>[demo]</code> section of \
             <code>gateway.toml</code> and point the routes at yours.</small></p>\
             </div></main></body></html>\n",
            path = escape(&path),
        );
        simple(200, "text/html; charset=utf-8", body.into_bytes())
    }
}
