//! Python behaviour that Hugging Face chat templates rely on, for minijinja.
//!
//! HF renders templates with Python's jinja2, so values print the Python way (`True`,
//! `None`, `1e+16`), `tojson` is `json.dumps(ensure_ascii=False)` with `", "` / `": "`
//! separators, and templates call Python `str` / `dict` methods (`.startswith`, `.split`,
//! `.items()`, ...). This file provides those pieces; `chat.rs` wires them into the
//! environment.

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

fn arg_str(args: &[Value], i: usize, method: &str) -> Result<Option<String>, Error> {
    match args.get(i) {
        None => Ok(None),
        Some(v) if v.is_none() || v.is_undefined() => Ok(None),
        Some(v) if v.kind() == ValueKind::String => Ok(Some(v.as_str().unwrap_or_default().into())),
        Some(v) => Err(invalid(format!("{method}() argument must be str or None, not {}", v.kind()))),
    }
}

fn arg_int(args: &[Value], i: usize, default: i64) -> Result<i64, Error> {
    match args.get(i) {
        None => Ok(default),
        Some(v) if v.is_none() => Ok(default),
        Some(v) => v.as_i64().ok_or_else(|| invalid("expected an integer argument")),
    }
}

/// Python `str.split` / `str.rsplit`.
fn py_split(s: &str, sep: Option<&str>, maxsplit: i64, from_right: bool) -> Result<Vec<String>, Error> {
    let max = if maxsplit < 0 { usize::MAX } else { maxsplit as usize };
    match sep {
        Some("") => Err(invalid("empty separator")),
        Some(sep) => Ok(if from_right {
            let mut v: Vec<String> = s.rsplitn(max.saturating_add(1), sep).map(String::from).collect();
            v.reverse();
            v
        } else {
            s.splitn(max.saturating_add(1), sep).map(String::from).collect()
        }),
        None => {
            // whitespace runs; leading/trailing whitespace ignored; the unsplit remainder
            // keeps its inner whitespace
            let mut parts = Vec::new();
            let mut rest = if from_right { s.trim_end_matches(py_isspace) } else { s.trim_start_matches(py_isspace) };
            while !rest.is_empty() {
                if parts.len() == max {
                    let r = if from_right { rest.trim_end_matches(py_isspace) } else { rest.trim_start_matches(py_isspace) };
                    parts.push(r.to_string());
                    break;
                }
                if from_right {
                    let start = rest.rfind(py_isspace).map(|i| i + rest[i..].chars().next().unwrap().len_utf8()).unwrap_or(0);
                    parts.push(rest[start..].to_string());
                    rest = rest[..start].trim_end_matches(py_isspace);
                } else {
                    let end = rest.find(py_isspace).unwrap_or(rest.len());
                    parts.push(rest[..end].to_string());
                    rest = rest[end..].trim_start_matches(py_isspace);
                }
            }
            if from_right {
                parts.reverse();
            }
            Ok(parts)
        }
    }
}

fn affix_match(s: &str, arg: &Value, start: bool) -> Result<bool, Error> {
    let test = |p: &str| if start { s.starts_with(p) } else { s.ends_with(p) };
    match arg.kind() {
        ValueKind::String => Ok(test(arg.as_str().unwrap_or_default())),
        ValueKind::Seq => {
            for p in arg.try_iter()? {
                match p.as_str() {
                    Some(p) if p.is_empty() || test(p) => return Ok(true),
                    Some(_) => {}
                    None => return Err(invalid("tuple for startswith/endswith must only contain str")),
                }
            }
            Ok(false)
        }
        other => Err(invalid(format!("startswith/endswith first arg must be str or a tuple of str, not {other}"))),
    }
}

fn char_slice(s: &str, start: i64, end: Option<i64>) -> &str {
    let n = s.chars().count() as i64;
    let norm = |i: i64| if i < 0 { (n + i).max(0) } else { i.min(n) } as usize;
    let (a, b) = (norm(start), norm(end.unwrap_or(n)));
    if a >= b {
        return "";
    }
    let byte = |ci: usize| s.char_indices().nth(ci).map(|(i, _)| i).unwrap_or(s.len());
    &s[byte(a)..byte(b)]
}

fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    let strs = |v: Vec<String>| Value::from(v.into_iter().map(Value::from).collect::<Vec<_>>());
    Ok(match method {
        "startswith" | "endswith" => {
            let arg = args.first().ok_or_else(|| invalid(format!("{method}() takes at least 1 argument")))?;
            let start = arg_int(args, 1, 0)?;
            let end = args.get(2).and_then(|v| v.as_i64());
            Value::from(affix_match(char_slice(s, start, end), arg, method == "startswith")?)
        }
        "split" | "rsplit" => {
            let sep = arg_str(args, 0, method)?;
            let parts = py_split(s, sep.as_deref(), arg_int(args, 1, -1)?, method == "rsplit")?;
            strs(parts)
        }
        "strip" | "lstrip" | "rstrip" => {
            let chars = arg_str(args, 0, method)?;
            Value::from(py_strip(s, chars.as_deref(), method != "rstrip", method != "lstrip"))
        }
        "upper" => Value::from(s.to_uppercase()),
        "lower" => Value::from(s.to_lowercase()),
        "capitalize" => {
            let mut c = s.chars();
            Value::from(match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase(),
                None => String::new(),
            })
        }
        "title" => {
            let mut out = String::with_capacity(s.len());
            let mut prev_cased = false;
            for ch in s.chars() {
                if prev_cased { out.extend(ch.to_lowercase()) } else { out.extend(ch.to_uppercase()) }
                prev_cased = ch.is_alphabetic();
            }
            Value::from(out)
        }
        "replace" => {
            let old = arg_str(args, 0, method)?.unwrap_or_default();
            let new = arg_str(args, 1, method)?.unwrap_or_default();
            let count = arg_int(args, 2, -1)?;
            Value::from(if count < 0 { s.replace(&old, &new) } else { s.replacen(&old, &new, count as usize) })
        }
        "find" | "rfind" | "index" | "rindex" | "count" => {
            let sub = arg_str(args, 0, method)?.unwrap_or_default();
            if method == "count" {
                return Ok(Value::from(if sub.is_empty() { s.chars().count() + 1 } else { s.matches(sub.as_str()).count() }));
            }
            let pos = if method.starts_with('r') { s.rfind(sub.as_str()) } else { s.find(sub.as_str()) };
            match pos {
                Some(b) => Value::from(s[..b].chars().count() as i64),
                None if method.ends_with("find") => Value::from(-1),
                None => return Err(invalid("substring not found")),
            }
        }
        "join" => {
            let items = args.first().ok_or_else(|| invalid("join() takes exactly one argument"))?;
            let parts: Vec<String> = items.try_iter()?.map(|v| py_str(&v)).collect();
            Value::from(parts.join(s))
        }
        "splitlines" => strs(s.lines().map(String::from).collect()),
        "isspace" => Value::from(!s.is_empty() && s.chars().all(py_isspace)),
        "isdigit" | "isnumeric" | "isdecimal" => Value::from(!s.is_empty() && s.chars().all(|c| c.is_numeric())),
        "isalpha" => Value::from(!s.is_empty() && s.chars().all(char::is_alphabetic)),
        "isalnum" => Value::from(!s.is_empty() && s.chars().all(char::is_alphanumeric)),
        "islower" => Value::from(s.chars().any(char::is_lowercase) && !s.chars().any(char::is_uppercase)),
        "isupper" => Value::from(s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase)),
        _ => return Err(Error::new(ErrorKind::UnknownMethod, format!("str has no method named {method}"))),
    })
}

fn map_method(map: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    let keys: Vec<Value> = map.try_iter()?.collect();
    Ok(match method {
        "items" => Value::from(
            keys.into_iter()
                .map(|k| {
                    let v = map.get_item(&k).unwrap_or_default();
                    Value::from(vec![k, v])
                })
                .collect::<Vec<_>>(),
        ),
        "keys" => Value::from(keys),
        "values" => Value::from(keys.iter().map(|k| map.get_item(k).unwrap_or_default()).collect::<Vec<_>>()),
        "get" => {
            let key = args.first().ok_or_else(|| invalid("get() takes at least 1 argument"))?;
            let v = map.get_item(key)?;
            if v.is_undefined() {
                args.get(1).cloned().unwrap_or(Value::from(()))
            } else {
                v
            }
        }
        _ => return Err(Error::new(ErrorKind::UnknownMethod, format!("dict has no method named {method}"))),
    })
}

/// minijinja's unknown-method callback: Python `str` and `dict` methods.
pub fn unknown_method(_state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::String => string_method(value.as_str().unwrap_or_default(), method, args),
        ValueKind::Map => map_method(value, method, args),
        kind => Err(Error::new(ErrorKind::UnknownMethod, format!("{kind} has no method named {method}"))),
    }
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

    #[test]
    fn split_matches_python() {
        let sp = |s, sep, m, r| py_split(s, sep, m, r).unwrap();
        assert_eq!(sp("a</think>b</think>c", Some("</think>"), -1, false), ["a", "b", "c"]);
        assert_eq!(sp("a,b,c", Some(","), 1, true), ["a,b", "c"]);
        assert_eq!(sp("  a b  c ", None, -1, false), ["a", "b", "c"]);
        assert_eq!(sp("  a b  c ", None, 1, false), ["a", "b  c "]);
        assert_eq!(sp("  a b  c ", None, 1, true), ["  a b", "c"]);
        assert_eq!(sp("", None, -1, false), Vec::<String>::new());
        assert_eq!(sp("", Some(","), -1, false), [""]);
    }
}
