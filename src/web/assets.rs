//! The UI's static files, built into the binary from `web/` by `build.rs`. Served with their
//! content type, an ETag (304 on a match; `Cache-Control: no-cache` so a browser revalidates
//! and always runs the daemon's own UI), and gzip when the browser takes it and it pays.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;

mod table {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// Every embedded file: (path under `web/`, bytes).
pub fn all() -> &'static [(&'static str, &'static [u8])] {
    table::ASSETS
}

struct Prepared {
    etag: String,
    gzip: Option<Vec<u8>>,
}

fn prepared() -> &'static Vec<Prepared> {
    static P: OnceLock<Vec<Prepared>> = OnceLock::new();
    P.get_or_init(|| {
        all()
            .iter()
            .map(|(path, bytes)| {
                let d = ring::digest::digest(&ring::digest::SHA256, bytes);
                let etag = format!(
                    "\"{}\"",
                    d.as_ref()[..12]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                );
                let gzip = (compressible(path) && bytes.len() > 1024)
                    .then(|| gzip(bytes))
                    .filter(|z| z.len() < bytes.len());
                Prepared { etag, gzip }
            })
            .collect()
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let _ = z.write_all(bytes);
    z.finish().unwrap_or_default()
}

fn compressible(path: &str) -> bool {
    !matches!(
        ext(path),
        "png" | "jpg" | "jpeg" | "gif" | "webp" | "woff" | "woff2" | "gz" | "br"
    )
}

fn ext(path: &str) -> &str {
    path.rsplit_once('.').map(|(_, e)| e).unwrap_or("")
}

/// The content type for a file name.
pub fn content_type(path: &str) -> &'static str {
    match ext(path) {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(i) = all().iter().position(|(p, _)| *p == path) else {
        return super::error(StatusCode::NOT_FOUND, format!("no file /{path}"));
    };
    let bytes = all()[i].1;
    let p = &prepared()[i];
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if let Ok(v) = HeaderValue::from_str(&p.etag) {
        h.insert(header::ETAG, v);
    }
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == p.etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    let takes_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|e| e.trim().split(';').next() == Some("gzip") && !e.contains("q=0"))
        });
    match &p.gzip {
        Some(z) if takes_gzip => {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            (h, z.clone()).into_response()
        }
        _ => (h, bytes).into_response(),
    }
}

/// `GET /`: `web/index.html`.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /<path>`: an embedded file. Only names in the table are served; nothing a client
/// sends reaches the filesystem.
pub async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    if path.starts_with("api/") || path == "api" {
        return super::error(StatusCode::NOT_FOUND, format!("no API route /{path}"));
    }
    serve(&path, &headers)
}
