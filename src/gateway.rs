//! The gateway's request pipeline: the `ProxyHttp` implementation, and nothing else.
//!
//! ```text
//!  request ─▶ request_filter ─────────────────────────────────────────────┐
//!             1 client IP (trusted proxies)          client_ip.rs         │ answered here:
//!               X-Request-Id (kept or new)           request_id.rs        │
//!             2 per-IP rate limit        ──▶ 429     limits/ip_rate.rs    │ 429, 431, 400,
//!               header size limits       ──▶ 431                          │ 404, /auth/*,
//!             0 one reading: target, Host ──▶ 400    target.rs, path.rs   │ 401, 503
//!             3 strip identity headers               identity.rs          │
//!               /auth/verify (forward-auth) ──▶ 200/401/302/503           │
//!             4 /auth/*                  ──▶ API     auth/                │
//!             5 route + readings check   ──▶ 404/400 routes.rs            │
//!               route's own rate limit   ──▶ 429                          │
//!               forward the normalised target        target.rs            │
//!               (without the prefix: strip_prefix)                        │
//!             6 session (protected)      ──▶ 401/302/503 session/         │
//!             7 identity assertion (signed, reused) ──▶ 503  assertion/   ┘
//!          ─▶ upstream_peer              a healthy upstream not tried yet (pool.rs), or 503
//!          ─▶ fail_to_connect            passive health; idempotent → retry elsewhere
//!          ─▶ connected_to_upstream      passive health: the failure run is over
//!          ─▶ upstream_request_filter    route's add_request_headers; inject X-User-Id
//!                                        (+ email, session id), X-Authgate-Assertion;
//!                                        drop our cookies
//!          ─▶ upstream_response_filter   upstream latency
//!          ─▶ response_filter            drop the upstream's Set-Cookie for our cookies and
//!                                        identity headers; HSTS; re-issue the sliding cookie;
//!                                        X-Request-Id
//!          ─▶ fail_to_proxy              502/504 JSON when the upstream fails
//!          ─▶ logging                    one access-log line + request metrics
//! ```
//!
//! The request id goes on the request itself (so the upstream gets it and every answer the
//! gateway writes repeats it, see `respond.rs`), and the `/auth` and session work runs in a
//! `request` span carrying it, so their log lines name it too.
//!
//! (Connection admission, the request-head deadline and keep-alive limits run before any of
//! this, in `connections.rs`.)
//!
//! The hot path of a proxied request touches Redis once (the session check) and Postgres never.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use pingora::http::{RequestHeader, ResponseHeader, StaticHeaderName};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};
use tracing::Instrument as _;

use crate::access_log::AccessLine;
use crate::assertion::Assertions;
use crate::auth::{ApiError, AuthApi, AuthRequest, MAX_BODY_BYTES};
use crate::client_ip;
use crate::config::AuthMode;
use crate::error::UpstreamFailure;
use crate::identity::{self, IdentityHeaders};
use crate::limits::ip_rate::{Exceeded, IpRateLimiter};
use crate::pool::Lease;
use crate::request_id::{self, RequestId};
use crate::respond::Responder;
use crate::routes::{Refusal, Route, RouteTable};
use crate::session::{cookie, LiveSession, Lookup, SessionData, SessionToken, Sessions, Step};
use crate::target::RequestTarget;
use crate::telemetry::{Decision, Metrics};

/// Request headers larger than this in total are refused (431).
const MAX_HEADER_BYTES: usize = 32 * 1024;
/// A `Cookie` header larger than this is refused (431): no legitimate session needs it.
const MAX_COOKIE_BYTES: usize = 8 * 1024;

/// The forward-auth check (contract §3): answered by the gateway, never by the `/auth` API.
const VERIFY_PATH: &str = "/auth/verify";

/// How long a client may take to send an `/auth` request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Gateway {
    /// Requests being handled now (for an early exit on SIGTERM once none are left).
    pub in_flight: Arc<AtomicUsize>,
    pub routes: Arc<ArcSwap<RouteTable>>,
    /// This and `identity_headers` are swapped whole by a hot reload, like `routes`.
    pub limiter: Arc<ArcSwap<IpRateLimiter>>,
    pub trusted_proxies: Vec<IpNet>,
    pub identity_headers: Arc<ArcSwap<IdentityHeaders>>,
    pub sessions: Arc<Sessions>,
    pub auth: Arc<AuthApi>,
    pub metrics: Arc<Metrics>,
    /// Writes the gateway's own answers, with its security headers.
    pub respond: Responder,
    /// Signs the identity assertion for protected routes (see `assertion/`).
    pub assertions: Arc<Assertions>,
}

/// Per-request state carried between the hooks.
pub struct RequestContext {
    _in_flight: InFlight,
    started: Instant,
    /// This request's `X-Request-Id` (fresh until a trusted proxy's is accepted).
    request_id: RequestId,
    /// The `request` span (with the id) that the `/auth` and session work runs in: made when
    /// first needed ([`RequestContext::span`]), so a public request never pays for one.
    span: Option<tracing::Span>,
    client_ip: Option<IpAddr>,
    /// Whether the TCP peer is a trusted proxy (whose forwarding headers may be believed).
    via_trusted_proxy: bool,
    /// The metrics/log label when no route matched: "/auth" or "none".
    unrouted_label: &'static str,
    route: Option<Arc<Route>>,
    /// The authenticated session, for identity injection and the access log.
    identity: Option<Arc<SessionData>>,
    /// A refreshed session cookie to hand back with the upstream's response.
    set_cookie: Option<String>,
    upstream_started: Option<Instant>,
    /// The upstream this attempt goes to, and its in-flight lease (least connections).
    upstream: Option<(SocketAddr, Lease)>,
    /// Upstreams a connect already failed on (a retry goes elsewhere).
    tried: Vec<SocketAddr>,
    /// The signed identity assertion for the upstream, when the route carries one.
    assertion: Option<http::HeaderValue>,
}

impl RequestContext {
    /// The upstream has answered in full: the request stops counting as in flight there
    /// (least connections) before its last bytes reach the client. The context, and with it
    /// the lease, is dropped only after the response is written and logged, so a client's next
    /// request could otherwise be balanced while this finished one still counted.
    fn end_upstream_lease(&mut self) {
        if let Some((_, lease)) = &mut self.upstream {
            lease.end();
        }
    }

    /// What `consistent_hash` routes hash: the signed-in user, else the client IP.
    fn balance_key(&self) -> Vec<u8> {
        match (&self.identity, self.client_ip) {
            (Some(identity), _) => identity.user_id.as_bytes().to_vec(),
            (None, Some(ip)) => ip.to_string().into_bytes(),
            (None, None) => Vec::new(),
        }
    }

    /// The `request` span, named by the request id (settled by then).
    fn span(&mut self) -> tracing::Span {
        let request_id = &self.request_id;
        self.span
            .get_or_insert_with(|| tracing::info_span!("request", request_id = %request_id))
            .clone()
    }

    /// The metrics/log label: the matched route's prefix, "/auth", or "none".
    fn route_label(&self) -> &str {
        self.route
            .as_ref()
            .map_or(self.unrouted_label, |route| route.prefix.as_str())
    }
}

/// Counts a request (or an open public connection) as in flight for as long as it lives: the
/// process exits early on SIGTERM once nothing is.
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        RequestContext {
            _in_flight: InFlight::enter(&self.in_flight),
            started: Instant::now(),
            request_id: RequestId::generate(),
            span: None,
            client_ip: None,
            via_trusted_proxy: false,
            unrouted_label: "none",
            route: None,
            identity: None,
            set_cookie: None,
            upstream_started: None,
            upstream: None,
            tried: Vec::new(),
            assertion: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> pingora::Result<bool> {
        let (client_ip, via_trusted_proxy) = self.client_ip(session);
        ctx.client_ip = Some(client_ip);
        ctx.via_trusted_proxy = via_trusted_proxy;
        self.settle_request_id(session, ctx)?;

        if let Err(exceeded) = self.limiter.load().check(client_ip) {
            self.refuse_rate_limited(session, &exceeded).await?;
            return Ok(true);
        }

        if let Some(message) = oversized_headers(session.req_header()) {
            session.set_keepalive(None);
            self.respond
                .api_error(session, &ApiError::HeadersTooLarge(message), &[])
                .await?;
            return Ok(true);
        }

        let target = match RequestTarget::read(session.req_header()) {
            Ok(target) => target,
            Err(error) => {
                session.set_keepalive(None);
                let error = ApiError::InvalidTarget {
                    code: error.code(),
                    message: error.message(),
                };
                self.respond.api_error(session, &error, &[]).await?;
                return Ok(true);
            }
        };

        self.identity_headers
            .load()
            .strip(session.req_header_mut(), via_trusted_proxy);

        if target.path.as_str() == VERIFY_PATH {
            ctx.unrouted_label = "/auth";
            self.verify(session, ctx, client_ip).await?;
            return Ok(true);
        }

        if AuthApi::is_auth_path(target.path.as_str()) {
            ctx.unrouted_label = "/auth";
            self.serve_auth(session, &target, client_ip, via_trusted_proxy)
                .instrument(ctx.span())
                .await?;
            return Ok(true);
        }

        let route = match self.routes.load().resolve(target.host_name(), &target.path) {
            Ok(route) => route,
            Err(refusal) => {
                let error = match refusal {
                    Refusal::NoRoute => ApiError::NoRoute,
                    other => ApiError::InvalidPath(other.message()),
                };
                self.respond.api_error(session, &error, &[]).await?;
                return Ok(true);
            }
        };
        ctx.route = Some(route.clone());
        if let Err(exceeded) = route.check_rate(client_ip) {
            self.refuse_rate_limited(session, &exceeded).await?;
            return Ok(true);
        }
        let forwarded_path = route.forwarded_path(target.path.as_str());
        target.apply_with_path(session.req_header_mut(), &forwarded_path)?;

        match route.auth {
            AuthMode::Public => {
                self.metrics.decision(Decision::Public);
                Ok(false)
            }
            AuthMode::Required => {
                if self.authorize(session, ctx, client_ip).await? {
                    return Ok(true);
                }
                self.sign_assertion(session, ctx).await
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestContext,
    ) -> pingora::Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(Error::explain(ErrorType::HTTPStatus(503), "no route"));
        };
        let Some(selected) = route.select_upstream(|| ctx.balance_key(), &ctx.tried) else {
            return Err(if ctx.tried.is_empty() {
                Error::explain(ErrorType::HTTPStatus(503), "no upstream")
            } else {
                Error::explain(
                    ErrorType::ConnectRefused,
                    "every upstream refused to connect",
                )
            });
        };
        // Replacing a previous attempt's lease ends it.
        ctx.upstream = Some((selected.upstream, selected.lease));
        ctx.upstream_started = Some(Instant::now());
        Ok(selected.peer)
    }

    /// A connect failed, so nothing was sent: an idempotent request is tried again on an
    /// upstream not tried yet, at most once per upstream; anything else ends here (502).
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestContext,
        mut error: Box<Error>,
    ) -> Box<Error> {
        let Some(route) = ctx.route.clone() else {
            return error;
        };
        if let Some((upstream, _lease)) = ctx.upstream.take() {
            route.connect_failed(upstream);
            ctx.tried.push(upstream);
        }
        let idempotent = session.req_header().method.is_idempotent();
        error.set_retry(idempotent && ctx.tried.len() < route.pool_size());
        error
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestContext,
    ) -> pingora::Result<()> {
        if let (Some(route), Some((upstream, _))) = (&ctx.route, &ctx.upstream) {
            route.connected(*upstream);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> pingora::Result<()> {
        if let Some(route) = &ctx.route {
            // Checked at load: never an identity, forwarding or framing header.
            for (name, value) in route.added_headers() {
                upstream_request.insert_header(name.clone(), value.clone())?;
            }
        }
        if let Some(client_ip) = ctx.client_ip {
            forwarding_headers(upstream_request, client_ip, ctx.via_trusted_proxy)?;
        }
        if upstream_request.headers.contains_key(http::header::COOKIE) {
            match cookie::without(&upstream_request.headers, &self.own_cookies()) {
                Some(rest) => upstream_request.insert_header(http::header::COOKIE, rest)?,
                None => {
                    upstream_request.remove_header(&http::header::COOKIE);
                }
            }
        }
        if let Some(identity) = &ctx.identity {
            for (name, value) in self.identity_headers(identity) {
                upstream_request.insert_header(name, value)?;
            }
        }
        if let Some(assertion) = &ctx.assertion {
            upstream_request.insert_header(&identity::parsed::ASSERTION, assertion.clone())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> pingora::Result<()> {
        if let (Some(started), Some(route)) = (ctx.upstream_started, &ctx.route) {
            route
                .series(&self.metrics)
                .upstream_latency(started.elapsed());
        }
        // No body callback follows an answer that has no body by definition: it is complete
        // with its header.
        if answer_has_no_body(session.req_header(), upstream_response) {
            ctx.end_upstream_lease();
        }
        Ok(())
    }

    /// Ends the least-connections lease at the end of the upstream's body (see
    /// [`RequestContext::end_upstream_lease`]).
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestContext,
    ) -> pingora::Result<Option<Duration>> {
        if end_of_stream {
            ctx.end_upstream_lease();
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> pingora::Result<()> {
        self.guard_response(upstream_response)?;
        upstream_response.insert_header(&request_id::NAME, ctx.request_id.header_value())?;
        if let Some(cookie) = ctx.set_cookie.take() {
            upstream_response.append_header("set-cookie", cookie)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut RequestContext,
    ) -> FailToProxy {
        let failure = match (error.etype(), error.esource()) {
            (ErrorType::HTTPStatus(503), _) => {
                Some(ApiError::Upstream(UpstreamFailure::NoneHealthy))
            }
            (
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
                ErrorSource::Upstream,
            ) => Some(ApiError::Upstream(UpstreamFailure::Timeout)),
            (
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => None, // the client is gone; nothing to answer
            (_, ErrorSource::Downstream) => Some(ApiError::BadRequest),
            _ => Some(ApiError::Upstream(UpstreamFailure::Failed)),
        };
        let status = failure.as_ref().map_or(0, ApiError::status);
        if let Some(failure) = failure {
            // The upstream exchange failed midway; don't promise the client a reusable
            // connection (it gets `Connection: close`).
            session.set_keepalive(None);
            if let Err(write_error) = self.respond.api_error(session, &failure, &[]).await {
                tracing::debug!(%write_error, request_id = %ctx.request_id, "cannot write error response");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// What pingora's own log lines ("Fail to proxy: ...") say of the request: no query
    /// string (it may carry tokens) and no Host, but the request id to find the access line.
    fn request_summary(&self, session: &Session, ctx: &RequestContext) -> String {
        format!(
            "{} {} route={} request_id={}",
            session.req_header().method,
            session.req_header().uri.path(),
            ctx.route_label(),
            ctx.request_id
        )
    }

    async fn logging(
        &self,
        session: &mut Session,
        error: Option<&Error>,
        ctx: &mut RequestContext,
    ) {
        let status = session
            .response_written()
            .map_or(0, |response| response.status.as_u16());
        match &ctx.route {
            Some(route) => route.series(&self.metrics).request(status),
            None => self.metrics.request(ctx.unrouted_label, status),
        }
        let request = session.req_header();
        AccessLine {
            method: request.method.as_str(),
            path: request.uri.path(),
            route: ctx.route_label(),
            status,
            request_id: ctx.request_id.as_str(),
            user_id: ctx.identity.as_ref().map(|identity| identity.user_id),
            latency_tenths_ms: tenths_of_ms(ctx.started.elapsed()),
            client_ip: ctx.client_ip,
            error: error.map_or("", |e| e.etype().as_str()),
        }
        .write();
    }
}

impl Gateway {
    /// Step 2 (and a route's own `rate_limit`): 429 with `Retry-After` and `RateLimit-*`.
    async fn refuse_rate_limited(
        &self,
        session: &mut Session,
        exceeded: &Exceeded,
    ) -> pingora::Result<()> {
        self.metrics.decision(Decision::RateLimited);
        let error = ApiError::RateLimited(exceeded.retry_after);
        let reset = error.retry_after().unwrap_or(1).to_string();
        let headers = [
            ("ratelimit-limit", exceeded.limit.to_string()),
            ("ratelimit-remaining", "0".to_string()),
            ("ratelimit-reset", reset),
        ];
        self.respond.api_error(session, &error, &headers).await
    }

    /// The gateway's own cookies (base names), which upstreams may neither see nor set.
    fn own_cookies(&self) -> [&str; 2] {
        [
            cookie::base_name(&self.sessions.config().cookie_name),
            crate::auth::csrf::CSRF_COOKIE,
        ]
    }

    /// contract §2 step 3, on the way back: an upstream's `Set-Cookie` for the gateway's own
    /// cookies and any identity header are removed before the client sees them; the
    /// gateway's own response headers (`nosniff`, HSTS) are added.
    fn guard_response(&self, response: &mut ResponseHeader) -> pingora::Result<()> {
        cookie::drop_set_cookies_for(response, &self.own_cookies())?;
        self.identity_headers.load().strip_response(response);
        self.respond.secure_proxied(response)
    }

    /// Step 1, continued: the request's id is a trusted proxy's (if acceptable) or the fresh
    /// one. It replaces whatever the client sent, so the upstream and every answer see it.
    fn settle_request_id(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> pingora::Result<()> {
        ctx.request_id = RequestId::for_request(
            &session.req_header().headers,
            ctx.via_trusted_proxy,
            ctx.request_id.clone(),
        );
        session
            .req_header_mut()
            .insert_header(&request_id::NAME, ctx.request_id.header_value())?;
        Ok(())
    }

    /// The client's IP, and whether the TCP peer is a trusted proxy.
    fn client_ip(&self, session: &Session) -> (IpAddr, bool) {
        let peer = session
            .client_addr()
            .and_then(|addr| addr.as_inet())
            .map_or(IpAddr::from([0, 0, 0, 0]), |addr| addr.ip().to_canonical());
        let trusted = self.trusted_proxies.iter().any(|net| net.contains(&peer));
        let client = client_ip::resolve(peer, &session.req_header().headers, &self.trusted_proxies);
        (client, trusted)
    }

    /// Step 7: a protected route needs a live session. One Redis round trip validates it and
    /// slides its idle expiry. Whether the request was answered here.
    async fn authorize(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        client_ip: IpAddr,
    ) -> pingora::Result<bool> {
        // People get the sign-in page, and come back here afterwards.
        let sign_in = |request: &RequestHeader| {
            is_browser_navigation(request).then(|| sign_in_location(request))
        };
        let Some((identity, cookie)) = self.check_session(session, ctx, client_ip, sign_in).await?
        else {
            return Ok(true);
        };
        let allow = ctx.route.as_ref().and_then(|route| route.allow.as_ref());
        if allow.is_some_and(|allow| !allow.permits(&identity.email, &identity.roles)) {
            self.refuse_not_allowed(session, &identity, cookie)
                .instrument(ctx.span())
                .await?;
            ctx.identity = Some(identity);
            return Ok(true);
        }
        self.metrics.decision(Decision::Allowed);
        ctx.set_cookie = cookie;
        ctx.identity = Some(identity);
        Ok(false)
    }

    /// Signed in, but the route's allow list names neither the user's email, nor its domain,
    /// nor one of its roles: 403, as a page for a browser's page load, else JSON. The upstream
    /// never sees the request. The session stays valid (and its cookie fresh): other routes
    /// may serve this user.
    async fn refuse_not_allowed(
        &self,
        session: &mut Session,
        identity: &SessionData,
        cookie: Option<String>,
    ) -> pingora::Result<()> {
        self.metrics.decision(Decision::Forbidden);
        let error = ApiError::NotAllowed(identity.email.clone());
        let cookie: Vec<_> = cookie
            .map(|cookie| ("set-cookie", cookie))
            .into_iter()
            .collect();
        if !is_browser_navigation(session.req_header()) {
            return self.respond.api_error(session, &error, &cookie).await;
        }
        let page = self.auth.pages.load().access_denied(&error);
        let mut headers = page.headers;
        headers.extend(cookie);
        self.respond
            .send(session, page.status, page.content_type, &headers, page.body)
            .await
    }

    /// `/auth/verify`, the forward-auth check (nginx `auth_request`, Traefik ForwardAuth,
    /// Caddy `forward_auth`): the same session check as a protected route (sliding expiry,
    /// absolute lifetime, revocation; the per-IP limit already ran), answered with the
    /// identity in response headers for the proxy to copy: 200, else 401, or for a browser's
    /// page load forwarded by a trusted proxy a 302 to the sign-in page with `rd` = the
    /// original URL, when its host is in `server.allowed_redirect_hosts`.
    async fn verify(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        client_ip: IpAddr,
    ) -> pingora::Result<()> {
        let sign_in = |request: &RequestHeader| self.forwarded_sign_in_location(request);
        let Some((identity, cookie)) = self.check_session(session, ctx, client_ip, sign_in).await?
        else {
            return Ok(());
        };
        self.metrics.decision(Decision::Allowed);
        let mut headers: Vec<_> = self
            .identity_headers(&identity)
            .into_iter()
            .map(|(name, value)| (name.as_str(), value))
            .collect();
        headers.extend(cookie.map(|cookie| ("set-cookie", cookie)));
        ctx.identity = Some(identity);
        self.respond
            .send(session, 200, None, &headers, Vec::new())
            .await
    }

    /// The session check of step 7 and `/auth/verify`: the live session's identity and, when
    /// the browser's cookie expiry needs moving, the refreshed `Set-Cookie`. Otherwise the
    /// refusal is written here (`None`): 401, or a 302 to `sign_in`'s location when it gives
    /// one, or 503 when the session store is down.
    ///
    /// A live session the local cache answers (the common case) is settled without the
    /// `request` span: that path logs nothing of its own (only the write-behind queue's "record
    /// dropped" error when an audited IP or user-agent change finds it full), and making the
    /// span was about 2 % of a protected request. The store round trip and every refusal run in
    /// the span, so their log lines name the request.
    async fn check_session(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
        client_ip: IpAddr,
        sign_in: impl FnOnce(&RequestHeader) -> Option<String>,
    ) -> pingora::Result<Option<(Arc<SessionData>, Option<String>)>> {
        let step = self
            .sessions
            .lookup_local(&session.req_header().headers, client_ip);
        if let Step::Answered(Lookup::Valid {
            token,
            session: live,
            refresh_cookie,
        }) = step
        {
            return Ok(Some(self.accepted(&token, live, refresh_cookie)));
        }
        self.settle_session(session, client_ip, step, sign_in)
            .instrument(ctx.span())
            .await
    }

    /// [`Gateway::check_session`] beyond the local cache: the store's answer, or the refusal.
    async fn settle_session(
        &self,
        session: &mut Session,
        client_ip: IpAddr,
        step: Step,
        sign_in: impl FnOnce(&RequestHeader) -> Option<String>,
    ) -> pingora::Result<Option<(Arc<SessionData>, Option<String>)>> {
        let lookup = match step {
            Step::Answered(lookup) => Ok(lookup),
            Step::AskStore(pending) => {
                self.sessions
                    .lookup_stored(pending, &session.req_header().headers, client_ip)
                    .await
            }
        };
        match lookup {
            Ok(Lookup::Valid {
                token,
                session: live,
                refresh_cookie,
            }) => Ok(Some(self.accepted(&token, live, refresh_cookie))),
            Ok(lookup) => {
                let location = sign_in(session.req_header());
                self.refuse_unauthenticated(session, &lookup, location)
                    .await?;
                Ok(None)
            }
            Err(store_error) => {
                self.refuse_unavailable(session, &store_error).await?;
                Ok(None)
            }
        }
    }

    /// A live session's identity, and its refreshed cookie when the browser's expiry needs
    /// moving.
    fn accepted(
        &self,
        token: &SessionToken,
        live: LiveSession,
        refresh_cookie: bool,
    ) -> (Arc<SessionData>, Option<String>) {
        let cookie = refresh_cookie.then(|| self.sessions.refresh_cookie(token, &live));
        (live.data, cookie)
    }

    /// The identity headers the gateway vouches for: `X-User-Id`, and `X-User-Email` /
    /// `X-Session-Id` / `X-User-Roles` when `session.inject_*` says so. Sent upstream on a protected route,
    /// and answered by `/auth/verify`.
    fn identity_headers(&self, identity: &SessionData) -> Vec<(&'static StaticHeaderName, String)> {
        let config = self.sessions.config();
        let mut headers = vec![(&identity::parsed::USER_ID, identity.user_id.to_string())];
        if config.inject_user_email {
            headers.push((&identity::parsed::USER_EMAIL, identity.email.clone()));
        }
        if config.inject_session_id {
            headers.push((&identity::parsed::SESSION_ID, identity.id.to_string()));
        }
        if config.inject_user_roles {
            headers.push((&identity::parsed::USER_ROLES, identity.roles.join(",")));
        }
        headers
    }

    /// For `/auth/verify`: the sign-in page, with `rd` = the URL the browser asked the proxy
    /// for, when the proxy forwarded a page load (`X-Forwarded-Method` GET/HEAD, or the
    /// request's own method, and `Accept: text/html`) for a host allowed as a redirect target.
    /// The `X-Forwarded-*` headers only reach this point from `server.trusted_proxies` (they
    /// are stripped from everyone else).
    fn forwarded_sign_in_location(&self, request: &RequestHeader) -> Option<String> {
        let header = |name| request.headers.get(name).and_then(|v| v.to_str().ok());
        let method = header("x-forwarded-method").unwrap_or(request.method.as_str());
        let accepts_html = header("accept").is_some_and(|accept| accept.contains("text/html"));
        if !accepts_html || !matches!(method.trim().to_ascii_uppercase().as_str(), "GET" | "HEAD") {
            return None;
        }
        let pages = self.auth.pages.load();
        let original = pages.redirect_hosts().original_url(
            header("x-forwarded-proto"),
            header("x-forwarded-host")?,
            header("x-forwarded-uri"),
        )?;
        let encoded: String = form_urlencoded::byte_serialize(original.as_bytes()).collect();
        Some(format!(
            "{}/auth/login?rd={encoded}",
            self.sign_in_origin(&original)
        ))
    }

    /// The gateway origin a browser signs in at: the `server.public_origin` with the original
    /// URL's scheme and host when there is one (the proxy routes `/auth/` there), else one
    /// with its host, else the first.
    fn sign_in_origin(&self, original: &str) -> &str {
        // `scheme://host` of a URL (no port, path or query).
        fn site(url: &str) -> (&str, &str) {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            (
                scheme,
                rest.split(['/', '?', '#', ':']).next().unwrap_or(""),
            )
        }
        let origins = self.auth.csrf.origins();
        let (scheme, host) = site(original);
        let same_site = origins.iter().find(|origin| site(origin) == (scheme, host));
        let same_host = || origins.iter().find(|origin| site(origin).1 == host);
        same_site
            .or_else(same_host)
            .or(origins.first())
            .map_or("", String::as_str)
    }

    /// No usable session: 401 JSON, or a 302 to `sign_in` when given; a dead cookie is
    /// cleared either way.
    async fn refuse_unauthenticated(
        &self,
        session: &mut Session,
        lookup: &Lookup,
        sign_in: Option<String>,
    ) -> pingora::Result<()> {
        self.metrics.decision(Decision::Unauthenticated);
        let mut headers = match lookup {
            Lookup::Invalid => vec![("set-cookie", self.sessions.clear_cookie())],
            _ => Vec::new(),
        };
        match sign_in {
            Some(location) => {
                headers.push(("location", location));
                self.respond
                    .send(session, 302, None, &headers, Vec::new())
                    .await
            }
            None => {
                self.respond
                    .api_error(session, &ApiError::Unauthenticated, &headers)
                    .await
            }
        }
    }

    /// Fail closed: without the session store nobody gets through (503 with `Retry-After`).
    async fn refuse_unavailable(
        &self,
        session: &mut Session,
        store_error: &impl std::fmt::Display,
    ) -> pingora::Result<()> {
        self.metrics.decision(Decision::StoreUnavailable);
        tracing::debug!(error = %store_error, "session store unavailable");
        let error = ApiError::Unavailable(store_error.to_string());
        self.respond.api_error(session, &error, &[]).await
    }

    /// Step 7: the signed identity assertion for a signed-in request on a route that carries
    /// one. A request that should carry it and cannot (no key loaded yet) is not forwarded
    /// without it: 503 with `Retry-After`.
    async fn sign_assertion(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> pingora::Result<bool> {
        let (Some(route), Some(identity)) = (&ctx.route, &ctx.identity) else {
            return Ok(false);
        };
        if !route.assertion {
            return Ok(false);
        }
        match self.assertions.sign(identity, route.audience()) {
            Ok(assertion) => {
                ctx.assertion = assertion;
                Ok(false)
            }
            Err(error) => {
                tracing::warn!(%error, route = %route.prefix, "request refused: no identity assertion");
                let error = ApiError::Unavailable(error.to_string());
                self.respond.api_error(session, &error, &[]).await?;
                Ok(true)
            }
        }
    }

    /// Step 5: read the (capped) body and let the API answer.
    async fn serve_auth(
        &self,
        session: &mut Session,
        target: &RequestTarget,
        client_ip: IpAddr,
        via_trusted_proxy: bool,
    ) -> pingora::Result<()> {
        let response = match read_body(session, MAX_BODY_BYTES).await {
            Ok(body) => {
                let request = AuthRequest {
                    method: session.req_header().method.clone(),
                    path: target.path.to_string(),
                    query: target.query.clone(),
                    headers: session.req_header().headers.clone(),
                    body,
                    client_ip,
                    via_trusted_proxy,
                };
                self.auth.handle(request).await
            }
            Err(error) => {
                // The rest of the body is unread: this connection cannot be reused.
                session.set_keepalive(None);
                crate::auth::AuthResponse::error(&error)
            }
        };
        self.respond
            .send(
                session,
                response.status,
                response.content_type,
                &response.headers,
                response.body,
            )
            .await
    }
}

/// Reads a request body of at most `limit` bytes.
async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, ApiError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let read_all = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_request_body().await.map_err(|e| {
            ApiError::InvalidRequest(format!(
                "cannot read the request body: {}",
                e.etype().as_str()
            ))
        })? {
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read_all)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::InvalidRequest(
                "request body took too long to arrive".to_string(),
            ))
        })
}

// The forwarding headers, parsed once: they are written on every proxied request.
static X_FORWARDED_FOR: StaticHeaderName = StaticHeaderName::new("x-forwarded-for");
static X_REAL_IP: StaticHeaderName = StaticHeaderName::new("x-real-ip");
static X_FORWARDED_PROTO: StaticHeaderName = StaticHeaderName::new("x-forwarded-proto");
static X_FORWARDED_HOST: StaticHeaderName = StaticHeaderName::new("x-forwarded-host");
static FORWARDED: StaticHeaderName = StaticHeaderName::new("forwarded");

/// The forwarding headers upstreams see: the resolved client IP only (`X-Forwarded-For`,
/// `X-Real-IP`, `Forwarded`), and the scheme/host a trusted proxy reported, never what an
/// untrusted client claims.
fn forwarding_headers(
    request: &mut RequestHeader,
    client_ip: IpAddr,
    via_trusted_proxy: bool,
) -> pingora::Result<()> {
    let reported_proto = request
        .headers
        .get(X_FORWARDED_PROTO.header_name())
        .and_then(|value| value.to_str().ok())
        .map(str::trim);
    let proto = match reported_proto {
        Some(proto) if via_trusted_proxy && proto.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    if !via_trusted_proxy {
        request.remove_header(X_FORWARDED_HOST.header_name());
    }
    // Built once and shared: a `HeaderValue` made from a `String` or a static keeps its bytes,
    // and its clone shares them.
    let ip = client_ip.to_string();
    let mut forwarded = String::with_capacity(ip.len() + 20);
    match client_ip {
        IpAddr::V4(_) => forwarded.extend(["for=", &ip]),
        IpAddr::V6(_) => forwarded.extend(["for=\"[", &ip, "]\""]),
    }
    forwarded.extend([";proto=", proto]);
    let ip = http::HeaderValue::try_from(ip)
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "client address"))?;
    request.insert_header(&X_FORWARDED_FOR, ip.clone())?;
    request.insert_header(&X_REAL_IP, ip)?;
    request.insert_header(&X_FORWARDED_PROTO, http::HeaderValue::from_static(proto))?;
    request.insert_header(&FORWARDED, forwarded)?;
    Ok(())
}

/// A page load (GET/HEAD asking for HTML), as opposed to an API call.
fn is_browser_navigation(request: &RequestHeader) -> bool {
    let accepts_html = request
        .headers
        .get(http::header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    accepts_html && matches!(request.method, http::Method::GET | http::Method::HEAD)
}

/// `/auth/login?rd=<the original path and query>`.
fn sign_in_location(request: &RequestHeader) -> String {
    let original = request
        .uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    let encoded: String = form_urlencoded::byte_serialize(original.as_bytes()).collect();
    format!("/auth/login?rd={encoded}")
}

/// Milliseconds rounded to 0.1, for the logs.
/// An upstream answer that has no body by definition (RFC 9112 §6.3): to a HEAD, a 204 or a
/// 304, or one that declares `Content-Length: 0`.
fn answer_has_no_body(request: &RequestHeader, answer: &ResponseHeader) -> bool {
    request.method == http::Method::HEAD
        || matches!(answer.status.as_u16(), 204 | 304)
        || answer
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() == b"0")
}

/// The access line's latency: tenths of a millisecond, rounded.
fn tenths_of_ms(elapsed: Duration) -> u64 {
    u64::try_from((elapsed.as_nanos() + 50_000) / 100_000).unwrap_or(u64::MAX)
}

fn oversized_headers(request: &RequestHeader) -> Option<&'static str> {
    let mut total = 0;
    for (name, value) in &request.headers {
        if name == request_id::HEADER {
            continue; // the gateway's own, set before this check
        }
        total += name.as_str().len() + value.len() + 4;
        if name == http::header::COOKIE && value.len() > MAX_COOKIE_BYTES {
            return Some("the Cookie header is too large");
        }
    }
    (total > MAX_HEADER_BYTES).then_some("request headers are too large")
}
