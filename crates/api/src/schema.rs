//! The OpenAPI schemas (utoipa) of the wire types whose JSON is not what their Rust type
//! would say: the range-carrying numbers, the names of `sie_vocab`, the checker switch.
//!
//! The structs of the wire protocol derive `ToSchema` where they are defined, so a field
//! added to one is in the document with nothing else to change. What a derive cannot know
//! is written here, once, from the same constants the parser checks against: each bounded
//! type's `MIN` and `MAX`, [`Dimension`]'s step of 8, the vocabularies' `ACCEPTED` lists
//! and whether they ignore case, the prompt and webhook URL limits. So the document and the
//! parser cannot disagree about a range or a name without a constant changing for both.
//!
//! Two things are stated in the document only: what a field means per pipeline
//! (`strength` only with an image, ...), as descriptions; and that unknown keys are refused
//! ([`close_request_objects`]), since the stored form's serde (which the derive reads)
//! stays lenient so that workers of another version can read a stored task.

use utoipa::openapi::schema::{
    AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::request::{
    defaults, Dimension, GuidanceScale, ImageCount, InputImage, Prompt, Seed, Steps, UnitInterval,
    WebhookUrl, MAX_PROMPT_BYTES, MAX_WEBHOOK_URL_BYTES,
};
use crate::worker::MimeType;
use sie_vocab::{ImageFormat, Pipeline, SchedulerKind};

macro_rules! bounded_schema {
    ($($name:ident: $kind:expr;)*) => {$(
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type($kind)
                    .minimum(Some($name::MIN))
                    .maximum(Some($name::MAX))
                    .into()
            }
        }

        impl ToSchema for $name {}
    )*};
}

bounded_schema!(
    Steps: Type::Integer;
    ImageCount: Type::Integer;
    GuidanceScale: Type::Number;
    UnitInterval: Type::Number;
    Seed: Type::Integer;
);

impl PartialSchema for Dimension {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(Dimension::MIN))
            .maximum(Some(Dimension::MAX))
            .multiple_of(Some(Dimension::STEP))
            .into()
    }
}

impl ToSchema for Dimension {}

impl PartialSchema for Prompt {
    fn schema() -> RefOr<Schema> {
        prompt().into()
    }
}

impl ToSchema for Prompt {}

/// `modelInputs.prompt`.
pub fn prompt() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_PROMPT_BYTES))
        // Not only white space.
        .pattern(Some(r"\S"))
        .description(Some(format!(
            "What to draw: not empty or only white space; at most {MAX_PROMPT_BYTES} bytes \
             of UTF-8. Over 77 CLIP tokens is truncated as diffusers does, and \
             `$meta.prompt_truncated` says so."
        )))
}

/// A bounded type's range, with the default the parser fills in and what it means.
macro_rules! field {
    ($(#[$doc:meta])* $fn:ident: $name:ident, $kind:expr, $default:expr, $description:expr) => {
        $(#[$doc])*
        pub fn $fn() -> ObjectBuilder {
            ObjectBuilder::new()
                .schema_type($kind)
                .minimum(Some($name::MIN))
                .maximum(Some($name::MAX))
                .default(Some($default.into()))
                .description(Some($description))
        }
    };
}

field!(
    /// `modelInputs.num_inference_steps`.
    num_inference_steps: Steps, Type::Integer, defaults::NUM_INFERENCE_STEPS,
    "Denoising steps."
);
field!(
    /// `modelInputs.guidance_scale`.
    guidance_scale: GuidanceScale, Type::Number, defaults::GUIDANCE_SCALE,
    "Classifier-free guidance: how closely to follow the prompt."
);
field!(
    /// `modelInputs.num_images_per_prompt`.
    num_images_per_prompt: ImageCount, Type::Integer, defaults::NUM_IMAGES_PER_PROMPT,
    "Images to make, each from the next seed's noise."
);
field!(
    /// `modelInputs.eta`.
    eta: UnitInterval, Type::Number, defaults::ETA,
    "DDIM's and DDPM's eta; other schedulers ignore it."
);
field!(
    /// `modelInputs.guidance_rescale`.
    guidance_rescale: UnitInterval, Type::Number, defaults::GUIDANCE_RESCALE,
    "StableDiffusionPipeline only: above 0 with another pipeline is 400."
);
field!(
    /// `modelInputs.strength`.
    strength: UnitInterval, Type::Number, defaults::STRENGTH,
    "With an image only (400 with StableDiffusionPipeline): the last \
     int(num_inference_steps * strength) steps run, and at least one must."
);

/// `modelInputs.negative_prompt`: any string within the prompt's byte limit.
pub fn negative_prompt() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_PROMPT_BYTES))
        .default(Some("".into()))
        .description(Some(format!(
            "What to steer away from; at most {MAX_PROMPT_BYTES} bytes of UTF-8."
        )))
}

impl PartialSchema for InputImage {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(format!(
                "A PNG, JPEG or WebP image in base64, optionally behind a \
                 `data:image/...;base64,` prefix, each side at most {} pixels.",
                crate::request::MAX_INPUT_SIDE
            )))
            .into()
    }
}

impl ToSchema for InputImage {}

impl PartialSchema for WebhookUrl {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("uri".into())))
            .max_length(Some(MAX_WEBHOOK_URL_BYTES))
            .pattern(Some(format!("^{}[Ss]?://[^#]+$", any_case("http"))))
            .description(Some(
                "An absolute http or https URL with a host and no #fragment, which receives \
                 the task's final status body, signed the Standard Webhooks way. Hosts the \
                 server may not call (loopback, private and metadata addresses, unless the \
                 operator allows them) are refused with 400.",
            ))
            .into()
    }
}

impl ToSchema for WebhookUrl {}

impl PartialSchema for MimeType {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ImageFormat::ALL.iter().map(|f| f.mime_type())))
            .into()
    }
}

impl ToSchema for MimeType {}

/// `^(?:a|b)$` where each listed spelling matches in any case (`[Pp][Nn][Gg]`): JSON
/// Schema's regular expressions have no case-insensitive flag.
fn any_case_pattern(spellings: &[&str]) -> String {
    let alternatives: Vec<String> = spellings.iter().map(|s| any_case(s)).collect();
    format!("^(?:{})$", alternatives.join("|"))
}

/// One spelling as a pattern matching it in any case; other characters escaped.
fn any_case(s: &str) -> String {
    let mut out = String::from("(?:");
    for c in s.chars() {
        if c.is_ascii_alphabetic() {
            out.push('[');
            out.push(c.to_ascii_uppercase());
            out.push(c.to_ascii_lowercase());
            out.push(']');
        } else {
            if !c.is_ascii_alphanumeric() {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push(')');
    out
}

/// A name a request may give: the vocabulary's accepted spellings, as an enum where case
/// matters and as a pattern where it does not.
fn accepted_name(accepted: &[&str], case_insensitive: bool, listed: &[&str]) -> ObjectBuilder {
    let builder = ObjectBuilder::new().schema_type(Type::String);
    if case_insensitive {
        builder
            .pattern(Some(any_case_pattern(accepted)))
            .examples(listed.iter().copied())
            .description(Some(format!("One of {} (in any case).", listed.join(", "))))
    } else {
        builder.enum_values(Some(accepted.iter().copied()))
    }
}

/// `callInputs.PIPELINE`.
pub fn pipeline_input() -> ObjectBuilder {
    accepted_name(
        Pipeline::ACCEPTED,
        Pipeline::CASE_INSENSITIVE,
        Pipeline::SPELLINGS,
    )
    .default(Some(Pipeline::Text2Image.as_str().into()))
}

/// `callInputs.SCHEDULER`.
pub fn scheduler_input() -> ObjectBuilder {
    accepted_name(
        SchedulerKind::ACCEPTED,
        SchedulerKind::CASE_INSENSITIVE,
        SchedulerKind::SPELLINGS,
    )
    .description(Some(
        "A diffusers scheduler class, or one of the aliases LMS, DDIM, PNDM. Left out: the \
         model's own (`scheduler/scheduler_config.json`); `$meta.SCHEDULER` says which ran.",
    ))
}

/// `callInputs.image_format`.
pub fn image_format_input() -> ObjectBuilder {
    accepted_name(
        ImageFormat::ACCEPTED,
        ImageFormat::CASE_INSENSITIVE,
        ImageFormat::SPELLINGS,
    )
    .default(Some(ImageFormat::Png.as_str().into()))
}

/// `callInputs.safety_checker`: a boolean, or the strings `"true"`/`"false"` in any case.
pub fn safety_checker_input() -> OneOfBuilder {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(any_case_pattern(&["true", "false"]))),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(
            "Run the safety checker (a flagged image is black). Left out: on where the \
             endpoint has a checker installed; asking for it where none is installed is 400.",
        ))
}

/// `$meta.PIPELINE`: the canonical name of what ran.
pub fn pipeline_output() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Pipeline::ALL.iter().map(|p| p.as_str())))
}

/// `$meta.SCHEDULER`: the canonical name of what ran.
pub fn scheduler_output() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(SchedulerKind::ALL.iter().map(|s| s.as_str())))
}

/// What a worker announces it runs: canonical names.
pub fn pipelines_list() -> utoipa::openapi::schema::ArrayBuilder {
    utoipa::openapi::schema::ArrayBuilder::new().items(pipeline_output())
}

/// What a worker announces it runs: canonical names.
pub fn schedulers_list() -> utoipa::openapi::schema::ArrayBuilder {
    utoipa::openapi::schema::ArrayBuilder::new().items(scheduler_output())
}

/// The create-task body's objects, as named in the document's components.
pub const REQUEST_OBJECTS: [&str; 3] = ["CreateTask", "ModelInputs", "CallInputs"];

/// Marks the create-task body's objects `additionalProperties: false` in `openapi`: the
/// parser refuses an unknown key in each with 400 `unknown_field`. (Their serde derive,
/// which utoipa reads, is the stored form's, and stays lenient; see the module's doc.)
pub fn close_request_objects(openapi: &mut OpenApi) {
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    for name in REQUEST_OBJECTS {
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(name) {
            object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(schema: impl Into<RefOr<Schema>>) -> serde_json::Value {
        serde_json::to_value(schema.into()).unwrap()
    }

    #[test]
    fn case_insensitive_names_become_a_pattern_of_every_accepted_spelling() {
        let pattern = any_case_pattern(ImageFormat::ACCEPTED);
        assert_eq!(
            pattern,
            "^(?:(?:[Pp][Nn][Gg])|(?:[Jj][Pp][Ee][Gg])|(?:[Jj][Pp][Gg])|(?:[Ww][Ee][Bb][Pp]))$"
        );
        let schema = json(image_format_input());
        assert_eq!(schema["default"], "PNG");
        assert_eq!(
            schema["examples"],
            serde_json::json!(["PNG", "JPEG", "WEBP"])
        );
    }

    #[test]
    fn case_sensitive_names_are_an_enum_of_the_vocabulary_with_its_aliases() {
        let schema = json(scheduler_input());
        let names: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names, SchedulerKind::ACCEPTED);
        for name in &names {
            assert!(SchedulerKind::parse(name).is_ok(), "{name}");
        }
        assert!(names.contains(&"LMS") && names.contains(&"HeunDiscreteScheduler"));
    }

    #[test]
    fn bounded_numbers_carry_their_type_s_range() {
        let steps = json(Steps::schema());
        assert_eq!(
            (
                steps["type"].as_str(),
                steps["minimum"].as_u64(),
                steps["maximum"].as_u64()
            ),
            (Some("integer"), Some(1), Some(150))
        );
        let seed = json(Seed::schema());
        assert_eq!(seed["maximum"].as_u64(), Some((1 << 63) - 1));
        let side = json(Dimension::schema());
        assert_eq!(
            (
                side["minimum"].as_u64(),
                side["maximum"].as_u64(),
                side["multipleOf"].as_u64()
            ),
            (Some(64), Some(1024), Some(8))
        );
        assert_eq!(
            json(GuidanceScale::schema())["maximum"].as_f64(),
            Some(50.0)
        );
    }

    #[test]
    fn the_webhook_pattern_takes_http_and_https_in_any_case_without_a_fragment() {
        let schema = json(WebhookUrl::schema());
        assert_eq!(schema["pattern"], "^(?:[Hh][Tt][Tt][Pp])[Ss]?://[^#]+$");
    }
}
