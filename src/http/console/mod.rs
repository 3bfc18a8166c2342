//! The browser console's server side: its routes (merged into every HTTP producer's
//! router, and served alone by `edaflow run --console`), its login cookie, and who this
//! process is.
//!
//! `GET /` and `GET /console/assets/…` serve the embedded page (`assets`) and need no
//! token: the shell holds no data. `POST /console/login` checks the token once and sets it
//! as the `edaflow_console` cookie (HttpOnly, SameSite=Strict); `ApiState::authorize`
//! accepts that cookie wherever it accepts `Authorization: Bearer`, and
//! `ApiState::authorize_change` also wants `X-Edaflow-Console: 1` on a change authorised
//! by the cookie alone (a cross-site form cannot set that header). `GET /console/model`
//! is the running flow set as a graph (`model`), `GET /console/stream` the live figures
//! (`stream`).
//!
//! The cookie carries no `Secure` flag: the console is plain HTTP, meant for loopback or a
//! trusted network (behind a TLS proxy, the proxy may add it). Nothing here logs the token
//! or a login body.

mod assets;
pub(crate) mod files;
mod model;
mod stream;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use crate::broker::Broker;
use crate::http::cloudevents::is_json_type;
use crate::http::ingest::read_body;
use crate::http::{ApiError, ApiState};

/// The cookie `POST /console/login` sets.
pub(crate) const COOKIE: &str = "edaflow_console";

/// The header a change authorised by the cookie alone must carry, with the value `1`.
pub(crate) const CHANGE_HEADER: &str = "x-edaflow-console";

/// A login body is a token in a small JSON object: nothing bigger is read.
const LOGIN_BODY_LIMIT: usize = 4096;

/// The console's routes, for the HTTP producer's router and the `--console` listener.
pub(crate) fn routes<B: Broker>() -> Router<Arc<ApiState<B>>> {
    Router::new()
        .route("/", get(assets::index))
        .route("/console/assets/{*path}", get(assets::asset))
        .route("/console/login", post(login::<B>))
        .route("/console/logout", post(logout))
        .route("/console/model", get(model::model::<B>))
        .route("/console/stream", get(stream::stream::<B>))
        .merge(files::routes::<B>())
}

/// The token the `edaflow_console` cookie carries, if the request has one (the last, when
/// several are sent).
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let (name, value) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (name == COOKIE.as_bytes()).then(|| decode_cookie(&value[1..]))
        })
        .next_back()
}

/// A token as a cookie value: tokens are visible ASCII, of which a cookie value cannot
/// hold `"`, `,`, `;` and `\`; those (and `%`) are percent-encoded. Any other token is
/// its own cookie value.
fn encode_cookie(token: &str) -> String {
    let mut value = String::with_capacity(token.len());
    for byte in token.bytes() {
        if matches!(byte, b'"' | b',' | b';' | b'\\' | b'%') {
            value.push_str(&format!("%{byte:02X}"));
        } else {
            value.push(char::from(byte));
        }
    }
    value
}

/// The token of a cookie value (`encode_cookie` undone; a stray `%` stays as it is).
fn decode_cookie(value: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut token = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let escaped = (value[i] == b'%')
            .then(|| Some((hex(*value.get(i + 1)?)?, hex(*value.get(i + 2)?)?)))
            .flatten();
        match escaped {
            Some((high, low)) => {
                // Two hex digits: at most 0xFF.
                token.push(u8::try_from(high * 16 + low).unwrap_or(u8::MAX));
                i += 3;
            }
            None => {
                token.push(value[i]);
                i += 1;
            }
        }
    }
    token
}

/// The body of `POST /console/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// `POST /console/login` with `{"token": "…"}`: 204 and the cookie when it is the token
/// (204 alone when no token is set: everything is open), 401 when it is not.
async fn login<B: Broker>(
    State(state): State<Arc<ApiState<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let text = String::from_utf8_lossy(content_type.as_bytes());
        if !is_json_type(&text) {
            return Err(ApiError::UnsupportedMediaType {
                content_type: text.into_owned(),
            });
        }
    }
    let bytes = read_body(&headers, body, LOGIN_BODY_LIMIT).await?;
    // serde_json's messages name the place and the kind of mistake, never the input.
    let login: Login = serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidJson {
        detail: format!("{e} (the body is {{\"token\": \"…\"}})"),
    })?;
    let Some(token) = &state.config.token else {
        return Ok(no_content(None));
    };
    if !token.matches(login.token.as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        encode_cookie(token.expose())
    );
    Ok(no_content(Some(cookie)))
}

/// `POST /console/logout`: 204, clearing the cookie.
async fn logout() -> Response {
    no_content(Some(format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
    )))
}

/// A 204 that is never cached, setting `cookie` if given.
fn no_content(cookie: Option<String>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::COOKIE,
                HeaderValue::from_str(value).expect("a header value"),
            );
        }
        headers
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let headers = cookies(&["theme=dark; edaflow_console=s3cret ; other=1"]);
        assert_eq!(cookie_token(&headers).as_deref(), Some(&b"s3cret"[..]));
        let headers = cookies(&["a=1", "edaflow_console=x=y"]);
        assert_eq!(cookie_token(&headers).as_deref(), Some(&b"x=y"[..]));
        assert_eq!(cookie_token(&cookies(&["edaflow_consolex=1"])), None);
        assert_eq!(cookie_token(&cookies(&["edaflow_console"])), None);
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }

    #[test]
    fn tokens_a_cookie_cannot_hold_are_escaped_and_read_back() {
        for token in [
            "plain-token_1",
            "semi;colon",
            "quo\"te,comma\\back",
            "100%",
            "%41",
        ] {
            let value = encode_cookie(token);
            assert!(
                !value.contains([';', ',', '"', '\\', ' ']),
                "{token:?} as {value:?}"
            );
            assert_eq!(decode_cookie(value.as_bytes()), token.as_bytes(), "{value}");
        }
        assert_eq!(encode_cookie("plain-token_1"), "plain-token_1");
        assert_eq!(decode_cookie(b"50%"), b"50%");
    }
}
