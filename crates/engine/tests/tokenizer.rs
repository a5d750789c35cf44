//! The tokenizer against transformers' CLIPTokenizer, id for id.
//!
//! Fixtures come from tools/parity/make_tokenizer_fixtures.py. Each case's tokenizer directory
//! is rebuilt here from `clip_vocabulary_files()` and the configuration texts the script used,
//! so the test also proves the shipped vocabulary is the one transformers was given.

use std::path::Path;

use serde_json::Value;
use sie_engine::tokenizer::{clip_vocabulary_files, sd2_tokenizer_config_files, ClipTokenizer};

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/prompts.json");
    let text = std::fs::read_to_string(&path).expect("run tools/parity/make_tokenizer_fixtures.py");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn fnv1a64(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in text.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A tokenizer directory with the shipped vocabulary and the given configuration files.
fn write_dir(files: &[(String, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let (vocab, merges) = clip_vocabulary_files();
    std::fs::write(dir.path().join("vocab.json"), vocab).unwrap();
    std::fs::write(dir.path().join("merges.txt"), merges).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn case_files(case: &Value) -> Vec<(String, String)> {
    case["files"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, text)| (name.clone(), text.as_str().unwrap().to_string()))
        .collect()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// A tokenizer folder as transformers 5 re-saves it: `tokenizer_config.json` as written and
/// `tokenizer.json` with its `model.vocab` and `model.merges` put back from the shipped
/// vocabulary (the fixture script checked they are those), no `vocab.json`.
fn write_resaved_dir(case: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let (vocab, merges) = clip_vocabulary_files();
    let mut json = case["tokenizer_json_without_vocab"].clone();
    json["model"]["vocab"] = serde_json::from_str(&vocab).unwrap();
    json["model"]["merges"] = merges
        .lines()
        .skip(1)
        .map(|line| {
            let (a, b) = line.split_once(' ').unwrap();
            serde_json::json!([a, b])
        })
        .collect();
    std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
    for (name, text) in case_files(case) {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn assert_encodings_match(tokenizer: &ClipTokenizer, case: &Value) -> usize {
    let name = case["name"].as_str().unwrap();
    assert_eq!(
        tokenizer.max_length() as u64,
        case["max_length"].as_u64().unwrap(),
        "{name}"
    );
    assert_eq!(
        u64::from(tokenizer.pad_id()),
        case["pad_id"].as_u64().unwrap(),
        "{name}"
    );
    let encodings = case["encodings"].as_array().unwrap();
    for expected in encodings {
        let prompt = expected["prompt"].as_str().unwrap();
        let got = tokenizer.encode(prompt);
        assert_eq!(got.ids, ids(&expected["ids"]), "{name}: {prompt:?}");
        assert_eq!(
            got.truncated,
            expected["truncated"].as_bool().unwrap(),
            "{name}: {prompt:?}"
        );
        assert_eq!(
            got.dropped_text.as_deref(),
            expected["dropped_text"].as_str(),
            "{name}: {prompt:?}"
        );
    }
    encodings.len()
}

#[test]
fn vocabulary_files_match_what_transformers_was_given() {
    let fixture = fixture();
    let (vocab, merges) = clip_vocabulary_files();
    assert_eq!(
        vocab.len() as u64,
        fixture["vocab_json_len"].as_u64().unwrap()
    );
    assert_eq!(
        merges.len() as u64,
        fixture["merges_txt_len"].as_u64().unwrap()
    );
    assert_eq!(
        fnv1a64(&vocab),
        fixture["vocab_json_fnv1a64"].as_str().unwrap()
    );
    assert_eq!(
        fnv1a64(&merges),
        fixture["merges_txt_fnv1a64"].as_str().unwrap()
    );

    let parsed: serde_json::Map<String, Value> = serde_json::from_str(&vocab).unwrap();
    assert_eq!(parsed.len(), 49408);
    for (token, id) in [
        ("!", 0),
        ("a</w>", 320),
        ("photo</w>", 1125),
        ("cat</w>", 2368),
        ("hello</w>", 3306),
        ("<|startoftext|>", 49406),
        ("<|endoftext|>", 49407),
    ] {
        assert_eq!(parsed[token].as_u64(), Some(id), "{token}");
    }
    assert_eq!(merges.lines().next(), Some("#version: 0.2"));
    assert_eq!(merges.lines().count(), 1 + 48894);
}

#[test]
fn prompts_match_transformers() {
    let fixture = fixture();
    let mut checked = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let dir = write_dir(&case_files(case));
        let tokenizer = ClipTokenizer::from_dir(dir.path()).unwrap();
        checked += assert_encodings_match(&tokenizer, case);
    }
    assert!(checked >= 60, "only {checked} prompts in the fixture");
}

#[test]
fn folders_resaved_by_transformers_5_match_transformers() {
    let fixture = fixture();
    let cases = fixture["resaved_cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "sd2_resaved",
            "sd1_resaved",
            "saved_with_added_tokens_resaved"
        ]
    );
    let mut checked = 0;
    for case in cases {
        let dir = write_resaved_dir(case);
        assert!(!dir.path().join("vocab.json").exists());
        let tokenizer = ClipTokenizer::from_dir(dir.path()).unwrap();
        checked += assert_encodings_match(&tokenizer, case);
    }
    assert!(checked >= 60, "only {checked} prompts in the fixture");
}

#[test]
fn tokenizer_json_wins_over_vocab_json_as_in_transformers() {
    // The re-saved textual-inversion folder plus vocab.json and merges.txt, which know
    // nothing of <cat-toy>: transformers reads tokenizer.json, and so do we.
    let fixture = fixture();
    let case = &fixture["resaved_cases"][2];
    let dir = write_resaved_dir(case);
    let (vocab, merges) = clip_vocabulary_files();
    std::fs::write(dir.path().join("vocab.json"), vocab).unwrap();
    std::fs::write(dir.path().join("merges.txt"), merges).unwrap();
    let tokenizer = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_encodings_match(&tokenizer, case);
}

#[test]
fn single_code_points_match_transformers() {
    let fixture = fixture();
    let case = &fixture["cases"][0];
    let dir = write_dir(&case_files(case));
    let tokenizer = ClipTokenizer::from_dir(dir.path()).unwrap();
    let mut mismatches = Vec::new();
    for entry in case["codepoints"].as_array().unwrap() {
        let cp = entry[0].as_u64().unwrap() as u32;
        let text = char::from_u32(cp).unwrap().to_string();
        let got = tokenizer.tokenize(&text);
        if got != ids(&entry[1]) {
            mismatches.push(format!("U+{cp:04X}: got {got:?}, want {}", entry[1]));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn published_sd2_config_files_load_as_transformers_reads_them() {
    let fixture = fixture();
    let case = &fixture["cases"][0];
    assert_eq!(case["name"], "sd2");
    let ours: Vec<(String, String)> = sd2_tokenizer_config_files()
        .into_iter()
        .map(|(name, text)| (name.to_string(), text))
        .collect();
    for (name, text) in &ours {
        let ours: Value = serde_json::from_str(text).unwrap();
        let theirs: Value = serde_json::from_str(case["files"][name].as_str().unwrap()).unwrap();
        assert_eq!(ours, theirs, "{name}");
    }
    let dir = write_dir(&ours);
    let tokenizer = ClipTokenizer::from_dir(dir.path()).unwrap();
    let expected = &case["encodings"][0];
    let got = tokenizer.encode(expected["prompt"].as_str().unwrap());
    assert_eq!(got.ids, ids(&expected["ids"]));
    assert_eq!(tokenizer.pad_id(), 0);
}

#[test]
fn missing_merges_file_is_named() {
    let dir = write_dir(&[]);
    std::fs::remove_file(dir.path().join("merges.txt")).unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err();
    match &err {
        sie_engine::Error::File { path, .. } => {
            assert_eq!(path, &dir.path().join("merges.txt"))
        }
        other => panic!("expected a File error, got {other:?}"),
    }
    assert!(err.to_string().contains("merges.txt"), "{err}");
}

#[test]
fn bad_config_values_name_file_and_field() {
    let dir = write_dir(&[(
        "tokenizer_config.json".to_string(),
        r#"{"model_max_length": 1e30}"#.to_string(),
    )]);
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("model_max_length"),
        "{err}"
    );

    let dir = write_dir(&[(
        "special_tokens_map.json".to_string(),
        r#"{"pad_token": "<pad>"}"#.to_string(),
    )]);
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("special_tokens_map.json") && err.contains("pad_token"),
        "{err}"
    );

    let dir = write_dir(&[]);
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\ni n\nq zz9\n").unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("merges.txt") && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn an_added_token_id_past_a_gap_is_refused_naming_it() {
    // transformers would number <cat-toy> 49408 whatever the file says, and the text
    // encoder's embedding for it is at the id the file gives: refused, not renumbered.
    let config = r#"{"added_tokens_decoder": {"49410": {"content": "<cat-toy>"}}}"#;
    let dir = write_dir(&[("tokenizer_config.json".to_string(), config.to_string())]);
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("added_tokens_decoder.49410"),
        "{err}"
    );
}

#[test]
fn defaults_without_config_files() {
    // No tokenizer_config.json / special_tokens_map.json: CLIPTokenizer's own defaults, pad
    // <|endoftext|>, and CLIP's 77 positions.
    let dir = write_dir(&[]);
    let tokenizer = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tokenizer.max_length(), 77);
    assert_eq!(tokenizer.pad_id(), 49407);
    let got = tokenizer.encode("a photo of a cat");
    assert_eq!(&got.ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
    assert!(got.ids[7..].iter().all(|&id| id == 49407));
    assert!(!got.truncated);
}
