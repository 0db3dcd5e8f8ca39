//! LEB128 varints: seven bits per byte, low bits first, the high bit set on
//! every byte but the last.

/// Appends `value` to `out`.
pub fn put(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a varint at `*at`, advancing it; `None` if the bytes end first or
/// the value does not fit 64 bits.
pub fn get(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        let bits = u64::from(byte & 0x7F);
        if shift == 63 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Zigzag: small negative and positive numbers both encode short.
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

pub fn unzigzag(value: u64) -> i64 {
    (value >> 1) as i64 ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edges_and_rejects_overflow() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put(&mut out, value);
            let mut at = 0;
            assert_eq!(get(&out, &mut at), Some(value));
            assert_eq!(at, out.len());
            assert_eq!(
                get(&out[..out.len() - 1], &mut 0),
                None,
                "truncated {value}"
            );
        }
        // Eleven bytes, or a tenth byte above 1, do not fit 64 bits.
        assert_eq!(get(&[0xFF; 11], &mut 0), None);
        let mut ten = vec![0xFF; 9];
        ten.push(0x02);
        assert_eq!(get(&ten, &mut 0), None);
        for value in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(value)), value);
        }
        assert!(zigzag(-1) < 2 && zigzag(1) < 3);
    }
}
