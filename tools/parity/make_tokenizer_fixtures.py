"""Tokenizer fixtures from transformers, for crates/engine/tests/tokenizer.rs.

The oracle is `transformers.CLIPTokenizer.from_pretrained(dir)` (transformers 5: a
`tokenizers`-backed pipeline), called as diffusers' StableDiffusionPipeline calls it:
`tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
truncation=True)`, plus the untruncated call diffusers makes to log what was cut off.

The tokenizer directory is derived here, independently of the Rust code, from OpenAI's merge
list in crates/engine/assets/bpe_simple_vocab_16e6.txt.gz, the way the Rust
`clip_vocabulary_files()` is meant to: 256 byte symbols in GPT-2's order, the same with
`</w>`, the first 48894 merges joined, then <|startoftext|> and <|endoftext|>. The fixture
records checksums of the vocab.json / merges.txt texts written here, so the Rust test proves
both sides wrote the same bytes.

Cases: SD 2.1's published tokenizer configuration (pad "!") with the full prompt list, SD 1.x's
(pad <|endoftext|>), and a configuration saved by newer transformers with
`added_tokens_decoder` and a textual-inversion token, the same beside SD 1.x's
special_tokens_map.json (which transformers then does not read), each with a shorter list. A
sweep over single code points checks the Unicode tables (letters, numbers, white space, lower
case, NFC).

Then the first three as transformers 5 re-saves it (`save_pretrained`: `tokenizer.json` and
`tokenizer_config.json` only, the special tokens' flags and the textual-inversion word now in
`tokenizer.json`'s `added_tokens`), with the prompts encoded by the tokenizer loaded back from
that folder. Such a case records `tokenizer_config.json` as written and `tokenizer.json` as
written less `model.vocab` and `model.merges`: the script checks those two equal, as JSON, the
vocab.json and merges.txt written here (whose checksums the fixture records), so the Rust test
puts them back from the shipped vocabulary instead of the fixture carrying 3.6 MB three times.

Run: /path/to/venv/bin/python tools/parity/make_tokenizer_fixtures.py
"""

import gzip
import hashlib
import json
import os
import sys
import tempfile

import transformers
from tokenizers import Tokenizer
from transformers import CLIPTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
BPE_GZ = os.path.join(ROOT, "crates", "engine", "assets", "bpe_simple_vocab_16e6.txt.gz")
OUT = os.path.join(ROOT, "crates", "engine", "tests", "fixtures", "tokenizer")

# stabilityai/stable-diffusion-2-1 tokenizer/tokenizer_config.json and special_tokens_map.json.
SD2_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
    "do_lower_case": True,
    "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "openai/clip-vit-large-patch14",
    "pad_token": "!",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
}
SD2_SPECIAL_TOKENS_MAP = {
    "bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
    "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
    "pad_token": "!",
    "unk_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False},
}

# CompVis/stable-diffusion-v1-4 tokenizer/: the same, but padding with <|endoftext|>.
SD1_TOKENIZER_CONFIG = {**SD2_TOKENIZER_CONFIG, "pad_token": "<|endoftext|>"}
SD1_SPECIAL_TOKENS_MAP = {**SD2_SPECIAL_TOKENS_MAP, "pad_token": "<|endoftext|>"}


def added(content, normalized, special=True):
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False, "special": special}


# What `save_pretrained` in newer transformers writes, plus a textual-inversion word. Here the
# end token is registered un-normalised, so "<|ENDOFTEXT|>" is no longer the end token.
SAVED_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "added_tokens_decoder": {
        "0": added("!", False),
        "49406": added("<|startoftext|>", True),
        "49407": added("<|endoftext|>", False),
        "49408": added("<cat-toy>", False, special=False),
    },
    "bos_token": "<|startoftext|>",
    "clean_up_tokenization_spaces": True,
    "do_lower_case": True,
    "eos_token": "<|endoftext|>",
    "errors": "replace",
    "model_max_length": 77,
    "pad_token": "!",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": "<|endoftext|>",
}

LONG = (
    "a highly detailed matte painting of a sprawling cyberpunk city at night, neon signs "
    "reflecting in puddles, flying cars, towering skyscrapers, dense fog, volumetric lighting, "
    "cinematic composition, by greg rutkowski and syd mead and moebius, trending on artstation, "
    "octane render, 8k, ultra wide angle, dramatic sky, rain, crowds of people with umbrellas, "
    "holographic advertisements, steam rising from vents, intricate details everywhere"
)

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "",
    " ",
    "\t\n  \r\n",
    "   leading and trailing whitespace   ",
    "runs   of\t\tspaces\n\nand\r\nnewlines\u00a0and\u3000others\u2028too",
    "A PHOTO OF A CAT IN UPPER CASE, Mixed Case Words",
    "Café crème brûlée, naïve façade, Ångström, Øresund, Łódź, straße",
    "non-NFC: Cafe\u0301 cre\u0300me, A\u030a, n\u0303, q\u0301 and e\u0301\u0323",
    "combining only: \u0301\u0302\u0303 and x\u20dd",
    "Hangul jamo \u1100\u1161\u11a8 versus \uac01",
    "日本の古い寺、桜の花、夕暮れ",
    "一只在月光下的猫，水墨画风格",
    "Москва зимой, ночь, фонари, снег",
    "ΟΔΟΣ ΣΟΦΙΑΣ, Σίσυφος, ΣΣ",
    "İstanbul'da İLKBAHAR, DİYARBAKIR",
    "صورة لقطة جميلة في الصحراء",
    "שלום עולם, a Hebrew greeting",
    "हिन्दी में एक सुंदर चित्र",
    "ภาพวาดสีน้ำมันของทะเล",
    "a dog 🐶 and a cat 🐱 having fun 🎉🎉",
    "family 👨‍👩‍👧‍👦 and a technologist 👩🏽‍💻 with a rainbow flag 🏳️‍🌈",
    "flags 🇯🇵🇺🇸🇫🇷 and keycaps 1️⃣ #️⃣",
    "wow!!! what?!?! ... --- *** ### $$$ %%% &&& ((( ))) [[[ ]]]",
    "hello!world!!again!!!",
    "!!!",
    "!",
    "##hashtag #art ### #1",
    "it's a dog's life, they're here, we've got it, I'm sure, you'll see, he'd go, don't",
    "IT'S SHOUTING, THEY'RE LOUD, I'LL GO",
    "curly quotes: it’s ‘quoted’ and “double quoted” and don’t",
    "''s 's ' s '' ''' l'll",
    "numbers 1234567890, 3.14159, 1,000,000, 2024-01-01, ½ ² ³ ① Ⅻ ٣ ५",
    "4k 8K 1080p 35mm f/1.8 ISO-100",
    "control chars \x00 \x01 \x07 \x1b[31m red \x7f \x1c\x1d\x1e\x1f end",
    "zero width\u200b space, joiner\u200d, non-joiner\u200c, BOM\ufeff, soft\u00adhyphen",
    "fullwidth ＡＢＣ １２３ ！？",
    "ligatures ﬁ ﬂ and ℌ ℍ ℕ and Ⓐ",
    "math 𝐀𝐁𝐂 𝔸𝔹ℂ ∑∫∂ √2 ≈ ≠ ≤",
    "html &amp; &lt;tag&gt; <b>bold</b> \\backslash\\ /slash/ `tick` ~tilde~ ^caret^ |pipe| {brace}",
    "<|startoftext|>a prompt with special tokens<|endoftext|> in it",
    "<|ENDOFTEXT|> and <|StartOfText|> in upper case",
    "<|endoftext |> almost special",
    "a" * 300,
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    LONG,
    LONG + " " + LONG,
    " ".join(["word"] * 75),
    " ".join(["word"] * 76),
    " ".join(["word"] * 74) + " !",
    "🎉" * 40,
    "x" + "\u0301" * 20,
    "\ud7ff\ue000\uffff\U0001f600\U0010fffd",
]

SHORT_PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "wow!!! what?!",
    "<|ENDOFTEXT|> and <|StartOfText|> in upper case",
    "a <cat-toy> on a beach, <CAT-TOY>, <cat-toy>s",
    "",
    LONG,
]


def bytes_to_unicode():
    """GPT-2's table, written out again: printable bytes keep their char, the rest move up."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    order = keep + [b for b in range(256) if b not in keep]
    return [chars[b] for b in order]


def clip_vocabulary_files():
    lines = gzip.open(BPE_GZ).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    vocab_json = "{" + ",".join(json.dumps(t, ensure_ascii=False) + ":" + str(i) for i, t in enumerate(vocab)) + "}"
    merges_txt = "#version: 0.2\n" + "".join(m + "\n" for m in merges)
    return vocab_json, merges_txt


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def write_dir(path, vocab_json, merges_txt, config, special_map):
    os.makedirs(path)
    with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(vocab_json)
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(merges_txt)
    files = {}
    for name, obj in [("tokenizer_config.json", config), ("special_tokens_map.json", special_map)]:
        if obj is not None:
            text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
            with open(os.path.join(path, name), "w", encoding="utf-8") as f:
                f.write(text)
            files[name] = text
    return files


def resave(tok, path, vocab_json, merges_txt):
    """`tok` saved by transformers into `path`, and what the fixture records of it."""
    tok.save_pretrained(path)
    written = sorted(os.listdir(path))
    assert written == ["tokenizer.json", "tokenizer_config.json"], written
    with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
        config_text = f.read()
    with open(os.path.join(path, "tokenizer.json"), "rb") as f:
        raw = f.read()
    saved = json.loads(raw)
    model = saved["model"]
    assert model.pop("vocab") == json.loads(vocab_json), "tokenizer.json's vocab is not vocab.json's"
    merges = [line.split(" ") for line in merges_txt.split("\n")[1:] if line]
    assert model.pop("merges") == merges, "tokenizer.json's merges are not merges.txt's"
    return {
        "files": {"tokenizer_config.json": config_text},
        "tokenizer_json_sha256": hashlib.sha256(raw).hexdigest(),
        "tokenizer_json_without_vocab": saved,
    }


def encode(tok, prompt):
    max_length = tok.model_max_length
    ids = tok(prompt, padding="max_length", max_length=max_length, truncation=True)["input_ids"]
    # diffusers' check and log line (StableDiffusionPipeline.encode_prompt).
    untruncated = tok(prompt, padding="longest")["input_ids"]
    truncated = len(untruncated) > max_length
    dropped = tok.batch_decode([untruncated[max_length - 1 : -1]])[0] if truncated else None
    assert len(ids) == max_length
    return {"prompt": prompt, "ids": ids, "truncated": truncated, "dropped_text": dropped}


def codepoint_sweep(tok):
    """Each code point alone: all of U+0000..U+07FF (Latin to Arabic), Latin and Greek
    extended and general punctuation (U+1E00..U+20FF: case mappings, odd spaces), then every
    257th code point to the end."""
    points = list(range(0x800)) + list(range(0x1E00, 0x2100))
    points += [cp for cp in range(0x2100, 0x110000, 257) if not 0xD800 <= cp <= 0xDFFF]
    points += [0x3000, 0xFEFF, 0xFF01, 0xFFFD, 0x1F600, 0x1F3FB, 0xE0001, 0x10FFFF]
    # A copy: the tokenizer's own backend keeps the padding of the last call.
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    encodings = backend.encode_batch([chr(cp) for cp in points], add_special_tokens=False)
    return [[cp, enc.ids] for cp, enc in zip(points, encodings)]


def main():
    vocab_json, merges_txt = clip_vocabulary_files()
    cases = [
        ("sd2", SD2_TOKENIZER_CONFIG, SD2_SPECIAL_TOKENS_MAP, PROMPTS),
        ("sd1", SD1_TOKENIZER_CONFIG, SD1_SPECIAL_TOKENS_MAP, SHORT_PROMPTS),
        ("saved_with_added_tokens", SAVED_TOKENIZER_CONFIG, None, SHORT_PROMPTS),
        ("added_tokens_beside_special_map", SAVED_TOKENIZER_CONFIG, SD1_SPECIAL_TOKENS_MAP, SHORT_PROMPTS),
    ]
    fixture = {
        "transformers": transformers.__version__,
        "vocab_json_md5": hashlib.md5(vocab_json.encode("utf-8")).hexdigest(),
        "merges_txt_md5": hashlib.md5(merges_txt.encode("utf-8")).hexdigest(),
        "vocab_json_fnv1a64": fnv1a64(vocab_json),
        "merges_txt_fnv1a64": fnv1a64(merges_txt),
        "vocab_json_len": len(vocab_json.encode("utf-8")),
        "merges_txt_len": len(merges_txt.encode("utf-8")),
        "cases": [],
        "resaved_cases": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, config, special_map, prompts in cases:
            path = os.path.join(tmp, name)
            files = write_dir(path, vocab_json, merges_txt, config, special_map)
            tok = CLIPTokenizer.from_pretrained(path)
            print(f"{name}: {type(tok).__module__}.{type(tok).__name__}, pad {tok.pad_token!r} = {tok.pad_token_id}", file=sys.stderr)
            case = {
                "name": name,
                "oracle": f"{type(tok).__module__}.{type(tok).__name__}",
                "files": files,
                "pad_id": tok.pad_token_id,
                "max_length": tok.model_max_length,
                "encodings": [encode(tok, p) for p in prompts],
            }
            if name == "sd2":
                case["codepoints"] = codepoint_sweep(tok)
            fixture["cases"].append(case)

        # The same three, re-saved by transformers 5 and loaded back from what it wrote.
        for name, _, _, prompts in cases[:3]:
            saved_path = os.path.join(tmp, name + "_resaved")
            record = resave(CLIPTokenizer.from_pretrained(os.path.join(tmp, name)), saved_path, vocab_json, merges_txt)
            tok = CLIPTokenizer.from_pretrained(saved_path)
            print(f"{name} re-saved: pad {tok.pad_token!r} = {tok.pad_token_id}", file=sys.stderr)
            extra = [p for p in SHORT_PROMPTS if p not in prompts]
            fixture["resaved_cases"].append({
                "name": name + "_resaved",
                "oracle": f"{type(tok).__module__}.{type(tok).__name__}",
                **record,
                "pad_id": tok.pad_token_id,
                "max_length": tok.model_max_length,
                "encodings": [encode(tok, p) for p in prompts + extra],
            })

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "prompts.json"), "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    n = sum(len(c["encodings"]) for c in fixture["cases"] + fixture["resaved_cases"])
    print(f"wrote {n} prompts, {len(fixture['cases'][0]['codepoints'])} code points to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
