//! The browser side of `/auth`: server-rendered sign-in, sign-up and device-dashboard pages,
//! and the form posts they make. Pages work without JavaScript, load nothing from elsewhere
//! (one stylesheet, served from the binary), and are sent with a strict Content-Security-Policy.
//!
//! Form flows reuse the API's logic (`sign_in`, `create_account`, `change_password`,
//! revocation) and differ only in how they answer: a redirect on success, the page again with
//! the problem explained on failure. A sign-up through the page opens a session the way a
//! sign-in does (`open_session`), so the new user arrives signed in.

use chrono::{DateTime, TimeZone, Utc};
use http::Method;
use uuid::Uuid;

use super::csrf;
use super::input::Fields;
use super::redirect::RedirectHosts;
use super::{AuthApi, AuthRequest, AuthResponse};
use crate::config::{BackLink, BrandingConfig};
use crate::error::{human_wait, ApiError};
use crate::session::{EndReason, LiveSession, Lookup, SessionToken};
use crate::store::{Device, IpRecord, User};

const STYLESHEET: &str = include_str!("assets/style.css");
pub const STYLESHEET_PATH: &str = "/auth/assets/style.css";

/// Security headers of every page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub struct Pages {
    product_name: String,
    stylesheet: String,
    /// Name of the CSRF double-submit cookie, and whether it is Secure.
    csrf_cookie: String,
    secure_cookie: bool,
    /// Where a full-URL `rd` may point (`server.allowed_redirect_hosts`).
    redirect_hosts: RedirectHosts,
    /// The account page's link back to the app (`branding.back_link_url`).
    back_link: Option<BackLink>,
}

impl Pages {
    pub fn new(
        branding: &BrandingConfig,
        secure_cookie: bool,
        redirect_hosts: RedirectHosts,
    ) -> Self {
        let stylesheet = match &branding.accent_color {
            Some(color) => {
                STYLESHEET.replacen("--accent: #1d4ed8;", &format!("--accent: {color};"), 1)
            }
            None => STYLESHEET.to_string(),
        };
        Self {
            product_name: branding.product_name.clone(),
            stylesheet,
            csrf_cookie: csrf::cookie_name(secure_cookie),
            secure_cookie,
            redirect_hosts,
            back_link: branding.back_link.clone(),
        }
    }

    pub fn redirect_hosts(&self) -> &RedirectHosts {
        &self.redirect_hosts
    }

    pub fn csrf_cookie_name(&self) -> &str {
        &self.csrf_cookie
    }

    pub fn stylesheet(&self) -> AuthResponse {
        AuthResponse {
            status: 200,
            content_type: Some("text/css; charset=utf-8"),
            headers: Vec::new(),
            body: self.stylesheet.clone().into_bytes(),
        }
    }

    /// A complete page: layout, security headers, and the CSRF cookie its forms rely on.
    fn page(
        &self,
        status: u16,
        title: &str,
        body: &str,
        csrf: &CsrfToken,
        wide: bool,
    ) -> AuthResponse {
        let html = format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{title} · {product}</title>\n<link rel=\"stylesheet\" href=\"{STYLESHEET_PATH}\">\n\
             </head>\n<body>\n<main class=\"{class}\">\n<span class=\"brand\">{product}</span>\n{body}\n</main>\n</body>\n</html>\n",
            title = escape(title),
            product = escape(&self.product_name),
            class = if wide { "wide" } else { "" },
        );
        let mut response = AuthResponse {
            status,
            content_type: Some("text/html; charset=utf-8"),
            headers: vec![
                (
                    "content-security-policy",
                    CONTENT_SECURITY_POLICY.to_string(),
                ),
                ("x-frame-options", "DENY".to_string()),
                ("referrer-policy", "same-origin".to_string()),
            ],
            body: html.into_bytes(),
        };
        if csrf.fresh {
            let cookie = cookie::Cookie::build((self.csrf_cookie.as_str(), csrf.value.as_str()))
                .path("/")
                .http_only(true)
                .same_site(cookie::SameSite::Strict)
                .secure(self.secure_cookie)
                .build();
            response.headers.push(("set-cookie", cookie.to_string()));
        }
        response
    }
}

/// The token a page embeds in its forms: the browser's existing one, or a new one.
struct CsrfToken {
    value: String,
    fresh: bool,
}

/// Values and problems to show again on a form.
#[derive(Default)]
struct FormState {
    email: String,
    username: String,
    full_name: String,
    /// A problem with the whole form.
    alert: Option<String>,
    /// A notice (account created, signed out).
    notice: Option<String>,
    /// (field, message) for field-level problems.
    field_errors: Vec<(&'static str, String)>,
}

impl FormState {
    fn error_for(&self, field: &str) -> Option<&str> {
        self.field_errors
            .iter()
            .find(|(name, _)| *name == field)
            .map(|(_, message)| message.as_str())
    }
}

impl AuthApi {
    fn csrf_token(&self, request: &AuthRequest) -> CsrfToken {
        match crate::session::cookie::read(&request.headers, self.pages.load().csrf_cookie_name()) {
            Some(value) if crate::session::is_random_secret(&value) => CsrfToken {
                value,
                fresh: false,
            },
            _ => CsrfToken {
                value: csrf::new_token(),
                fresh: true,
            },
        }
    }

    fn query_value(request: &AuthRequest, name: &str) -> Option<String> {
        let query = request.query.as_deref()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }

    /// Where to go after signing in: the `rd` the page was opened with, if it is local or a
    /// full URL on an allowed host (`redirect.rs`).
    fn redirect_target(&self, request: &AuthRequest, fields: Option<&Fields>) -> String {
        let from_form = fields.and_then(|f| f.optional("rd").ok().flatten().map(str::to_string));
        let target = from_form.or_else(|| Self::query_value(request, "rd"));
        self.pages
            .load()
            .redirect_hosts
            .target(target.as_deref().unwrap_or("/"))
    }

    async fn signed_in(&self, request: &AuthRequest) -> Option<(SessionToken, LiveSession)> {
        match self
            .sessions
            .lookup(&request.headers, request.client_ip)
            .await
        {
            Ok(Lookup::Valid { token, session, .. }) => Some((token, session)),
            _ => None,
        }
    }

    pub(super) async fn login_page(&self, request: &AuthRequest) -> Result<AuthResponse, ApiError> {
        let rd = self.redirect_target(request, None);
        if self.signed_in(request).await.is_some() {
            return Ok(see_other(&rd));
        }
        let mut state = FormState::default();
        if Self::query_value(request, "registered").is_some() {
            state.notice = Some("Account created. Sign in to continue.".to_string());
        }
        if Self::query_value(request, "signed_out").is_some() {
            state.notice = Some("You have been signed out.".to_string());
        }
        Ok(self.render_login(request, 200, &state, &rd))
    }

    pub(super) async fn login_form(&self, request: &AuthRequest) -> Result<AuthResponse, ApiError> {
        let fields = Fields::parse(request.header("content-type"), &request.body)?;
        let rd = self.redirect_target(request, Some(&fields));
        match self.login(request).await {
            Ok(api_response) => Ok(with_cookies_of(see_other(&rd), api_response)),
            Err(error) => {
                let state = FormState {
                    email: fields
                        .optional("email")
                        .ok()
                        .flatten()
                        .unwrap_or("")
                        .to_string(),
                    alert: Some(login_problem(&error)),
                    ..FormState::default()
                };
                let mut response = self.render_login(request, error.status(), &state, &rd);
                if let Some(seconds) = error.retry_after() {
                    response.headers.push(("retry-after", seconds.to_string()));
                }
                Ok(response)
            }
        }
    }

    fn render_login(
        &self,
        request: &AuthRequest,
        status: u16,
        state: &FormState,
        rd: &str,
    ) -> AuthResponse {
        let csrf = self.csrf_token(request);
        let register = if self.access.load().registration_open() {
            format!(
                "<p class=\"alt\">No account yet? <a href=\"{}\">Create one</a></p>\n",
                escape(&format!("/auth/register?rd={}", url_encode(rd)))
            )
        } else {
            String::new()
        };
        let body = format!(
            "<div class=\"card\">\n<h1>Sign in</h1>\n{alerts}\
             <form class=\"stack\" method=\"post\" action=\"/auth/login\" novalidate>\n\
             <input type=\"hidden\" name=\"csrf_token\" value=\"{token}\">\n\
             <input type=\"hidden\" name=\"rd\" value=\"{rd}\">\n\
             <label for=\"email\">Email</label>\n\
             <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required value=\"{email}\"{email_focus}>\n\
             <label for=\"password\">Password</label>\n\
             <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required{password_focus}>\n\
             <button type=\"submit\">Sign in</button>\n</form>\n{register}</div>",
            alerts = alerts(state),
            token = escape(&csrf.value),
            rd = escape(rd),
            email = escape(&state.email),
            // After a failed attempt the email is filled in: start at the password.
            email_focus = if state.email.is_empty() { " autofocus" } else { "" },
            password_focus = if state.email.is_empty() { "" } else { " autofocus" },
        );
        self.pages
            .load()
            .page(status, "Sign in", &body, &csrf, false)
    }

    pub(super) async fn register_page(
        &self,
        request: &AuthRequest,
    ) -> Result<AuthResponse, ApiError> {
        let rd = self.redirect_target(request, None);
        if !self.access.load().registration_open() {
            return Ok(self.render_registration_closed(request, 200, &rd));
        }
        Ok(self.render_register(request, 200, &FormState::default(), &rd))
    }

    pub(super) async fn register_form(
        &self,
        request: &AuthRequest,
    ) -> Result<AuthResponse, ApiError> {
        let fields = Fields::parse(request.header("content-type"), &request.body)?;
        let rd = self.redirect_target(request, Some(&fields));
        match self.create_account(request).await {
            Ok(user) => Ok(self.signed_up(request, user, &rd).await),
            Err(error @ ApiError::RegistrationClosed) => {
                Ok(self.render_registration_closed(request, error.status(), &rd))
            }
            Err(error) => {
                let text = |name| {
                    fields
                        .optional(name)
                        .ok()
                        .flatten()
                        .unwrap_or("")
                        .to_string()
                };
                let mut state = FormState {
                    email: text("email"),
                    username: text("username"),
                    full_name: text("full_name"),
                    ..FormState::default()
                };
                match &error {
                    ApiError::InvalidRequest(message) => {
                        let field = ["email", "password", "username", "full_name"]
                            .into_iter()
                            .find(|field| message.starts_with(field));
                        match field {
                            Some(field) => state.field_errors.push((field, sentence(message))),
                            None => state.alert = Some(sentence(message)),
                        }
                    }
                    ApiError::Conflict(field) => state
                        .field_errors
                        .push((field, format!("That {field} is already registered."))),
                    ApiError::EmailDomainNotAllowed(_) => state
                        .field_errors
                        .push(("email", sentence(&error.message()))),
                    ApiError::RegistrationsFromAddress(wait) => {
                        state.alert = Some(format!(
                            "Too many sign-ups from your network. Try again in {}.",
                            human_wait(*wait)
                        ))
                    }
                    other => state.alert = Some(login_problem(other)),
                }
                let mut response = self.render_register(request, error.status(), &state, &rd);
                if let Some(seconds) = error.retry_after() {
                    response.headers.push(("retry-after", seconds.to_string()));
                }
                Ok(response)
            }
        }
    }

    fn render_register(
        &self,
        request: &AuthRequest,
        status: u16,
        state: &FormState,
        rd: &str,
    ) -> AuthResponse {
        let csrf = self.csrf_token(request);
        let email_hint = self
            .access
            .load()
            .domains_rule()
            .map(|rule| format!("Use an address at {rule}."))
            .unwrap_or_default();
        let password_hint = format!("At least {} characters.", self.min_password_length);
        let email = Field::new("email", "Email", "email", "email")
            .value(&state.email)
            .hint(&email_hint);
        let password =
            Field::new("password", "Password", "password", "new-password").hint(&password_hint);
        let full_name = Field::new("full_name", "Full name (optional)", "text", "name")
            .value(&state.full_name)
            .optional();
        let username = Field::new("username", "Username (optional)", "text", "nickname")
            .value(&state.username)
            .hint("3 to 50 letters, digits, '.', '_' or '-'.")
            .optional();
        let body = format!(
            "<div class=\"card\">\n<h1>Create an account</h1>\n{alerts}\
             <form class=\"stack\" method=\"post\" action=\"/auth/register\" novalidate>\n\
             <input type=\"hidden\" name=\"csrf_token\" value=\"{token}\">\n\
             <input type=\"hidden\" name=\"rd\" value=\"{rd}\">\n{email}{password}{full_name}{username}\
             <button type=\"submit\">Create account</button>\n</form>\n\
             <p class=\"alt\">Already have an account? <a href=\"{login}\">Sign in</a></p>\n</div>",
            alerts = alerts(state),
            token = escape(&csrf.value),
            rd = escape(rd),
            email = form_field(state, email),
            password = form_field(state, password),
            full_name = form_field(state, full_name),
            username = form_field(state, username),
            login = escape(&format!("/auth/login?rd={}", url_encode(rd))),
        );
        self.pages
            .load()
            .page(status, "Create an account", &body, &csrf, false)
    }

    /// After a sign-up through the page: signed in like a sign-in through the page (a session
    /// cookie, then on to `rd`). Should opening the session fail, the account still exists:
    /// the sign-in page says so and takes over.
    async fn signed_up(&self, request: &AuthRequest, user: User, rd: &str) -> AuthResponse {
        match self.sign_in_new_account(request, user).await {
            Ok(api_response) => with_cookies_of(see_other(rd), api_response),
            Err(error) => {
                tracing::info!(error = %error.message(), "account created, but no session opened for it");
                see_other(&format!("/auth/login?registered=1&rd={}", url_encode(rd)))
            }
        }
    }

    /// The sign-up page while `access.registration` is `closed`: no form, a way to sign in.
    fn render_registration_closed(
        &self,
        request: &AuthRequest,
        status: u16,
        rd: &str,
    ) -> AuthResponse {
        let csrf = self.csrf_token(request);
        let body = format!(
            "<div class=\"card\">\n<h1>Sign-up is closed</h1>\n\
             <p>New accounts cannot be created here. If you need one, ask an administrator.</p>\n\
             <p class=\"alt\">Already have an account? <a href=\"{login}\">Sign in</a></p>\n</div>",
            login = escape(&format!("/auth/login?rd={}", url_encode(rd))),
        );
        self.pages
            .load()
            .page(status, "Sign-up is closed", &body, &csrf, false)
    }

    pub(super) async fn devices_page(
        &self,
        request: &AuthRequest,
    ) -> Result<AuthResponse, ApiError> {
        let Some((token, current)) = self.signed_in(request).await else {
            return Ok(see_other("/auth/login?rd=%2Fauth%2Fdevices"));
        };
        let notice = match Self::query_value(request, "ended").as_deref() {
            Some("one") => Some("The session was ended."),
            Some("others") => Some("All other sessions were ended."),
            _ => None,
        };
        let notice = match Self::query_value(request, "password").as_deref() {
            Some("changed") => {
                Some("Your password was changed. Every other session was signed out.")
            }
            _ => notice,
        };
        let state = FormState {
            notice: notice.map(str::to_string),
            ..FormState::default()
        };
        self.render_devices(request, 200, &token, &current, &state)
            .await
    }

    /// The account page: sessions, devices, sign-in locations and the change-password form.
    /// `state` holds the page's notice, and the change-password form's problems.
    async fn render_devices(
        &self,
        request: &AuthRequest,
        status: u16,
        token: &SessionToken,
        current: &LiveSession,
        state: &FormState,
    ) -> Result<AuthResponse, ApiError> {
        self.require_database()?;
        let user_id = current.data.user_id;
        let mut sessions = self.sessions.list(user_id).await?;
        sessions.sort_by_key(|session| std::cmp::Reverse(session.last_activity_ms));
        let devices = self.records.devices(user_id).await?;
        let ips = self.records.ips(user_id).await?;
        let csrf = self.csrf_token(request);
        let pages = self.pages.load();
        let back_link = pages
            .back_link
            .as_ref()
            .map(|link| {
                format!(
                    "<p class=\"back\"><a href=\"{}\"><span aria-hidden=\"true\">&larr; </span>{}</a></p>\n",
                    escape(&link.url),
                    escape(&link.label)
                )
            })
            .unwrap_or_default();
        let notice = FormState {
            notice: state.notice.clone(),
            ..FormState::default()
        };
        let body = format!(
            "<div class=\"card\">\n{back_link}<div class=\"toolbar\"><h1>Your devices and sessions</h1>\
             <form method=\"post\" action=\"/auth/logout\">{hidden}<button class=\"secondary\" type=\"submit\">Sign out</button></form></div>\n\
             <p class=\"hint\">Signed in as <strong>{email}</strong>.</p>\n{notice}\
             <h2>Active sessions ({count})</h2>\n<ul class=\"sessions\">\n{sessions}</ul>\n\
             <form method=\"post\" action=\"/auth/devices/revoke-others\">{hidden}\
             <button class=\"danger\" type=\"submit\"{disabled}>End all other sessions</button></form>\n\
             <h2>Devices</h2>\n{devices}\n<h2>Sign-in locations</h2>\n{ips}\n{password}</div>",
            hidden = hidden_csrf(&csrf),
            email = escape(&current.data.email),
            notice = alerts(&notice),
            count = sessions.len(),
            sessions = sessions
                .iter()
                .map(|session| session_item(session, current.data.id, &csrf))
                .collect::<String>(),
            disabled = if sessions.len() > 1 { "" } else { " disabled" },
            devices = devices_table(&devices, &sessions, current.data.device_id),
            ips = ips_table(&ips),
            password = self.change_password_section(state, &csrf),
        );
        let response = pages.page(status, "Devices", &body, &csrf, true);
        Ok(self.authenticated(response, token, current))
    }

    /// The change-password form, with the problems of the last attempt.
    fn change_password_section(&self, state: &FormState, csrf: &CsrfToken) -> String {
        let problem = FormState {
            alert: state.alert.clone(),
            ..FormState::default()
        };
        let new_password_hint = format!(
            "At least {} characters. Every other session is signed out.",
            self.min_password_length
        );
        let current = Field::new(
            "current_password",
            "Current password",
            "password",
            "current-password",
        );
        let new = Field::new("new_password", "New password", "password", "new-password")
            .hint(&new_password_hint);
        let confirm = Field::new(
            "confirm_password",
            "New password again",
            "password",
            "new-password",
        );
        format!(
            "<h2 id=\"change-password\">Change password</h2>\n{problem}\
             <form class=\"stack password\" method=\"post\" action=\"/auth/devices/password\" novalidate>\n\
             {hidden}\n{current}{new}{confirm}\
             <button type=\"submit\">Change password</button>\n</form>\n",
            problem = alerts(&problem),
            hidden = hidden_csrf(csrf),
            current = form_field(state, current),
            new = form_field(state, new),
            confirm = form_field(state, confirm),
        )
    }

    /// `POST /auth/devices/password` (form: `current_password`, `new_password`,
    /// `confirm_password`): the password change of `POST /auth/user/password`, which ends
    /// every other session; then back to the account page, saying what happened.
    pub(super) async fn devices_password_form(
        &self,
        request: &AuthRequest,
    ) -> Result<AuthResponse, ApiError> {
        let Some((token, current)) = self.signed_in(request).await else {
            return Ok(see_other("/auth/login?rd=%2Fauth%2Fdevices"));
        };
        let fields = Fields::parse(request.header("content-type"), &request.body)?;
        let mut state = FormState::default();
        // Problems of the form itself, found before the password check (which an empty
        // current password would count as a failed attempt).
        let new_password = fields.optional("new_password")?.unwrap_or("");
        if fields
            .optional("current_password")?
            .unwrap_or("")
            .is_empty()
        {
            state.field_errors.push((
                "current_password",
                "Current password is required.".to_string(),
            ));
        }
        if fields
            .optional("confirm_password")?
            .is_some_and(|confirm| confirm != new_password)
        {
            state.field_errors.push((
                "confirm_password",
                "The two new passwords are not the same.".to_string(),
            ));
        }
        if !state.field_errors.is_empty() {
            return self
                .render_devices(request, 400, &token, &current, &state)
                .await;
        }
        let error = match self.change_password(request).await {
            Ok(api_response) => {
                let response = see_other("/auth/devices?password=changed");
                return Ok(with_cookies_of(response, api_response));
            }
            Err(ApiError::Unauthenticated) => {
                return Ok(see_other("/auth/login?rd=%2Fauth%2Fdevices"))
            }
            Err(error) => error,
        };
        match &error {
            ApiError::InvalidRequest(message) => {
                let field = ["current_password", "new_password"]
                    .into_iter()
                    .find(|field| message.starts_with(field));
                match field {
                    Some(field) => state.field_errors.push((field, sentence(message))),
                    None => state.alert = Some(sentence(message)),
                }
            }
            ApiError::Locked(wait) => {
                state.alert = Some(format!(
                    "Too many wrong passwords for this account. Try again in {}.",
                    human_wait(*wait)
                ))
            }
            ApiError::LoginAttemptsFromAddress(wait) | ApiError::RateLimited(wait) => {
                state.alert = Some(format!(
                    "Too many password attempts from your network. Try again in {}.",
                    human_wait(*wait)
                ))
            }
            _ => {
                state.alert = Some(
                    "Changing the password is temporarily unavailable. Please try again in a \
                     moment."
                        .to_string(),
                )
            }
        }
        let mut response = self
            .render_devices(request, error.status(), &token, &current, &state)
            .await?;
        if let Some(seconds) = error.retry_after() {
            response.headers.push(("retry-after", seconds.to_string()));
        }
        Ok(response)
    }

    /// `POST /auth/devices/revoke` (form: `session_id`).
    pub(super) async fn devices_revoke_form(
        &self,
        request: &AuthRequest,
    ) -> Result<AuthResponse, ApiError> {
        let Some((_, current)) = self.signed_in(request).await else {
            return Ok(see_other("/auth/login?rd=%2Fauth%2Fdevices"));
        };
        let fields = Fields::parse(request.header("content-type"), &request.body)?;
        let session_id: Uuid = fields
            .required("session_id")?
            .parse()
            .map_err(|_| ApiError::InvalidRequest("session_id must be a UUID".to_string()))?;
        self.end_own_session(request, &current.data, session_id)
            .await?;
        if session_id == current.data.id {
            return Ok(see_other("/auth/login?signed_out=1")
                .with_header("set-cookie", self.sessions.clear_cookie()));
        }
        Ok(see_other("/auth/devices?ended=one"))
    }

    /// `POST /auth/devices/revoke-others`.
    pub(super) async fn devices_revoke_others_form(
        &self,
        request: &AuthRequest,
    ) -> Result<AuthResponse, ApiError> {
        let Some((_, current)) = self.signed_in(request).await else {
            return Ok(see_other("/auth/login?rd=%2Fauth%2Fdevices"));
        };
        self.revoke_others(request, &current.data, EndReason::SignedOutElsewhere)
            .await?;
        Ok(see_other("/auth/devices?ended=others"))
    }

    /// A form post to `/auth/logout`: sign out and go to the sign-in page.
    pub(super) async fn logout_form(
        &self,
        request: &AuthRequest,
    ) -> Result<AuthResponse, ApiError> {
        let response = match self.logout(request).await {
            Ok(_) | Err(ApiError::Unauthenticated) => see_other("/auth/login?signed_out=1"),
            Err(other) => return Err(other),
        };
        Ok(response.with_header("set-cookie", self.sessions.clear_cookie()))
    }

    /// The page shown when a form post fails the CSRF check, saying why (the origin the
    /// browser reported and the ones configured, when that was the reason).
    pub(super) fn csrf_failure_page(&self, request: &AuthRequest, reason: &str) -> AuthResponse {
        let csrf = self.csrf_token(request);
        let body = format!(
            "<div class=\"card\">\n<h1>This form was refused</h1>\n\
             <p>For your security the request was refused: {}.</p>\n\
             <p>Go back, reload the page and try again.</p>\n\
             <p class=\"alt\"><a href=\"/auth/login\">Back to sign in</a></p>\n</div>",
            escape(reason)
        );
        self.pages
            .load()
            .page(403, "Form refused", &body, &csrf, false)
    }

    pub(super) fn is_page_request(request: &AuthRequest) -> bool {
        request.method == Method::POST && csrf::is_form_content_type(request.header("content-type"))
    }
}

/// One labelled input of a form, with its hint and, from the [`FormState`], its error.
struct Field<'a> {
    name: &'static str,
    label: &'a str,
    kind: &'a str,
    autocomplete: &'a str,
    value: &'a str,
    hint: &'a str,
    required: bool,
}

impl<'a> Field<'a> {
    fn new(name: &'static str, label: &'a str, kind: &'a str, autocomplete: &'a str) -> Self {
        Self {
            name,
            label,
            kind,
            autocomplete,
            value: "",
            hint: "",
            required: true,
        }
    }

    fn value(self, value: &'a str) -> Self {
        Self { value, ..self }
    }

    fn hint(self, hint: &'a str) -> Self {
        Self { hint, ..self }
    }

    fn optional(self) -> Self {
        Self {
            required: false,
            ..self
        }
    }
}

/// The label, input, hint and error of `field`; the input points at its error (or hint).
fn form_field(state: &FormState, field: Field) -> String {
    let Field {
        name,
        label,
        kind,
        autocomplete,
        value,
        hint,
        required,
    } = field;
    // The first field with a problem takes the focus (and the page scrolls to it).
    let autofocus = state
        .field_errors
        .first()
        .is_some_and(|(first, _)| *first == name);
    let error = state.error_for(name);
    let described = match (error.is_some(), hint.is_empty()) {
        (true, _) => format!(" aria-invalid=\"true\" aria-describedby=\"{name}-error\""),
        (false, false) => format!(" aria-describedby=\"{name}-hint\""),
        (false, true) => String::new(),
    };
    let hint_html = if hint.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"hint\" id=\"{name}-hint\">{}</p>\n",
            escape(hint)
        )
    };
    let error_html = error
        .map(|message| {
            format!(
                "<p class=\"field-error\" id=\"{name}-error\">{}</p>\n",
                escape(message)
            )
        })
        .unwrap_or_default();
    format!(
        "<label for=\"{name}\">{label}</label>\n<input id=\"{name}\" name=\"{name}\" type=\"{kind}\" \
         autocomplete=\"{autocomplete}\"{required}{autofocus}{described} value=\"{value}\">\n{hint_html}{error_html}",
        label = escape(label),
        required = if required { " required" } else { "" },
        autofocus = if autofocus { " autofocus" } else { "" },
        value = escape(value),
    )
}

/// `response` carrying the cookies `api_response` sets (a form flow's redirect after the API
/// call it made).
fn with_cookies_of(mut response: AuthResponse, api_response: AuthResponse) -> AuthResponse {
    response.headers.extend(
        api_response
            .headers
            .into_iter()
            .filter(|(name, _)| *name == "set-cookie"),
    );
    response
}

fn see_other(location: &str) -> AuthResponse {
    AuthResponse {
        status: 303,
        content_type: None,
        headers: vec![("location", location.to_string())],
        body: Vec::new(),
    }
}

fn login_problem(error: &ApiError) -> String {
    match error {
        ApiError::InvalidCredentials => "Wrong email or password.".to_string(),
        ApiError::Locked(wait) => format!(
            "Too many failed sign-in attempts for this account. Try again in {}.",
            human_wait(*wait)
        ),
        ApiError::LoginAttemptsFromAddress(wait) | ApiError::RateLimited(wait) => format!(
            "Too many sign-in attempts from your network. Try again in {}.",
            human_wait(*wait)
        ),
        ApiError::InvalidRequest(message) => sentence(message),
        ApiError::AccountDisabled => "This account is disabled.".to_string(),
        ApiError::SessionLimit(_) => format!("{}.", error.message()),
        ApiError::CredentialsChanged => {
            "Your password or sessions changed while you were signing in. Please sign in again."
                .to_string()
        }
        _ => "Signing in is temporarily unavailable. Please try again in a moment.".to_string(),
    }
}

/// "email is required" → "Email is required."
fn sentence(message: &str) -> String {
    let message = message
        .replace("full_name", "full name")
        .replace("current_password", "current password")
        .replace("new_password", "new password");
    let mut chars = message.chars();
    let first = chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>())
        .unwrap_or_default();
    let text = format!("{first}{}", chars.as_str());
    if text.ends_with('.') {
        text
    } else {
        format!("{text}.")
    }
}

fn alerts(state: &FormState) -> String {
    let mut html = String::new();
    if let Some(notice) = &state.notice {
        html.push_str(&format!(
            "<div class=\"alert info\" role=\"status\">{}</div>\n",
            escape(notice)
        ));
    }
    if let Some(alert) = &state.alert {
        html.push_str(&format!(
            "<div class=\"alert error\" role=\"alert\">{}</div>\n",
            escape(alert)
        ));
    }
    html
}

fn hidden_csrf(csrf: &CsrfToken) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf_token\" value=\"{}\">",
        escape(&csrf.value)
    )
}

fn session_item(session: &LiveSession, current: Uuid, csrf: &CsrfToken) -> String {
    let is_current = session.data.id == current;
    let badge = if is_current {
        "<span class=\"badge current\">This device</span>"
    } else {
        ""
    };
    let location = session
        .data
        .location
        .as_deref()
        .unwrap_or("Unknown location");
    let button = if is_current {
        "Sign out here"
    } else {
        "End session"
    };
    format!(
        "<li><div><div class=\"what\">{device}{badge}</div>\
         <div class=\"meta\">{ip} · {location} · last used {last} · signed in {created}</div></div>\
         <form method=\"post\" action=\"/auth/devices/revoke\">{hidden}\
         <input type=\"hidden\" name=\"session_id\" value=\"{id}\">\
         <button class=\"danger\" type=\"submit\" aria-label=\"{button}: {device}\">{button}</button></form></li>\n",
        device = escape(&session.data.device_label),
        ip = escape(&session.data.ip.to_string()),
        location = escape(location),
        last = when(session.last_activity_ms),
        created = when(session.data.created_at_ms),
        hidden = hidden_csrf(csrf),
        id = session.data.id,
    )
}

fn devices_table(devices: &[Device], live: &[LiveSession], current: Option<Uuid>) -> String {
    if devices.is_empty() {
        return "<p class=\"hint\">No devices recorded yet.</p>".to_string();
    }
    let rows: String = devices
        .iter()
        .map(|device| {
            let active = live.iter().any(|s| s.data.device_id == Some(device.id));
            let status = if active {
                "<span class=\"badge active\">Active</span>"
            } else {
                "<span class=\"badge inactive\">Inactive</span>"
            };
            let this = if current == Some(device.id) {
                "<span class=\"badge current\">This device</span>"
            } else {
                ""
            };
            format!(
                "<tr><td data-label=\"Device\">{label}{this}</td><td data-label=\"Status\">{status}</td>\
                 <td data-label=\"First used\">{first}</td><td data-label=\"Last used\">{last}</td></tr>\n",
                label = escape(&device.label),
                first = stamp(device.first_seen),
                last = stamp(device.last_seen),
            )
        })
        .collect();
    format!(
        "<table><thead><tr><th>Device</th><th>Status</th><th>First used</th><th>Last used</th></tr></thead>\n<tbody>\n{rows}</tbody></table>"
    )
}

fn ips_table(ips: &[IpRecord]) -> String {
    if ips.is_empty() {
        return "<p class=\"hint\">No sign-ins recorded yet.</p>".to_string();
    }
    let rows: String = ips
        .iter()
        .map(|ip| {
            format!(
                "<tr><td data-label=\"Address\">{address}</td><td data-label=\"Location\">{location}</td>\
                 <td data-label=\"First used\">{first}</td><td data-label=\"Last used\">{last}</td></tr>\n",
                address = escape(&ip.address.to_string()),
                location = escape(ip.location.as_deref().unwrap_or("Unknown")),
                first = stamp(ip.first_seen),
                last = stamp(ip.last_seen),
            )
        })
        .collect();
    format!(
        "<table><thead><tr><th>Address</th><th>Location</th><th>First used</th><th>Last used</th></tr></thead>\n<tbody>\n{rows}</tbody></table>"
    )
}

fn stamp(at: DateTime<Utc>) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        at.to_rfc3339(),
        at.format("%Y-%m-%d %H:%M UTC")
    )
}

fn when(unix_ms: i64) -> String {
    Utc.timestamp_millis_opt(unix_ms)
        .single()
        .map(stamp)
        .unwrap_or_default()
}

fn url_encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The page a browser gets on a route whose allow list does not name the signed-in user
/// (403; API clients get the JSON error instead).
impl Pages {
    pub fn access_denied(&self, error: &ApiError) -> AuthResponse {
        let body = format!(
            "<h1>Access denied</h1>\n<p class=\"alert\" role=\"alert\">{message}</p>\n\
             <p><a href=\"/auth/devices\">Your account</a> · \
             <a href=\"/auth/login\">Sign in with another account</a></p>",
            message = escape(&error.message()),
        );
        let no_forms = CsrfToken {
            value: String::new(),
            fresh: false,
        };
        self.page(error.status(), "Access denied", &body, &no_forms, false)
    }
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(
            escape("<script>\"x\"&'y'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"
        );
    }

    #[test]
    fn messages_read_as_sentences() {
        assert_eq!(sentence("email is required"), "Email is required.");
        assert_eq!(
            sentence("full_name must be short"),
            "Full name must be short."
        );
    }
}
