//! A create-task body (`{"modelInputs": {...}, "callInputs": {...}}`), parsed once.
//!
//! Parsing comes in two stages, so that nothing costly is spent on a request that will be
//! refused: [`Undecoded::parse`] checks every field and what the pipeline asks for, keeping
//! the input images as the base64 text they came in (bounded by the body's size);
//! [`Undecoded::needs`] is what the API refuses at once when no worker could run it; only
//! then does [`Undecoded::decode`] decode the images' pixels, which can cost a hundred
//! megabytes each, under the side and allocation limits below. [`CreateTask::parse`] is both
//! stages for callers that need no gate in between.
//!
//! Every field of SPEC 1.1 has a type here that can only hold an accepted
//! value (`Steps` is 1..=150, `Dimension` a multiple of 8 in 64..=1024, ...),
//! so nothing past this module re-checks a request. Parsing walks the JSON by
//! hand rather than through serde's derive because every refusal must name the
//! field and say what is accepted, and unknown keys must be refused, which
//! derive's messages do not do well. The parsed request is stored in the queue
//! as JSON and read back by the worker through the same constructors, so a
//! stored request is validated again on the way out.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::problem::Problem;
pub use sie_vocab::{ImageFormat, Pipeline, SchedulerKind, TaskNeeds};

/// Why a body was refused. Always a 400: the client can fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// Stable machine code: `invalid_json`, `invalid_body`, `unknown_field`, `missing_field`,
    /// `wrong_type`, `out_of_range`, `invalid_value`, `invalid_image`.
    pub code: &'static str,
    /// The field at fault, spelled as in the body (`modelInputs.width`), if any.
    pub field: Option<String>,
    pub message: String,
}

impl RequestError {
    fn new(code: &'static str, field: &str, message: impl Into<String>) -> Self {
        RequestError {
            code,
            field: Some(field.to_owned()),
            message: format!("{field}: {}", message.into()),
        }
    }

    /// The problem document the API answers with.
    pub fn to_problem(&self) -> Problem {
        let p = Problem::new(400, self.code, "Invalid request", self.message.clone());
        match &self.field {
            Some(f) => p.with_field(f.clone()),
            None => p,
        }
    }
}

/// A value in an inclusive range, for the numeric fields; the range is in the type.
macro_rules! bounded {
    ($(#[$doc:meta])* $name:ident, $t:ty, $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
        pub struct $name($t);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }

        // Deserialising goes through the same range check as parsing.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = <$t>::deserialize(d)?;
                Self::try_from(v).map_err(serde::de::Error::custom)
            }
        }

        impl $name {
            pub const MIN: $t = $min;
            pub const MAX: $t = $max;

            pub fn get(self) -> $t {
                self.0
            }
        }

        impl TryFrom<$t> for $name {
            type Error = String;
            fn try_from(v: $t) -> Result<Self, String> {
                if (Self::MIN..=Self::MAX).contains(&v) {
                    Ok($name(v))
                } else {
                    Err(format!("{v} is out of range; accepted: {}..={}", Self::MIN, Self::MAX))
                }
            }
        }

        impl From<$name> for $t {
            fn from(v: $name) -> $t {
                v.0
            }
        }
    };
}

bounded!(
    /// `num_inference_steps`.
    Steps, u32, 1, 150
);
bounded!(
    /// `num_images_per_prompt`.
    ImageCount, u32, 1, 8
);
bounded!(
    /// `guidance_scale`.
    GuidanceScale, f64, 0.0, 50.0
);
bounded!(
    /// `eta`, `guidance_rescale`, `strength`.
    UnitInterval, f64, 0.0, 1.0
);
bounded!(
    /// `seed`: what `torch.Generator.manual_seed` accepts from a non-negative int64.
    Seed, u64, 0, (1 << 63) - 1
);

impl Seed {
    /// A seed for a request that gave none: from the OS-seeded hasher std uses for HashMaps
    /// and the clock, in the accepted 0..2^63 range. Not for secrets; only for variety.
    pub fn random() -> Seed {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        Seed(h.finish() >> 1)
    }
}

/// `width` or `height`: a multiple of 8 (the VAE's scale) in 64..=1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Dimension(u32);

impl Dimension {
    pub const MIN: u32 = 64;
    pub const MAX: u32 = 1024;
    /// Sides are multiples of this (the VAE's scale).
    pub const STEP: u32 = 8;

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Dimension {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        if !(Self::MIN..=Self::MAX).contains(&v) {
            return Err(format!(
                "{v} is out of range; accepted: multiples of 8 from {} to {}",
                Self::MIN,
                Self::MAX
            ));
        }
        if v % Self::STEP != 0 {
            let below = v / Self::STEP * Self::STEP;
            return Err(format!(
                "{v} is not a multiple of {}; use {below} or {}",
                Self::STEP,
                below + Self::STEP
            ));
        }
        Ok(Dimension(v))
    }
}

impl From<Dimension> for u32 {
    fn from(v: Dimension) -> u32 {
        v.0
    }
}

/// A non-empty prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prompt(String);

impl Prompt {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The longest prompt or negative prompt accepted, in bytes. The text encoder reads 77
/// tokens (a few hundred characters); the limit is far above that, and keeps a single
/// request's text (stored, tokenized, echoed) small.
pub const MAX_PROMPT_BYTES: usize = 8 * 1024;

fn check_prompt_length(s: &str) -> Result<(), String> {
    if s.len() > MAX_PROMPT_BYTES {
        Err(format!(
            "{} bytes is out of range; accepted: at most {MAX_PROMPT_BYTES} bytes (the model reads the first 77 tokens)",
            s.len()
        ))
    } else {
        Ok(())
    }
}

impl TryFrom<String> for Prompt {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        check_prompt_length(&s)?;
        if s.trim().is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(Prompt(s))
        }
    }
}

impl From<Prompt> for String {
    fn from(p: Prompt) -> String {
        p.0
    }
}

/// `callInputs.webhook_url`: an absolute `http` or `https` URL with a host, without a
/// fragment, at most [`MAX_WEBHOOK_URL_BYTES`]. Whether its host may be called (not a
/// loopback, private or metadata address) depends on DNS and the operator's flags, so the
/// server checks that, not this type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(url::Url);

/// The longest webhook URL accepted, in bytes.
pub const MAX_WEBHOOK_URL_BYTES: usize = 2048;

impl WebhookUrl {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

impl TryFrom<String> for WebhookUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        const ACCEPTED: &str = "accepted: an absolute http:// or https:// URL with a host";
        if s.len() > MAX_WEBHOOK_URL_BYTES {
            return Err(format!(
                "{} bytes is too long; accepted: at most {MAX_WEBHOOK_URL_BYTES} bytes",
                s.len()
            ));
        }
        let url = url::Url::parse(&s).map_err(|e| format!("is not a URL ({e}); {ACCEPTED}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("has the scheme {:?}; {ACCEPTED}", url.scheme()));
        }
        if url.host().is_none() {
            return Err(format!("has no host; {ACCEPTED}"));
        }
        if url.fragment().is_some() {
            return Err("has a #fragment, which is never sent; leave it out".into());
        }
        Ok(WebhookUrl(url))
    }
}

impl From<WebhookUrl> for String {
    fn from(u: WebhookUrl) -> String {
        u.0.into()
    }
}

/// The largest input image side accepted, in pixels.
pub const MAX_INPUT_SIDE: u32 = 4096;

/// The most one image's decoding may allocate: the largest image the side limit lets in
/// (4096x4096 at 16-bit RGBA, 128 MiB), with room for the decoder's own buffers. A small
/// file can declare a huge canvas; this refuses it before the allocation is made.
pub const MAX_DECODE_ALLOC: u64 = 4096 * 4096 * 8 + (16 << 20);

/// A decoded input image for img2img or inpainting: the original bytes (PNG, JPEG or WebP)
/// and its size once upright (after its EXIF orientation), checked to decode when the
/// request arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InputImage {
    bytes: Vec<u8>,
    width: u32,
    height: u32,
}

/// An input image's pixels as the pipelines read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbPixels {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes, row-major.
    pub pixels: Vec<u8>,
}

impl InputImage {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Width and height, upright.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// As a request carries it: base64, optionally behind a `data:image/...;base64,`
    /// prefix, its pixels decoded once to check that they do.
    fn parse(text: &str) -> Result<Self, String> {
        Self::from_bytes(base64_bytes(text)?)
    }

    /// An image file's bytes (PNG, JPEG or WebP), its pixels decoded once to check that
    /// they do.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, String> {
        let (format, mut limits, mut decoder) = decoder(&bytes)?;
        let (width, height) = upright_size(&mut decoder);
        limits
            .reserve(image::ImageDecoder::total_bytes(&decoder))
            .map_err(|e| failed(format, e))?;
        image::DynamicImage::from_decoder(decoder).map_err(|e| failed(format, e))?;
        Ok(InputImage {
            bytes,
            width,
            height,
        })
    }

    /// As the store holds it (base64): the bytes and their size from the file's header,
    /// without decoding the pixels again; the worker decodes them ([`InputImage::to_rgb`]).
    fn stored(text: &str) -> Result<Self, String> {
        let bytes = base64_bytes(text)?;
        let (width, height) = probe(&bytes)?;
        Ok(InputImage {
            bytes,
            width,
            height,
        })
    }

    /// The pixels the pipelines read, as diffusers' `load_image` gives them: turned upright
    /// by the EXIF orientation, then RGB (`convert("RGB")`: alpha dropped, gray repeated).
    /// 16-bit channels are scaled to 8 bits (Pillow would clip 16-bit grayscale instead, so
    /// such an image can differ from what diffusers reads). Decoded under the same limits as
    /// at submission, plus one more buffer of that size when the orientation rotates it. CPU
    /// work: decode off the async runtime.
    pub fn to_rgb(&self) -> Result<RgbPixels, String> {
        use image::ImageDecoder as _;
        let (format, mut limits, mut decoder) = decoder(&self.bytes)?;
        limits
            .reserve(decoder.total_bytes())
            .map_err(|e| failed(format, e))?;
        // An unreadable orientation tag leaves the image as stored, as Pillow's exif_transpose does.
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut decoded =
            image::DynamicImage::from_decoder(decoder).map_err(|e| failed(format, e))?;
        decoded.apply_orientation(orientation);
        let rgb = decoded.into_rgb8();
        Ok(RgbPixels {
            width: rgb.width(),
            height: rgb.height(),
            pixels: rgb.into_raw(),
        })
    }
}

/// Base64 text, optionally behind a `data:image/...;base64,` prefix, to bytes.
fn base64_bytes(text: &str) -> Result<Vec<u8>, String> {
    let b64 = match text.strip_prefix("data:") {
        Some(rest) => rest
            .split_once(";base64,")
            .map(|(_, data)| data)
            .ok_or("a data: URL must be base64 (data:image/png;base64,...)")?,
        None => text,
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("is not valid base64 ({e})"))
}

fn failed(format: image::ImageFormat, e: image::ImageError) -> String {
    format!("does not decode as {format:?} within {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE} pixels: {e}")
}

/// A decoder for PNG, JPEG or WebP bytes under [`MAX_INPUT_SIDE`] and [`MAX_DECODE_ALLOC`]
/// (a small file can declare a huge canvas: the caller reserves the decoded size against
/// the returned limits before decoding), having read only the file's header.
fn decoder(
    bytes: &[u8],
) -> Result<
    (
        image::ImageFormat,
        image::Limits,
        impl image::ImageDecoder + '_,
    ),
    String,
> {
    let format =
        image::guess_format(bytes).map_err(|_| "is not a PNG, JPEG or WebP image".to_owned())?;
    if !matches!(
        format,
        image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP
    ) {
        return Err(format!("is a {format:?} image; accepted: PNG, JPEG, WebP"));
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits.clone());
    let decoder = reader.into_decoder().map_err(|e| failed(format, e))?;
    Ok((format, limits, decoder))
}

/// The image's size once upright, from its header alone (no pixels decoded).
fn probe(bytes: &[u8]) -> Result<(u32, u32), String> {
    let (_, _, mut decoder) = decoder(bytes)?;
    Ok(upright_size(&mut decoder))
}

/// A decoder's image size after its EXIF orientation (a quarter turn swaps the sides).
fn upright_size(decoder: &mut impl image::ImageDecoder) -> (u32, u32) {
    use image::metadata::Orientation;
    let (w, h) = decoder.dimensions();
    let turned = matches!(
        decoder.orientation().unwrap_or(Orientation::NoTransforms),
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    if turned {
        (h, w)
    } else {
        (w, h)
    }
}

impl TryFrom<String> for InputImage {
    type Error = String;
    /// The stored form (see [`InputImage::stored`]).
    fn try_from(s: String) -> Result<Self, String> {
        InputImage::stored(&s)
    }
}

impl From<InputImage> for String {
    fn from(i: InputImage) -> String {
        base64::engine::general_purpose::STANDARD.encode(i.bytes)
    }
}

/// `modelInputs`, every field in its accepted range. `width`/`height` left out mean the
/// model's native size, which only the worker knows (image-to-image fills them in from its
/// image); `seed` left out means a random one,
/// drawn by the API so the task is reproducible from what is stored.
///
/// The OpenAPI schema is derived from this type; `crate::schema` writes the fields whose
/// ranges and defaults are constants of their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    description = "The pipeline's arguments, named as diffusers names them. \
    Leaving a field out (or sending null) gives its default."
)]
pub struct ModelInputs {
    #[schema(schema_with = crate::schema::prompt)]
    pub prompt: Prompt,
    #[schema(required = false, schema_with = crate::schema::negative_prompt)]
    pub negative_prompt: String,
    #[schema(required = false, schema_with = crate::schema::num_inference_steps)]
    pub num_inference_steps: Steps,
    #[schema(required = false, schema_with = crate::schema::guidance_scale)]
    pub guidance_scale: GuidanceScale,
    /// Left out: the model's native size (768 for 2-1, 512 for 2-1-base); with
    /// StableDiffusionImg2ImgPipeline, the image's, rounded down to a multiple of 8.
    #[schema(inline)]
    pub width: Option<Dimension>,
    /// As `width`.
    #[schema(inline)]
    pub height: Option<Dimension>,
    #[schema(required = false, schema_with = crate::schema::num_images_per_prompt)]
    pub num_images_per_prompt: ImageCount,
    /// Left out: a random one; the seed used is always returned.
    #[schema(inline)]
    pub seed: Option<Seed>,
    #[schema(required = false, schema_with = crate::schema::eta)]
    pub eta: UnitInterval,
    #[schema(required = false, schema_with = crate::schema::guidance_rescale)]
    pub guidance_rescale: UnitInterval,
    /// Required by StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline; 400
    /// with StableDiffusionPipeline.
    #[schema(inline)]
    pub image: Option<InputImage>,
    /// StableDiffusionInpaintPipeline only, where it is required: white is repainted.
    #[schema(inline)]
    pub mask_image: Option<InputImage>,
    #[schema(required = false, schema_with = crate::schema::strength)]
    pub strength: UnitInterval,
}

/// The values SPEC 1.1 gives the `modelInputs` a body leaves out: the parser fills them in,
/// the OpenAPI document states them.
pub mod defaults {
    pub const NUM_INFERENCE_STEPS: u32 = 50;
    pub const GUIDANCE_SCALE: f64 = 7.5;
    pub const NUM_IMAGES_PER_PROMPT: u32 = 1;
    pub const ETA: f64 = 0.0;
    pub const GUIDANCE_RESCALE: f64 = 0.0;
    pub const STRENGTH: f64 = 0.8;
}

/// `callInputs`. (Stored with lower-case names; the body's are those the schema renames.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    description = "How the task runs. Leaving a field out (or sending null) gives its \
    default."
)]
pub struct CallInputs {
    /// Which diffusers pipeline runs.
    #[schema(rename = "PIPELINE", required = false, schema_with = crate::schema::pipeline_input)]
    pub pipeline: Pipeline,
    /// `None`: the model's own scheduler.
    #[schema(rename = "SCHEDULER", schema_with = crate::schema::scheduler_input)]
    pub scheduler: Option<SchedulerKind>,
    /// `None`: the endpoint's default (on where a checker is installed).
    #[schema(schema_with = crate::schema::safety_checker_input)]
    pub safety_checker: Option<bool>,
    /// How the images are encoded.
    #[schema(required = false, schema_with = crate::schema::image_format_input)]
    pub image_format: ImageFormat,
    /// Where the final status is posted when the task ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub webhook_url: Option<WebhookUrl>,
}

/// A whole create-task body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    description = "A create-task body. An unknown or repeated key, a wrong type or a \
    value out of range is refused with 400 naming the field; nothing is queued then."
)]
pub struct CreateTask {
    #[serde(rename = "modelInputs")]
    pub model_inputs: ModelInputs,
    /// Left out: every default.
    #[serde(rename = "callInputs")]
    #[schema(required = false)]
    pub call_inputs: CallInputs,
}

impl CreateTask {
    /// What the task asks of the worker that runs it, for the store to match against
    /// what workers can run.
    pub fn needs(&self) -> TaskNeeds {
        TaskNeeds {
            pipeline: self.call_inputs.pipeline,
            scheduler: self.call_inputs.scheduler,
            safety_checker: self.call_inputs.safety_checker == Some(true),
        }
    }

    /// Parses a request body and decodes its images: [`Undecoded::parse`], then
    /// [`Undecoded::decode`].
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        Undecoded::parse(body)?.decode()
    }
}

/// A create-task body with every field checked but the input images' pixels: those are
/// still the base64 text the client sent (SPEC 2.1: everything that needs no pixels is
/// decided before an image is decoded).
#[derive(Debug, Clone)]
pub struct Undecoded {
    /// The request, its `image` and `mask_image` not yet filled in.
    task: CreateTask,
    image: Option<String>,
    mask_image: Option<String>,
}

impl Undecoded {
    /// Parses a request body. Bad JSON names the line and column; a key given twice is
    /// refused; every other refusal names the field and what is accepted.
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let value = crate::json::parse(body)?;
        let Value::Object(top) = value else {
            return Err(RequestError {
                code: "invalid_body",
                field: None,
                message: "the body must be a JSON object with \"modelInputs\" and optionally \"callInputs\"".into(),
            });
        };
        let mut top = Fields::new("", top);
        let model = top.object("modelInputs")?.ok_or_else(|| {
            RequestError::new(
                "missing_field",
                "modelInputs",
                "is required (an object with at least \"prompt\")",
            )
        })?;
        let call = top.object("callInputs")?;
        top.finish(&["modelInputs", "callInputs"])?;
        let call_inputs = parse_call_inputs(Fields::new("callInputs.", call.unwrap_or_default()))?;
        let model = parse_model_inputs(Fields::new("modelInputs.", model))?;

        let field = |name: &str| format!("modelInputs.{name}");
        match call_inputs.pipeline {
            Pipeline::Text2Image => {
                for (name, present) in [
                    ("image", model.image.is_some()),
                    ("mask_image", model.mask_image.is_some()),
                    // diffusers' text-to-image pipeline has no strength; accepting it would
                    // let a client believe it did something.
                    ("strength", model.strength_given),
                ] {
                    if present {
                        return Err(RequestError::new(
                            "invalid_value",
                            &field(name),
                            "is only used by StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline; set callInputs.PIPELINE or leave it out",
                        ));
                    }
                }
            }
            Pipeline::Image2Image | Pipeline::Inpaint => {
                // diffusers' image-to-image and inpainting pipelines have no guidance_rescale
                // (they drop it silently); running it would give images diffusers does not.
                if model.inputs.guidance_rescale.get() > 0.0 {
                    return Err(RequestError::new(
                        "invalid_value",
                        &field("guidance_rescale"),
                        format!(
                            "is only used by StableDiffusionPipeline; {} has none, so leave it out or 0",
                            call_inputs.pipeline.as_str()
                        ),
                    ));
                }
                if model.image.is_none() {
                    return Err(RequestError::new(
                        "missing_field",
                        &field("image"),
                        format!("is required by {}", call_inputs.pipeline.as_str()),
                    ));
                }
                if call_inputs.pipeline == Pipeline::Inpaint && model.mask_image.is_none() {
                    return Err(RequestError::new(
                        "missing_field",
                        &field("mask_image"),
                        "is required by StableDiffusionInpaintPipeline (white = repaint)",
                    ));
                }
                if call_inputs.pipeline == Pipeline::Image2Image && model.mask_image.is_some() {
                    return Err(RequestError::new(
                        "invalid_value",
                        &field("mask_image"),
                        "is only used by StableDiffusionInpaintPipeline",
                    ));
                }
                // diffusers runs the last int(steps * strength) steps; none is no image.
                let steps = model.inputs.num_inference_steps.get();
                let strength = model.inputs.strength.get();
                if (steps as f64 * strength) as u32 == 0 {
                    return Err(RequestError::new(
                        "out_of_range",
                        &field("strength"),
                        format!(
                            "{strength} with num_inference_steps {steps} runs no step (the last \
                             int(steps * strength) steps run); accepted: up to 1, with \
                             num_inference_steps * strength at least 1"
                        ),
                    ));
                }
            }
        }
        Ok(Undecoded {
            task: CreateTask {
                model_inputs: model.inputs,
                call_inputs,
            },
            image: model.image,
            mask_image: model.mask_image,
        })
    }

    /// What the task asks of the worker that runs it (see [`CreateTask::needs`]).
    pub fn needs(&self) -> TaskNeeds {
        self.task.needs()
    }

    /// `callInputs.webhook_url`, for the server's checks of its host before any image is
    /// decoded.
    pub fn webhook_url(&self) -> Option<&WebhookUrl> {
        self.task.call_inputs.webhook_url.as_ref()
    }

    /// Whether [`Undecoded::decode`] has pixels to decode.
    pub fn has_images(&self) -> bool {
        self.image.is_some() || self.mask_image.is_some()
    }

    /// Decodes the input images (each under [`MAX_INPUT_SIDE`] and [`MAX_DECODE_ALLOC`]);
    /// the whole request. A width or height left out of an image-to-image request is the
    /// image's, rounded down to a multiple of 8, as diffusers' image-to-image takes it. CPU work, to be run off the async runtime and under the caller's
    /// bound on concurrent decodes.
    pub fn decode(self) -> Result<CreateTask, RequestError> {
        let Undecoded {
            mut task,
            image,
            mask_image,
        } = self;
        let decode = |name: &str, text: Option<String>| {
            text.map(|t| {
                InputImage::parse(&t).map_err(|m| {
                    RequestError::new("invalid_image", &format!("modelInputs.{name}"), m)
                })
            })
            .transpose()
        };
        task.model_inputs.image = decode("image", image)?;
        task.model_inputs.mask_image = decode("mask_image", mask_image)?;
        // diffusers' image-to-image takes the image's size; its inpainting, like text-to-image,
        // the model's native size (which the worker fills in).
        let takes_image_size = task.call_inputs.pipeline == Pipeline::Image2Image;
        let image_size = task.model_inputs.image.as_ref().map(InputImage::size);
        if let (true, Some((w, h))) = (takes_image_size, image_size) {
            let inputs = &mut task.model_inputs;
            let from_image = |side: u32| {
                Dimension::try_from(side / 8 * 8).map_err(|_| {
                    RequestError::new(
                        "invalid_image",
                        "modelInputs.image",
                        format!(
                            "is {w}x{h} pixels; without width and height the output takes the \
                             image's size rounded down to multiples of 8, and each side must be \
                             within {}..={}; give width and height to resize it",
                            Dimension::MIN,
                            Dimension::MAX
                        ),
                    )
                })
            };
            if inputs.width.is_none() {
                inputs.width = Some(from_image(w)?);
            }
            if inputs.height.is_none() {
                inputs.height = Some(from_image(h)?);
            }
        }
        Ok(task)
    }
}

/// `modelInputs` as parsed, its images still text.
struct ParsedModelInputs {
    inputs: ModelInputs,
    image: Option<String>,
    mask_image: Option<String>,
    /// Whether the body gave `strength` (text-to-image refuses it).
    strength_given: bool,
}

fn parse_model_inputs(mut f: Fields) -> Result<ParsedModelInputs, RequestError> {
    let prompt = f.string("prompt")?.ok_or_else(|| {
        RequestError::new(
            "missing_field",
            "modelInputs.prompt",
            "is required (a non-empty string)",
        )
    })?;
    let prompt = Prompt::try_from(prompt).map_err(|m| f.invalid("prompt", m))?;
    let strength_given = f.map.get("strength").is_some_and(|v| !v.is_null());
    let inputs = ModelInputs {
        prompt,
        negative_prompt: {
            let n = f.string("negative_prompt")?.unwrap_or_default();
            check_prompt_length(&n).map_err(|m| f.invalid("negative_prompt", m))?;
            n
        },
        num_inference_steps: f.bounded_int("num_inference_steps", defaults::NUM_INFERENCE_STEPS)?,
        guidance_scale: f.bounded_number("guidance_scale", defaults::GUIDANCE_SCALE)?,
        width: f.dimension("width")?,
        height: f.dimension("height")?,
        num_images_per_prompt: f
            .bounded_int("num_images_per_prompt", defaults::NUM_IMAGES_PER_PROMPT)?,
        seed: f.seed("seed")?,
        eta: f.bounded_number("eta", defaults::ETA)?,
        guidance_rescale: f.bounded_number("guidance_rescale", defaults::GUIDANCE_RESCALE)?,
        image: None,
        mask_image: None,
        strength: f.bounded_number("strength", defaults::STRENGTH)?,
    };
    let image = f.string("image")?;
    let mask_image = f.string("mask_image")?;
    f.finish(&[
        "prompt",
        "negative_prompt",
        "num_inference_steps",
        "guidance_scale",
        "width",
        "height",
        "num_images_per_prompt",
        "seed",
        "eta",
        "guidance_rescale",
        "image",
        "mask_image",
        "strength",
    ])?;
    Ok(ParsedModelInputs {
        inputs,
        image,
        mask_image,
        strength_given,
    })
}

fn parse_call_inputs(mut f: Fields) -> Result<CallInputs, RequestError> {
    let pipeline = match f.string("PIPELINE")? {
        None => Pipeline::Text2Image,
        Some(s) => Pipeline::parse(&s).map_err(|e| f.invalid("PIPELINE", e.to_string()))?,
    };
    let scheduler = f
        .string("SCHEDULER")?
        .map(|s| SchedulerKind::parse(&s).map_err(|e| f.invalid("SCHEDULER", e.to_string())))
        .transpose()?;
    let safety_checker = match f.take("safety_checker") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
        Some(other) => {
            return Err(RequestError::new(
                "wrong_type",
                "callInputs.safety_checker",
                format!(
                "{other} is not accepted; use true or false, or the strings \"true\" or \"false\""
            ),
            ))
        }
    };
    let image_format = match f.string("image_format")? {
        None => ImageFormat::Png,
        Some(s) => ImageFormat::parse(&s).map_err(|e| f.invalid("image_format", e.to_string()))?,
    };
    let webhook_url = f
        .string("webhook_url")?
        .map(|s| WebhookUrl::try_from(s).map_err(|e| f.invalid("webhook_url", e)))
        .transpose()?;
    f.finish(&[
        "PIPELINE",
        "SCHEDULER",
        "safety_checker",
        "image_format",
        "webhook_url",
    ])?;
    Ok(CallInputs {
        pipeline,
        scheduler,
        safety_checker,
        image_format,
        webhook_url,
    })
}

/// The keys of one JSON object, consumed one by one so that what is left over is unknown.
struct Fields {
    prefix: &'static str,
    map: Map<String, Value>,
}

impl Fields {
    fn new(prefix: &'static str, map: Map<String, Value>) -> Self {
        Fields { prefix, map }
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn invalid(&self, key: &str, message: String) -> RequestError {
        let code = if message.contains("out of range") {
            "out_of_range"
        } else {
            "invalid_value"
        };
        RequestError::new(code, &self.name(key), message)
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> RequestError {
        RequestError::new(
            "wrong_type",
            &self.name(key),
            format!("expected {expected}, found {}", describe(found)),
        )
    }

    /// Removes `key`; JSON `null` counts as absent.
    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    fn object(&mut self, key: &str) -> Result<Option<Map<String, Value>>, RequestError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(self.wrong_type(key, "an object", &other)),
        }
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, RequestError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(key, "a string", &other)),
        }
    }

    fn integer(&mut self, key: &str) -> Result<Option<u64>, RequestError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(v), _) => Ok(Some(v)),
                (None, Some(v)) => {
                    Err(self.invalid(key, format!("{v} is out of range; it must not be negative")))
                }
                (None, None) => Err(self.wrong_type(key, "an integer", &Value::Number(n))),
            },
            Some(other) => Err(self.wrong_type(key, "an integer", &other)),
        }
    }

    fn bounded_int<T>(&mut self, key: &str, default: u32) -> Result<T, RequestError>
    where
        T: TryFrom<u32, Error = String>,
    {
        let v = self.integer(key)?.unwrap_or(default as u64);
        let v = u32::try_from(v).unwrap_or(u32::MAX);
        T::try_from(v).map_err(|m| self.invalid(key, m))
    }

    fn bounded_number<T>(&mut self, key: &str, default: f64) -> Result<T, RequestError>
    where
        T: TryFrom<f64, Error = String>,
    {
        let v = match self.take(key) {
            None => default,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            Some(other) => return Err(self.wrong_type(key, "a number", &other)),
        };
        T::try_from(v).map_err(|m| self.invalid(key, m))
    }

    fn dimension(&mut self, key: &str) -> Result<Option<Dimension>, RequestError> {
        self.integer(key)?
            .map(|v| {
                let v = u32::try_from(v).unwrap_or(u32::MAX);
                Dimension::try_from(v).map_err(|m| self.invalid(key, m))
            })
            .transpose()
    }

    fn seed(&mut self, key: &str) -> Result<Option<Seed>, RequestError> {
        self.integer(key)?
            .map(|v| Seed::try_from(v).map_err(|m| self.invalid(key, m)))
            .transpose()
    }

    /// Refuses whatever keys were not consumed, listing the accepted ones.
    fn finish(self, accepted: &[&str]) -> Result<(), RequestError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(key) => Err(RequestError::new(
                "unknown_field",
                &self.name(key),
                format!("is not a known field; accepted: {}", accepted.join(", ")),
            )),
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}
