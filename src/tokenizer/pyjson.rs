//! HF's `tojson` filter: Python `json.dumps(x, ensure_ascii=False, indent=None,
//! separators=None, sort_keys=False)` over minijinja values (key order preserved, floats
//! as Python prints them, `", "` / `": "` separators unless indenting).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, Value};

use super::pycompat::{invalid, py_float_repr, py_number, py_str};

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// HF's `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`; arguments may be given by position in that order or by name.
pub fn tojson_filter(args: &[Value]) -> Result<Value, Error> {
    let (value, mut rest) = args.split_first().ok_or_else(|| invalid("tojson: no value"))?;
    let mut kwargs: Option<Kwargs> = None;
    if let Some(last) = rest.last() {
        if last.is_kwargs() {
            kwargs = Some(Kwargs::try_from(last.clone())?);
            rest = &rest[..rest.len() - 1];
        }
    }
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if rest.len() > names.len() {
        return Err(invalid("tojson: too many arguments"));
    }
    let mut params: [Value; 4] = Default::default();
    for (i, v) in rest.iter().enumerate() {
        params[i] = v.clone();
    }
    if let Some(kw) = &kwargs {
        for (i, n) in names.iter().enumerate() {
            if kw.has(n) {
                params[i] = kw.get::<Value>(n)?;
            }
        }
        kw.assert_all_used()?;
    }
    let indent = match params[1].kind() {
        ValueKind::Undefined | ValueKind::None => None,
        ValueKind::String => Some(params[1].as_str().unwrap_or_default().to_string()),
        ValueKind::Number => Some(" ".repeat(params[1].as_i64().unwrap_or(0).max(0) as usize)),
        _ => return Err(invalid("tojson: indent must be an integer or a string")),
    };
    let (item_sep, key_sep) = match params[2].kind() {
        ValueKind::Undefined | ValueKind::None => {
            (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string())
        }
        _ => {
            let parts: Vec<String> = params[2].try_iter()?.map(|v| py_str(&v)).collect();
            match parts.as_slice() {
                [a, b] => (a.clone(), b.clone()),
                _ => return Err(invalid("tojson: separators must be a pair of strings")),
            }
        }
    };
    let opts = JsonOpts {
        ensure_ascii: params[0].is_true(),
        indent,
        item_sep,
        key_sep,
        sort_keys: params[3].is_true(),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from_safe_string(out))
}

fn json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_key(k: &Value) -> Result<String, Error> {
    Ok(match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => if k.is_true() { "true" } else { "false" }.into(),
        ValueKind::Number => py_number(k),
        other => return Err(invalid(format!("tojson: keys must be str, not {other}"))),
    })
}

fn newline_indent(out: &mut String, opts: &JsonOpts, level: usize) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn write_json(out: &mut String, v: &Value, opts: &JsonOpts, level: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    out.push_str(&py_float_repr(f));
                }
            }
        }
        ValueKind::String => json_str(out, v.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline_indent(out, opts, level + 1);
                write_json(out, item, opts, level + 1)?;
            }
            newline_indent(out, opts, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for k in v.try_iter()? {
                let val = v.get_item(&k)?;
                pairs.push((json_key(&k)?, val));
            }
            if opts.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if pairs.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, val)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline_indent(out, opts, level + 1);
                json_str(out, k, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, val, opts, level + 1)?;
            }
            newline_indent(out, opts, level);
            out.push('}');
        }
        other => return Err(invalid(format!("tojson: object of type {other} is not JSON serializable"))),
    }
    Ok(())
}
