//! Edits of a JSON object's top-level members on its raw bytes: a pass-through body goes
//! upstream byte for byte except the members the gateway must set (the model name, the output
//! cap), so unknown fields, key order, number spellings and prompt-cache prefixes survive.
//!
//! The input is a body `serde_json` has already parsed as an object; anything this scanner
//! does not follow makes it answer `None`, and the caller falls back to re-serialising.

use std::ops::Range;

/// One top-level member: its key (decoded) and the byte range of its value.
#[derive(Debug, PartialEq, Eq)]
pub struct Member {
    pub key: String,
    pub value: Range<usize>,
}

/// The top-level members of the object in `raw`, in order, and the index of its closing `}`.
pub fn members(raw: &[u8]) -> Option<(Vec<Member>, usize)> {
    let mut i = skip_ws(raw, 0);
    if raw.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut out = Vec::new();
    loop {
        i = skip_ws(raw, i);
        match raw.get(i)? {
            b'}' if out.is_empty() => return Some((out, i)),
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(raw, i)?;
        let key: String = serde_json::from_slice(&raw[i..key_end]).ok()?;
        i = skip_ws(raw, key_end);
        if raw.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(raw, i + 1);
        let end = value_end(raw, start)?;
        out.push(Member { key, value: start..end });
        i = skip_ws(raw, end);
        match raw.get(i)? {
            b',' => i += 1,
            b'}' => return Some((out, i)),
            _ => return None,
        }
    }
}

/// `raw` with the values of the top-level members named in `set` replaced by the given JSON
/// texts (every occurrence, should a key repeat) and the members absent appended at the end;
/// every other byte unchanged.
pub fn set_members(raw: &[u8], set: &[(&str, String)]) -> Option<Vec<u8>> {
    let (members, close) = members(raw)?;
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut at = 0;
    for m in &members {
        if let Some((_, text)) = set.iter().find(|(k, _)| *k == m.key) {
            out.extend_from_slice(&raw[at..m.value.start]);
            out.extend_from_slice(text.as_bytes());
            at = m.value.end;
        }
    }
    out.extend_from_slice(&raw[at..close]);
    let mut any = !members.is_empty();
    for (key, text) in set {
        if members.iter().any(|m| m.key == *key) {
            continue;
        }
        if any {
            out.push(b',');
        }
        any = true;
        out.extend_from_slice(serde_json::to_string(key).ok()?.as_bytes());
        out.push(b':');
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&raw[close..]);
    Some(out)
}

fn skip_ws(raw: &[u8], mut i: usize) -> usize {
    while matches!(raw.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index just past the string that starts at `i` (an opening quote).
fn string_end(raw: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match raw.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// The index just past the value that starts at `i`.
fn value_end(raw: &[u8], i: usize) -> Option<usize> {
    match raw.get(i)? {
        b'"' => string_end(raw, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match raw.get(j)? {
                    b'"' => {
                        j = string_end(raw, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(c) = raw.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn set(raw: &str, pairs: &[(&str, Value)]) -> String {
        let pairs: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        String::from_utf8(set_members(raw.as_bytes(), &pairs).unwrap()).unwrap()
    }

    #[test]
    fn replaces_only_the_named_values() {
        let raw = r#"{ "model" : "a\"b",  "z":{"model":"inner","x":[1,{"}":"]"}]}, "max_tokens":1.0e3 ,"n":null}"#;
        let out = set(raw, &[("model", json!("up-1")), ("max_tokens", json!(64))]);
        assert_eq!(out, r#"{ "model" : "up-1",  "z":{"model":"inner","x":[1,{"}":"]"}]}, "max_tokens":64 ,"n":null}"#);
    }

    #[test]
    fn appends_absent_members() {
        assert_eq!(set(r#"{"a":1}"#, &[("max_tokens", json!(5))]), r#"{"a":1,"max_tokens":5}"#);
        assert_eq!(set("{ }", &[("m", json!("x"))]), r#"{ "m":"x"}"#);
        assert_eq!(set(" {}\n", &[("m", json!(1)), ("k", json!(2))]), " {\"m\":1,\"k\":2}\n");
    }

    #[test]
    fn keys_with_escapes_are_decoded() {
        let (m, _) = members(br#"{"mo\u0064el":"x","b":true}"#).unwrap();
        assert_eq!(m[0].key, "model");
        assert_eq!(m[1].key, "b");
    }

    #[test]
    fn every_edit_is_the_same_json_as_a_reserialisation() {
        let raw = r#"{"model":"m","messages":[{"role":"user","content":"hi \\\" there"}],"stream":true,"metadata":{"user_id":"u"}}"#;
        let out = set(raw, &[("model", json!("up")), ("max_tokens", json!(10))]);
        let mut want: serde_json::Map<String, Value> = serde_json::from_str(raw).unwrap();
        want.insert("model".into(), json!("up"));
        want.insert("max_tokens".into(), json!(10));
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), Value::Object(want));
    }

    #[test]
    fn not_an_object_is_none() {
        assert!(members(b"[1,2]").is_none());
        assert!(members(b"{\"a\"").is_none());
    }
}
