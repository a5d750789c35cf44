//! The OpenAPI 3.1 documents: the public API at `GET /openapi.json`, the worker protocol at
//! `GET /openapi/worker.json`.
//!
//! Both are generated, never written by hand: each handler carries a `#[utoipa::path]`
//! beside its code, naming the types it reads and answers, and those types derive their
//! schemas in `sie_api` (`sie_api::schema` has what a derive cannot know: ranges, the
//! vocabulary's names). What is shared by every route because a layer does it, not the
//! handler (the 408, 414 and 431 refusals, a 500, `X-Request-Id`, the rate limit's
//! headers), is added here once by [`Layers`], so it is said in one place as it is done in
//! one place.
//!
//! The worker protocol is a second document, not a tag of the first: its callers are `sie
//! worker` processes holding a worker token, never the API's clients, so a client's
//! generated SDK, the `/docs` page and the CI's fuzzing of the public API leave it out;
//! and its lease call long-polls for up to 30 s, which would stall a fuzzer. The portal's
//! HTML pages (`/portal`) are in neither: they answer people, not programs.
//!
//! Each document is built once, on first request, and served from memory.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response as ResponseDoc, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Required};
use utoipa::{IntoParams, Modify, OpenApi, ToResponse, ToSchema};

use sie_api::Problem;

/// The public API's document (SPEC 1).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sie: Stable Diffusion 2.1 inference endpoint",
        description = "SaladCloud's SIE API for Stable Diffusion 2.1, self-hosted. \
            Every error is an RFC 7807 problem document (`application/problem+json`) with a \
            stable `code`. A method a route does not take is refused with 405 (its `Allow` \
            header lists those it takes); a path that is no route with 404. Every answer \
            carries `X-Request-Id`, `X-Content-Type-Options: nosniff` and (but the docs \
            viewer's script) `Cache-Control: no-store`. The worker protocol (`/worker/v1`) \
            is documented at `/openapi/worker.json`; the portal's pages (`/portal`) are not \
            part of the API.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        super::tasks::post::create,
        super::tasks::list::list,
        super::tasks::get::get,
        super::tasks::delete::cancel,
        super::usage::usage,
        super::health::healthz,
        super::health::readyz,
        crate::metrics::metrics,
        openapi_json,
        worker_openapi_json,
        super::docs::page,
        super::docs::script,
        super::docs::license,
    ),
    components(
        schemas(Problem),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            MethodNotAllowed,
            RequestTimeout,
            PayloadTooLarge,
            UriTooLong,
            UnsupportedMediaType,
            IdempotencyKeyReused,
            TooManyRequests,
            HeadersTooLarge,
            InternalError,
            ServiceUnavailable,
        )
    ),
    modifiers(&Layers),
    tags(
        (name = "tasks", description = "Create, read, list and cancel image tasks (SPEC 1.1-1.3)."),
        (name = "usage", description = "An organization's use, per day."),
        (name = "operations", description = "Health, readiness and metrics, without a key."),
        (name = "documentation", description = "This document and its viewer."),
    )
)]
pub(crate) struct PublicApi;

/// The worker protocol's document (`docs/worker-protocol.md`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sie worker protocol",
        description = "What `sie worker` nodes and an API node say to each other under \
            `/worker/v1`, with a worker token (`sie admin worker-token create NAME`). Every \
            call for a task names its `attempt`; a call for an attempt that no longer holds \
            the task is 409 `lease_lost`, and the worker drops the task.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        super::worker::lease,
        super::worker::heartbeat,
        super::worker::complete,
        super::worker::fail,
        super::worker::release,
    ),
    components(
        schemas(Problem),
        responses(
            BadRequest,
            WorkerUnauthorized,
            WorkerNotFound,
            LeaseLost,
            RequestTimeout,
            PayloadTooLarge,
            UriTooLong,
            HeadersTooLarge,
            InternalError,
        )
    ),
    modifiers(&Layers),
)]
pub(crate) struct WorkerApi;

/// The name of the security scheme of the API key (`Salad-Api-Key`).
pub(crate) const API_KEY: &str = "api_key";
/// The name of the security scheme of the worker token.
pub(crate) const WORKER_TOKEN: &str = "worker_token";

/// `GET /openapi.json`: this document.
#[utoipa::path(
    summary = "This document",
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "documentation",
    responses((status = 200, description = "The public API's OpenAPI 3.1 document.", content_type = "application/json", body = Object)),
)]
pub(crate) async fn openapi_json() -> Response {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    json(DOCUMENT.get_or_init(|| render(PublicApi::openapi())))
}

/// `GET /openapi/worker.json`: the worker protocol's document.
#[utoipa::path(
    summary = "The worker protocol's document",
    get,
    path = "/openapi/worker.json",
    operation_id = "workerOpenapi",
    tag = "documentation",
    responses((status = 200, description = "The worker protocol's OpenAPI 3.1 document.", content_type = "application/json", body = Object)),
)]
pub(crate) async fn worker_openapi_json() -> Response {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    json(DOCUMENT.get_or_init(|| render(WorkerApi::openapi())))
}

fn json(bytes: &Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes.clone(),
    )
        .into_response()
}

/// The document as served: what utoipa's model cannot say added (headers a response always
/// carries are `required`; the 202's links, which utoipa 5 spells with snake-case keys),
/// pretty-printed for people reading it raw.
fn render(document: utoipa::openapi::OpenApi) -> Bytes {
    let mut value = serde_json::to_value(&document).unwrap_or(Value::Null);
    require_headers(&mut value);
    link_created_task(&mut value);
    Bytes::from(serde_json::to_vec_pretty(&value).unwrap_or_default())
}

/// The 202's links: the `requestId` it answers is the `{id}` of `getTask` and `cancelTask`
/// (what a client does next, and what a fuzzer's stateful phase follows).
fn link_created_task(value: &mut Value) {
    let Some(created) = value
        .pointer_mut("/paths")
        .and_then(|paths| paths.get_mut(crate::BASE))
        .and_then(|item| item.pointer_mut("/post/responses/202"))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let link = |operation: &str| {
        serde_json::json!({
            "operationId": operation,
            "parameters": {"org": "$request.path.org", "id": "$response.body#/requestId"},
            "description": "The task this answer created.",
        })
    };
    created.insert(
        "links".into(),
        serde_json::json!({"GetTask": link("getTask"), "CancelTask": link("cancelTask")}),
    );
}

/// Marks `required` the headers that are on every answer they are documented on:
/// `X-Request-Id` (the outermost layer sets it) and a 429's `Retry-After`.
fn require_headers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let is_429 = map.get("description").and_then(Value::as_str) == Some(TOO_MANY);
            if let Some(Value::Object(headers)) = map.get_mut("headers") {
                for (name, header) in headers.iter_mut() {
                    let always = name == REQUEST_ID || (is_429 && name == "Retry-After");
                    if always {
                        header["required"] = Value::Bool(true);
                    }
                }
            }
            map.values_mut().for_each(require_headers);
        }
        Value::Array(items) => items.iter_mut().for_each(require_headers),
        _ => {}
    }
}

const REQUEST_ID: &str = "X-Request-Id";
const TOO_MANY: &str = "Over a rate limit (`rate_limited`, per key and per organization) or \
    a queue cap (`queue_full`, per organization or for the whole endpoint). Retry after \
    `Retry-After` seconds.";

/// What the layers around every route add: the security schemes, the refusals any request
/// can meet before or around its handler, the headers every answer carries, and the create-
/// task body's closed objects.
struct Layers;

impl Modify for Layers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Salad-Api-Key",
                "An API key (`sie admin key create`, or the portal). Without one, the \
                 portal's session cookie in the same browser is accepted, its POST and \
                 DELETE carrying the session's `X-CSRF-Token` header.",
            ))),
        );
        components.add_security_scheme(
            WORKER_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("siew_…")
                    .description(Some(
                        "A worker token (`sie admin worker-token create NAME`).",
                    ))
                    .build(),
            ),
        );
        for (_, item) in openapi.paths.paths.iter_mut() {
            for operation in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                add_layer_refusals(operation);
                let keyed = serde_json::to_value(&operation.security)
                    .is_ok_and(|v| v.to_string().contains(API_KEY));
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        add_request_id(response);
                        if keyed {
                            for (name, schema, description) in rate_limit_headers() {
                                response.headers.insert(
                                    name.to_owned(),
                                    HeaderBuilder::new()
                                        .schema(schema)
                                        .description(Some(description))
                                        .build(),
                                );
                            }
                        }
                    }
                }
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        for response in components.responses.values_mut() {
            if let RefOr::T(response) = response {
                add_request_id(response);
            }
        }
        // The security schemes only the document that uses them keeps.
        let used: Vec<String> = openapi
            .paths
            .paths
            .values()
            .flat_map(|item| [&item.get, &item.post, &item.delete])
            .flatten()
            .flat_map(|op| op.security.iter().flatten())
            .filter_map(|requirement| serde_json::to_value(requirement).ok())
            .filter_map(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
            .flatten()
            .collect();
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .security_schemes
            .retain(|name, _| used.contains(name));
        sie_api::schema::close_request_objects(openapi);
    }
}

/// The refusals the layers make on any route: 400 (a second `Host`, a malformed head), 408
/// (request or body timeout), 414, 431, and a 500 (a panic, or the store failing).
fn add_layer_refusals(operation: &mut Operation) {
    for (status, name) in [
        ("400", "BadRequest"),
        ("408", "RequestTimeout"),
        ("414", "UriTooLong"),
        ("431", "HeadersTooLarge"),
        ("500", "InternalError"),
    ] {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    }
}

fn add_request_id(response: &mut ResponseDoc) {
    response
        .headers
        .entry(REQUEST_ID.to_owned())
        .or_insert_with(|| {
            HeaderBuilder::new()
                .schema(string())
                .description(Some(
                    "This request's id, as the server's log lines carry it (the client's own \
                 when it sent a short one of letters, digits and `-_.:`).",
                ))
                .build()
        });
}

/// `{org}`: the organization's name (SPEC's `orgName`).
pub(crate) struct OrgParam;

impl IntoParams for OrgParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![path_param(
            "org",
            string(),
            "The organization's name (`orgName`); `sie serve` makes `default`.",
        )
        .example(Some("default".into()))
        .build()]
    }
}

/// `{id}`: a task's `requestId`.
pub(crate) struct TaskIdParam;

impl IntoParams for TaskIdParam {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![path_param(
            "id",
            string().format(Some(SchemaFormat::Custom("uuid".into()))),
            "The task's `requestId`, as the 202 gave it; anything else is 404.",
        )
        .build()]
    }
}

fn path_param(name: &str, schema: ObjectBuilder, description: &str) -> ParameterBuilder {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(schema))
        .description(Some(description))
}

/// A query parameter: an integer from 1 to `max`, `default` when left out.
pub(crate) fn page_param(name: &str, default: u32, max: u32, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(max))
                .default(Some(default.into())),
        ))
        .description(Some(description))
        .build()
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn integer() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
}

/// A problem document answer, with `headers`.
fn problem(description: &str, headers: Vec<(&str, ObjectBuilder, &str)>) -> RefOr<ResponseDoc> {
    let mut response = ResponseBuilder::new().description(description).content(
        Problem::CONTENT_TYPE,
        Content::new(Some(RefOr::Ref(Ref::from_schema_name(Problem::name())))),
    );
    for (name, schema, description) in headers {
        response = response.header(
            name,
            HeaderBuilder::new()
                .schema(schema)
                .description(Some(description))
                .build(),
        );
    }
    RefOr::T(response.build())
}

/// The `RateLimit-*` headers, on every answer of a route that takes a key once the caller
/// is known.
fn rate_limit_headers() -> [(&'static str, ObjectBuilder, &'static str); 3] {
    [
        (
            "RateLimit-Limit",
            integer(),
            "Requests the nearer of the caller's limits (per key, per organization) allows \
             at once.",
        ),
        ("RateLimit-Remaining", integer(), "Requests left of it now."),
        (
            "RateLimit-Reset",
            integer(),
            "Seconds until it is full again.",
        ),
    ]
}

/// One problem answer per status, each a response component the routes refer to.
macro_rules! problem_responses {
    ($($name:ident => $description:expr $(, [$($header:expr),*])?;)*) => {$(
        pub(crate) struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<ResponseDoc>) {
                #[allow(unused_mut)]
                let mut headers: Vec<(&str, ObjectBuilder, &str)> = Vec::new();
                $($(headers.extend($header);)*)?
                (stringify!($name), problem($description, headers))
            }
        }
    )*};
}

problem_responses! {
    BadRequest => "The request is malformed: bad JSON (with its line and column), a field \
        of the wrong type or out of range (`field` names it, `detail` says what is \
        accepted), an unknown or repeated key, an image that does not decode, a pipeline, \
        scheduler or safety checker this endpoint does not have, a bad header (a second \
        `Host`, key or `Idempotency-Key`; a malformed head).";
    Unauthorized => "No API key (`missing_api_key`), or one that is unknown or revoked \
        (`invalid_api_key`).";
    Forbidden => "The organization has no billing information yet \
        (`organization_not_approved`), or a portal session's POST or DELETE lacks its \
        `X-CSRF-Token` (`invalid_csrf_token`).";
    NotFound => "No such organization visible to this key (`unknown_organization`), no such \
        task in it or its result expired (`unknown_task`), or no such route (`not_found`).";
    MethodNotAllowed => "The route does not take this method (`method_not_allowed`); the \
        `Allow` header lists those it does.",
        [[("Allow", string(), "The methods the route takes.")]];
    RequestTimeout => "The request, its body included, took longer than the request timeout \
        (`request_timeout`), or its body paused longer than the body timeout \
        (`body_timeout`), or its head arrived too slowly.";
    PayloadTooLarge => "The body is over the limit (`body_too_large`; 20 MiB for a task).";
    UriTooLong => "The URL is over 8 KiB (`uri_too_long`).";
    UnsupportedMediaType => "The body is not sent as JSON (`unsupported_media_type`).";
    IdempotencyKeyReused => "This `Idempotency-Key` was used with another body \
        (`idempotency_key_reused`).";
    TooManyRequests => TOO_MANY,
        [[("Retry-After", integer(), "Seconds to wait before retrying.")], rate_limit_headers()];
    HeadersTooLarge => "The request's head is over the limit (too many or too long headers).";
    InternalError => "The server failed (`internal_error`); the failure is logged with the \
        request's id.";
    ServiceUnavailable => "The server holds as many request bodies as it may \
        (`server_busy`), or its store does not answer (`not_ready`).",
        [[("Retry-After", integer(), "Seconds to wait before retrying, when the server \
            can tell.")]];
    WorkerUnauthorized => "No worker token, or one that is unknown or revoked \
        (`invalid_worker_token`).";
    WorkerNotFound => "The path's task id is not one of this API's ids.";
    LeaseLost => "This attempt no longer holds the task (`lease_lost`): it was leased again, \
        finished, cancelled or expired. Drop the work.";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        serde_json::from_slice(&render(PublicApi::openapi())).unwrap()
    }

    #[test]
    fn every_operation_answers_problems_for_what_the_layers_refuse() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for status in ["400", "408", "414", "431", "500"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{method} {path} lacks {status}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_request_id_is_required_on_every_response_and_retry_after_on_a_429() {
        let doc = document();
        let too_many = &doc["components"]["responses"]["TooManyRequests"]["headers"];
        assert_eq!(too_many["Retry-After"]["required"], true);
        assert_eq!(too_many["X-Request-Id"]["required"], true);
        assert!(too_many["RateLimit-Reset"].is_object());
        let created = &doc["paths"][crate::BASE]["post"]["responses"]["202"]["headers"];
        assert_eq!(created["X-Request-Id"]["required"], true);
        assert!(created["Location"].is_object());
        assert!(created["RateLimit-Remaining"].is_object());
        let health = &doc["paths"]["/healthz"]["get"]["responses"]["200"]["headers"];
        assert!(health["X-Request-Id"].is_object() && health["RateLimit-Remaining"].is_null());
    }

    #[test]
    fn each_document_keeps_only_its_own_security_scheme() {
        let public = document();
        let schemes = public["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes.keys().collect::<Vec<_>>(), [API_KEY]);
        let worker: Value = serde_json::from_slice(&render(WorkerApi::openapi())).unwrap();
        let schemes = worker["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes.keys().collect::<Vec<_>>(), [WORKER_TOKEN]);
    }
}
