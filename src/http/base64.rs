//! Base64 as CloudEvents' `data_base64` carries binary data: RFC 4648's standard
//! alphabet with `=` padding, read strictly (no whitespace, no URL-safe letters, no stray
//! bits in the last symbol), so that one text means one sequence of bytes.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why a text is not base64.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Base64Error {
    #[error("its length ({len}) is not a multiple of 4")]
    Length { len: usize },
    #[error("{found:?} at byte {at} is not a base64 symbol")]
    Symbol { found: char, at: usize },
    #[error("the padding is misplaced")]
    Padding,
}

/// `bytes` as base64 text.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols =
            [n >> 18, n >> 12, n >> 6, n].map(|i| char::from(ALPHABET[(i & 63) as usize]));
        out.push(symbols[0]);
        out.push(symbols[1]);
        out.push(if chunk.len() > 1 { symbols[2] } else { '=' });
        out.push(if chunk.len() > 2 { symbols[3] } else { '=' });
    }
    out
}

fn value(symbol: u8) -> Option<u32> {
    Some(match symbol {
        b'A'..=b'Z' => symbol - b'A',
        b'a'..=b'z' => symbol - b'a' + 26,
        b'0'..=b'9' => symbol - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// The bytes `text` encodes.
///
/// # Errors
/// A length that is not a multiple of 4, a symbol outside the alphabet, padding anywhere
/// but at the end (at most two), or bits set beyond the last byte.
pub fn decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return Err(Base64Error::Length { len: bytes.len() });
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (q, quad) in bytes.chunks(4).enumerate() {
        let last = q + 1 == quads;
        let pad = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err(Base64Error::Padding);
        }
        let mut n = 0u32;
        for (i, &symbol) in quad[..4 - pad].iter().enumerate() {
            let v = value(symbol).ok_or_else(|| {
                let at = q * 4 + i;
                Base64Error::Symbol {
                    found: text.get(at..).and_then(|t| t.chars().next()).unwrap_or('?'),
                    at,
                }
            })?;
            n |= v << (18 - 6 * i);
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let kept = 3 - pad;
        // The bits past the last byte must be zero: `QQ==` and `QR==` are not both `A`.
        if decoded[kept..].iter().any(|&b| b != 0) {
            return Err(Base64Error::Padding);
        }
        out.extend_from_slice(&decoded[..kept]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4648_test_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).as_deref(), Ok(plain.as_bytes()));
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        for len in 0..bytes.len() {
            assert_eq!(decode(&encode(&bytes[..len])), Ok(bytes[..len].to_vec()));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(decode("Zm9"), Err(Base64Error::Length { len: 3 }));
        assert_eq!(
            decode("Zm 9"),
            Err(Base64Error::Symbol { found: ' ', at: 2 })
        );
        assert_eq!(
            decode("Zm-9"),
            Err(Base64Error::Symbol { found: '-', at: 2 })
        );
        assert_eq!(
            decode("Zé="),
            Err(Base64Error::Symbol { found: 'é', at: 1 })
        );
        assert_eq!(decode("Z==="), Err(Base64Error::Padding));
        assert_eq!(decode("Zg==Zg=="), Err(Base64Error::Padding));
        assert_eq!(decode("Zh=="), Err(Base64Error::Padding));
        assert_eq!(
            decode("=Zg="),
            Err(Base64Error::Symbol { found: '=', at: 0 })
        );
    }
}
