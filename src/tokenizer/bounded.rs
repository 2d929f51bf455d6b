//! Tokenizing untrusted text with bounded work. Two tools:
//!
//! * a cheap lower bound on the token count, so a text that cannot fit the context is
//!   refused before any of it is tokenized: every token stands for at most
//!   `max_token_bytes` bytes of the normalized text (128 for Qwen3.5: byte-level BPE, one
//!   vocabulary character per byte; added tokens count by their spelling), and NFC
//!   normalization shrinks UTF-8 text at most 3.5-fold ([`NFC_MAX_SHRINK`]; not at all
//!   for text that is already NFC, which a quick check tells);
//! * encoding in pieces cut where the tokenizer's own splits surely fall, stopping as soon
//!   as a limit is passed: memory is bounded by the piece size, time by the limit. The
//!   cuts are proven only for Qwen's pre-tokenizer (see [`is_safe_cut`]); any other
//!   tokenizer is encoded whole. A run longer than [`MAX_UNCUT_BYTES`] with nowhere to
//!   cut (a megabyte of letters with no space, line break or punctuation) is refused.

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use unicode_normalization::char::canonical_combining_class;
use unicode_normalization::{is_nfc_quick, IsNormalized};

/// The outcome of [`TextBound::encode_within`].
#[derive(Clone, Debug, PartialEq)]
pub enum Bounded {
    Ids(Vec<u32>),
    /// More tokens than allowed: `tokens` of them at least (`exact` when counted in full).
    TooLong { tokens: usize, exact: bool },
    /// A run of `bytes` bytes with nowhere to cut it, over [`MAX_UNCUT_BYTES`]: encoding
    /// it would take the tokenizer a few hundred bytes of memory per byte.
    Uncuttable { bytes: usize },
}

/// The longest run of text without a safe cut that is tokenized (a run of letters with
/// no space, line break or punctuation, of spaces, of symbols). Real text of any language
/// has cuts every few hundred bytes.
pub const MAX_UNCUT_BYTES: usize = 1 << 20;

/// NFC turns at most 7 bytes of UTF-8 into 2 (`(7, 2)`): U+1FBE U+0308 U+0301 (3 + 2 + 2
/// bytes) compose to U+0390 `ΐ`; next come the Kelvin sign (3 bytes) becoming `K` and
/// three 3-byte jamo composing to one Hangul syllable, 3-fold. The unit test
/// `nfc_shrinks_utf8_at_most_3_5_fold` checks every code point's decomposition.
pub const NFC_MAX_SHRINK: (usize, usize) = (7, 2);

/// Text per piece when encoding in pieces (the tokenizer needs a few hundred bytes of
/// memory per byte of input).
const PIECE_BYTES: usize = 32 << 10;

/// Qwen2/2.5/3/3.5's pre-tokenizer regex (tokenizer.json `pre_tokenizer`).
const QWEN_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Normalizer {
    None,
    Nfc,
    /// Anything else: no bound is claimed.
    Other,
}

/// What a tokenizer guarantees about token counts, worked out once from its files.
#[derive(Clone, Debug)]
pub(crate) struct TextBound {
    max_token_bytes: usize,
    normalizer: Normalizer,
    /// Pieces cut by [`is_safe_cut`] encode exactly like the whole text.
    piecewise: bool,
    /// Added tokens' spellings: no cut falls inside one.
    added: Vec<String>,
}

impl TextBound {
    pub(crate) fn of(hf: &tokenizers::Tokenizer) -> Self {
        let pre = hf.get_pre_tokenizer().and_then(|p| serde_json::to_value(p).ok()).unwrap_or(Value::Null);
        let byte_level = pre.to_string().contains("\"ByteLevel\"");
        let normalizer = match hf.get_normalizer().and_then(|n| serde_json::to_value(n).ok()) {
            None | Some(Value::Null) => Normalizer::None,
            Some(v) if v == json!({"type": "NFC"}) => Normalizer::Nfc,
            Some(_) => Normalizer::Other,
        };
        let added = hf.get_added_tokens_decoder();
        // A byte-level vocabulary spells each byte as one character; otherwise a token's
        // UTF-8 spelling is at least as long as what it stands for (SentencePiece's `▁`,
        // byte fallback's `<0x41>`).
        let vocab_max = hf
            .get_vocab(false)
            .keys()
            .map(|t| if byte_level { t.chars().count() } else { t.len() })
            .max()
            .unwrap_or(1);
        let added_max = added.values().map(|t| t.content.len()).max().unwrap_or(1);
        let qwen_pre = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]});
        let piecewise = pre == qwen_pre
            && normalizer != Normalizer::Other
            && hf.get_truncation().is_none()
            && hf.get_padding().is_none()
            && hf.get_post_processor().is_none_or(|p| tokenizers::PostProcessor::added_tokens(p, false) == 0)
            // An added token may not reach across a cut by stripping whitespace, nor match
            // differently because its neighbour is on the other side.
            && added.values().all(|t| !t.lstrip && !t.rstrip && !t.single_word);
        let added = added.into_values().map(|t| t.content).filter(|c| !c.is_empty()).collect();
        TextBound { max_token_bytes: vocab_max.max(added_max).max(1), normalizer, piecewise, added }
    }

    /// A lower bound on the number of tokens of `text`, in one linear pass (no allocation).
    pub(crate) fn min_tokens(&self, text: &str) -> usize {
        let normalized_bytes = match self.normalizer {
            Normalizer::None => text.len(),
            Normalizer::Nfc if is_nfc_quick(text.chars()) == IsNormalized::Yes => text.len(),
            Normalizer::Nfc => (text.len() * NFC_MAX_SHRINK.1).div_ceil(NFC_MAX_SHRINK.0),
            Normalizer::Other => return 0,
        };
        normalized_bytes.div_ceil(self.max_token_bytes)
    }

    /// `hf.encode_fast(text)`'s ids, or `TooLong` as soon as there are more than
    /// `max_tokens` of them (often without tokenizing most of the text).
    pub(crate) fn encode_within(&self, hf: &tokenizers::Tokenizer, text: &str, add_special_tokens: bool, max_tokens: usize) -> Result<Bounded> {
        let bound = self.min_tokens(text);
        if bound > max_tokens {
            return Ok(Bounded::TooLong { tokens: bound, exact: false });
        }
        let encode = |piece: &str, special: bool| -> Result<Vec<u32>> {
            let enc = hf.encode_fast(piece, special).map_err(|e| anyhow!("tokenizer encode failed: {e}"))?;
            Ok(enc.get_ids().to_vec())
        };
        if !self.piecewise || text.len() <= PIECE_BYTES {
            let ids = encode(text, add_special_tokens)?;
            return Ok(if ids.len() > max_tokens { Bounded::TooLong { tokens: ids.len(), exact: true } } else { Bounded::Ids(ids) });
        }
        let mut ids = Vec::new();
        let mut from = 0;
        while from < text.len() {
            let to = self.next_cut(text, from + PIECE_BYTES);
            if to - from > MAX_UNCUT_BYTES + PIECE_BYTES {
                return Ok(Bounded::Uncuttable { bytes: to - from });
            }
            ids.extend(encode(&text[from..to], add_special_tokens && from == 0)?);
            if ids.len() > max_tokens {
                return Ok(Bounded::TooLong { tokens: ids.len(), exact: to == text.len() });
            }
            from = to;
        }
        Ok(Bounded::Ids(ids))
    }

    /// The first safe cut at or after byte `at` (or the end of the text).
    fn next_cut(&self, text: &str, at: usize) -> usize {
        let mut at = at.max(1).min(text.len());
        while !text.is_char_boundary(at) {
            at += 1;
        }
        let mut prev = text[..at].chars().next_back();
        for (i, c) in text[at..].char_indices() {
            if prev.is_some_and(|p| is_safe_cut(p, c)) && !self.inside_added(text, at + i) {
                return at + i;
            }
            prev = Some(c);
        }
        text.len()
    }

    /// Whether an occurrence of an added token spans byte `i` (starts before it, ends after).
    fn inside_added(&self, text: &str, i: usize) -> bool {
        self.added.iter().any(|t| {
            let mut lo = i.saturating_sub(t.len() - 1);
            while !text.is_char_boundary(lo) {
                lo -= 1;
            }
            let mut hi = (i + t.len() - 1).min(text.len());
            while !text.is_char_boundary(hi) {
                hi += 1;
            }
            text[lo..hi].match_indices(t.as_str()).any(|(p, _)| lo + p < i && i < lo + p + t.len())
        })
    }
}

/// Whether Qwen's tokenizer surely splits between `prev` and `next`, so the text before
/// and after encode independently. The regex's alternatives are
/// (1) `(?i:'s|'t|...)`, (2) `[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+`, (3) `\p{N}`,
/// (4) ` ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*`, (5) `\s*[\r\n]+`, (6) `\s+(?!\S)`, (7) `\s+`:
///
/// * a newline, then anything but whitespace: only (4), (5), (6), (7) hold a newline, and
///   never followed by a non-space;
/// * a letter or digit, then a space or a punctuation mark: letters end (1) and (2) (whose
///   optional one-character prefix is never a letter or digit), a digit is (3) alone, and
///   (4) holds no letter or digit;
/// * a digit, then a letter or digit: a digit is (3) alone.
///
/// The regex has no look-behind, so matching after the cut starts as it would on the
/// whole text. NFC never acts across the cut: `next` has combining class 0 and NFC quick
/// check "yes" (it composes with nothing before it). A cut inside an added token's
/// spelling is refused by the caller.
fn is_safe_cut(prev: char, next: char) -> bool {
    let rule = (matches!(prev, '\n' | '\r') && !next.is_whitespace())
        || (is_word(prev) && (next == ' ' || is_punct(next)))
        || (prev.is_ascii_digit() && is_word(next));
    rule && canonical_combining_class(next) == 0 && is_nfc_quick(std::iter::once(next)) == IsNormalized::Yes
}

/// Certainly `\p{L}` or `\p{N}` (and nothing else): ASCII letters and digits, CJK
/// unified ideographs (all `Lo`).
fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || ('\u{4E00}'..='\u{9FFF}').contains(&c)
}

/// Certainly none of `\p{L}`, `\p{M}`, `\p{N}`, whitespace: ASCII punctuation, CJK
/// punctuation `、。〃` and the fullwidth punctuation blocks.
fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c, '\u{3001}'..='\u{3003}' | '\u{FF01}'..='\u{FF0F}' | '\u{FF1A}'..='\u{FF20}' | '\u{FF3B}'..='\u{FF40}' | '\u{FF5B}'..='\u{FF65}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_normalization::UnicodeNormalization;

    fn qwen() -> crate::tokenizer::Tokenizer {
        crate::tokenizer::Tokenizer::bundled().unwrap()
    }

    #[test]
    fn qwen_bound_facts() {
        let t = qwen();
        let b = TextBound::of(t.hf());
        assert_eq!(b.max_token_bytes, 128, "the longest Qwen3.5 token is 128 spaces");
        assert_eq!(b.normalizer, Normalizer::Nfc);
        assert!(b.piecewise);
    }

    /// Every code point `x` stands, after canonical decomposition, for code points `d`;
    /// `widest[d]` is the longest single code point decomposing to `d` alone (the Kelvin
    /// sign for `K`). An NFC output character `c` comes from input whose code points
    /// decompose to exactly `c`'s decomposition, so its input is at most
    /// `sum(widest[d] for d in nfd(c))` bytes long.
    #[test]
    fn nfc_shrinks_utf8_at_most_3_5_fold() {
        let chars = || (0..=0x10FFFFu32).filter_map(char::from_u32);
        let mut widest = std::collections::HashMap::<char, usize>::new();
        for x in chars() {
            let d: Vec<char> = x.to_string().nfd().collect();
            if d.len() == 1 {
                let w = widest.entry(d[0]).or_insert(d[0].len_utf8());
                *w = (*w).max(x.len_utf8());
            }
        }
        let width = |d: char| widest.get(&d).copied().unwrap_or(d.len_utf8());
        let mut worst = (0.0f64, 'a');
        for x in chars() {
            let d: Vec<char> = x.to_string().nfd().collect();
            let input: usize = d.iter().map(|&c| width(c)).sum();
            // A code point standing for several is never longer than their widest spellings.
            assert!(x.len_utf8() <= input, "{x:?}");
            let ratio = input as f64 / x.len_utf8() as f64;
            if ratio > worst.0 {
                worst = (ratio, x);
            }
        }
        let (from, to) = NFC_MAX_SHRINK;
        assert!(worst.0 <= from as f64 / to as f64, "U+{:04X} shrinks {}-fold", worst.1 as u32, worst.0);
        // And the bound is met.
        assert_eq!("\u{1FBE}\u{308}\u{301}".nfc().collect::<String>(), "\u{390}");
        assert_eq!("\u{1100}\u{1161}\u{11A8}".nfc().collect::<String>().len(), 3);
    }

    #[test]
    fn min_tokens_never_exceeds_the_real_count() {
        let t = qwen();
        let b = TextBound::of(t.hf());
        let spaces = " ".repeat(128 * 5);
        let texts = [
            "hello world", spaces.as_str(), "\u{212A}\u{212A}\u{212A}", "\u{1100}\u{1161}\u{11A8}",
            "e\u{301}\u{301}\u{301}", "\u{1FBE}\u{308}\u{301}", "<|im_start|><|im_end|>", "中文字符，标点。", "🦀🦀🦀",
        ];
        for text in texts {
            let real = t.encode(text, false).unwrap().len();
            let big = text.repeat(1000);
            let real_big = t.encode(&big, false).unwrap().len();
            assert!(b.min_tokens(text) <= real, "{text:?}: bound {} > {real}", b.min_tokens(text));
            assert!(b.min_tokens(&big) <= real_big, "{text:?} x1000: bound {} > {real_big}", b.min_tokens(&big));
        }
        // 640 spaces are exactly 5 tokens of 128: the bound is tight there.
        assert_eq!(t.encode(&spaces, false).unwrap().len(), 5);
        assert_eq!(b.min_tokens(&spaces), 5);
    }

    /// Random text over characters that stress every alternative of the regex, NFC and
    /// added tokens, encoded in pieces, equals the text encoded whole.
    #[test]
    fn pieces_encode_exactly_like_the_whole_text() {
        let t = qwen();
        let b = TextBound::of(t.hf());
        let atoms = [
            "a", "Z", "9", " ", "  ", "\n", "\r\n", "\n\n", "\t", "'s", "'", "!", "?!", ".", "-", "é", "e\u{301}",
            "\u{301}", "\u{1100}", "\u{1161}", "中", "，", "🦀", "\u{a0}", "<|im_start|>", "<think>", "\u{212A}", "x ",
            "\n ", " \n", "ab", "The", "12", "_", "\u{3000}", ",", "\"", "{", ":", "中文", "。", "、", "（", "：",
            "<|im_end|>", "|", "<", "ｱ", "Ⓐ", "\u{1161}\u{11A8}", "don't",
        ];
        let mut x = 1u64;
        for _ in 0..12 {
            let mut text = String::new();
            while text.len() < 3 * PIECE_BYTES {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                text.push_str(atoms[(x >> 33) as usize % atoms.len()]);
            }
            let whole = t.encode(&text, true).unwrap();
            let pieces = b.encode_within(t.hf(), &text, true, usize::MAX).unwrap();
            assert_eq!(pieces, Bounded::Ids(whole));
        }
    }

    #[test]
    fn encoding_stops_soon_after_the_limit() {
        let t = qwen();
        let b = TextBound::of(t.hf());
        let text = "word ".repeat(200_000);
        match b.encode_within(t.hf(), &text, false, 1000).unwrap() {
            Bounded::TooLong { tokens, exact } => {
                assert!(!exact);
                assert!(tokens > 1000 && tokens < 1000 + PIECE_BYTES, "{tokens}");
            }
            other => panic!("{other:?}"),
        }
        // Far over: refused by the bound alone.
        assert!(matches!(b.encode_within(t.hf(), &text, false, 10).unwrap(), Bounded::TooLong { exact: false, .. }));
        // Nowhere to cut for over a megabyte: refused before tokenizing.
        let word = "ab".repeat(MAX_UNCUT_BYTES);
        assert!(matches!(b.encode_within(t.hf(), &word, false, usize::MAX).unwrap(), Bounded::Uncuttable { .. }));
    }

    #[test]
    fn cuts_fall_between_pieces_of_every_script_and_never_inside_added_tokens() {
        let b = TextBound::of(qwen().hf());
        let cuts = |text: &str| -> Vec<usize> {
            let mut out = vec![];
            let mut at = 1;
            while at < text.len() {
                let c = b.next_cut(text, at);
                if c < text.len() {
                    out.push(c);
                }
                at = c + 1;
            }
            out
        };
        assert_eq!(cuts("ab cd\nef,12x"), vec![2, 6, 8, 10, 11]);
        // After 文 before ，; after the newline before 中 (CJK: 3 bytes a character).
        assert_eq!(cuts("中文，中文\n中"), vec![6, 16]);
        // `m` then `_` would be a cut, but not inside `<|im_start|>`.
        assert_eq!(cuts("x<|im_start|>y"), vec![1]);
        // No cut before a combining mark or a jamo that composes backwards.
        assert!(cuts("a\n\u{301}").is_empty() && cuts("\n\u{1161}").is_empty());
    }
}
