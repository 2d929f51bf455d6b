//! Python behaviour that Hugging Face chat templates rely on, for minijinja.
//!
//! HF renders templates with Python's jinja2, so values print the Python way (`True`,
//! `None`, `1e+16`) and templates call Python `str` / `dict` methods (`.startswith`,
//! `.split`, `.items()`, ...). The methods come from `minijinja-contrib`'s `pycompat`;
//! this file keeps only what that library does differently from Python (listed on
//! [`unknown_method`]) and the value printing (`str()`, `repr()`) minijinja has no switch
//! for. `tojson` is in `pyjson.rs`; `chat.rs` wires everything into the environment.

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, State, Value};

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// Python's `str.isspace()` for one character (Rust's `is_whitespace` lacks U+001C..U+001F).
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `repr(float)` / `str(float)`: shortest round-trip digits, exponent form when the
/// decimal exponent is < -4 or >= 16.
pub fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sci = format!("{f:e}"); // e.g. "-1.2345e4", shortest round-trip digits
    let (mant, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!("e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs()));
    }
    out
}

pub(crate) fn py_number(v: &Value) -> String {
    if v.is_integer() {
        v.to_string()
    } else {
        match f64::try_from(v.clone()) {
            Ok(f) => py_float_repr(f),
            Err(_) => v.to_string(),
        }
    }
}

/// Python `repr()` of a string (single quotes unless the text has `'` and no `"`).
fn py_str_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// Python `str(value)`, as jinja2 prints a value. Containers print as Python reprs.
pub fn py_str(v: &Value) -> String {
    match v.kind() {
        ValueKind::String => v.as_str().unwrap_or_default().to_string(),
        _ => py_repr(v),
    }
}

fn py_repr(v: &Value) -> String {
    match v.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if v.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number => py_number(v),
        ValueKind::String => py_str_repr(v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = match v.try_iter() {
                Ok(it) => it.map(|x| py_repr(&x)).collect(),
                Err(_) => return v.to_string(),
            };
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let mut parts = Vec::new();
            if let Ok(it) = v.try_iter() {
                for k in it {
                    let val = v.get_item(&k).unwrap_or_default();
                    parts.push(format!("{}: {}", py_repr(&k), py_repr(&val)));
                }
            }
            format!("{{{}}}", parts.join(", "))
        }
        _ => v.to_string(),
    }
}

/// The `string` filter: Python `str()`.
pub fn string_filter(v: &Value) -> Value {
    if v.kind() == ValueKind::String {
        return v.clone(); // keeps a safe string safe
    }
    Value::from(py_str(v))
}

/// The `trim` filter: Python `str.strip(chars)`.
pub fn trim_filter(v: &Value, chars: Option<String>) -> Value {
    Value::from(py_strip(&py_str(v), chars.as_deref(), true, true))
}

fn py_strip(s: &str, chars: Option<&str>, left: bool, right: bool) -> String {
    let pred = |c: char| match chars {
        Some(set) => set.contains(c),
        None => py_isspace(c),
    };
    let mut t = s;
    if left {
        t = t.trim_start_matches(pred);
    }
    if right {
        t = t.trim_end_matches(pred);
    }
    t.to_string()
}

// ---------------------------------------------------------------- methods

/// Python's rule for `str.islower()` / `str.isupper()`: at least one cased character and
/// none of the other case (digits and punctuation don't count).
fn py_is_case(s: &str, lower: bool) -> bool {
    let (lowers, uppers) = (s.chars().any(char::is_lowercase), s.chars().any(char::is_uppercase));
    if lower { lowers && !uppers } else { uppers && !lowers }
}

/// minijinja's unknown-method callback: Python `str` / `dict` / `list` methods from
/// `minijinja_contrib::pycompat`, except where that library differs from Python (and so
/// from HF's jinja2):
/// - `strip` / `lstrip` / `rstrip` without characters: Python strips `str.isspace()`
///   characters, which include U+001C..U+001F that Rust's `trim` keeps;
/// - `find` / `rfind`: Python counts characters, the library returns byte offsets;
/// - `join`: Python refuses non-`str` items, the library prints them the Rust way
///   (`true` where Python would have raised or printed `True`);
/// - `is*` predicates: Python answers False on an empty string (the library: True), and
///   `islower` / `isupper` ignore uncased characters.
pub fn unknown_method(state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let no_chars = args.first().is_none_or(|a| a.is_none() || a.is_undefined());
        match method {
            "strip" | "lstrip" | "rstrip" if args.len() <= 1 && no_chars => {
                return Ok(Value::from(py_strip(s, None, method != "rstrip", method != "lstrip")));
            }
            "find" | "rfind" if args.len() == 1 && args[0].kind() == ValueKind::String => {
                let sub = args[0].as_str().unwrap_or_default();
                let pos = if method == "find" { s.find(sub) } else { s.rfind(sub) };
                return Ok(Value::from(pos.map_or(-1, |b| s[..b].chars().count() as i64)));
            }
            "join" if args.len() == 1 => {
                let mut parts = Vec::new();
                for (i, item) in args[0].try_iter()?.enumerate() {
                    let text = item.as_str().ok_or_else(|| {
                        invalid(format!("sequence item {i}: expected str instance, {} found", item.kind()))
                    })?;
                    parts.push(text.to_string());
                }
                return Ok(Value::from(parts.join(s)));
            }
            "isspace" | "isdigit" | "isnumeric" | "isalpha" | "isalnum" | "islower" | "isupper" if args.is_empty() => {
                return Ok(Value::from(match method {
                    "isspace" => !s.is_empty() && s.chars().all(py_isspace),
                    "islower" | "isupper" => py_is_case(s, method == "islower"),
                    _ => !s.is_empty() && minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)?.is_true(),
                }));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args).map_err(|e| {
        if e.kind() == ErrorKind::UnknownMethod {
            Error::new(ErrorKind::UnknownMethod, format!("{} has no method named {method}", value.kind()))
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        for (f, s) in [
            (1.0, "1.0"), (0.5, "0.5"), (-0.0, "-0.0"), (1e16, "1e+16"), (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"), (0.00001, "1e-05"), (1.5e-7, "1.5e-07"), (123.456, "123.456"),
            (1.2345678901234567e20, "1.2345678901234567e+20"), (0.1 + 0.2, "0.30000000000000004"),
        ] {
            assert_eq!(py_float_repr(f), s, "{f}");
        }
    }
}
