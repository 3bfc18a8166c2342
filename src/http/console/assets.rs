//! The console's page, embedded in the binary: a fixed list of files from `console/`, each
//! served with its content type, `Cache-Control: no-cache` and an `ETag` (the hash of its
//! bytes), so a browser revalidates and gets a `304` while the binary is the same. No
//! file is read from disk and no other path is served: an unknown asset is the JSON 404.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::http::{shown_path, ApiError};

/// One embedded file: its path under `console/` and its bytes.
struct Asset {
    path: &'static str,
    bytes: &'static [u8],
}

macro_rules! assets {
    ($($path:literal),* $(,)?) => {
        [$(Asset { path: $path, bytes: include_bytes!(concat!("../../../console/", $path)) }),*]
    };
}

/// Every file of the page (the contract between the server and the page fixes the list).
static ASSETS: [Asset; 13] = assets![
    "index.html",
    "console.css",
    "js/app.js",
    "js/api.js",
    "js/graph.js",
    "js/layout.js",
    "js/component.js",
    "js/tail.js",
    "js/journey.js",
    "js/queues.js",
    "js/editor.js",
    "js/highlight.js",
    "js/health.js",
];

/// `GET /`: the page.
pub(super) async fn index(headers: HeaderMap) -> Response {
    // The list starts with index.html.
    serve(0, &headers)
}

/// `GET /console/assets/{*path}`.
pub(super) async fn asset(
    Path(path): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    match ASSETS.iter().position(|a| a.path == path) {
        Some(i) => serve(i, &headers),
        None => ApiError::NotFound {
            method: method.to_string(),
            path: shown_path(uri.path()),
        }
        .into_response(),
    }
}

/// Answers with asset `i`, or `304` when the client holds it already.
fn serve(i: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|tag| {
            let tag = tag.trim_ascii();
            tag == b"*" || tag.strip_prefix(b"W/").unwrap_or(tag) == etag.as_bytes()
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.bytes.into_response()
    };
    let answer = response.headers_mut();
    answer.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(asset.path)),
    );
    answer.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        answer.insert(header::ETAG, value);
    }
    answer.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The page is never to be framed by another site (clickjacking the admin buttons).
    answer.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    answer.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The content type of an asset, by its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Each asset's `ETag`: `"` + the FNV-1a hash of its bytes in hex + `"`.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let hash = asset.bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
                });
                format!("\"{hash:016x}\"")
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_type_and_its_own_tag() {
        assert_eq!(ASSETS[0].path, "index.html");
        for asset in &ASSETS {
            assert_ne!(
                content_type(asset.path),
                "application/octet-stream",
                "{}",
                asset.path
            );
        }
        let tags = etags();
        assert_eq!(tags.len(), ASSETS.len());
        assert!(tags.iter().all(|t| t.len() == 18 && t.starts_with('"')));
    }

    #[test]
    fn a_known_tag_is_not_sent_again() {
        let mut headers = HeaderMap::new();
        assert_eq!(serve(2, &headers).status(), StatusCode::OK);
        let tag = etags()[2].clone();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"other\", W/{tag}")).expect("a header value"),
        );
        let response = serve(2, &headers);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG].as_bytes(), tag.as_bytes());
    }
}
