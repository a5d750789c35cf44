//! The named choices of a request: `PIPELINE`, `SCHEDULER`, `image_format`.
//!
//! Each is an enum whose canonical spelling is the wire name (diffusers' class
//! names, which are also what `scheduler_config.json` says in `_class_name`), plus
//! the aliases the seed document's clients send. Parsing refuses anything else
//! with an [`UnknownName`] that lists every accepted spelling.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that is not one of the accepted spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{given}\" is not supported; accepted: {accepted}")]
pub struct UnknownName {
    /// The value as given, capped so a megabyte of garbage does not reach a log line.
    pub given: String,
    /// Every accepted spelling, comma-separated.
    pub accepted: String,
}

impl UnknownName {
    fn new(given: &str, accepted: &[&str]) -> Self {
        UnknownName {
            given: given.chars().take(80).collect(),
            accepted: accepted.join(", "),
        }
    }
}

/// One enum per vocabulary word: its variants, their canonical spelling, the aliases
/// `parse` also takes and lists (`| "LMS"`), those it takes without listing them
/// (`~ "JPG"`, a common misspelling), and whether case matters.
macro_rules! vocabulary {
    (
        $(#[$doc:meta])*
        $name:ident (case_insensitive = $ci:literal) {
            $($(#[$vdoc:meta])* $variant:ident => $text:literal $(| $alias:literal)* $(~ $quiet:literal)*,)*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "&'static str")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in the order the contract lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// Every spelling a refusal lists: canonical names, then their listed aliases.
            pub const SPELLINGS: &'static [&'static str] = &[$($text, $($alias,)*)*];

            /// Every spelling `parse` takes: [`Self::SPELLINGS`] and the unlisted ones (in any
            /// case too where [`Self::CASE_INSENSITIVE`]), for the OpenAPI document.
            pub const ACCEPTED: &'static [&'static str] = &[$($text, $($alias,)* $($quiet,)*)*];

            /// Whether `parse` ignores case.
            pub const CASE_INSENSITIVE: bool = $ci;

            /// The canonical spelling (the wire name).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// Parses a canonical name or an alias; the error lists what is accepted.
            pub fn parse(s: &str) -> Result<Self, UnknownName> {
                $(
                    if [$text $(, $alias)* $(, $quiet)*].iter().any(|n| {
                        if $ci { n.eq_ignore_ascii_case(s) } else { *n == s }
                    }) {
                        return Ok($name::$variant);
                    }
                )*
                Err(UnknownName::new(s, Self::SPELLINGS))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownName;
            fn try_from(s: String) -> Result<Self, UnknownName> {
                Self::parse(&s)
            }
        }

        impl From<$name> for &'static str {
            fn from(v: $name) -> &'static str {
                v.as_str()
            }
        }
    };
}

vocabulary!(
    /// `callInputs.PIPELINE`: which diffusers pipeline a task runs.
    Pipeline (case_insensitive = false) {
        /// Text to image (`StableDiffusionPipeline`).
        Text2Image => "StableDiffusionPipeline",
        /// Image to image (`StableDiffusionImg2ImgPipeline`).
        Image2Image => "StableDiffusionImg2ImgPipeline",
        /// Inpainting (`StableDiffusionInpaintPipeline`).
        Inpaint => "StableDiffusionInpaintPipeline",
    }
);

vocabulary!(
    /// `callInputs.SCHEDULER`: a diffusers scheduler class, by class name, or one of the
    /// seed document's short aliases.
    SchedulerKind (case_insensitive = false) {
        LmsDiscrete => "LMSDiscreteScheduler" | "LMS",
        Ddim => "DDIMScheduler" | "DDIM",
        Pndm => "PNDMScheduler" | "PNDM",
        EulerDiscrete => "EulerDiscreteScheduler",
        EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
        DpmSolverMultistep => "DPMSolverMultistepScheduler",
        UniPcMultistep => "UniPCMultistepScheduler",
        Ddpm => "DDPMScheduler",
        HeunDiscrete => "HeunDiscreteScheduler",
    }
);

vocabulary!(
    /// `callInputs.image_format`: how the images are encoded, in any case.
    ImageFormat (case_insensitive = true) {
        /// Lossless PNG (the default).
        Png => "PNG",
        /// JPEG at the engine's fixed quality.
        Jpeg => "JPEG" ~ "JPG",
        /// Lossless WebP.
        Webp => "WEBP",
    }
);

impl ImageFormat {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Webp => "webp",
        }
    }

    /// The MIME type of the encoded bytes.
    pub fn mime_type(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_back_to_its_value() {
        for k in SchedulerKind::ALL {
            assert_eq!(SchedulerKind::parse(k.as_str()), Ok(*k));
        }
        assert_eq!(SchedulerKind::parse("LMS"), Ok(SchedulerKind::LmsDiscrete));
        assert_eq!(SchedulerKind::parse("DDIM"), Ok(SchedulerKind::Ddim));
        assert_eq!(SchedulerKind::parse("PNDM"), Ok(SchedulerKind::Pndm));
        for p in Pipeline::ALL {
            assert_eq!(Pipeline::parse(p.as_str()), Ok(*p));
        }
        assert_eq!(ImageFormat::parse("jpg"), Ok(ImageFormat::Jpeg));
        assert_eq!(ImageFormat::parse("WebP"), Ok(ImageFormat::Webp));
    }

    #[test]
    fn scheduler_names_are_case_sensitive_and_refusals_list_every_spelling() {
        let err = SchedulerKind::parse("lms").unwrap_err();
        assert_eq!(err.given, "lms");
        assert!(err.to_string().starts_with(
            "\"lms\" is not supported; accepted: LMSDiscreteScheduler, LMS, DDIMScheduler"
        ));
        assert!(err.accepted.ends_with("HeunDiscreteScheduler"));
        let err = ImageFormat::parse("gif").unwrap_err().to_string();
        assert_eq!(err, "\"gif\" is not supported; accepted: PNG, JPEG, WEBP");
    }

    #[test]
    fn serde_uses_the_canonical_spelling_and_refuses_unknown_names() {
        assert_eq!(
            serde_json::to_string(&SchedulerKind::LmsDiscrete).unwrap(),
            "\"LMSDiscreteScheduler\""
        );
        let back: SchedulerKind = serde_json::from_str("\"LMS\"").unwrap();
        assert_eq!(back, SchedulerKind::LmsDiscrete);
        assert!(serde_json::from_str::<Pipeline>("\"Nope\"").is_err());
    }
}
