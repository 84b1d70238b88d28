//! `GET /dashboard`: the live dashboard, served by `ratelimitd` itself. HTML, CSS and
//! JavaScript are embedded in the binary (no CDN, no build step). An admin token is
//! exchanged at the login form for a session cookie (HttpOnly, SameSite=Strict, Secure
//! behind TLS, 8 h); the page then reads the admin API with that cookie, and every
//! state-changing call carries the session's anti-CSRF token. Wrong tokens count against
//! the same per-peer budget as the admin API's.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderName, HeaderValue, LOCATION,
    SET_COOKIE,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use subtle::ConstantTimeEq;

use super::auth::{self, COOKIE, Refused, SESSION};
use crate::state::AppState;

const PAGE: &str = include_str!("page.html");
const LOGIN: &str = include_str!("login.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Only this origin's own files, never in a frame.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The dashboard's routes (none behind the admin API's token check: they open sessions).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/login", get(login_form).post(login))
        .route("/dashboard/logout", axum::routing::post(logout))
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(kind)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn to_login() -> Response {
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, HeaderValue::from_static("/dashboard/login"))],
    )
        .into_response()
}

/// The page with the session's anti-CSRF token, or a redirect to the login form.
async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(auth) = state.admin.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match auth::session_cookie(&headers).and_then(|c| auth.session(c)) {
        // The token is 64 hex digits: nothing to escape.
        Some(session) => html(StatusCode::OK, PAGE.replace("{{csrf}}", &session.csrf)),
        None => to_login(),
    }
}

fn login_page(status: StatusCode, message: &str) -> Response {
    html(status, LOGIN.replace("{{message}}", message))
}

async fn login_form() -> Response {
    login_page(StatusCode::OK, "")
}

/// `POST /dashboard/login` (a form with `token`): a session cookie and the page, or the
/// form again saying why. The token is never logged or shown.
async fn login(State(state): State<AppState>, request: Request) -> Response {
    let Some(auth) = state.admin.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let peer = auth::peer_of(&request);
    let secure = request
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let body = match axum::body::to_bytes(request.into_body(), 8 * 1024).await {
        Ok(body) => body,
        Err(_) => return login_page(StatusCode::PAYLOAD_TOO_LARGE, "The form was too large."),
    };
    let token = form_field(&body, "token");
    match auth
        .attempt(peer, token.as_deref().map(str::as_bytes))
        .await
    {
        Ok(name) => {
            let Some((cookie, _)) = auth.open(name) else {
                return login_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "No session could be opened; try again.",
                );
            };
            let mut value = format!(
                "{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                SESSION.as_secs()
            );
            if secure {
                value.push_str("; Secure");
            }
            let mut response = (
                StatusCode::SEE_OTHER,
                [(LOCATION, HeaderValue::from_static("/dashboard"))],
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(SET_COOKIE, v);
            }
            response
        }
        Err(Refused::Wrong) => login_page(StatusCode::UNAUTHORIZED, "That is not an admin token."),
        Err(Refused::TooMany(secs)) => {
            let mut response = login_page(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed attempts from this address; wait before trying again.",
            );
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
            response
        }
    }
}

/// `POST /dashboard/logout` (with the anti-CSRF token as a form field): ends the session.
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let (Some(auth), Some(cookie)) = (state.admin.as_deref(), auth::session_cookie(&headers))
        && let Some(session) = auth.session(cookie)
        && form_field(&body, "csrf")
            .is_some_and(|c| bool::from(c.as_bytes().ct_eq(session.csrf.as_bytes())))
    {
        auth.close(cookie);
    }
    let mut response = to_login();
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&clear) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response
}

/// One field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}
