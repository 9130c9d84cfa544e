//! The PEM text armour of key files: a `-----BEGIN <label>-----` line,
//! base64 lines, and the matching END line.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Label of private key files (PKCS#8, as openssl writes it).
pub(crate) const PRIVATE_LABEL: &str = "PRIVATE KEY";
/// Label of halite public key files (the raw 32 key bytes).
pub(crate) const PUBLIC_LABEL: &str = "HALITE ED25519 PUBLIC KEY";

/// Armours `der` under `label`, base64 in 64-column lines.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Un-armours `text`, which must hold exactly one `label` block and
/// nothing but blank lines around it. The error says what is wrong, for
/// the caller to wrap with the file's path.
pub(crate) fn decode(label: &str, text: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        None => return Err("empty file".into()),
        Some(l) if l == begin => {}
        Some(l) if l.starts_with("-----BEGIN ") => {
            return Err(format!("expected `{begin}`, found `{}`", shorten(l)))
        }
        Some(_) => return Err(format!("does not start with `{begin}`")),
    }
    let mut b64 = String::new();
    let mut ended = false;
    for line in lines.by_ref() {
        if line == end {
            ended = true;
            break;
        }
        if line.starts_with("-----") {
            return Err(format!("expected `{end}`, found `{}`", shorten(line)));
        }
        if line.contains(':') {
            return Err("PEM headers (an encrypted key?) are not supported".into());
        }
        b64.push_str(line);
    }
    if !ended {
        return Err(format!("missing `{end}`"));
    }
    if lines.next().is_some() {
        return Err(format!("unexpected text after `{end}`"));
    }
    STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| format!("bad base64: {e}"))
}

fn shorten(line: &str) -> String {
    line.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_long_and_short_data() {
        for len in [0usize, 1, 32, 48, 49, 200] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let text = encode(PUBLIC_LABEL, &data);
            assert!(text
                .lines()
                .all(|l| l.len() <= 64 || l.starts_with("-----")));
            assert_eq!(decode(PUBLIC_LABEL, &text).unwrap(), data);
        }
    }

    #[test]
    fn refuses_wrong_label_garbage_and_truncation() {
        let text = encode(PRIVATE_LABEL, b"abc");
        assert!(decode(PUBLIC_LABEL, &text)
            .unwrap_err()
            .contains("expected"));
        assert!(decode(PUBLIC_LABEL, "").unwrap_err().contains("empty"));
        assert!(decode(PUBLIC_LABEL, "hello").is_err());
        let truncated: String = text.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(decode(PRIVATE_LABEL, &truncated)
            .unwrap_err()
            .contains("missing"));
        let bad = text.replace("YWJj", "!!!!");
        assert!(decode(PRIVATE_LABEL, &bad).unwrap_err().contains("base64"));
        let trailing = format!("{text}junk\n");
        assert!(decode(PRIVATE_LABEL, &trailing)
            .unwrap_err()
            .contains("after"));
    }
}
