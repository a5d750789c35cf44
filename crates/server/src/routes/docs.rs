//! `GET /docs`: the OpenAPI document (`/openapi.json`) in a viewer that needs nothing but
//! this server.
//!
//! The viewer is RapiDoc (`crates/server/assets/docs/`, with its licence and where it came
//! from), embedded in the binary and served from here, so the page works offline and behind
//! a firewall, and nothing about who reads the docs reaches another host. The page says so
//! to the browser too: its Content-Security-Policy allows loading from this server alone,
//! and RapiDoc is told not to fetch its web font (`load-fonts="false"`).
//!
//! The script's path carries its version, so it can be cached for good
//! (`immutable`): a new viewer is a new path. Everything else keeps the `no-store` every
//! answer carries.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The viewer's version, in its paths (a macro, so the paths and the page are literals).
macro_rules! viewer_version {
    () => {
        "9.3.8"
    };
}
macro_rules! script_path {
    () => {
        concat!("/docs/rapidoc-", viewer_version!(), ".min.js")
    };
}

/// Where the page loads the viewer's script from.
pub(crate) const SCRIPT_PATH: &str = script_path!();
/// The licences of the viewer and of what it bundles.
pub(crate) const LICENSE_PATH: &str = concat!(script_path!(), ".LICENSE.txt");

const SCRIPT: &[u8] = include_bytes!("../../assets/docs/rapidoc-min.js");
const LICENSES: &str = concat!(
    include_str!("../../assets/docs/LICENSE"),
    "\n\nWhat the script bundles:\n\n",
    include_str!("../../assets/docs/rapidoc-min.js.LICENSE.txt"),
);

/// What the page may load: this server's own script, the document and the API calls its
/// "try it" console makes; inline styles (the viewer's web components set them) and
/// `data:` images (its icons). Nothing from any other host.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

const PAGE: &str = concat!(
    r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sie API</title>
<script type="module" src=""#,
    script_path!(),
    r#""></script>
</head>
<body>
<rapi-doc spec-url="/openapi.json" load-fonts="false" regular-font="system-ui, sans-serif"
  mono-font="ui-monospace, monospace" show-header="false" allow-spec-url-load="false"
  allow-spec-file-load="false" allow-server-selection="false" render-style="read"
  schema-description-expanded="true"></rapi-doc>
<noscript>The API's OpenAPI document is at <a href="/openapi.json">/openapi.json</a>.</noscript>
</body>
</html>
"#
);

/// `GET /docs`: the viewer's page.
#[utoipa::path(
    summary = "This document, in a viewer",
    get,
    path = "/docs",
    operation_id = "docs",
    tag = "documentation",
    responses((status = 200, description = "The page that shows `/openapi.json`, with a \
        Content-Security-Policy that allows only this server.", content_type = "text/html",
        body = String, headers(("Content-Security-Policy" = String)))),
)]
pub(crate) async fn page() -> Response {
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        PAGE,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /docs/rapidoc-{version}.min.js`: the viewer, cached for good.
#[utoipa::path(
    summary = "The viewer's script",
    get,
    path = SCRIPT_PATH,
    operation_id = "docsScript",
    tag = "documentation",
    responses((status = 200, description = "The viewer's script (RapiDoc), immutable at this \
        path.", content_type = "text/javascript", body = String,
        headers(("Cache-Control" = String)))),
)]
pub(crate) async fn script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        SCRIPT,
    )
        .into_response()
}

/// `GET /docs/rapidoc-{version}.min.js.LICENSE.txt`: the viewer's licences.
#[utoipa::path(
    summary = "The viewer's licences",
    get,
    path = LICENSE_PATH,
    operation_id = "docsLicense",
    tag = "documentation",
    responses((status = 200, description = "The licences of the viewer and of what it \
        bundles.", content_type = "text/plain", body = String)),
)]
pub(crate) async fn license() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        LICENSES,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_the_paths_name_the_vendored_version() {
        assert!(PAGE.contains(&format!("src=\"{SCRIPT_PATH}\"")));
        assert!(SCRIPT_PATH.contains(viewer_version!()));
        assert!(LICENSE_PATH.starts_with(SCRIPT_PATH));
        let banner = concat!("RapiDoc ", viewer_version!(), " ");
        assert!(SCRIPT.starts_with(format!("/*! {banner}").as_bytes()));
    }
}
