//! The cluster key file's text format, shared by `tutti keygen` (writer) and `tuttid`
//! (reader): 64 hexadecimal digits (256 bits) and a newline. Text rather than raw bytes so
//! that configuration management can template it and an operator can compare two hosts'
//! keys by eye (or by hash). Leading and trailing whitespace is ignored; nothing else is.

/// Bytes of a cluster key.
pub const KEY_LEN: usize = 32;
const _: () = assert!(KEY_LEN == 32, "the error message says 64 digits");

/// Why a key file's text is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("expected 64 hexadecimal digits (a 256-bit key), found {0} characters")]
    Length(usize),
    #[error("character {0} is not a hexadecimal digit")]
    NotHex(usize),
}

/// The file's text for `key` (lower-case hex and a newline).
pub fn encode_key(key: &[u8; KEY_LEN]) -> String {
    let mut s = String::with_capacity(KEY_LEN * 2 + 1);
    for b in key {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s.push('\n');
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Parses a key file's text.
pub fn parse_key(text: &str) -> Result<[u8; KEY_LEN], KeyFormatError> {
    let digits = text.trim().as_bytes();
    if digits.len() != KEY_LEN * 2 {
        return Err(KeyFormatError::Length(text.trim().chars().count()));
    }
    let mut key = [0u8; KEY_LEN];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hi = hex_value(pair[0]).ok_or(KeyFormatError::NotHex(2 * i + 1))?;
        let lo = hex_value(pair[1]).ok_or(KeyFormatError::NotHex(2 * i + 2))?;
        key[i] = hi << 4 | lo;
    }
    Ok(key)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let key: [u8; KEY_LEN] = core::array::from_fn(|i| (i * 37 + 5) as u8);
        let text = encode_key(&key);
        assert_eq!(text.len(), 65);
        assert_eq!(parse_key(&text), Ok(key));
        assert_eq!(parse_key(&format!("  {}\n\n", text.to_uppercase())), Ok(key));
        assert_eq!(parse_key(&text[..60]), Err(KeyFormatError::Length(60)));
        assert_eq!(parse_key(""), Err(KeyFormatError::Length(0)));
        let mut bad = text.clone();
        bad.replace_range(10..11, "g");
        assert_eq!(parse_key(&bad), Err(KeyFormatError::NotHex(11)));
        // Multi-byte characters are counted as characters, never sliced mid-way.
        assert!(parse_key(&"é".repeat(32)).is_err());
        assert!(parse_key(&"é".repeat(64)).is_err());
    }
}
