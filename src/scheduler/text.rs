//! Output text for one request: incremental detokenization (never emitting a broken
//! UTF-8 character) and stop-string matching that holds back any tail which could still
//! become a stop string, so a stop string is never emitted, even when it spans tokens.

use super::codec::Codec;
use crate::tokenizer::DetokState;

/// Incremental detokenization over the scheduler's `Codec` (the algorithm is
/// `tokenizer::DetokState`'s).
pub struct Detok {
    state: DetokState,
    skip_special: bool,
}

impl Detok {
    pub fn new(codec: &dyn Codec, prompt: &[u32], skip_special: bool) -> Self {
        let decode = |ids: &[u32]| codec.decode(ids, skip_special).unwrap_or_else(|_| "\u{FFFD}".into());
        Detok { state: DetokState::new(prompt, decode), skip_special }
    }

    pub fn push(&mut self, codec: &dyn Codec, id: u32) -> String {
        let skip = self.skip_special;
        self.state.push(&[id], |ids: &[u32]| codec.decode(ids, skip).unwrap_or_default())
    }

    /// Whatever is left (an incomplete character comes out as U+FFFD).
    pub fn finish(&mut self, codec: &dyn Codec) -> String {
        let skip = self.skip_special;
        self.state.finish(|ids: &[u32]| codec.decode(ids, skip).unwrap_or_default())
    }
}

/// Result of feeding text to [`StopStrings`].
#[derive(Debug, PartialEq)]
pub enum StopStep {
    /// Text safe to emit now (may be empty).
    Emit(String),
    /// A stop string matched: emit this (the text before it, or through it with
    /// `no_stop_trim`) and finish.
    Matched { emit: String, stop: String },
}

pub struct StopStrings {
    stops: Vec<String>,
    keep_stop: bool,
    held: String,
    work: u64,
}

impl StopStrings {
    pub fn new(stops: Vec<String>, no_stop_trim: bool) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopStrings { stops, keep_stop: no_stop_trim, held: String::new(), work: 0 }
    }

    pub fn push(&mut self, delta: &str) -> StopStep {
        if self.stops.is_empty() {
            return StopStep::Emit(delta.to_string());
        }
        self.held.push_str(delta);
        // Earliest match wins; among matches at the same place, the first listed.
        let mut best: Option<(usize, usize)> = None;
        for (i, s) in self.stops.iter().enumerate() {
            self.work += (self.held.len() + s.len()) as u64;
            if let Some(p) = self.held.find(s.as_str()) {
                if best.is_none_or(|(bp, _)| p < bp) {
                    best = Some((p, i));
                }
            }
        }
        if let Some((p, i)) = best {
            let stop = self.stops[i].clone();
            let end = if self.keep_stop { p + stop.len() } else { p };
            let emit = self.held[..end].to_string();
            self.held.clear();
            return StopStep::Matched { emit, stop };
        }
        // Hold back the longest tail that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                self.work += 1;
                if k > hold && self.held.ends_with(&s[..k]) {
                    hold = k;
                }
            }
        }
        let cut = self.held.len() - hold;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopStep::Emit(emit)
    }

    /// Bytes examined so far (a cost measure independent of the machine's load).
    pub fn work(&self) -> u64 {
        self.work
    }

    /// Releases held text (the request ended for another reason).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect(), false);
        let mut out = String::new();
        for p in pieces {
            match s.push(p) {
                StopStep::Emit(e) => out.push_str(&e),
                StopStep::Matched { emit, stop } => {
                    out.push_str(&emit);
                    return (out, Some(stop));
                }
            }
        }
        out.push_str(&s.flush());
        (out, None)
    }

    #[test]
    fn stop_across_pieces_is_never_emitted() {
        assert_eq!(run(&["END"], &["abc E", "N", "Dxyz"]), ("abc ".into(), Some("END".into())));
        assert_eq!(run(&["END"], &["abc E", "N", "x"]), ("abc ENx".into(), None));
        assert_eq!(run(&["\n\n", "b"], &["a\n", "\nb"]), ("a".into(), Some("\n\n".into())));
        assert_eq!(run(&["xy", "ab"], &["zzab xy"]), ("zz".into(), Some("ab".into())));
    }

    #[test]
    fn held_text_is_only_a_possible_prefix() {
        let mut s = StopStrings::new(vec!["STOP".into()], false);
        assert_eq!(s.push("aST"), StopStep::Emit("a".into()));
        assert_eq!(s.push("x"), StopStep::Emit("STx".into()));
        assert_eq!(s.push("é S"), StopStep::Emit("é ".into()));
    }

    /// Generated text pushed token by token (3-byte pieces) with one stop string; returns
    /// the work per pushed byte.
    fn work_per_byte(stop: &str, text: &str) -> f64 {
        let mut s = StopStrings::new(vec![stop.to_string()], false);
        let mut pushed = 0;
        for piece in text.as_bytes().chunks(3) {
            let piece = std::str::from_utf8(piece).unwrap();
            pushed += piece.len();
            assert!(matches!(s.push(piece), StopStep::Emit(_)), "no match expected");
        }
        s.work() as f64 / pushed as f64
    }

    #[test]
    fn per_token_work_does_not_grow_with_the_stop_string_length() {
        // The text never matches; the long stop shares a prefix with it over and over
        // ("ab" repeated), the worst case for re-scanning.
        let text = "ab".repeat(3000) + &"xyz ".repeat(1500);
        let short = work_per_byte("abc", &text);
        for len in [1 << 12, 1 << 16, 1 << 20] {
            let long = "ab".repeat(len / 2) + "c";
            let w = work_per_byte(&long, &text);
            assert!(w <= short.max(1.0) * 4.0, "stop of {len} bytes: {w:.1} units of work per byte vs {short:.1} for a 3-byte stop");
        }
    }

    #[test]
    fn no_stop_trim_keeps_the_stop() {
        let mut s = StopStrings::new(vec!["b".into()], true);
        assert_eq!(s.push("abc"), StopStep::Matched { emit: "ab".into(), stop: "b".into() });
    }
}
