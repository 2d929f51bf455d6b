//! `--reasoning-parser qwen3`: splits chat output into `reasoning_content` (before
//! `</think>`) and `content`, as SGLang's Qwen3 detector does. Reasoning is forced on
//! when the rendered prompt already opened the think block (Qwen3.5's template ends the
//! generation prompt with `<think>\n` unless `enable_thinking` is false).

const START: &str = "<think>";
const END: &str = "</think>";

/// Parser names we accept (all use `<think>` / `</think>`).
pub const PARSERS: &[&str] = &["qwen3", "qwen3-thinking", "deepseek-r1", "deepseek-v3", "glm45", "kimi", "step3"];

/// Whether the rendered prompt leaves the model inside a think block.
pub fn forced(prompt_text: &str) -> bool {
    prompt_text.trim_end().ends_with(START)
}

/// Non-streaming split: (reasoning, content).
pub fn split(text: &str, force: bool) -> (Option<String>, String) {
    if !force && !text.contains(START) {
        return (None, text.to_string());
    }
    let t = text.replacen(START, "", 1);
    let t = t.trim();
    match t.split_once(END) {
        None => (Some(t.to_string()), String::new()),
        Some((r, c)) => (Some(r.to_string()), c.trim().to_string()),
    }
}

/// Streaming split; holds back a tail that could be the start of a tag.
pub struct Stream {
    in_reasoning: bool,
    seen_start: bool,
    held: String,
}

impl Stream {
    pub fn new(force: bool) -> Self {
        Stream { in_reasoning: force, seen_start: false, held: String::new() }
    }

    /// (reasoning delta, content delta)
    pub fn push(&mut self, delta: &str) -> (String, String) {
        self.held.push_str(delta);
        let mut reasoning = String::new();
        let mut content = String::new();
        loop {
            if !self.seen_start {
                if let Some(p) = self.held.find(START) {
                    let before: String = self.held[..p].to_string();
                    self.out(&before, &mut reasoning, &mut content);
                    self.held.drain(..p + START.len());
                    self.seen_start = true;
                    self.in_reasoning = true;
                    continue;
                }
            }
            if self.in_reasoning {
                if let Some(p) = self.held.find(END) {
                    reasoning.push_str(&self.held[..p]);
                    self.held.drain(..p + END.len());
                    self.in_reasoning = false;
                    continue;
                }
            }
            break;
        }
        // Emit all but a possible tag prefix at the end.
        let mut keep = 0;
        for tag in [START, END] {
            for (k, _) in tag.char_indices().skip(1) {
                if k > keep && self.held.ends_with(&tag[..k]) {
                    keep = k;
                }
            }
        }
        let cut = self.held.len() - keep;
        let now: String = self.held.drain(..cut).collect();
        self.out(&now, &mut reasoning, &mut content);
        (reasoning, content)
    }

    pub fn finish(&mut self) -> (String, String) {
        let rest = std::mem::take(&mut self.held);
        let (mut r, mut c) = (String::new(), String::new());
        self.out(&rest, &mut r, &mut c);
        (r, c)
    }

    fn out(&self, s: &str, reasoning: &mut String, content: &mut String) {
        if self.in_reasoning { reasoning.push_str(s) } else { content.push_str(s) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_full_text() {
        // As SGLang: the reasoning keeps its trailing newline, the content is stripped.
        assert_eq!(split("think a bit\n</think>\n\nAnswer.", true), (Some("think a bit\n".into()), "Answer.".into()));
        assert_eq!(split("Answer.", false), (None, "Answer.".into()));
        assert_eq!(split("<think>x</think>y", false), (Some("x".into()), "y".into()));
        assert_eq!(split("still thinking", true), (Some("still thinking".into()), String::new()));
    }

    #[test]
    fn stream_split_across_pieces() {
        let mut s = Stream::new(true);
        let mut r = String::new();
        let mut c = String::new();
        for piece in ["hmm", " ok</", "think>", "\n\nHi", " there"] {
            let (a, b) = s.push(piece);
            r.push_str(&a);
            c.push_str(&b);
        }
        let (a, b) = s.finish();
        r.push_str(&a);
        c.push_str(&b);
        assert_eq!(r, "hmm ok");
        assert_eq!(c, "\n\nHi there");
        let mut s = Stream::new(false);
        assert_eq!(s.push("plain"), (String::new(), "plain".into()));
    }
}
