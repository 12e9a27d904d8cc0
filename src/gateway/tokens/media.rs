//! Prompt tokens of media parts: images by their real dimensions and the provider's formula
//! for the model, audio by its length, files by their size; conservative where the size
//! cannot be read (remote URLs, uploaded file ids).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

/// How a model family turns an image into prompt tokens (OpenAI's published formulas).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ImageRule {
    /// Fit in 2048×2048, shortest side to 768, then `base + tile × 512-px tiles`; `low`
    /// detail costs `base` alone.
    Tiles { base: i64, tile: i64 },
    /// 32-px patches, at most 1,536, times a multiplier (in thousandths).
    Patches { milli: i64 },
}

/// The rules that may apply to `model`; for an unknown family, all the usual ones (the most
/// expensive wins, so the reservation stays an upper bound).
fn rules(model: &str) -> &'static [ImageRule] {
    use ImageRule::{Patches, Tiles};
    let m = model.rsplit('/').next().unwrap_or(model);
    if m.starts_with("gpt-4o-mini") {
        &[Tiles { base: 2833, tile: 5667 }]
    } else if m.starts_with("gpt-4.1-mini") || m.starts_with("gpt-5-mini") {
        &[Patches { milli: 1620 }]
    } else if m.starts_with("gpt-4.1-nano") || m.starts_with("gpt-5-nano") {
        &[Patches { milli: 2460 }]
    } else if m.starts_with("o4-mini") {
        &[Patches { milli: 1720 }]
    } else if m.starts_with("o1") || m.starts_with("o3") {
        &[Tiles { base: 75, tile: 150 }]
    } else if m.starts_with("gpt-5") {
        &[Tiles { base: 70, tile: 140 }]
    } else if m.starts_with("gpt-4o")
        || m.starts_with("gpt-4.1")
        || m.starts_with("gpt-4.5")
        || m.starts_with("chatgpt-4o")
    {
        &[Tiles { base: 85, tile: 170 }]
    } else {
        &[Tiles { base: 85, tile: 170 }, Tiles { base: 2833, tile: 5667 }, Patches { milli: 2460 }]
    }
}

/// The most patches an image is resized to.
const MAX_PATCHES: i64 = 1536;

fn tiles(width: u64, height: u64) -> i64 {
    let (mut w, mut h) = (width.max(1) as f64, height.max(1) as f64);
    if w > 2048.0 || h > 2048.0 {
        let s = 2048.0 / w.max(h);
        w *= s;
        h *= s;
    }
    if w.min(h) > 768.0 {
        let s = 768.0 / w.min(h);
        w *= s;
        h *= s;
    }
    ((w / 512.0).ceil() * (h / 512.0).ceil()) as i64
}

fn patches(width: u64, height: u64) -> i64 {
    let raw = i64::try_from(width.div_ceil(32).saturating_mul(height.div_ceil(32))).unwrap_or(i64::MAX);
    raw.min(MAX_PATCHES)
}

/// Prompt tokens of one image for `model`; `None` dimensions (a remote URL) cost the most any
/// image can.
pub fn image_tokens(model: &str, dims: Option<(u64, u64)>, low_detail: bool) -> i64 {
    rules(model)
        .iter()
        .map(|rule| match (*rule, dims) {
            (ImageRule::Tiles { base, .. }, _) if low_detail => base,
            // At most 2 × 4 tiles survive the resize (shortest side 768, longest 2048).
            (ImageRule::Tiles { base, tile }, None) => base + tile * 8,
            (ImageRule::Tiles { base, tile }, Some((w, h))) => base + tile * tiles(w, h),
            (ImageRule::Patches { milli }, dims) => {
                let p = dims.map_or(MAX_PATCHES, |(w, h)| patches(w, h));
                (p * milli + 999) / 1000
            }
        })
        .max()
        .unwrap_or(0)
}

/// Decodes a `data:…;base64,` URL, or as much of its start as `limit` bytes need.
fn decode_data_url(url: &str, limit: Option<usize>) -> Option<Vec<u8>> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    if !meta.ends_with(";base64") {
        return Some(data.as_bytes().to_vec());
    }
    let data = data.trim();
    let take = match limit {
        Some(bytes) => (bytes.div_ceil(3) * 4).min(data.len() / 4 * 4),
        None => data.len(),
    };
    // Bytes, not chars: hostile input may hold multi-byte characters anywhere.
    STANDARD.decode(&data.as_bytes()[..take]).ok()
}

/// The decoded size of a base64 payload (a data URL or bare base64), without decoding it.
fn decoded_len(data: &str) -> u64 {
    let payload = data.split_once(',').map_or(data, |(_, d)| d);
    (payload.len() as u64) / 4 * 3
}

/// Width and height of an inline image; `None` for remote URLs or unreadable data.
fn inline_dims(url: &str) -> Option<(u64, u64)> {
    if !url.starts_with("data:") {
        return None;
    }
    // Most formats keep their size in the first bytes; JPEG may bury it after EXIF data.
    let size = decode_data_url(url, Some(64 * 1024))
        .and_then(|b| imagesize::blob_size(&b).ok())
        .or_else(|| decode_data_url(url, None).and_then(|b| imagesize::blob_size(&b).ok()))?;
    Some((size.width as u64, size.height as u64))
}

/// Audio tokens: ~10 per second are billed today; 25 per second is reserved, with the length
/// read from a WAV header, or taken at a bit rate no speech codec goes below (8 kbit/s).
fn audio_tokens(data: &str) -> i64 {
    let bytes = decoded_len(data);
    let head = data.trim().as_bytes();
    let header = STANDARD.decode(&head[..head.len().min(64) / 4 * 4]).unwrap_or_default();
    let byte_rate = if header.len() >= 32 && &header[0..4] == b"RIFF" && &header[8..12] == b"WAVE" {
        u64::from(u32::from_le_bytes([header[28], header[29], header[30], header[31]])).max(1)
    } else {
        1000
    };
    let seconds = bytes.div_ceil(byte_rate);
    i64::try_from(seconds.saturating_mul(25).saturating_add(50)).unwrap_or(i64::MAX)
}

/// Prompt tokens of a content part when it is a medium (`Some(None)` when it cannot be sized);
/// `None` when it is not a medium (its text is counted by the caller).
pub fn part_tokens(model: &str, part: &Map<String, Value>) -> Option<Option<i64>> {
    let kind = part.get("type").and_then(Value::as_str)?;
    match kind {
        "image_url" | "input_image" | "image" => {
            // Chat: {"image_url": {"url", "detail"}} or {"image_url": "…"}; Responses:
            // {"image_url": "…", "detail"}; Anthropic: {"source": {"type": "base64", "data"}}.
            let inner = part.get("image_url");
            let url = inner
                .and_then(|v| v.get("url").and_then(Value::as_str).or_else(|| v.as_str()))
                .map(str::to_owned)
                .or_else(|| {
                    let src = part.get("source")?;
                    let data = src.get("data").and_then(Value::as_str)?;
                    let media = src.get("media_type").and_then(Value::as_str).unwrap_or("image/png");
                    Some(format!("data:{media};base64,{data}"))
                });
            let detail = inner.and_then(|v| v.get("detail")).or_else(|| part.get("detail")).and_then(Value::as_str);
            let dims = url.as_deref().and_then(inline_dims);
            Some(Some(image_tokens(model, dims, detail == Some("low"))))
        }
        "input_audio" | "audio" => {
            let data = part
                .get("input_audio")
                .and_then(|a| a.get("data"))
                .or_else(|| part.get("data"))
                .and_then(Value::as_str);
            Some(data.map(audio_tokens))
        }
        "file" | "input_file" | "document" => {
            // Inline file data: text and a picture of every page, bounded by half a token per
            // byte; an uploaded file id or a URL cannot be sized.
            let data = part
                .get("file")
                .and_then(|f| f.get("file_data"))
                .or_else(|| part.get("file_data"))
                .or_else(|| part.get("source").and_then(|s| s.get("data")))
                .and_then(Value::as_str);
            Some(data.map(|d| i64::try_from(decoded_len(d) / 2).unwrap_or(i64::MAX).max(1000)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_tile_examples() {
        // The worked examples of OpenAI's vision guide for gpt-4o.
        assert_eq!(image_tokens("gpt-4o", Some((1024, 1024)), false), 765);
        assert_eq!(image_tokens("gpt-4o", Some((2048, 4096)), false), 1105);
        assert_eq!(image_tokens("gpt-4o", Some((4096, 8192)), true), 85);
        assert_eq!(image_tokens("gpt-4o-mini", Some((1024, 1024)), false), 2833 + 4 * 5667);
        // Remote images cost the most an image can.
        assert_eq!(image_tokens("gpt-4o", None, false), 85 + 8 * 170);
    }

    #[test]
    fn patch_examples() {
        // 1024 × 1024 → 32 × 32 = 1024 patches; 1.62 for gpt-4.1-mini.
        assert_eq!(image_tokens("gpt-4.1-mini", Some((1024, 1024)), false), 1659);
        // Large images are capped at 1536 patches.
        assert_eq!(image_tokens("gpt-4.1-nano", Some((8000, 8000)), false), (1536 * 2460 + 999) / 1000);
        // Unknown families (aliases included) take the most expensive rule.
        assert_eq!(image_tokens("my-vision-model", Some((1024, 1024)), false), 2833 + 4 * 5667);
        assert_eq!(image_tokens("azure-4o-mini", None, false), 2833 + 8 * 5667);
    }

    #[test]
    fn inline_png_dimensions_are_read() {
        let png = tiny_png(3000, 1000);
        let url = format!("data:image/png;base64,{}", STANDARD.encode(&png));
        assert_eq!(inline_dims(&url), Some((3000, 1000)));
        let part = serde_json::json!({"type": "image_url", "image_url": {"url": url}});
        // 3000×1000 → 2048×683 → 683 shortest: 4 × 2 tiles.
        assert_eq!(part_tokens("gpt-4o", part.as_object().unwrap()), Some(Some(85 + 170 * 8)));
    }

    #[test]
    fn hostile_media_never_panics() {
        for data in ["data:image/png;base64,ééééééééé", "data:image/png;base64,AAé", "data:,", "data:image/png;base64,"]
        {
            let part = serde_json::json!({"type": "image_url", "image_url": {"url": data}});
            assert_eq!(part_tokens("gpt-4o", part.as_object().unwrap()), Some(Some(85 + 8 * 170)), "{data}");
        }
        let audio = serde_json::json!({"type": "input_audio", "input_audio": {"data": "RIFFé€WAVE", "format": "wav"}});
        assert!(part_tokens("gpt-4o", audio.as_object().unwrap()).flatten().is_some_and(|n| n > 0));
    }

    #[test]
    fn wav_length_is_read() {
        // 16 kHz mono 16-bit: 32,000 bytes a second; 4 seconds of silence.
        let mut wav = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x80\x3e\0\0\0\x7d\0\0\x02\0\x10\0data".to_vec();
        wav.extend_from_slice(&[0; 4]);
        wav.extend(std::iter::repeat_n(0u8, 128_000));
        let data = STANDARD.encode(&wav);
        assert_eq!(audio_tokens(&data), 5 * 25 + 50);
    }

    /// The header of a PNG of the given size (enough for the size probe).
    pub fn tiny_png(w: u32, h: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        v
    }
}
