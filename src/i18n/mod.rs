//! The pages' languages: English and Simplified Chinese, one string catalogue per language
//! (`locales/*.json`, embedded in the binary), chosen from the `lang` cookie, then
//! `Accept-Language`, then English.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::HeaderMap;
use axum::http::header::{ACCEPT_LANGUAGE, COOKIE};

/// The cookie that remembers a visitor's choice.
pub const LANG_COOKIE: &str = "lang";

type Catalogue = BTreeMap<String, String>;

fn parse(name: &str, text: &str) -> Catalogue {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("locales/{name}: {e}"))
}

static EN: LazyLock<Catalogue> = LazyLock::new(|| parse("en.json", include_str!("../../locales/en.json")));
static ZH: LazyLock<Catalogue> = LazyLock::new(|| parse("zh-CN.json", include_str!("../../locales/zh-CN.json")));

/// A language the pages are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Zh];

    /// The BCP 47 tag, for `<html lang>` and the cookie.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    /// The language's own name, for the switch.
    pub fn native_name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::Zh => "简体中文",
        }
    }

    /// A tag as a visitor or browser writes it (`zh`, `zh-Hans-CN`, `en-GB`, …).
    pub fn from_tag(tag: &str) -> Option<Lang> {
        let primary = tag.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// The cookie first, then the most preferred language of `Accept-Language` we have, then
    /// English.
    pub fn negotiate(headers: &HeaderMap) -> Lang {
        cookie_value(headers, LANG_COOKIE)
            .and_then(|v| Lang::from_tag(&v))
            .or_else(|| headers.get(ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).and_then(from_accept_language))
            .unwrap_or(Lang::En)
    }

    fn catalogue(self) -> &'static Catalogue {
        match self {
            Lang::En => &EN,
            Lang::Zh => &ZH,
        }
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// `en-US,en;q=0.9,zh-CN;q=0.8` → the supported language with the highest weight (ties: first).
fn from_accept_language(header: &str) -> Option<Lang> {
    let mut best: Option<(Lang, f32)> = None;
    for item in header.split(',') {
        let mut parts = item.split(';');
        let Some(lang) = parts.next().and_then(Lang::from_tag) else { continue };
        let q =
            parts.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|q| q.trim().parse::<f32>().ok()).unwrap_or(1.0);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((lang, q));
        }
    }
    best.map(|(l, _)| l)
}

/// The strings of one language, handed to templates as `t`.
#[derive(Clone, Copy, Debug)]
pub struct Tr {
    pub lang: Lang,
}

impl Tr {
    pub fn new(lang: Lang) -> Self {
        Self { lang }
    }

    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::new(Lang::negotiate(headers))
    }

    /// The string for `key`; English when this language lacks it (a test forbids that), the key
    /// itself when no language has it.
    pub fn get<'a>(&self, key: &'a str) -> &'a str
    where
        'static: 'a,
    {
        self.lang.catalogue().get(key).or_else(|| EN.get(key)).map_or(key, String::as_str)
    }

    /// The string for `key` with `{name}` replaced by `value`.
    pub fn fill(&self, key: &str, name: &str, value: &str) -> String {
        self.get(key).replace(&format!("{{{name}}}"), value)
    }

    /// The whole catalogue as JSON, for the pages' scripts (`<script type="application/json">`;
    /// `<` is escaped so no string can end the element).
    pub fn script_strings(&self) -> String {
        serde_json::to_string(self.lang.catalogue()).unwrap_or_else(|_| "{}".into()).replace('<', "\\u003c")
    }

    pub fn code(&self) -> &'static str {
        self.lang.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn every_catalogue_has_exactly_the_english_keys() {
        let en: Vec<_> = EN.keys().collect();
        for lang in Lang::ALL {
            let keys: Vec<_> = lang.catalogue().keys().collect();
            let missing: Vec<_> = en.iter().filter(|k| !keys.contains(k)).collect();
            let extra: Vec<_> = keys.iter().filter(|k| !en.contains(k)).collect();
            assert!(missing.is_empty(), "{} lacks {missing:?}", lang.code());
            assert!(extra.is_empty(), "{} has keys English lacks: {extra:?}", lang.code());
            let empty: Vec<_> = lang.catalogue().iter().filter(|(_, v)| v.trim().is_empty()).map(|(k, _)| k).collect();
            assert!(empty.is_empty(), "{} has empty strings: {empty:?}", lang.code());
        }
    }

    /// Every key a template, a script or a handler asks for exists in the catalogues.
    #[test]
    fn every_key_the_pages_use_exists() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/");
        let mut sources = Vec::new();
        let mut dirs: Vec<std::path::PathBuf> =
            ["templates", "src/http"].iter().map(|d| format!("{root}{d}").into()).collect();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    sources.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
        let mut used = 0;
        for (path, text) in &sources {
            for marker in ["t.get(\"", "t.fill(\"", "data-t=\"", "T('"] {
                for piece in text.split(marker).skip(1) {
                    let key: String = piece.chars().take_while(|c| !matches!(c, '"' | '\'')).collect();
                    used += 1;
                    // `T('admin.role.' + role)`: a family of keys, of which some must exist.
                    let known =
                        if key.ends_with('.') { EN.keys().any(|k| k.starts_with(&key)) } else { EN.contains_key(&key) };
                    assert!(known, "{path} uses `{key}`, which is not in locales/en.json");
                }
            }
        }
        assert!(used > 50, "expected the pages to use the catalogue, found {used} uses");
    }

    #[test]
    fn the_cookie_wins_then_accept_language_then_english() {
        assert_eq!(Lang::negotiate(&headers(&[])), Lang::En);
        assert_eq!(Lang::negotiate(&headers(&[("accept-language", "zh-CN,zh;q=0.9,en;q=0.8")])), Lang::Zh);
        assert_eq!(Lang::negotiate(&headers(&[("accept-language", "fr-FR,en;q=0.5,zh;q=0.7")])), Lang::Zh);
        assert_eq!(Lang::negotiate(&headers(&[("accept-language", "de, fr;q=0.8")])), Lang::En);
        assert_eq!(Lang::negotiate(&headers(&[("accept-language", "zh;q=0, en;q=0.1")])), Lang::En);
        let both = headers(&[("accept-language", "zh-CN"), ("cookie", "a=b; lang=en")]);
        assert_eq!(Lang::negotiate(&both), Lang::En);
        let bad_cookie = headers(&[("accept-language", "zh-TW"), ("cookie", "lang=xx")]);
        assert_eq!(Lang::negotiate(&bad_cookie), Lang::Zh);
    }

    #[test]
    fn strings_are_filled_and_cannot_end_a_script_element() {
        let t = Tr::new(Lang::En);
        assert_eq!(t.get("no.such.key"), "no.such.key");
        assert_eq!(t.fill("login.continue_with", "provider", "GitHub"), "Continue with GitHub");
        assert!(!Tr::new(Lang::Zh).script_strings().contains('<'));
        assert_ne!(Tr::new(Lang::Zh).get("nav.overview"), Tr::new(Lang::En).get("nav.overview"));
    }
}
